"""Embed audio files or folders with GRAM.

    python embed_audio.py recordings/ clip.wav --model path/to/gram --output-dir embeddings
    python embed_audio.py data/ --model DIR --output-dir out --format parquet --strategy mean --timestamps

Reads wav/flac/ogg/mp3 with soundfile (folders recursively), at 32 kHz (other rates with --resample),
in batches on the chosen device and dtype. Writes, per input file, the clip embedding ("scene") and with
--timestamps the time-resolved embeddings ("steps") and their times in ms ("timestamps"):
  npy          <output-dir>/<relative path>.npy (+ .steps.npy, .timestamps.npy)
  safetensors  <output-dir>/<relative path>.safetensors (tensors scene, steps, timestamps)
  parquet      <output-dir>/embeddings.parquet (one row per file; needs pyarrow)
Files that cannot be read are skipped, with a summary at the end (exit code 1 if nothing was embedded).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from configuration_gram import POOLING_STRATEGIES  # noqa: E402
from feature_extraction_gram import GramFeatureExtractor  # noqa: E402
from modeling_gram import GramModel  # noqa: E402

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class AudioFile:
    path: str
    relative: str  # output name, relative to its input folder


def find_audio_files(inputs: list[str]) -> tuple[list[AudioFile], list[tuple[str, str]]]:
    files, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            for base, _, names in sorted(os.walk(item)):
                for name in sorted(names):
                    if name.lower().endswith(AUDIO_EXTENSIONS):
                        path = os.path.join(base, name)
                        files.append(AudioFile(path, os.path.relpath(path, item)))
        elif os.path.isfile(item):
            if item.lower().endswith(AUDIO_EXTENSIONS):
                files.append(AudioFile(item, os.path.basename(item)))
            else:
                skipped.append((item, f"not a {'/'.join(AUDIO_EXTENSIONS)} file"))
        else:
            skipped.append((item, "no such file or folder"))
    return files, skipped


def read_audio(path: str, sampling_rate: int, resample: bool) -> np.ndarray:
    """(channels, samples) float32; raises ValueError with the reason when unusable."""
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types for corrupt or unsupported files
        raise ValueError(f"unreadable ({type(error).__name__}: {error})") from None
    if data.size == 0:
        raise ValueError("empty")
    audio = np.ascontiguousarray(data.T)
    if rate != sampling_rate:
        if not resample:
            raise ValueError(f"{rate} Hz, expected {sampling_rate} Hz (pass --resample)")
        import torchaudio.functional as AF

        audio = AF.resample(torch.from_numpy(audio), rate, sampling_rate).numpy()
    return audio


class Writer:
    def __init__(self, output_dir: str, fmt: str):
        self.output_dir, self.format, self.rows = output_dir, fmt, []
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise SystemExit("error: --format parquet needs pyarrow (pip install pyarrow)") from None

    def write(self, item: AudioFile, tensors: dict[str, np.ndarray]) -> None:
        if self.format == "parquet":
            self.rows.append({"path": item.relative, **{k: v.tolist() for k, v in tensors.items()}})
            return
        target = os.path.join(self.output_dir, item.relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if self.format == "npy":
            np.save(target + ".npy", tensors["scene"])
            for key in ("steps", "timestamps"):
                if key in tensors:
                    np.save(f"{target}.{key}.npy", tensors[key])
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, target + ".safetensors")

    def close(self) -> None:
        if self.format == "parquet" and self.rows:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(self.rows), os.path.join(self.output_dir, "embeddings.parquet"))


def embed_files(args: argparse.Namespace) -> tuple[int, list[tuple[str, str]]]:
    from tqdm.auto import tqdm

    files, skipped = find_audio_files(args.inputs)
    model = GramModel.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device).eval()
    try:
        extractor = GramFeatureExtractor.from_pretrained(args.model)
    except OSError:
        extractor = GramFeatureExtractor(num_channels=model.config.num_channels)
    os.makedirs(args.output_dir, exist_ok=True)
    writer = Writer(args.output_dir, args.format)
    done = 0
    batch: list[tuple[AudioFile, np.ndarray]] = []

    def flush():
        nonlocal done
        if not batch:
            return
        inputs = extractor([audio for _, audio in batch], sampling_rate=extractor.sampling_rate,
                           return_tensors="pt", device=args.device)
        with torch.inference_mode():
            out = model(**inputs, strategy=args.strategy, layer=args.layer)
        for i, (item, _) in enumerate(batch):
            tensors = {"scene": out.pooler_output[i].cpu().numpy()}
            if args.timestamps:
                steps = int(out.embedding_mask[i].sum())
                tensors["steps"] = out.last_hidden_state[i, :steps].cpu().numpy()
                tensors["timestamps"] = out.timestamps[:steps].cpu().numpy()
            writer.write(item, tensors)
            done += 1
        batch.clear()

    for item in tqdm(files, desc="embedding", unit="file", disable=args.quiet):
        try:
            audio = read_audio(item.path, extractor.sampling_rate, args.resample)
            extractor([audio], sampling_rate=extractor.sampling_rate)  # raises on bad content (too short, NaN...)
        except ValueError as error:
            skipped.append((item.path, str(error)))
            continue
        batch.append((item, audio))
        if len(batch) >= args.batch_size:
            flush()
    flush()
    writer.close()
    return done, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="audio files and/or folders")
    parser.add_argument("--model", required=True, help="a GRAM directory or Hub id")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--format", choices=["npy", "safetensors", "parquet"], default="npy")
    parser.add_argument("--strategy", choices=POOLING_STRATEGIES, default="raw")
    parser.add_argument("--layer", type=int, default=None, help="embed from this encoder layer (default: last)")
    parser.add_argument("--timestamps", action="store_true", help="also write time-resolved embeddings and times")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--resample", action="store_true", help="resample files not at 32 kHz")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    done, skipped = embed_files(args)
    print(f"Embedded {done} file(s) into {args.output_dir}; skipped {len(skipped)}.")
    for path, reason in skipped:
        print(f"  skipped {path}: {reason}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
