"""Corpus-scale embedding: sharded, resumable, on any number of processes and machines.

`embed_audio.py` switches to this mode with `--sharded`, with `--hf-dataset`, and by itself when started by
`torchrun` or `accelerate launch` with more than one process (both set RANK / WORLD_SIZE):

    torchrun --nproc_per_node 8 -m embed_audio corpus/ --model gram --output-dir out --sharded
    torchrun --nnodes 4 --node_rank $N --master_addr $HEAD --nproc_per_node 8 -m embed_audio ...   (shared disk)
    python -m embed_audio --hf-dataset parquet --hf-data-files 'audio/*.parquet' --hf-id-column id \
        --model gram --output-dir out

How the work is split: the inputs get one global order (the sorted output names of files and folders, or
the dataset's record order) and are cut into parts of `--part-size` inputs. Part k belongs to process
k mod WORLD_SIZE, and within a process to one DataLoader worker (reading and decoding run in the workers,
overlapped with the model). Each part is written as one parquet file, `parts/part-<k>.parquet`, under a
temporary name and renamed into place when complete, so a part file that exists is complete; a rerun (after
an interruption, or with another number of processes) skips complete parts and does the rest. The process
that completes the last part writes `manifest.parquet`: every input once, with its id, the part file and row
of its embedding, its status ("ok" or "skipped") and the reason of a skip. No process group is needed: the
processes coordinate through the output directory (which must be shared between machines).

Throughput: decoded clips are buffered and sorted by length before batching (`--bucket-batches` batches at a
time), so that batches hold clips of similar length; padding is masked, so each clip embeds exactly as alone
(batch invariance, tested).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gram_io import OutputDirectoryError, check_output_dir, current_umask, printable, read_audio

RUN_FILE = ".gram-embedding-run.json"
PARTS = "parts"
MANIFEST = "manifest.parquet"
STREAM_LENGTH = "stream-length.json"


def process_position() -> tuple[int, int]:
    """`(rank, world_size)` from the launcher's environment (torchrun and accelerate set RANK/WORLD_SIZE)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"Inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}.")
    return rank, world


def device_for_process(device: str) -> str:
    """`cuda` means this process's own GPU under a launcher (LOCAL_RANK), not every process on GPU 0."""
    local_rank = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local_rank is not None:
        return f"cuda:{int(local_rank)}"
    return device


