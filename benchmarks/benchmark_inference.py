"""Inference benchmark: embedding 10-s binaural clips with a full-size GRAM (random weights: speed does not
depend on the values), and the peak memory of embedding one 10-minute clip.

Reports clips/s, real-time factor (audio seconds per wall second), the encoder's achieved FLOP/s as a
share of a 2048x2048 float32 matmul rate
measured in the same run (the best of several measurements taken between the runs), and peak resident memory (measured in a child
process, so the figure is for that job alone).

    python benchmarks/benchmark_inference.py                 # all measurements, CPU
    python benchmarks/benchmark_inference.py --device cuda   # the same on a GPU
    python benchmarks/benchmark_inference.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from configuration_gram import GramConfig
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel

SR = 32000


def requested_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """`--device` as a torch.device; a CUDA request on a machine without a GPU ends with one clear line."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.exit(2, f"{parser.prog}: error: --device {name!r} is not a device (try cpu or cuda).\n")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(
            2,
            f"{parser.prog}: error: --device {name}: no CUDA GPU is available on this machine (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Run on a GPU machine, or use --device cpu.\n",
        )
    return device


def share_note() -> str:
    return (
        "A share above 100 % means the model ran faster than this run's reference matmul: the reference is one\n"
        "square matmul of the mode's arithmetic, which the model's fused kernels (or a slower machine moment while\n"
        "the reference ran, on shared machines) can beat; it is a yardstick, not a ceiling."
    )


def write_json(report: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, as the README shows it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, repeats: int) -> float:
    fn()  # warm-up
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 20) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = best_time(lambda: a @ b, device, repeats)
    return 2 * size**3 / seconds


def encoder_flops_per_chunk(config: GramConfig) -> float:
    """Multiply-adds x 2 of one chunk through patch embedding and the transformer layers."""
    tokens = config.num_patches + 1
    d, m = config.hidden_size, config.intermediate_size
    patch = config.num_patches * config.num_channels * config.patch_size[0] * config.patch_size[1] * d
    per_layer = tokens * (3 * d * d + d * d + 2 * d * m) + 2 * tokens * tokens * d
    return 2.0 * (patch + config.num_hidden_layers * per_layer)


def bench_throughput(
    variant: str, device: torch.device, batch_sizes, clips: int, repeats: int, matmul_rates: list
) -> dict:
    config = GramConfig.from_variant(variant)
    model = GramModel(config).to(device).eval()
    extractor = GramFeatureExtractor.from_config(config)
    generator = torch.Generator().manual_seed(0)
    audio = [0.1 * torch.randn(2, 10 * SR, generator=generator) for _ in range(clips)]
    features = extractor(audio, sampling_rate=SR, return_tensors="pt")["input_values"].to(device)
    chunks_per_clip = -(-features.shape[2] // config.chunk_frames)
    flops_per_clip = chunks_per_clip * encoder_flops_per_chunk(config)
    results = {}
    for batch in batch_sizes:
        # The reference rate is re-measured next to each run (shared machines drift); the best one is used.
        matmul_rates.append(matmul_flops_per_second(device, torch.float32))

        def run(batch=batch):
            with torch.inference_mode():
                for start in range(0, clips, batch):
                    model(features[start : start + batch], strategy="raw")

        seconds = best_time(run, device, repeats)
        results[f"batch_{batch}"] = {
            "clips_per_s": clips / seconds,
            "real_time_factor": clips * 10.0 / seconds,
            "encoder_gflops_per_s": flops_per_clip * clips / seconds / 1e9,
        }

    def extract_only():
        extractor(audio, sampling_rate=SR, return_tensors="pt")

    results["feature_extraction_clips_per_s"] = clips / best_time(extract_only, torch.device("cpu"), repeats)
    return results


def peak_memory_child(minutes: float, variant: str, device: str) -> None:
    """Run in a child process: embed one long binaural clip end to end, print peak RSS in MiB."""
    torch.manual_seed(0)
    config = GramConfig.from_variant(variant)
    model = GramModel(config).to(device).eval()
    extractor = GramFeatureExtractor.from_config(config)
    audio = 0.1 * torch.randn(2, int(minutes * 60 * SR))
    start = time.perf_counter()
    with torch.inference_mode():
        inputs = extractor(audio, sampling_rate=SR, return_tensors="pt", device=device)
        out = model(**inputs, strategy="raw")
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    print(
        json.dumps(
            {
                "minutes": minutes,
                "peak_rss_mib": peak_mib,
                "gpu_peak_mib": gpu_peak,
                "seconds": elapsed,
                "steps": out.last_hidden_state.shape[1],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", default="binaural-time")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--_memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = requested_device(parser, args.device)
    if args._memory_child:
        peak_memory_child(args.long_minutes, args.variant, args.device)
        return

    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        },
        "variant": args.variant,
    }
    matmul_rates = []
    report["throughput"] = bench_throughput(
        args.variant, device, args.batch_sizes, args.clips, args.repeats, matmul_rates
    )
    matmul_rates.append(matmul_flops_per_second(device, torch.float32))
    report["matmul_fp32_gflops_per_s"] = max(matmul_rates) / 1e9
    for value in report["throughput"].values():
        if isinstance(value, dict):
            value["share_of_fp32_matmul_rate"] = value["encoder_gflops_per_s"] / report["matmul_fp32_gflops_per_s"]
    if not args.skip_memory:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--_memory-child",
                "--device",
                args.device,
                "--variant",
                args.variant,
                "--long-minutes",
                str(args.long_minutes),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        report["long_clip"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=2))
    rows = [["fp32 matmul rate (2048², best of the run)", f"{report['matmul_fp32_gflops_per_s']:.0f} GFLOP/s"]]
    for key, value in report["throughput"].items():
        if isinstance(value, dict):
            rows.append(
                [
                    f"{key.replace('_', ' ')}: clips/s, real-time factor, share of matmul rate",
                    f"{value['clips_per_s']:.2f} clips/s, {value['real_time_factor']:.1f}× real time, "
                    f"{100 * value['share_of_fp32_matmul_rate']:.0f} % ({value['encoder_gflops_per_s']:.0f} GFLOP/s)",
                ]
            )
    rows.append(["feature extraction alone", f"{report['throughput']['feature_extraction_clips_per_s']:.0f} clips/s"])
    if "long_clip" in report:
        clip = report["long_clip"]
        rows.append(
            [
                f"one {clip['minutes']:g}-minute clip: peak resident memory, time",
                f"{clip['peak_rss_mib']:.0f} MiB, {clip['seconds']:.0f} s",
            ]
        )
    print()
    print(table(["measurement", "result"], rows))
    print(share_note())
    write_json(report, args.json)


if __name__ == "__main__":
    main()
