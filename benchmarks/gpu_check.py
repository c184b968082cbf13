"""One prepared GPU check: on a machine with one CUDA GPU, ONE command measures what the README's Scaling section
needs, in under 8 minutes, and prints the tables and saves them as JSON.

    python benchmarks/gpu_check.py --json gpu_check.json            # the real check (one CUDA GPU)
    python benchmarks/gpu_check.py --dry-run                        # the same code paths on CPU, tiny model, seconds

Measured (full-size default model, binaural time patching, random weights: speed does not depend on values):
1. Embedding throughput of 10-s binaural clips: fp32 and bf16, batch sizes from 1 up to the largest that fits
   (doubling), features excluded (log-mels precomputed) and included (batched log-mels on the GPU), and with
   torch.compile at the best batch size; clips/s, real-time factor, model FLOP/s as a share of the GPU's peak
   dense bf16 rate (detected from the GPU's name, or --peak-tflops), peak GPU memory.
2. bf16 accuracy on the GPU against fp32 on the CPU (relative error of raw/mean/cls; target < 1e-2).
3. Pretraining: steps/s, samples/s and MFU of the full-size GramForPreTraining with bf16 + torch.compile at the
   paper's batch (96 scenes x 16 crops) or the largest that fits (scenes halved on out-of-memory), scenes
   built on the GPU; peak memory.
4. A short profile (top kernels by GPU time) of the best bf16 embedding run and of a pretraining step, saved in
   the JSON, to say what bounds a missed target.

The JSON is rewritten after every measurement, so a failure late in the run keeps what was measured. Model
FLOP/s count what is executed: a 10-s clip is 6 chunks, the sixth holding 1 real frame, so a sixth of the
embedding FLOPs are padding. Each embedding batch goes through the encoder in one call (chunk_batch_size set
to the batch's chunks).

Targets (README, Scaling): embedding >= 3,000 clips/s in bf16; pretraining >= 45 % MFU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from benchmark_inference import encoder_flops_per_chunk, requested_device, synchronize, table, write_json
from benchmark_pretraining import bench as bench_pretraining
from scenes import binaural_scene

from configuration_gram import GramConfig
from feature_extraction_gram import GramFeatureExtractor
from gram_training.train import MODEL_SIZES
from modeling_gram import GramModel

SR = 32000
CLIP_SECONDS = 10.0
# Peak dense bf16 tensor-core TFLOP/s by GPU name (vendor data sheets; SXM parts where the name does not say).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,  # fp16 tensor cores (no bf16)
}
TARGET_CLIPS_PER_S = 3000.0
TARGET_MFU = 0.45


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "given (--peak-tflops)"
    if device.type != "cuda":
        return None, "no GPU (dry run)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # ordered: specific names before their prefixes
        if key in name:
            return value, f"table entry {key!r} for {name!r}"
    return None, f"unknown GPU {name!r}: pass --peak-tflops"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


class EmbeddingBench:
    """A model and 10-s clips on the device; `run(batch, dtype, with_features, compiled)` times one batch."""

    def __init__(self, config: GramConfig, device: torch.device, compile_backend: str):
        self.config, self.device, self.compile_backend = config, device, compile_backend
        self.extractor = GramFeatureExtractor.from_config(config)
        self.models = {torch.float32: GramModel(config).to(device).eval()}
        self.models[torch.bfloat16] = GramModel(config).to(device, torch.bfloat16).eval()
        self.models[torch.bfloat16].load_state_dict(self.models[torch.float32].state_dict())
        self.compiled = {}
        frames = int(CLIP_SECONDS * SR) // config.hop_length + 1
        self.chunks_per_clip = -(-frames // config.chunk_frames)  # 6 for 10 s: the last holds 1 real frame
        # As executed: every chunk counts, the padded sixth too (a sixth of the FLOPs are padding).
        self.flops_per_clip = self.chunks_per_clip * encoder_flops_per_chunk(config)

    def audio(self, batch: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(batch)
        shape = (batch, self.extractor.audio_channels, int(CLIP_SECONDS * SR))
        return 0.1 * torch.randn(shape, generator=generator, device=self.device)

    def forward(self, dtype: torch.dtype, compiled: bool):
        model = self.models[dtype]
        if not compiled:
            return model
        if dtype not in self.compiled:
            self.compiled[dtype] = torch.compile(model, backend=self.compile_backend)
        return self.compiled[dtype]

    def run(self, batch: int, dtype: torch.dtype, with_features: bool, compiled: bool, repeats: int) -> dict:
        free(self.device)
        # The whole batch in one encoder call: the default chunk_batch_size (32 chunks, ~5 clips) would cap the
        # encoder's batch, and torch.compile would unroll its sub-batch loop.
        for model in self.models.values():
            model.config.chunk_batch_size = batch * self.chunks_per_clip
        audio = self.audio(batch)
        features = None if with_features else self.extractor.extract(audio)  # (batch, C, frames, mels) float32
        forward = self.forward(dtype, compiled)

        def step():
            with torch.inference_mode():
                values = self.extractor.extract(audio) if with_features else features
                return forward(values, strategy="raw").pooler_output

        start = time.perf_counter()
        seconds = timed(step, self.device, repeats)
        return {
            "batch": batch,
            "dtype": str(dtype).replace("torch.", ""),
            "features": "included" if with_features else "excluded",
            "compiled": compiled,
            "clips_per_s": batch / seconds,
            "real_time_factor": batch * CLIP_SECONDS / seconds,
            "model_tflops_per_s": self.flops_per_clip * batch / seconds / 1e12,
            "peak_memory_gib": peak_memory_gib(self.device),
            "wall_s": time.perf_counter() - start,
        }


def embedding_sweep(bench: EmbeddingBench, batches: list[int], repeats: int, deadline: float, log, save) -> list[dict]:
    """bf16 first (the target's dtype), then fp32; each with log-mels excluded and included, batch sizes up to the
    largest that fits; then compiled at each dtype's best batch. Every run is saved as soon as it is measured."""
    runs = []
    best_batch = {}

    def attempt(batch, dtype, with_features, compiled) -> bool:
        try:
            run = bench.run(batch, dtype, with_features, compiled, repeats)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            log(f"{dtype} batch {batch} (compiled: {compiled}): out of memory")
            free(bench.device)
            return False
        runs.append(run)
        log(json.dumps(run))
        save()
        if not with_features and not compiled:
            best_batch[dtype] = max(best_batch.get(dtype, (0, 0)), (run["clips_per_s"], batch))
        return True

    for dtype in (torch.bfloat16, torch.float32):
        for with_features in (False, True):
            for batch in batches:
                if time.monotonic() > deadline:
                    log(f"time budget reached: {dtype} batch {batch} and larger left out")
                    break
                if not attempt(batch, dtype, with_features, compiled=False):
                    break  # the previous batch is the largest that fits
    for dtype, (_, batch) in best_batch.items():  # compile once per dtype, at its best eager batch size
        for with_features in (False, True):
            if time.monotonic() > deadline:
                log(f"time budget reached: compiled {dtype} left out")
                break
            attempt(batch, dtype, with_features, compiled=True)
    return runs


def bf16_accuracy(bench: EmbeddingBench, clips: int) -> dict:
    """bf16 on the device against fp32 on the CPU, on structured binaural scenes (tones, buzz, placement)."""
    reference = GramModel(bench.config).eval()
    reference.load_state_dict(bench.models[torch.float32].state_dict())
    audio = torch.stack([binaural_scene(CLIP_SECONDS, seed) for seed in range(clips)])
    features = bench.extractor.extract(audio)
    errors = {}
    with torch.inference_mode():
        for strategy in ("raw", "mean", "cls"):
            expected = reference(features, strategy=strategy).pooler_output.double()
            got = bench.models[torch.bfloat16](features.to(bench.device), strategy=strategy).pooler_output
            difference = (got.double().cpu() - expected).norm(dim=-1) / expected.norm(dim=-1)
            errors[strategy] = float(difference.max())
    return {"relative_error": errors, "within_1e-2": all(v < 1e-2 for v in errors.values())}


def pretraining(device, size, scenes, crops, steps, warmup, compile_backend, deadline, log) -> dict | None:
    """bf16 + compile at `scenes` x `crops`, halving the scenes on out-of-memory; with a profile of one step."""
    mode = "bf16-compile"
    while scenes >= 1:
        if time.monotonic() > deadline:
            log("time budget reached: pretraining left out")
            return None
        free(device)
        try:
            run = bench_pretraining(
                size, "binaural-time", mode, device, scenes, crops, steps, warmup, compile_backend, profile_top
            )
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            log(f"pretraining with {scenes} scenes x {crops} crops: out of memory; halving the scenes")
            scenes //= 2
            torch._dynamo.reset()
            continue
        run["peak_memory_gib"] = peak_memory_gib(device)
        return run
    return None


def profile_top(fn, device: torch.device, rows: int = 12) -> list[dict]:
    """The operators that take the most device (or CPU) time in one call of `fn`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    synchronize(device)
    with profile(activities=activities) as profiler:
        fn()
        synchronize(device)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    events = sorted(profiler.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:rows]
    return [{"name": e.key[:80], "calls": e.count, "time_ms": getattr(e, key, 0.0) / 1000} for e in events]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, short clips' worth: the code paths")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s of the GPU (default: by name)")
    parser.add_argument("--max-batch", type=int, default=2048, help="largest embedding batch tried")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=96, help="pretraining scenes per step (the paper: 96)")
    parser.add_argument("--crops", type=int, default=16, help="2-s crops per scene (the paper: 16)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    started = time.monotonic()
    deadline = started + args.budget_s
    if args.dry_run:
        device, size, compile_backend = torch.device("cpu"), "tiny", "eager"
        batches, args.scenes, args.crops, steps, warmup, accuracy_clips = [1, 2], 2, 2, 1, 1, 1
    else:
        device, size, compile_backend = requested_device(parser, args.device), "base", "inductor"
        batches = [2**k for k in range(args.max_batch.bit_length()) if 2**k <= args.max_batch]
        steps, warmup, accuracy_clips = 5, 3, 4
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    torch.manual_seed(0)

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    peak, peak_source = peak_tflops(device, args.peak_tflops)
    config = GramConfig.from_variant("binaural-time", **MODEL_SIZES[size])
    report = {
        "dry_run": args.dry_run,
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "peak_bf16_tflops": peak,
            "peak_source": peak_source,
        },
        "model": f"GRAM binaural-time, {size}",
    }
    report.update(embedding=[], bf16_accuracy=None, embedding_profile=None, pretraining=None)

    def save() -> None:  # after every measurement: a later failure keeps what was measured
        report["wall_s"] = time.monotonic() - started
        write_json(report, args.json)

    embedding = EmbeddingBench(config, device, compile_backend)
    log("embedding throughput ...")
    report["embedding"] = embedding_sweep(embedding, batches, args.repeats, deadline, log, save)
    log("bf16 accuracy against fp32 on the CPU ...")
    report["bf16_accuracy"] = bf16_accuracy(embedding, accuracy_clips)
    bf16_runs = [r for r in report["embedding"] if r["dtype"] == "bfloat16"]
    best = max(bf16_runs, key=lambda r: r["clips_per_s"]) if bf16_runs else None
    if best is not None:
        with_features = best["features"] == "included"
        report["embedding_profile"] = profile_top(
            lambda: embedding.run(best["batch"], torch.bfloat16, with_features, best["compiled"], 1), device
        )
    save()
    embedding = None  # frees the models before pretraining
    free(device)
    log("pretraining (bf16 + compile) ...")
    run = pretraining(device, size, args.scenes, args.crops, steps, warmup, compile_backend, deadline, log)
    if run is not None and peak:
        run["mfu"] = run["model_tflops_per_s"] / peak
    report["pretraining"] = run
    report["targets"] = {
        "embedding_bf16_clips_per_s": {"target": TARGET_CLIPS_PER_S, "measured": best and best["clips_per_s"]},
        "pretraining_mfu": {"target": TARGET_MFU, "measured": (run or {}).get("mfu")},
    }
    save()
    print_report(report)
    return report


def print_report(report: dict) -> None:
    machine = report["machine"]
    print(f"\n{machine['device']} (torch {machine['torch']}, CUDA {machine['cuda']}); peak bf16: "
          f"{machine['peak_bf16_tflops'] or '?'} TFLOP/s ({machine['peak_source']}); {report['model']}")  # fmt: skip
    peak = machine["peak_bf16_tflops"]
    rows = []
    for r in report["embedding"]:
        share = f"{100 * r['model_tflops_per_s'] / peak:.0f} %" if peak else "-"
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        rows.append([r["dtype"], "yes" if r["compiled"] else "no", r["features"], str(r["batch"]),
                     f"{r['clips_per_s']:.0f}", f"{r['real_time_factor']:.0f}x",
                     f"{r['model_tflops_per_s']:.1f}", share, memory])  # fmt: skip
    header = ["dtype", "compiled", "log-mels", "batch", "clips/s", "real time", "TFLOP/s", "of peak", "GiB"]
    print(table(header, rows))
    accuracy = report["bf16_accuracy"] or {"relative_error": {}, "within_1e-2": False}
    errors = ", ".join(f"{k} {v:.1e}" for k, v in accuracy["relative_error"].items())
    print(
        f"\nbf16 on the device vs fp32 on the CPU: {errors} ({'within' if accuracy['within_1e-2'] else 'ABOVE'} 1e-2)"
    )
    run = report["pretraining"]
    if run:
        mfu = f"{100 * run['mfu']:.0f} %" if run.get("mfu") is not None else "-"
        memory = f"{run['peak_memory_gib']:.1f}" if run.get("peak_memory_gib") is not None else "-"
        print()
        print(table(["pretraining", "scenes x crops", "steps/s", "samples/s", "TFLOP/s", "MFU", "GiB"],
                    [[run["mode"], f"{run['scenes_per_step']} x {run['samples_per_step'] // run['scenes_per_step']}",
                      f"{run['steps_per_s']:.2f}", f"{run['samples_per_s']:.0f}",
                      f"{run['model_tflops_per_s']:.1f}", mfu, memory]]))  # fmt: skip
    for name, target in report["targets"].items():
        measured = target["measured"]
        verdict = "-" if measured is None else ("met" if measured >= target["target"] else "MISSED")
        print(
            f"target {name}: {target['target']} -> {measured if measured is None else round(measured, 3)} ({verdict})"
        )
    print(f"wall time {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