def replace_atomically(target: Path, write) -> None:
    """`write(temporary_path)` then rename onto `target`: readers see the old file or the new one, never half.
    The temporary name is unique (mkstemp), also across machines sharing the directory."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(descriptor)
    try:
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp's 0600 would not follow the user's umask
        write(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def part_name(part: int) -> str:
    return f"part-{part:07d}.parquet"


# ------------------------------------------------------------------------------------------------------
# Inputs: files (known count) or a streamed `datasets` dataset (count known once streamed)
# ------------------------------------------------------------------------------------------------------
@dataclass
class Item:
    index: int  # position in the global order
    id: str
    input: str  # the file's path, or "<dataset>[<index>]"


class FileInputs:
    def __init__(self, files):
        # The output name is the global order: the same on every process, whatever the listing order.
        self.files = sorted(files, key=lambda f: f.relative)
        self.count = len(self.files)

    def items(self) -> Iterator[tuple[Item, object]]:
        return self.items_in(0, self.count)

    def items_in(self, start: int, stop: int) -> Iterator[tuple[Item, object]]:
        """The inputs at positions [start, stop) only (a reader of some parts touches nothing else)."""
        for index in range(start, min(stop, self.count)):
            file = self.files[index]
            yield Item(index, file.relative, file.path), file.path

    def describe(self) -> dict:
        return {"files": [f.relative for f in self.files]}


class DatasetInputs:
    """A `datasets` dataset. Local parquet files (`--hf-dataset parquet --hf-data-files ...`) are read directly
    with pyarrow: their row counts come from the files' metadata, and each reader reads only the row groups of
    its own parts. Anything else (a Hub dataset by name, other builders) is streamed with `datasets`: then every
    reader streams the whole dataset (records of other parts are passed over undecoded)."""

    def __init__(self, path, name, split, data_files, audio_column, id_column, local_paths):
        self.path, self.name, self.split, self.data_files = path, name, split, data_files
        self.audio_column, self.id_column, self.local_paths = audio_column, id_column, local_paths
        self.count = None  # streams: known once streamed (STREAM_LENGTH)
        self.parquet_files: list[str] = []
        files = self.local_files()
        if path == "parquet" and files and all(f.lower().endswith(".parquet") for f in files):
            import pyarrow.parquet as pq

            self.parquet_files = files
            self.rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
            self.count = sum(self.rows)

    def items_in(self, start: int, stop: int) -> Iterator[tuple[Item, object]]:
        """Local parquet: the records at positions [start, stop), reading only the row groups that hold them."""
        import pyarrow.parquet as pq

        offset = 0
        for file, rows in zip(self.parquet_files, self.rows):
            low, high = max(start, offset), min(stop, offset + rows)
            if low < high:
                reader = pq.ParquetFile(file)
                columns = [self.audio_column] + ([self.id_column] if self.id_column is not None else [])
                missing = [c for c in columns if c not in reader.schema_arrow.names]
                if missing:
                    raise KeyError(
                        f"Column {missing[0]!r} not in {file} (columns: {', '.join(reader.schema_arrow.names)})."
                    )
                group_start = offset
                for group in range(reader.num_row_groups):
                    group_rows = reader.metadata.row_group(group).num_rows
                    first, last = max(low, group_start), min(high, group_start + group_rows)
                    if first < last:
                        table = reader.read_row_group(group, columns=columns).slice(first - group_start, last - first)
                        for position, record in enumerate(table.to_pylist(), start=first):
                            item_id = str(record[self.id_column]) if self.id_column is not None else str(position)
                            yield Item(position, item_id, f"{self.path}[{position}]"), record[self.audio_column]
                    group_start += group_rows
            offset += rows

    def items(self) -> Iterator[tuple[Item, object]]:
        from gram_training.data import _iterate_plain, open_audio_stream

        dataset = open_audio_stream(self.path, self.name, self.split, self.data_files, self.audio_column)
        for index, record in enumerate(_iterate_plain(dataset)):
            if self.audio_column not in record:
                raise KeyError(f"Column {self.audio_column!r} not in the dataset (columns: {', '.join(record)}).")
            if self.id_column is not None and self.id_column not in record:
                raise KeyError(f"Column {self.id_column!r} not in the dataset (columns: {', '.join(record)}).")
            item_id = str(record[self.id_column]) if self.id_column is not None else str(index)
            yield Item(index, item_id, f"{self.path}[{index}]"), record[self.audio_column]

    def local_files(self) -> list[str]:
        """The local data files the patterns match (sorted); raises if a pattern matches none."""
        found = []
        for pattern in self.data_files or []:
            matches = sorted(glob.glob(pattern))
            if not matches and not _is_remote(pattern):
                raise ValueError(f"--hf-data-files {pattern!r} matches no file.")
            found += matches
        return found

    def describe(self) -> dict:
        # The files themselves (size, modification time), not only their patterns: a resumed run must read the
        # same data. A Hub dataset by name is identified by its name, config and split only.
        files = [
            {"file": os.path.realpath(f), "size": os.stat(f).st_size, "mtime_ns": os.stat(f).st_mtime_ns}
            for f in self.local_files()
        ]
        return {
            "files": files,
            "dataset": self.path,
            "config": self.name,
            "split": self.split,
            "data_files": self.data_files,
            "audio_column": self.audio_column,
            "id_column": self.id_column,
        }


def _is_remote(pattern: str) -> bool:
    return "://" in pattern or pattern.startswith("hf://")


# ------------------------------------------------------------------------------------------------------
# Reading and decoding in DataLoader workers
# ------------------------------------------------------------------------------------------------------
class DecodedParts(IterableDataset):
    """Streams the inputs in their global order. For each incomplete part this process and worker own, it
    yields the part's items decoded (`audio`) or failed (`error`), then `{"end": part, "count": n}`; records
    of other parts are passed over undecoded. Last, `{"total": N}`: the number of inputs seen."""

    def __init__(self, inputs, path: Path, part_size: int, rank: int, world: int, sampling_rate: int, resample: bool,
                 local_paths: bool):  # fmt: skip
        self.inputs, self.path, self.part_size, self.rank, self.world = inputs, path, part_size, rank, world
        self.sampling_rate, self.resample, self.local_paths = sampling_rate, resample, local_paths

    def __iter__(self):
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        count = self.inputs.count
        if count is not None and (not isinstance(self.inputs, DatasetInputs) or self.inputs.parquet_files):
            yield from self._own_parts(worker_id, workers, count)  # read only what this reader owns
            return
        current, taken, take, total = None, 0, False, 0
        for item, source in self.inputs.items():
            total = item.index + 1
            part = item.index // self.part_size
            if part != current:
                if take:
                    yield {"end": current, "count": taken}
                current, taken = part, 0
                owned = part % self.world == self.rank and (part // self.world) % workers == worker_id
                if owned:
                    remove_stale_temporaries(self.path, part)
                take = owned and not complete_part(self.path, part, self.part_size, self.inputs.count)
            if not take:
                continue
            taken += 1
            yield self._decoded(item, part, source)
        if take:
            yield {"end": current, "count": taken}
        yield {"total": total}

    def _own_parts(self, worker_id: int, workers: int, count: int):
        for part in range(self.rank, -(-count // self.part_size), self.world):
            if (part // self.world) % workers != worker_id:
                continue
            remove_stale_temporaries(self.path, part)
            if complete_part(self.path, part, self.part_size, count):
                continue
            taken = 0
            for item, source in self.inputs.items_in(part * self.part_size, (part + 1) * self.part_size):
                taken += 1
                yield self._decoded(item, part, source)
            yield {"end": part, "count": taken}
        yield {"total": count}

    def _decoded(self, item: Item, part: int, source) -> dict:
        try:
            return {"item": item, "part": part, "audio": self._decode(source, item), "error": None}
        except Exception as error:  # an unusable input is recorded in the manifest, not a crash
            return {"item": item, "part": part, "audio": None, "error": str(error) or type(error).__name__}

    def _decode(self, source, item: Item) -> np.ndarray:
        if isinstance(source, str):
            return read_audio(source, self.sampling_rate, self.resample, name="")
        from gram_training.data import decode_record

        return decode_record(source, self.sampling_rate, item.input, self.local_paths)


def remove_stale_temporaries(path: Path, part: int) -> None:
    """Temporary files of `part` left by an interrupted run: this run's own files (their names are its own), and
    only the process that owns the part in this run writes them."""
    for stale in glob.glob(glob.escape(str(path / PARTS / f".{part_name(part)}.tmp-")) + "*"):
        os.remove(stale)


# ------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------
def run_settings(args, inputs) -> dict:
    """What determines the embeddings and the part layout: a rerun must match it to resume."""
    model = args.model if not os.path.exists(args.model) else os.path.realpath(args.model)
    return {
        "tool": "embed_audio --sharded",
        "model": model,
        "strategy": args.strategy,
        "layer": args.layer,
        "timestamps": args.timestamps,
        "dtype": args.dtype,
        "resample": args.resample,
        "ambisonics_format": args.ambisonics_format,
        "part_size": args.part_size,
        "inputs": inputs.describe(),
    }


def prepare_output(output_dir: str, sources: list[str], settings: dict, rank: int, wait_s: float = 300.0) -> Path:
    """Process 0 creates the run directory (checked like every output of the package) and its settings file;
    the others wait for that file. A directory that already holds this run's settings is resumed; other
    settings are refused."""
    path = Path(os.path.abspath(output_dir))
    run_file = path / RUN_FILE
    if rank == 0 and not run_file.is_file():
        check_output_dir(path, sources, overwrite=False, overwrite_flag=None)
        (path / PARTS).mkdir(parents=True, exist_ok=True)
        text = json.dumps(settings, indent=1, sort_keys=True)
        replace_atomically(run_file, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    deadline = time.monotonic() + wait_s
    while not run_file.is_file():
        if time.monotonic() > deadline:
            raise OutputDirectoryError(f"Process 0 did not create {run_file} within {wait_s:.0f} s.")
        time.sleep(0.2)
    try:
        existing = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OutputDirectoryError(f"{run_file} is unreadable ({error}); choose a new output directory.") from None
    if existing != json.loads(json.dumps(settings)):
        different = sorted(k for k in set(existing) | set(settings) if existing.get(k) != settings.get(k))
        raise OutputDirectoryError(
            f"{path} holds a run with other settings ({', '.join(different)}); resume it with the same command "
            "or choose a new output directory."
        )
    return path


def complete_part(path: Path, part: int, part_size: int, count: int | None) -> bool:
    """True when the part's file exists and holds the part's inputs (a contiguous index range)."""
    target = path / PARTS / part_name(part)
    if not target.is_file():
        return False
    try:
        import pyarrow.parquet as pq

        index = pq.read_table(target, columns=["index"]).column("index").to_pylist()
    except Exception:  # unreadable: redone (it is this run's own file)
        return False
    start = part * part_size
    if index != list(range(start, start + len(index))) or not 0 < len(index) <= part_size:
        return False
    return count is None or len(index) == min(part_size, count - start)


def part_schema(timestamps: bool):
    """One schema for every part (a part whose inputs were all skipped has the same column types)."""
    import pyarrow as pa

    fields = [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("input", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("scene", pa.list_(pa.float32())),
    ]
    if timestamps:
        fields += [("steps", pa.list_(pa.list_(pa.float32()))), ("timestamps", pa.list_(pa.float32()))]
    return pa.schema(fields)


def write_part(path: Path, part: int, rows: list[dict], rank: int, timestamps: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda row: row["index"])
    schema = part_schema(timestamps)
    columns = {}
    for field in schema:
        values = [row[field.name] for row in rows]
        if field.name in ("steps",):  # (steps, dim) float32 arrays, kept as numpy until here (memory)
            values = [None if v is None else list(v) for v in values]
        columns[field.name] = pa.array(values, type=field.type)
    table = pa.Table.from_pydict(columns, schema=schema)
    # The commit: a part file that exists is complete.
    replace_atomically(path / PARTS / part_name(part), lambda temporary: pq.write_table(table, temporary))


def write_manifest_if_complete(path: Path, part_size: int, count: int | None) -> bool:
    """Writes manifest.parquet when every part is complete; returns whether it did."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if count is None:
        record = path / STREAM_LENGTH
        if not record.is_file():
            return False
        count = json.loads(record.read_text())["count"]
    parts = (count + part_size - 1) // part_size
    if not all(complete_part(path, part, part_size, count) for part in range(parts)):
        return False
    columns = ["index", "id", "input", "status", "error"]
    tables = []
    for part in range(parts):
        table = pq.read_table(path / PARTS / part_name(part), columns=columns)
        table = table.append_column("part", pa.array([f"{PARTS}/{part_name(part)}"] * table.num_rows))
        tables.append(table.append_column("row", pa.array(range(table.num_rows), pa.int64())))
    schema = pa.schema([(c, pa.int64() if c in ("index", "row") else pa.string()) for c in [*columns, "part", "row"]])
    manifest = pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
    replace_atomically(path / MANIFEST, lambda temporary: pq.write_table(manifest, temporary))
    return True


