"""Data sources for pretraining: local folders (wav/flac/ogg/mp3/npy) and Hugging Face `datasets` streaming,
sharded across DataLoader workers and processes, bad files skipped with a counted warning.

The dataset yields dry material on the CPU (a 10-second source crop, an impulse response, a noise crop and
its impulse response); `collate_scenes` stacks a batch; the scene itself is mixed on the training device
by `gram_training.scenes.SceneBuilder`.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.utils.data import IterableDataset, get_worker_info

import gram_io
from gram_io import AUDIO_EXTENSIONS as GRAM_AUDIO_EXTENSIONS
from gram_io import BadAudioError, check_audio, resample

logger = logging.getLogger(__name__)

# Training sources may also be `.npy` arrays (impulse responses, typically), read without pickle.
AUDIO_EXTENSIONS = (*GRAM_AUDIO_EXTENSIONS, ".npy")


class SkippedFiles:
    """Counts unusable inputs and warns about each with the running total (per worker process)."""

    def __init__(self):
        self.counts: Counter[str] = Counter()

    def skip(self, kind: str, name: str, error: Exception) -> None:
        self.counts[kind] += 1
        logger.warning(
            "Skipped %s %s (%s); %d %s input(s) skipped so far in this worker.",
            kind,
            name,
            error,
            self.counts[kind],
            kind,
        )


def find_audio_files(folder: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """`gram_io.find_audio_files`, for a source folder that must exist and hold audio."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Not a folder: {root}")
    files = gram_io.find_audio_files(root, extensions)
    if not files:
        raise ValueError(f"No audio files ({', '.join(extensions)}) under {root}.")
    return files


def read_audio(
    path: str | os.PathLike, sampling_rate: int, sets: bool = False, channels: int | None = None
) -> np.ndarray:
    """`(channels, samples)` float32 at `sampling_rate` (`gram_io.read_audio`; errors are `BadAudioError`s)."""
    return gram_io.read_audio(path, sampling_rate, sets=sets, channels=channels)


def decode_record(
    value, sampling_rate: int, name: str, local_paths: bool = False, channels: int | None = None
) -> np.ndarray:
    """Audio of one `datasets` record: `{"bytes", "path"}` (an `Audio(decode=False)` column) or
    `{"array", "sampling_rate"}`. A record holding only a local `path` is read only with `local_paths`
    (a dataset from the Hub must not make the trainer open arbitrary files of this machine). Every problem
    (undecodable bytes, a missing or zero rate, ragged arrays, ...) is a `BadAudioError`, so the record is
    skipped and counted like a bad file."""
    try:
        if isinstance(value, dict) and value.get("bytes") is not None:
            try:
                audio, rate = soundfile.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
            except Exception as error:
                raise BadAudioError(f"{name}: undecodable audio bytes ({error})") from error
            return resample(check_audio(np.ascontiguousarray(audio.T[:channels]), name), rate, sampling_rate, name)
        if isinstance(value, dict) and value.get("path") is not None:
            if not local_paths:
                raise BadAudioError(
                    f"{name}: the record holds only a local path ({str(value['path'])[:200]}); "
                    "pass --hf_local_paths true to read such records"
                )
            return read_audio(value["path"], sampling_rate, channels=channels)
        if isinstance(value, dict) and "array" in value and "sampling_rate" in value:
            audio = np.asarray(value["array"])
            audio = check_audio(audio[:channels] if audio.ndim == 2 else audio, name)
            return resample(audio, value["sampling_rate"], sampling_rate, name)
    except BadAudioError:
        raise
    except Exception as error:  # ragged arrays, odd types: a bad record, not a crash of the run
        raise BadAudioError(f"{name}: unusable record ({type(error).__name__}: {error})") from error
    raise BadAudioError(
        f"{name}: expected an audio record (bytes/path or array/sampling_rate), got {type(value).__name__}"
    )


def shard_position() -> tuple[int, int]:
    """`(index, count)` of this reader among all DataLoader workers of all processes."""
    worker = get_worker_info()
    worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank * num_workers + worker_id, world * num_workers


