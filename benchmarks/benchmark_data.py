"""Pretraining input pipeline: how many scenes per second ONE DataLoader worker delivers (read, decode, resample,
crop to 10 s; plus the noise clip and the impulse responses of each scene), for wav folders and for parquet
(Arrow) streams, and how many workers a GPU therefore needs.

    python benchmarks/benchmark_data.py                       # writes its material to a temporary folder
    python benchmarks/benchmark_data.py --json data.json

The worker's work is `gram_training.data.SceneDataset` iterated in the main process (what each DataLoader worker
runs). Sources are 10-s stereo clips (AudioSet's length), at 32 kHz (no resampling), 44.1 kHz and 48 kHz (the
usual rates of downloaded audio, resampled with soxr HQ), as wav files, as flac files and as wav bytes in
parquet files streamed with `datasets`. The model's consumption is the GPU check's pretraining samples/s
divided by the crops per scene (`--gpu-samples-per-s`, from benchmarks/gpu_check.py), or, without it, the rate
the README's target implies (45 % MFU of a 989 TFLOP/s H100).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from benchmark_inference import table, write_json
from benchmark_pretraining import pretraining_flops_per_sample

from configuration_gram import GramConfig
from gram_training.data import HubSource, SceneDataset

CLIP_SECONDS = 10.0


def write_material(root: Path, clips: int, rate: int, kind: str) -> tuple[object, str]:
    """`clips` 10-s stereo noise-and-tone clips at `rate`: a folder of wav/flac files, or parquet files of wav bytes."""
    rng = np.random.default_rng(rate)
    t = np.arange(int(CLIP_SECONDS * rate)) / rate
    folder = root / f"{kind}-{rate}"
    folder.mkdir(parents=True)
    records = []
    for index in range(clips):
        audio = 0.1 * rng.standard_normal((t.size, 2)) + 0.3 * np.sin(2 * np.pi * (200 + 10 * index) * t)[:, None]
        audio = audio.astype(np.float32)
        if kind == "parquet":
            buffer = io.BytesIO()
            soundfile.write(buffer, audio, rate, format="WAV", subtype="PCM_16")
            records.append({"audio": {"bytes": buffer.getvalue(), "path": f"clip{index}.wav"}})
        else:
            soundfile.write(folder / f"clip{index:04d}.{kind}", audio, rate, subtype="PCM_16")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        shards = min(4, len(records))
        for shard in range(shards):
            pq.write_table(pa.Table.from_pylist(records[shard::shards]), folder / f"shard{shard}.parquet")
        files = sorted(str(path) for path in folder.glob("*.parquet"))
        return HubSource("parquet", data_files=files, shuffle_buffer=1), f"parquet (wav bytes) @ {rate} Hz"
    return str(folder), f"{kind} files @ {rate} Hz"


def write_room_material(root: Path, rirs: int) -> tuple[str, str]:
    """Binaural impulse responses (0.5 s, decaying noise) and noise clips: as gram-simulate writes them."""
    rng = np.random.default_rng(0)
    for name in ("rirs", "noise_rirs", "noise"):
        (root / name).mkdir()
    decay = np.exp(-np.arange(16000) / 3000.0)
    for index in range(rirs):
        np.save(root / "rirs" / f"r{index}.npy", (rng.standard_normal((2, 16000)) * decay).astype(np.float32))
        np.save(root / "noise_rirs" / f"r{index}.npy", (rng.standard_normal((3, 2, 16000)) * decay).astype(np.float32))
    for index in range(8):
        noise = (0.1 * rng.standard_normal(int(CLIP_SECONDS * 32000))).astype(np.float32)
        soundfile.write(root / "noise" / f"n{index}.wav", noise, 32000, subtype="PCM_16")
    return str(root / "rirs"), str(root / "noise_rirs")


def scenes_per_second(source, root: Path, scenes: int, warmup: int) -> float:
    dataset = SceneDataset(source, root / "rirs", 2, root / "noise", root / "noise_rirs", seed=0)
    stream = iter(dataset)
    for _ in range(warmup):  # noise files, impulse responses (cached after first use), the dataset's setup
        next(stream)
    start = time.perf_counter()
    for _ in range(scenes):
        next(stream)
    return scenes / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="source clips per format")
    parser.add_argument("--scenes", type=int, default=96, help="timed scenes per format")
    parser.add_argument("--rates", type=int, nargs="+", default=[32000, 44100, 48000])
    parser.add_argument("--gpu-samples-per-s", type=float, help="pretraining samples/s on the GPU (gpu_check.py)")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="gram-data-benchmark-") as scratch:
        root = Path(scratch)
        write_room_material(root, rirs=16)
        for kind in ("wav", "flac", "parquet"):
            for rate in args.rates:
                source, label = write_material(root, args.clips, rate, kind)
                rate_per_worker = scenes_per_second(source, root, args.scenes, warmup=4)
                report["runs"].append({"input": label, "scenes_per_s_per_worker": rate_per_worker})
                print(f"{label}: {rate_per_worker:.1f} scenes/s per worker", flush=True)

    if args.gpu_samples_per_s:
        needed, basis = args.gpu_samples_per_s / args.crops, f"measured {args.gpu_samples_per_s:.0f} samples/s"
    else:
        flops_per_scene = pretraining_flops_per_sample(GramConfig()) * args.crops
        needed, basis = 0.45 * 989e12 / flops_per_scene, "the 45 % MFU target on a 989 TFLOP/s H100 (not measured)"
    report["gpu_scenes_per_s"] = {"value": needed, "basis": basis}
    rows = []
    for run in report["runs"]:
        workers = math.ceil(needed / run["scenes_per_s_per_worker"])
        run["workers_per_gpu"] = workers
        rows.append([run["input"], f"{run['scenes_per_s_per_worker']:.0f}", str(workers)])
    print()
    print(table(["input", "scenes/s per worker", f"workers for {needed:.0f} scenes/s"], rows))
    print(f"(one GPU consumes {needed:.0f} scenes/s: {basis}; {args.crops} crops per scene)")
    write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()