def embed_corpus(args, model, extractor, inputs, sources: list[str]) -> tuple[int, int, Path]:
    """Embeds this process's incomplete parts; returns (inputs embedded, inputs skipped, output path)."""
    from tqdm.auto import tqdm

    rank, world = process_position()
    path = prepare_output(args.output_dir, sources, run_settings(args, inputs), rank)
    count = inputs.count
    if count is None and (path / STREAM_LENGTH).is_file():
        count = json.loads((path / STREAM_LENGTH).read_text())["count"]
    dataset = DecodedParts(
        inputs, path, args.part_size, rank, world, extractor.sampling_rate, args.resample, args.hf_local_paths
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=args.num_workers,
        prefetch_factor=8 if args.num_workers else None,
        collate_fn=_as_is,
    )
    results: dict[int, list[dict]] = defaultdict(list)
    expected: dict[int, int] = {}
    pending: list[dict] = []
    done = skipped = 0
    progress = tqdm(desc=f"embedding (process {rank + 1}/{world})", unit="clip", disable=args.quiet)

    def finish_ready():
        for part in [p for p, n in expected.items() if len(results[p]) == n]:
            write_part(path, part, results.pop(part), rank, args.timestamps)
            del expected[part]

    def run_pending():
        nonlocal done, skipped
        pending.sort(key=lambda message: message["audio"].shape[-1])  # similar lengths batch together
        for start in range(0, len(pending), args.batch_size):
            batch = pending[start : start + args.batch_size]
            for message, row in zip(batch, embed_batch(args, model, extractor, batch)):
                results[message["part"]].append(row)
                done += row["status"] == "ok"
                skipped += row["status"] != "ok"
            progress.update(len(batch))
        pending.clear()
        finish_ready()

    for message in loader:
        if "total" in message:
            if count is None and message["total"] > 0:
                count = message["total"]
                text = json.dumps({"count": count})
                replace_atomically(path / STREAM_LENGTH, lambda temporary, text=text: temporary.write_text(text))
        elif "end" in message:
            expected[message["end"]] = message["count"]
        elif message["error"] is not None:
            results[message["part"]].append(row_of(message["item"], "skipped", message["error"], args))
            skipped += 1
            progress.update(1)
        else:
            pending.append(message)
            if len(pending) >= args.batch_size * args.bucket_batches:
                run_pending()
        finish_ready()
    run_pending()
    progress.close()
    if expected:
        raise RuntimeError(f"Parts {sorted(expected)} did not receive all their inputs.")
    write_manifest_if_complete(path, args.part_size, count)
    return done, skipped, path