class FolderSource:
    """Audio files of a local folder, each shard reading its own files, reshuffled every epoch."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.files = find_audio_files(folder)

    def records(self, shard: int, num_shards: int, rng: np.random.Generator, sampling_rate: int, skipped: SkippedFiles):
        own = self.files[shard::num_shards]
        if not own:
            raise ValueError(
                f"{self.folder} has {len(self.files)} files, fewer than the {num_shards} data shards "
                "(processes x DataLoader workers)."
            )
        while True:
            usable = 0
            for index in rng.permutation(len(own)):
                try:  # only the first channel is used: the others are not resampled
                    audio = read_audio(own[index], sampling_rate, channels=1)
                except BadAudioError as error:
                    skipped.skip("audio", str(own[index]), error)
                    continue
                usable += 1
                yield audio
            if usable == 0:
                raise ValueError(f"None of this shard's {len(own)} files under {self.folder} is readable audio.")


class HubSource:
    """A Hugging Face `datasets` audio column, streamed. The column is read undecoded and decoded here with
    soundfile (no torchcodec/FFmpeg needed); each shard gets its part via `split_dataset_by_node`."""

    def __init__(
        self,
        path: str,
        split: str = "train",
        column: str = "audio",
        name: str | None = None,
        data_files=None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        local_paths: bool = False,
    ):
        self.path, self.split, self.column, self.name = path, split, column, name
        self.data_files, self.shuffle_buffer, self.seed = data_files, shuffle_buffer, seed
        self.local_paths = local_paths

    def _dataset(self):
        return open_audio_stream(self.path, self.name, self.split, self.data_files, self.column)

    def records(self, shard: int, num_shards: int, rng: np.random.Generator, sampling_rate: int, skipped: SkippedFiles):
        from datasets.distributed import split_dataset_by_node

        dataset = self._dataset()
        if self.shuffle_buffer > 1:
            # The same seed in every shard: when the files do not divide among the shards, each takes every
            # n-th record of one common order, which only partitions the data if that order is shared.
            dataset = dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        dataset = split_dataset_by_node(dataset, rank=shard, world_size=num_shards)
        epoch = 0
        while True:
            dataset.set_epoch(epoch)  # a new (shared) order every epoch
            stream = dataset
            usable = 0
            for position, record in enumerate(_iterate_plain(stream)):
                if self.column not in record:
                    raise KeyError(f"Column {self.column!r} not in the dataset (columns: {', '.join(record)}).")
                try:
                    audio = decode_record(
                        record[self.column], sampling_rate, f"{self.path}[{position}]", self.local_paths, channels=1
                    )
                except BadAudioError as error:
                    skipped.skip("audio", f"record {position} of shard {shard}", error)
                    continue
                usable += 1
                yield audio
            if usable == 0:
                raise ValueError(f"Shard {shard}/{num_shards} of {self.path} has no readable audio.")
            epoch += 1


def open_audio_stream(path, name, split, data_files, column):
    """A `datasets` dataset streamed with its audio column undecoded (`{"bytes", "path"}`), for `decode_record`."""
    import datasets

    dataset = datasets.load_dataset(path, name, split=split, data_files=data_files, streaming=True)
    features = dataset.features or {}
    if column in features and isinstance(features[column], datasets.Audio):
        dataset = dataset.cast_column(column, datasets.Audio(decode=False))
    return dataset


def _iterate_plain(dataset):
    """Records of a streaming dataset without its own DataLoader-worker split (`IterableDataset.iter` does not
    split; `__iter__` would, inside a worker, and our shards already account for workers)."""
    for batch in dataset.iter(batch_size=1):
        yield {key: values[0] for key, values in batch.items()}


def _crop_or_pad(audio: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random `length`-sample window of `(C, S)` audio, zero-padded at the end when shorter."""
    if audio.shape[-1] > length:
        start = int(rng.integers(0, audio.shape[-1] - length + 1))
        return audio[..., start : start + length]
    return np.pad(audio, ((0, 0), (0, length - audio.shape[-1])))


