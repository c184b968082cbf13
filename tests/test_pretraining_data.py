"""Pretraining data sources: reading, bad-file skipping, and sharding over workers and processes."""

import io
import logging

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from gram_training import data
from gram_training.data import (
    BadAudioError,
    HubSource,
    SceneDataset,
    SkippedFiles,
    collate_scenes,
    find_audio_files,
    read_audio,
)


def _write_tagged_sources(folder, count, seconds=0.5, rate=32000):
    """Files whose constant value tags them: file i holds (i + 1) / 100 everywhere."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        soundfile.write(
            folder / f"clip{i:02d}.wav", np.full(int(seconds * rate), (i + 1) / 100, np.float32), rate, subtype="FLOAT"
        )
    return folder


def _write_rirs(folder, count=3, channels=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rir = np.zeros((channels, 64), np.float32)
        rir[:, i] = 1.0
        np.save(folder / f"rir{i}.npy", rir)
    return folder


def _tag(example):
    return int(round(float(example["source"].max()) * 100)) - 1


def test_read_audio_formats_and_resampling(tmp_path):
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    soundfile.write(tmp_path / "a.flac", np.stack([tone, tone]).T, 16000)
    np.save(tmp_path / "b.npy", np.stack([tone, -tone]))
    flac = read_audio(tmp_path / "a.flac", 32000)
    assert flac.shape == (2, 32000)
    # Resampled 440 Hz tone: its spectrum peaks at 440 Hz at the new rate.
    spectrum = np.abs(np.fft.rfft(flac[0]))
    assert abs(np.argmax(spectrum) * 32000 / 32000 - 440) <= 1
    assert np.array_equal(read_audio(tmp_path / "b.npy", 32000), np.stack([tone, -tone]))


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("broken.wav", b"RIFF....WAVEfmt garbage", "unreadable"),
        ("object.npy", None, "unreadable"),
        ("nan.npy", np.array([0.0, np.nan], np.float32), "NaN"),
        ("ints.npy", np.array([1, 2, 3], np.int64), "floating-point"),
        ("cube.npy", np.zeros((2, 2, 2), np.float32), "shape"),
        # finite in float64/longdouble, Inf once cast to float32: checked after the cast
        ("big64.npy", np.array([0.0, 1e39, 0.0]), "NaN or Inf \\(in float32\\)"),
        ("longdouble.npy", np.array([0.0, 1e39], np.longdouble), "NaN or Inf \\(in float32\\)"),
        ("loud.npy", np.array([0.0, 1e30], np.float32), "not audio"),
    ],
)
def test_bad_files_raise_bad_audio_error(tmp_path, name, content, message):
    path = tmp_path / name
    if name == "object.npy":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # must not be unpickled
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(BadAudioError, match=message):
        read_audio(path, 32000)


def test_find_audio_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_audio_files(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="No audio files"):
        find_audio_files(tmp_path)


def test_bad_files_are_skipped_with_a_counted_warning(tmp_path, caplog):
    sources = _write_tagged_sources(tmp_path / "sources", 3)
    (sources / "corrupt.wav").write_bytes(b"not audio at all")
    rirs = _write_rirs(tmp_path / "rirs")
    np.save(rirs / "mono.npy", np.ones((1, 8), np.float32))  # wrong channel count for binaural
    dataset = SceneDataset(sources, rirs, channels=2, clip_seconds=1.0)
    with caplog.at_level(logging.WARNING, logger="gram_training.data"):
        examples = [example for _, example in zip(range(12), dataset)]
    assert sorted({_tag(e) for e in examples}) == [0, 1, 2]
    assert all(e["source"].shape == (32000,) and e["rir"].shape == (2, 64) for e in examples)
    assert dataset.skipped.counts["audio"] >= 1 and "corrupt.wav" in caplog.text and "skipped so far" in caplog.text


def test_unusable_folders_stop_with_a_clear_error(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "a.wav").write_bytes(b"junk")
    rirs = _write_rirs(tmp_path / "rirs")
    with pytest.raises(ValueError, match="None of this shard"):
        next(iter(SceneDataset(sources, rirs, channels=2)))
    good = _write_tagged_sources(tmp_path / "good", 2)
    with pytest.raises(ValueError, match="No usable 4-channel impulse response"):
        next(iter(SceneDataset(good, rirs, channels=4)))


def test_workers_and_processes_read_disjoint_shards_covering_all_files(tmp_path, monkeypatch):
    sources = _write_tagged_sources(tmp_path / "sources", 12)
    rirs = _write_rirs(tmp_path / "rirs")
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = DataLoader(
            SceneDataset(sources, rirs, channels=2, clip_seconds=0.25),
            batch_size=1,
            num_workers=2,
            collate_fn=collate_scenes,
        )
        # Workers alternate batches: the first 6 are 3 from each worker's shard of 3 files.
        tags = [_tag({"source": batch["source"][0]}) for _, batch in zip(range(6), loader)]
        assert len(set(tags)) == 6
        seen.append(set(tags))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(12))


def test_more_shards_than_files_is_a_clear_error(tmp_path, monkeypatch):
    sources = _write_tagged_sources(tmp_path / "sources", 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="fewer than the 2 data shards"):
        next(iter(SceneDataset(sources, _write_rirs(tmp_path / "rirs"), channels=2)))


def test_noise_and_collation(tmp_path):
    sources = _write_tagged_sources(tmp_path / "sources", 2, seconds=1.5)
    noise = _write_tagged_sources(tmp_path / "noise", 2, seconds=0.3)
    rirs = _write_rirs(tmp_path / "rirs")
    np.save(rirs / "long.npy", np.ones((2, 100), np.float32))
    dataset = SceneDataset(sources, rirs, channels=2, noise_folder=noise, clip_seconds=1.0)
    batch = collate_scenes([example for _, example in zip(range(8), dataset)])
    assert batch["source"].shape == (8, 32000) and batch["noise"].shape == (8, 32000)
    assert batch["rir"].shape[-1] == 100 and batch["noise_rir"].shape == (8, 1, 2, 100)
    # Sources longer than a clip are cropped; shorter noise plays whole, at a random start, in silence.
    assert torch.all(batch["source"] > 0) and torch.all(batch["source_length"] == 32000)
    for track, (start, length) in zip(batch["noise"], batch["noise_active"].tolist()):
        assert length == 9600 and torch.all(track[start : start + length] > 0)
        assert torch.all(track[:start] == 0) and torch.all(track[start + length :] == 0)
    assert len(set(batch["noise_active"][:, 0].tolist())) > 1


def test_noise_impulse_response_sets_are_summed_sources(tmp_path):
    sources = _write_tagged_sources(tmp_path / "sources", 1)
    rirs = _write_rirs(tmp_path / "rirs")
    sets = tmp_path / "noise_rirs"
    sets.mkdir()
    np.save(sets / "room.npy", np.ones((5, 2, 32), np.float32))  # five noise positions of one room
    dataset = SceneDataset(
        sources,
        rirs,
        channels=2,
        noise_folder=_write_tagged_sources(tmp_path / "noise", 1),
        noise_rir_folder=sets,
        clip_seconds=0.25,
    )
    example = next(iter(dataset))
    assert example["noise_rir"].shape == (5, 2, 32)
    mixed = collate_scenes([example, {**example, "noise_rir": example["noise_rir"][:2, :, :16]}])
    assert mixed["noise_rir"].shape == (2, 5, 2, 32) and torch.all(mixed["noise_rir"][1, 2:] == 0)


def _wav_bytes(value, seconds=0.25, rate=32000):
    buffer = io.BytesIO()
    soundfile.write(buffer, np.full(int(seconds * rate), value, np.float32), rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_hub_streaming_source_shards_and_skips(tmp_path, monkeypatch, caplog):
    datasets = pytest.importorskip("datasets")
    files = []
    for part in range(4):  # 4 parquet shards of 3 records each: record i holds (i + 1) / 100
        records = {"audio": [{"bytes": _wav_bytes((part * 3 + j + 1) / 100), "path": None} for j in range(3)]}
        if part == 3:
            records["audio"][2] = {"bytes": b"garbage", "path": None}
        table = datasets.Dataset.from_dict(records).cast_column("audio", datasets.Audio(decode=False))
        files.append(str(tmp_path / f"part{part}.parquet"))
        table.to_parquet(files[-1])
    source = HubSource("parquet", data_files=files, shuffle_buffer=1)
    skipped, seen = SkippedFiles(), []
    with caplog.at_level(logging.WARNING, logger="gram_training.data"):
        for shard in range(4):
            records = source.records(shard, 4, np.random.default_rng(0), 32000, skipped)
            count = 2 if shard == 3 else 3
            tags = {int(round(float(next(records).max()) * 100)) - 1 for _ in range(count)}
            assert len(tags) == count
            seen.append(tags)
    assert set().union(*seen) == set(range(11)) and sum(map(len, seen)) == 11
    assert skipped.counts["audio"] == 0  # shard 3 has not reached its garbage record yet
    # The garbage record is skipped (with a warning) when shard 3 wraps around to its next epoch.
    records = source.records(3, 4, np.random.default_rng(0), 32000, skipped)
    [next(records) for _ in range(3)]
    assert skipped.counts["audio"] >= 1 and "undecodable" in caplog.text


@pytest.mark.parametrize(
    "record, message",
    [
        ({"array": [0.1] * 40000, "sampling_rate": 0}, "invalid sampling rate 0"),
        ({"array": [0.1] * 40000, "sampling_rate": None}, "invalid sampling rate None"),
        ({"array": [[0.1] * 40000, [0.1] * 39000], "sampling_rate": 32000}, "unusable record"),  # ragged
        ({"array": [1e39] * 40000, "sampling_rate": 32000}, "NaN or Inf"),
        ({"path": "/etc/passwd", "bytes": None}, "holds only a local path"),
    ],
)
def test_bad_dataset_records_are_bad_audio_not_crashes(record, message):
    with pytest.raises(BadAudioError, match=message):
        data.decode_record(record, 32000, "ds[0]")


def test_local_path_records_are_read_only_when_asked(tmp_path):
    soundfile.write(tmp_path / "a.wav", np.full(32000, 0.25, np.float32), 32000)
    audio = data.decode_record({"path": str(tmp_path / "a.wav"), "bytes": None}, 32000, "ds[0]", local_paths=True)
    assert audio.shape == (1, 32000) and np.allclose(audio, 0.25)


def test_a_bad_record_in_a_stream_is_skipped_and_counted(tmp_path, caplog):
    datasets = pytest.importorskip("datasets")
    arrays = [[0.1] * 40000, [0.2] * 40000, [0.3] * 40000]
    rates = [32000, 0, 32000]  # the second record is broken
    table = datasets.Dataset.from_dict({"audio": [{"array": a, "sampling_rate": r} for a, r in zip(arrays, rates)]})
    table.to_parquet(str(tmp_path / "part.parquet"))
    source = HubSource("parquet", data_files=[str(tmp_path / "part.parquet")], shuffle_buffer=1)
    skipped = SkippedFiles()
    with caplog.at_level(logging.WARNING, logger="gram_training.data"):
        records = source.records(0, 1, np.random.default_rng(0), 32000, skipped)
        levels = [round(float(next(records).max()), 2) for _ in range(2)]
    assert levels == [0.1, 0.3] and skipped.counts["audio"] == 1 and "invalid sampling rate 0" in caplog.text


@pytest.mark.parametrize("num_files,num_shards", [(3, 2), (4, 2), (2, 3)])
def test_shuffled_stream_partitions_records_across_shards(tmp_path, monkeypatch, num_files, num_shards):
    """With shuffling on, every record goes to exactly one shard per epoch, whether the files divide among
    the shards (whole files per shard) or not (every n-th record of a shared order)."""
    datasets = pytest.importorskip("datasets")
    # datasets waits 5 s after each pass of a shuffled stream (an Arrow threading workaround): skip it here.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    files = []
    for part in range(num_files):
        records = {"audio": [{"bytes": _wav_bytes((part * 4 + j + 1) / 100), "path": None} for j in range(4)]}
        table = datasets.Dataset.from_dict(records).cast_column("audio", datasets.Audio(decode=False))
        files.append(str(tmp_path / f"part{part}.parquet"))
        table.to_parquet(files[-1])
    total = 4 * num_files
    source = HubSource("parquet", data_files=files, shuffle_buffer=4, seed=3)
    seen = []
    for shard in range(num_shards):
        records = source.records(shard, num_shards, np.random.default_rng([0, shard]), 32000, SkippedFiles())
        share = total // num_shards + (shard < total % num_shards)
        seen += [int(round(float(np.median(next(records))) * 100)) - 1 for _ in range(share)]
    assert sorted(seen) == list(range(total))


def test_archive_named_like_an_array_is_skipped(tmp_path):
    sets = tmp_path / "noise_rirs"
    sets.mkdir()
    np.savez(sets / "bad.npz", a=np.ones((2, 8), np.float32))
    (sets / "bad.npz").rename(sets / "bad.npy")
    np.save(sets / "good.npy", np.ones((2, 8), np.float32))
    bank = data.ImpulseResponseBank(sets, 2, 32000, several=True)
    skipped = SkippedFiles()
    draws = [bank.draw(np.random.default_rng(i), skipped) for i in range(6)]
    assert all(d.shape == (1, 2, 8) for d in draws) and skipped.counts["impulse response"] >= 1


def test_only_the_used_channel_is_resampled_and_it_is_unchanged(tmp_path):
    """Sources use their first channel: reading only it (before resampling) gives the same samples."""
    import soundfile as sf

    import gram_io
    from gram_training.data import decode_record

    stereo = np.random.default_rng(3).uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 44100, subtype="FLOAT")
    full = gram_io.read_audio(tmp_path / "s.wav", 32000)
    first = gram_io.read_audio(tmp_path / "s.wav", 32000, channels=1)
    assert first.shape == (1, full.shape[1]) and np.array_equal(first[0], full[0])
    record = {"bytes": (tmp_path / "s.wav").read_bytes(), "path": None}
    assert np.array_equal(decode_record(record, 32000, "s", channels=1), first)


def test_data_benchmark_runs(capsys):
    import benchmark_data

    report = benchmark_data.main(["--clips", "2", "--scenes", "2", "--rates", "32000", "44100"])
    assert len(report["runs"]) == 6 and all(run["scenes_per_s_per_worker"] > 0 for run in report["runs"])
    assert "workers for" in capsys.readouterr().out