def _as_is(message):
    return message  # numpy audio stays numpy (the default would make tensors of it)


def row_of(item: Item, status: str, error: str | None, args, tensors: dict | None = None) -> dict:
    row = {"index": item.index, "id": item.id, "input": item.input, "status": status, "error": error}
    # numpy until the part is written: Python floats would take 8x the memory of float32 arrays
    row["scene"] = None if tensors is None else tensors["scene"]
    if args.timestamps:
        row["steps"] = None if tensors is None else tensors["steps"]
        row["timestamps"] = None if tensors is None else tensors["timestamps"]
    return row


def embed_batch(args, model, extractor, batch: list[dict]) -> list[dict]:
    """One row per clip; a clip the extractor refuses (too short, 4 channels of unknown convention, ...) is
    skipped on its own, the rest of its batch is embedded."""
    try:
        inputs = extractor(
            [message["audio"] for message in batch],
            sampling_rate=extractor.sampling_rate,
            return_tensors="pt",
            device=args.device,
            ambisonics_format=args.ambisonics_format,
        )
    except ValueError as error:
        if len(batch) > 1:
            return [row for message in batch for row in embed_batch(args, model, extractor, [message])]
        return [row_of(batch[0]["item"], "skipped", printable(error, 500), args)]
    with torch.inference_mode():
        out = model(**inputs, strategy=args.strategy, layer=args.layer)
    rows = []
    for i, message in enumerate(batch):
        tensors = clip_embeddings(out, i, args.timestamps)
        if tensors is not None:
            rows.append(row_of(message["item"], "ok", None, args, tensors))
        else:
            rows.append(row_of(message["item"], "skipped", f"non-finite embedding (in {args.dtype})", args))
    return rows


def clip_embeddings(out, index: int, timestamps: bool) -> dict[str, np.ndarray] | None:
    """Clip `index` of a model output as float32 numpy: "scene", and with `timestamps` its real "steps" and
    their "timestamps" (ms); None when any value is not finite (never written)."""
    tensors = {"scene": out.pooler_output[index].float().cpu().numpy()}
    if timestamps:
        steps = int(out.embedding_mask[index].sum())
        tensors["steps"] = out.last_hidden_state[index, :steps].float().cpu().numpy()
        tensors["timestamps"] = out.timestamps[:steps].float().cpu().numpy()
    return tensors if all(np.isfinite(value).all() for value in tensors.values()) else None
