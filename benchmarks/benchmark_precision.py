"""Fast-inference benchmark: 8 x 10-s realistic binaural scenes (benchmarks/scenes.py), full-size GRAM,
float32 vs bfloat16 vs int8 quantisation of the Linear layers (PyTorch's dynamic quantisation, and torchao's int8
dynamic activations + int8 weights, side by side) vs ONNX Runtime (float32).

For each mode and batch size: clips/s, real-time factor, the encoder's achieved FLOP/s and its share of the
matmul rate of that mode's arithmetic measured in the same run (2048x2048 float32 / bfloat16 matmul, int8
dynamically quantised Linear); and accuracy against float32: relative error and cosine similarity of the
raw / mean / cls embeddings.

bfloat16 needs native support to be fast (AVX512-BF16 / AMX on x86 CPUs, any recent GPU). Without it,
PyTorch emulates it about 100x slower than float32; the script then says so, measures the matmul rate and
the accuracy (on `--slow-accuracy-seconds` of audio) and skips the throughput runs.

    python benchmarks/benchmark_precision.py                           # CPU, all modes
    python benchmarks/benchmark_precision.py --device cuda --compile   # GPU: fp32 and bf16 (+ torch.compile)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import warnings

import torch
from benchmark_inference import (
    best_time,
    encoder_flops_per_chunk,
    matmul_flops_per_second,
    requested_device,
    share_note,
    table,
    write_json,
)
from scenes import binaural_scene
from torch import nn

from configuration_gram import GramConfig
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel

SR = 32000
STRATEGIES = ("raw", "mean", "cls")


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def quantize_int8(module: nn.Module, mode: str) -> nn.Module:
    """int8 weights of every Linear: PyTorch's dynamic quantisation (`int8`, deprecated in torch 2.11 but kept: see
    the README's side-by-side figures) or torchao's int8 dynamic activations + int8 weights (`int8-torchao`)."""
    if mode == "int8-torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(module, Int8DynamicActivationInt8WeightConfig())
        return module
    with warnings.catch_warnings():  # "torch.ao.quantization is deprecated": the measured choice, said in the README
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def int8_linear_rate(mode: str, size: int = 2048, repeats: int = 10) -> float:
    layer = quantize_int8(nn.Sequential(nn.Linear(size, size, bias=False)), mode)
    x = torch.randn(size, size)
    with torch.inference_mode():
        return 2 * size**3 / best_time(lambda: layer(x), torch.device("cpu"), repeats)


def reference_rate(mode: str, device: torch.device, fast_bf16: bool) -> float:
    if mode == "bf16":
        return matmul_flops_per_second(
            device, torch.bfloat16, size=2048 if fast_bf16 else 256, repeats=10 if fast_bf16 else 2
        )
    if mode.startswith("int8"):
        return int8_linear_rate(mode)
    return matmul_flops_per_second(device, torch.float32)


class Runner:
    """Embeds features with one precision mode; returns float32 pooled embeddings per strategy."""

    def __init__(self, mode: str, model: GramModel, device: torch.device, compile_model: bool):
        self.mode = mode
        if mode == "onnx":
            from export_onnx import GramOnnxModel, export_onnx

            self._tmp = tempfile.TemporaryDirectory()
            self.model = GramOnnxModel(export_onnx(model, os.path.join(self._tmp.name, "onnx"))[0])
            return
        module = copy.deepcopy(model)
        if mode == "bf16":
            module = module.to(torch.bfloat16)
        elif mode.startswith("int8"):
            module = quantize_int8(module, mode)
        self.model = module.to(device).eval()
        if compile_model:
            self.model.encoder = torch.compile(self.model.encoder)

    def __call__(self, features: torch.Tensor, strategy: str = "raw") -> torch.Tensor:
        if self.mode == "onnx":
            return self.model(features.cpu(), strategy=strategy).pooler_output
        with torch.inference_mode():
            return self.model(features, strategy=strategy).pooler_output


def accuracy(runner: Runner, reference: Runner, features: torch.Tensor) -> dict:
    result = {}
    for strategy in STRATEGIES:
        expected = reference(features, strategy).double().cpu()
        got = runner(features, strategy).double().cpu()
        result[strategy] = {
            "relative_error": float((got - expected).norm() / expected.norm()),
            "min_cosine": float(nn.functional.cosine_similarity(got, expected).min()),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", default="binaural-time")
    parser.add_argument(
        "--modes", nargs="+", default=None, help="fp32 bf16 int8 int8-torchao onnx (default: all the device runs)"
    )
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (fp32/bf16)")
    parser.add_argument("--slow-accuracy-seconds", type=float, default=4.0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    device = requested_device(parser, args.device)
    cpu_modes = ["fp32", "bf16", "int8", "int8-torchao", "onnx"]
    modes = args.modes or (cpu_modes if device.type == "cpu" else ["fp32", "bf16"])
    fast_bf16 = native_bf16(device)
    torch.manual_seed(0)
    config = GramConfig.from_variant(args.variant)
    model = GramModel(config).eval()  # random weights: speed does not depend on their values
    extractor = GramFeatureExtractor.from_config(config)
    scenes = [binaural_scene(10.0, seed) for seed in range(args.clips)]
    features = extractor(scenes, sampling_rate=SR, return_tensors="pt")["input_values"].to(device)
    flops_per_clip = -(-features.shape[2] // config.chunk_frames) * encoder_flops_per_chunk(config)

    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "native_bf16": fast_bf16,
            "torch": torch.__version__,
        },
        "variant": args.variant,
        "audio": f"{args.clips} x 10-s synthetic binaural scenes (benchmarks/scenes.py)",
        "modes": {},
    }
    reference = Runner("fp32", model, device, compile_model=False)
    for mode in modes:
        runner = Runner(mode, model, device, compile_model=args.compile and mode in ("fp32", "bf16"))
        rates = [reference_rate(mode, device, fast_bf16)]  # re-measured around the runs; the best is used
        entry = {"reference_gflops_per_s": rates[0] / 1e9}
        slow = mode == "bf16" and not fast_bf16
        if slow:
            frames = int(args.slow_accuracy_seconds * 100) + 1
            entry["note"] = "no native bf16 on this device: emulated, throughput not measured"
            entry["accuracy"] = accuracy(runner, reference, features[:1, :, :frames])
        else:
            entry["accuracy"] = accuracy(runner, reference, features)
            for batch in args.batch_sizes:

                def run(batch=batch, runner=runner):
                    for start in range(0, args.clips, batch):
                        runner(features[start : start + batch])

                seconds = best_time(run, device, args.repeats)
                rates.append(reference_rate(mode, device, fast_bf16))
                entry["reference_gflops_per_s"] = max(rates) / 1e9
                achieved = flops_per_clip * args.clips / seconds
                entry[f"batch_{batch}"] = {  # share filled in below, against the best reference rate
                    "clips_per_s": args.clips / seconds,
                    "real_time_factor": args.clips * 10.0 / seconds,
                    "encoder_gflops_per_s": achieved / 1e9,
                }
            for key in [k for k in entry if k.startswith("batch_")]:
                entry[key]["share_of_reference_rate"] = (
                    entry[key]["encoder_gflops_per_s"] / entry["reference_gflops_per_s"]
                )
        report["modes"][mode] = entry
        print(json.dumps({mode: entry}, indent=2), flush=True)
    fp32 = report["modes"].get("fp32", {})
    for entry in report["modes"].values():
        for key in entry:
            if key.startswith("batch_") and key in fp32:
                entry[key]["speedup_vs_fp32"] = entry[key]["clips_per_s"] / fp32[key]["clips_per_s"]
    print(json.dumps(report, indent=2))
    print()
    rows = []
    for mode, entry in report["modes"].items():
        cells = [mode]
        for batch in args.batch_sizes:
            run = entry.get(f"batch_{batch}")
            cells.append(f"{run['clips_per_s']:.2f} ({run['real_time_factor']:.0f}×)" if run else "not measured")
        last = entry.get(f"batch_{args.batch_sizes[-1]}")
        cells.append(
            f"{100 * last['share_of_reference_rate']:.0f} % of {entry['reference_gflops_per_s']:.0f} GFLOP/s"
            if last
            else f"reference {entry['reference_gflops_per_s']:.0f} GFLOP/s"
        )
        errors = entry.get("accuracy", {})
        cells.append(" / ".join(f"{errors[s]['relative_error']:.1e}" for s in STRATEGIES) if errors else "0")
        cells.append(f"{min(errors[s]['min_cosine'] for s in STRATEGIES):.5f}" if errors else "1")
        rows.append(cells)
    header = [
        "mode",
        *[f"batch {b}: clips/s (× real time)" for b in args.batch_sizes],
        f"share of its matmul rate (b{args.batch_sizes[-1]})",
        "rel. error raw / mean / cls",
        "min cosine",
    ]
    print(table(header, rows))
    print(share_note())
    write_json(report, args.json)


if __name__ == "__main__":
    main()