def _place_noise(noise: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """A `length`-sample noise track and where it plays `(start, active_length)`: a random window of longer
    noise, or shorter noise at a random start in silence (as the original)."""
    if noise.shape[-1] >= length:
        return _crop_or_pad(noise[None], length, rng)[0], 0, length
    start = int(rng.integers(0, length - noise.shape[-1] + 1))
    track = np.zeros(length, np.float32)
    track[start : start + noise.shape[-1]] = noise
    return track, start, noise.shape[-1]


class ImpulseResponseBank:
    """Multi-channel impulse responses of a folder (`(channels, taps)` .npy, or multi-channel wav/flac),
    read on first use and kept; files with the wrong channel count are skipped with a warning. With
    `several=True` (noise), a `.npy` may also hold `(sources, channels, taps)`: the impulse responses of
    several noise positions of one room, whose contributions are summed; draws are then `(K, C, taps)`."""

    def __init__(
        self,
        folder: str | os.PathLike,
        channels: int,
        sampling_rate: int,
        several: bool = False,
        conversion: np.ndarray | None = None,
    ):
        self.folder, self.channels, self.sampling_rate = Path(folder), channels, sampling_rate
        self.several = several
        self.conversion = conversion  # (channels, channels) applied to every response (ambisonic conventions)
        self.files = find_audio_files(folder)
        self._cache: dict[int, np.ndarray | None] = {}

    def _read(self, path: Path) -> np.ndarray:
        rirs = read_audio(path, self.sampling_rate, sets=self.several)
        if rirs.ndim == 2:
            rirs = rirs[None]
        if rirs.shape[1] != self.channels:
            raise BadAudioError(f"expected {self.channels} channels, got {rirs.shape[1]}")
        if self.conversion is not None:
            rirs = np.einsum("oc,kct->kot", self.conversion, rirs).astype(np.float32)
        return rirs if self.several else rirs[0]

    def draw(self, rng: np.random.Generator, skipped: SkippedFiles) -> np.ndarray:
        for _ in range(100 * len(self.files)):
            index = int(rng.integers(len(self.files)))
            if index not in self._cache:
                try:
                    self._cache[index] = self._read(self.files[index])
                except BadAudioError as error:
                    skipped.skip("impulse response", str(self.files[index]), error)
                    self._cache[index] = None
            if self._cache[index] is not None:
                return self._cache[index]
        raise ValueError(f"No usable {self.channels}-channel impulse response under {self.folder}.")


class SceneDataset(IterableDataset):
    """Endless stream of dry scene material, one dict per clip:

    - `source` `(clip_samples,)`: a random window of a source clip's first channel (zero-padded when shorter)
      and `source_length` (its real samples),
    - `rir` `(channels, taps)`: a random impulse response,
    - when a noise folder is given: `noise` `(clip_samples,)` (a noise clip's first channel: a random window,
      or the whole clip at a random start in silence when shorter), `noise_active` `(2,)` (its start and
      length) and `noise_rir` `(sources, channels, taps)`.

    Each DataLoader worker of each process reads its own shard of the sources (`shard_position`), with its
    own random stream, so no clip is read twice per epoch across the job.
    """

    def __init__(
        self,
        source,
        rir_folder,
        channels: int,
        noise_folder=None,
        noise_rir_folder=None,
        sampling_rate: int = 32000,
        clip_seconds: float = 10.0,
        seed: int = 0,
        rir_conversion: np.ndarray | None = None,
    ):
        if channels not in (1, 2, 4):
            raise ValueError(f"channels must be 1, 2 or 4, got {channels}.")
        self.source = FolderSource(source) if isinstance(source, (str, os.PathLike)) else source
        # A linear map of the channels commutes with the convolution: converting the responses converts the scenes.
        self.rirs = ImpulseResponseBank(rir_folder, channels, sampling_rate, conversion=rir_conversion)
        self.noises = FolderSource(noise_folder) if noise_folder is not None else None
        self.noise_rirs = ImpulseResponseBank(
            noise_rir_folder if noise_rir_folder is not None else rir_folder,
            channels,
            sampling_rate,
            several=True,
            conversion=rir_conversion,
        )
        self.sampling_rate, self.seed = sampling_rate, seed
        self.clip_samples = int(round(clip_seconds * sampling_rate))
        self.skipped = SkippedFiles()

    def __iter__(self):
        shard, num_shards = shard_position()
        logger.info("Reading source shard %d of %d.", shard, num_shards)
        rng = np.random.default_rng([self.seed, shard])
        sources = self.source.records(shard, num_shards, rng, self.sampling_rate, self.skipped)
        noises = None
        if self.noises is not None:  # noise files are shared by all shards: a different random order in each
            noises = self.noises.records(
                0, 1, np.random.default_rng([self.seed, shard, 1]), self.sampling_rate, self.skipped
            )
        for audio in sources:
            example = {
                "source": torch.from_numpy(_crop_or_pad(audio[:1], self.clip_samples, rng)[0]),
                "source_length": torch.tensor(min(audio.shape[-1], self.clip_samples)),
                "rir": torch.from_numpy(self.rirs.draw(rng, self.skipped)),
            }
            if noises is not None:
                track, start, active = _place_noise(next(noises)[0], self.clip_samples, rng)
                example["noise"] = torch.from_numpy(track)
                example["noise_active"] = torch.tensor([start, active])
                example["noise_rir"] = torch.from_numpy(self.noise_rirs.draw(rng, self.skipped))
            yield example


def collate_scenes(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a batch; impulse responses are zero-padded to the longest of the batch (and noise impulse
    response sets to the largest, with silent extra sources)."""
    if not examples:
        raise ValueError("Empty batch.")
    batch = {}
    for key in examples[0]:
        tensors = [example[key] for example in examples]
        if key.endswith("rir"):
            taps = max(t.shape[-1] for t in tensors)
            pad = [0, 0] * (tensors[0].ndim - 1)
            if tensors[0].ndim == 3:
                sources = max(t.shape[0] for t in tensors)
                tensors = [
                    torch.nn.functional.pad(t, (0, taps - t.shape[-1], 0, 0, 0, sources - t.shape[0])) for t in tensors
                ]
            else:
                tensors = [torch.nn.functional.pad(t, (0, taps - t.shape[-1], *pad)) for t in tensors]
        batch[key] = torch.stack(tensors)
    return batch
