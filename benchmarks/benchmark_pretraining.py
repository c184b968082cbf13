"""Pretraining benchmark: optimizer steps per second of GRAM's masked-patch pretraining, scene building
included (FFT convolution, mixing, log-mels, crops on the device), data loading excluded (synthetic
dry material already on the device).

Each step is what `gram_training.train.GramPretrainer` does per batch: SceneBuilder -> GramForPreTraining
forward -> backward -> gradient clipping -> AdamW (the paper's hyper-parameters). Reports steps/s, scenes/s,
samples/s (scenes x crops) and the achieved model FLOP/s: as a share of a measured float32 matmul rate on a
CPU, and as model FLOPs utilisation (MFU) against the GPU's peak dense bf16 rate on a GPU.

    python benchmarks/benchmark_pretraining.py                       # CPU: tiny and base, fp32 eager
    python benchmarks/benchmark_pretraining.py --device cuda --sizes base --scenes 96 \
        --modes eager bf16 bf16-compile --peak-tflops 989            # H100 SXM: 989 dense bf16 TFLOP/s
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from benchmark_inference import (
    matmul_flops_per_second,
    requested_device,
    share_note,
    synchronize,
    table,
    write_json,
)

from configuration_gram import GramConfig
from feature_extraction_gram import GramFeatureExtractor
from gram_training.scenes import SceneBuilder, SceneConfig
from gram_training.train import MODEL_SIZES
from modeling_gram import GramForPreTraining

MODES = ("eager", "bf16", "bf16-compile", "compile")


def _layer_flops(tokens: int, width: int, mlp: int) -> float:
    """Forward multiply-adds x 2 of one transformer block (dense attention, as executed)."""
    return 2.0 * (tokens * (4 * width * width + 2 * width * mlp) + 2 * tokens * tokens * width)


def pretraining_flops_per_sample(config: GramConfig) -> float:
    """Training FLOPs (forward x 3) of one 2-s crop, as executed: the patch embedding runs on all patches
    (the visible ones are picked after it), the encoder blocks on the visible patches and CLS, the decoder on
    all patches."""
    patches = config.num_patches
    visible = patches - int(config.mask_ratio * patches + 1e-6) + 1
    patch_dim = config.num_channels * config.patch_size[0] * config.patch_size[1]
    forward = 2.0 * patches * patch_dim * config.hidden_size
    forward += config.num_hidden_layers * _layer_flops(visible, config.hidden_size, config.intermediate_size)
    forward += 2.0 * visible * config.hidden_size * config.decoder_hidden_size
    forward += config.decoder_num_hidden_layers * _layer_flops(
        patches, config.decoder_hidden_size, config.decoder_intermediate_size
    )
    forward += 2.0 * patches * config.decoder_hidden_size * patch_dim
    return 3.0 * forward


def synthetic_batch(scenes: int, audio_channels: int, device: torch.device, seconds: float = 10.0, taps: int = 16000):
    generator = torch.Generator().manual_seed(0)
    samples = int(seconds * 32000)
    decay = torch.exp(-torch.arange(taps) / 3000.0)
    batch = {
        "source": torch.randn(scenes, samples, generator=generator),
        "rir": torch.randn(scenes, audio_channels, taps, generator=generator) * decay,
        "noise": torch.randn(scenes, samples, generator=generator),
        "noise_rir": torch.randn(scenes, 1, audio_channels, taps, generator=generator) * decay,
        "noise_active": torch.tensor([[0, samples]] * scenes),
    }
    return {key: value.to(device) for key, value in batch.items()}


def bench(
    size: str,
    variant: str,
    mode: str,
    device: torch.device,
    scenes: int,
    crops: int,
    steps: int,
    warmup: int,
    compile_backend: str = "inductor",
    profiler=None,
) -> dict:
    """One configuration's timed steps; with `profiler` (a function of a step function, e.g. gpu_check's
    `profile_top`), its result of one more step is returned under "profile"."""
    config = GramConfig.from_variant(variant, **MODEL_SIZES[size])
    config._attn_implementation = "sdpa"
    model = GramForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.01)
    extractor = GramFeatureExtractor.from_config(config)
    builder = SceneBuilder(extractor, SceneConfig(crops_per_clip=crops))
    batch = synthetic_batch(scenes, extractor.audio_channels, device)
    forward = torch.compile(model, backend=compile_backend) if "compile" in mode else model
    use_bf16 = mode.startswith("bf16")

    def step():
        with torch.no_grad():
            inputs = builder(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = forward(input_values=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    samples = scenes * crops
    flops = pretraining_flops_per_sample(config) * samples / seconds
    extra = {"profile": profiler(step, device)} if profiler is not None else {}
    return {
        **extra,
        "size": size,
        "mode": mode,
        "scenes_per_step": scenes,
        "samples_per_step": samples,
        "steps_per_s": 1 / seconds,
        "scenes_per_s": scenes / seconds,
        "samples_per_s": samples / seconds,
        "model_tflops_per_s": flops / 1e12,
        "final_loss": float(loss.detach()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", default="binaural-time")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=list(MODEL_SIZES))
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=MODES)
    parser.add_argument("--scenes", type=int, default=2, help="scenes per step (the paper: 96)")
    parser.add_argument("--crops", type=int, default=16, help="2-s crops per scene (the paper: 16)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak dense bf16 TFLOP/s, for MFU")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    device = requested_device(parser, args.device)
    torch.manual_seed(0)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        },
        "variant": args.variant,
        "runs": [],
    }
    for size in args.sizes:
        for mode in args.modes:
            run = bench(size, args.variant, mode, device, args.scenes, args.crops, args.steps, args.warmup)
            if args.peak_tflops:
                run["mfu"] = run["model_tflops_per_s"] / args.peak_tflops
            print(json.dumps(run), flush=True)
            report["runs"].append(run)
    if device.type == "cpu":
        rate = matmul_flops_per_second(device, torch.float32) / 1e12
        report["matmul_fp32_tflops_per_s"] = rate
        for run in report["runs"]:
            run["share_of_fp32_matmul_rate"] = run["model_tflops_per_s"] / rate
    print(json.dumps(report, indent=2))
    print()
    header = ["size", "mode", "steps/s", "scenes/s", "samples/s", "model FLOP/s"]
    share = "share_of_fp32_matmul_rate" if device.type == "cpu" else "mfu" if args.peak_tflops else None
    header += [{"share_of_fp32_matmul_rate": "share of matmul rate", "mfu": "MFU"}[share]] if share else []
    rows = []
    for run in report["runs"]:
        row = [
            run["size"],
            run["mode"],
            f"{run['steps_per_s']:.3g}",
            f"{run['scenes_per_s']:.3g}",
            f"{run['samples_per_s']:.3g}",
            f"{1000 * run['model_tflops_per_s']:.0f} GFLOP/s",
        ]
        rows.append(row + ([f"{100 * run[share]:.0f} %"] if share else []))
    print(table(header, rows))
    print(f"({args.scenes} scenes x {args.crops} crops per step, {args.steps} timed steps after {args.warmup} warm-up)")
    if share == "share_of_fp32_matmul_rate":
        print(share_note())
    write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
