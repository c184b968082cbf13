"""Embed audio files or folders with GRAM.

    python embed_audio.py recordings/ clip.wav --model path/to/gram --output-dir embeddings
    python embed_audio.py data/ --model DIR --output-dir out --format parquet --strategy mean --timestamps

Reads wav/flac/ogg/mp3 with soundfile (regular files only; folders recursively), at 32 kHz (other rates
with --resample), in batches on the chosen device and dtype. Every input keeps its own name under the
output directory, so two inputs can never write the same output: a folder `recordings/` is mirrored as
`<output-dir>/recordings/...`, a file `clip.wav` becomes `<output-dir>/clip.wav.*`. Two inputs with the same
name (`a/x.wav` and `b/x.wav`, or two folders called `data`) are refused before anything is written.
Writes, per input file, the clip embedding ("scene") and with --timestamps the time-resolved embeddings
("steps") and their times in ms ("timestamps"):
  npy          <output-dir>/<input name>/<relative path>.npy (+ .steps.npy, .timestamps.npy), e.g.
               embeddings/recordings/sub/a.wav.npy for recordings/sub/a.wav
  safetensors  <output-dir>/<input name>/<relative path>.safetensors (tensors scene, steps, timestamps)
  parquet      <output-dir>/embeddings.parquet (one row per file, "path" = the same relative name)
The output directory is written as a whole (gram_io.staged_directory): it appears complete or not at all,
and --overwrite replaces only a previous output of this command. Files that cannot be read, and clips whose
embeddings would not be finite, are skipped, with a summary at the end (exit code 1 if nothing was embedded).

Corpus scale (embed_corpus.py): with --sharded, with --hf-dataset, or under torchrun / accelerate launch with more
than one process, the output is written in resumable parquet parts with a manifest instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from configuration_gram import AMBISONICS_FORMATS, POOLING_STRATEGIES
from embed_corpus import clip_embeddings, process_position
from feature_extraction_gram import GramFeatureExtractor
from gram_io import (
    AUDIO_EXTENSIONS,
    OutputDirectoryError,
    check_output_dir,
    find_audio_files,
    is_regular_file,
    printable,
    read_audio,
    staged_directory,
)
from modeling_gram import GramModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class AudioFile:
    path: str
    relative: str  # output name: the input's own name, then the path below it


def resolve_inputs(inputs: list[str]) -> tuple[list[AudioFile], list[tuple[str, str]]]:
    """Audio files of `inputs` with collision-free output names; raises ValueError when two inputs share a
    name (before anything is read or written)."""
    files, skipped, seen = [], [], set()
    roots: dict[str, str] = {}
    for item in inputs:
        real = os.path.realpath(item)
        if real in seen:
            skipped.append((item, "given twice (embedded once)"))
            continue
        name = os.path.basename(os.path.normpath(os.path.abspath(item)))
        if os.path.isdir(item):
            not_regular: list = []
            found = [
                AudioFile(str(path), os.path.join(name, os.path.relpath(path, item)))
                for path in find_audio_files(item, AUDIO_EXTENSIONS, not_regular)
            ]
            skipped += [(str(path), "not a regular file") for path in not_regular]
        elif os.path.exists(item):
            if not is_regular_file(item):
                skipped.append((item, "not a regular file"))
                continue
            if not item.lower().endswith(AUDIO_EXTENSIONS):
                skipped.append((item, f"not a {'/'.join(AUDIO_EXTENSIONS)} file"))
                continue
            found = [AudioFile(item, name)]
        else:
            skipped.append((item, "no such file or folder"))
            continue
        if name in roots:
            raise ValueError(
                f"{item} and {roots[name]} would both be written as {name!r} in the output directory; "
                "rename one of them or embed them in separate runs."
            )
        roots[name] = item
        seen.add(real)
        files.extend(found)
    return files, skipped


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


class _NothingEmbedded(Exception):
    """Nothing could be embedded: the staged output is discarded instead of leaving an empty directory."""


def load_model(args: argparse.Namespace) -> tuple[GramModel, GramFeatureExtractor]:
    model = GramModel.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device).eval()
    if args.chunk_batch_size is not None:  # chunks per encoder call: results are the same, memory and speed not
        model.config.chunk_batch_size = args.chunk_batch_size
    try:
        extractor = GramFeatureExtractor.from_pretrained(args.model)
    except OSError:
        extractor = GramFeatureExtractor.from_config(model.config)
    model.config.check_feature_extractor(extractor)
    if args.layer is not None and not 0 <= args.layer <= model.config.num_hidden_layers:
        raise ValueError(f"--layer must be in [0, {model.config.num_hidden_layers}] for this model, got {args.layer}.")
    return model, extractor


def embed_files(args: argparse.Namespace) -> tuple[int, list[tuple[str, str]]]:
    """Embeds every input into a staged output directory; returns (files embedded, skipped with reasons)."""
    from tqdm.auto import tqdm

    # Everything that can be refused is refused before the first file is read or anything is written.
    check_output_dir(args.output_dir, args.inputs, args.overwrite)
    files, skipped = resolve_inputs(args.inputs)
    model, extractor = load_model(args)
    done = 0
    try:
        with staged_directory(args.output_dir, "embed_audio", args.inputs, args.overwrite) as staging:
            writer = Writer(str(staging), args.format)
            batch: list[tuple[AudioFile, np.ndarray]] = []
            progress = tqdm(total=len(files), desc="embedding", unit="file", disable=args.quiet)

            def flush():
                nonlocal done
                if not batch:
                    return
                inputs = extractor(
                    [audio for _, audio in batch],
                    sampling_rate=extractor.sampling_rate,
                    return_tensors="pt",
                    device=args.device,
                    ambisonics_format=args.ambisonics_format,
                )
                with torch.inference_mode():
                    out = model(**inputs, strategy=args.strategy, layer=args.layer)
                for i, (item, _) in enumerate(batch):
                    tensors = clip_embeddings(out, i, args.timestamps)
                    if tensors is None:
                        skipped.append((item.path, f"non-finite embedding (in {args.dtype}); not written"))
                        continue
                    writer.write(item, tensors)
                    done += 1
                progress.update(len(batch))
                batch.clear()

            for item in files:
                try:
                    audio = read_audio(item.path, extractor.sampling_rate, args.resample, name="")
                    # raises on bad content (short, NaN, huge, 4 channels of unknown convention)
                    extractor([audio], sampling_rate=extractor.sampling_rate, ambisonics_format=args.ambisonics_format)
                except ValueError as error:
                    skipped.append((item.path, str(error)))
                    progress.update(1)
                    continue
                batch.append((item, audio))
                if len(batch) >= args.batch_size:
                    flush()
            flush()
            progress.close()
            if not done:
                raise _NothingEmbedded
            writer.close()
    except _NothingEmbedded:
        pass
    return done, skipped


def run_sharded(args: argparse.Namespace) -> int:
    from embed_corpus import DatasetInputs, FileInputs, device_for_process, embed_corpus, process_position

    rank, world = process_position()
    args.device = device_for_process(args.device)
    try:
        model, extractor = load_model(args)
        # Inputs are resolved before the output directory is made: a mistyped path leaves nothing behind.
        if args.hf_dataset is not None:
            inputs = DatasetInputs(
                args.hf_dataset, args.hf_config, args.hf_split, args.hf_data_files, args.hf_audio_column,
                args.hf_id_column, args.hf_local_paths,
            )  # fmt: skip
            sources = inputs.local_files()
        else:
            files, skipped_inputs = resolve_inputs(args.inputs)
            for path, reason in skipped_inputs:
                print(f"  not an input {printable(path, 500)}: {printable(reason, 500)}")
            if not files:
                print("error: no audio files among the inputs; nothing written.", file=sys.stderr)
                return 1
            inputs, sources = FileInputs(files), args.inputs
        done, skipped, path = embed_corpus(args, model, extractor, inputs, sources)
    except (ValueError, KeyError, OutputDirectoryError) as error:
        print(f"error: {printable(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {printable(f'{error.strerror or error}: {error.filename or args.output_dir}')}", file=sys.stderr)
        return 2
    manifest = path / "manifest.parquet"
    state = (
        f"manifest: {manifest}" if manifest.is_file() else "other processes still running; the last writes the manifest"
    )
    print(f"Process {rank + 1}/{world}: embedded {done}, skipped {skipped} ({state}).")
    if manifest.is_file():  # the run is complete: exit 1 if not one input could be embedded, as a plain run does
        import pyarrow.parquet as pq

        statuses = pq.read_table(manifest, columns=["status"]).column("status").to_pylist()
        return 0 if "ok" in statuses else 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="audio files and/or folders")
    parser.add_argument("--model", required=True, help="a GRAM directory or Hub id")
    parser.add_argument("--output-dir", required=True, help="directory to create (written as a whole)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous output of this command")
    parser.add_argument(
        "--format",
        choices=["npy", "safetensors", "parquet"],
        help="npy (default), safetensors or parquet; sharded runs write parquet parts",
    )
    parser.add_argument("--strategy", choices=POOLING_STRATEGIES, default="raw")
    parser.add_argument("--layer", type=int, default=None, help="embed from this encoder layer (default: last)")
    parser.add_argument("--timestamps", action="store_true", help="also write time-resolved embeddings and times")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--chunk-batch-size",
        type=int,
        help="2-s chunks per encoder call (default: the model's, 32 = ~5 clips of 10 s); on a GPU give about "
        "6 x --batch-size so that a batch of 10-s clips is one call",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--resample", action="store_true", help="resample files not at 32 kHz")
    parser.add_argument(
        "--ambisonics-format",
        choices=sorted(AMBISONICS_FORMATS),
        help="convention of 4-channel files (required for them): ambix (ACN/SN3D, most recordings), fuma, soundspaces",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    corpus = parser.add_argument_group(
        "corpus scale (embed_corpus.py): sharded, resumable, any number of processes; implied under torchrun / "
        "accelerate launch with more than one process, and by --hf-dataset"
    )
    corpus.add_argument("--sharded", action="store_true", help="write parquet parts and a manifest; rerun to resume")
    corpus.add_argument("--part-size", type=int, default=1000, help="inputs per part file (the unit of resumption)")
    corpus.add_argument("--num-workers", type=int, default=2, help="DataLoader workers reading and decoding audio")
    corpus.add_argument("--bucket-batches", type=int, default=8, help="batches sorted by length together")
    corpus.add_argument("--hf-dataset", help="a `datasets` name or builder (e.g. parquet), streamed")
    corpus.add_argument("--hf-config")
    corpus.add_argument("--hf-split", default="train")
    corpus.add_argument("--hf-data-files", nargs="+", help="data files for a builder such as parquet")
    corpus.add_argument("--hf-audio-column", default="audio")
    corpus.add_argument("--hf-id-column", help="column of the records' ids (default: the record's position)")
    corpus.add_argument("--hf-local-paths", action="store_true", help="read records that hold only a local file path")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    for flag, value in (("--part-size", args.part_size), ("--bucket-batches", args.bucket_batches),
                        ("--chunk-batch-size", args.chunk_batch_size or 1)):  # fmt: skip
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be 0 or more, got {args.num_workers}")
    if bool(args.inputs) == bool(args.hf_dataset):
        parser.error("give audio files/folders, or --hf-dataset (not both)")
    try:
        sharded = args.sharded or args.hf_dataset is not None or process_position()[1] > 1
    except ValueError as error:
        parser.error(str(error))
    if sharded:
        if args.format not in (None, "parquet"):
            parser.error("sharded runs write parquet parts; leave out --format or pass --format parquet")
        if args.overwrite:
            parser.error("sharded runs resume an existing output directory; --overwrite does not apply")
        return run_sharded(args)
    args.format = args.format or "npy"
    try:
        done, skipped = embed_files(args)
    except (ValueError, OutputDirectoryError) as error:
        print(f"error: {printable(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {printable(f'{error.strerror or error}: {error.filename or args.output_dir}')}", file=sys.stderr)
        return 2
    where = args.output_dir if done else "nothing written"
    print(f"Embedded {done} file(s) ({where}); skipped {len(skipped)}.")
    for path, reason in skipped:  # file names can hold terminal escape sequences
        print(f"  skipped {printable(path, 500)}: {printable(reason, 500)}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
