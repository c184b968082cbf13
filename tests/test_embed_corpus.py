"""Corpus-scale embedding (embed_audio.py in sharded mode, embed_corpus.py): two processes under torchrun over
a folder and over a parquet `datasets` dataset give every input exactly once, with the embeddings of a single
process (and of the model called directly); an interrupted run resumes; partial or damaged parts are redone."""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from conftest import relative_error, tiny_config

from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel

SR = 32000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    model = GramModel(tiny_config("binaural-time")).eval()
    model.save_pretrained(base / "model")
    GramFeatureExtractor().save_pretrained(base / "model")
    rng = np.random.default_rng(0)
    (base / "audio" / "sub").mkdir(parents=True)
    clips = {}
    for i in range(13):
        clip = rng.uniform(-0.3, 0.3, (int(SR * (0.4 + 0.23 * i)), 2)).astype(np.float32)
        name = f"sub/c{i:02d}.wav" if i % 3 == 0 else f"c{i:02d}.wav"
        sf.write(base / "audio" / name, clip, SR, subtype="FLOAT")
        clips[f"audio/{name}"] = clip
    (base / "audio" / "broken.wav").write_bytes(b"RIFF....not audio")
    return base, model, clips


def run(cwd, *args, processes=1, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    env["HF_HUB_OFFLINE"] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "-m", "embed_audio"] if processes > 1 else [sys.executable, "-m", "embed_audio"]
    done = subprocess.run([*command, *args, "--quiet"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def read_output(directory):
    manifest = pq.read_table(directory / "manifest.parquet").to_pylist()
    rows = {}
    for part in sorted((directory / "parts").glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            assert row["id"] not in rows, f"{row['id']} embedded twice"
            rows[row["id"]] = row
    return manifest, rows


def assert_same_embeddings(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["status"] == b[key]["status"], key
        if a[key]["status"] == "ok":
            np.testing.assert_allclose(a[key]["scene"], b[key]["scene"], rtol=1e-5, atol=1e-6)


def test_two_processes_over_a_folder_equal_one_process(corpus):
    base, model, clips = corpus
    common = ["audio", "--model", "model", "--part-size", "3", "--batch-size", "4", "--timestamps"]
    two = run(base, *common, "--output-dir", "two", processes=2)
    assert "Process 1/2" in two.stdout and "Process 2/2" in two.stdout
    run(base, *common, "--output-dir", "one", "--sharded", "--num-workers", "0", "--batch-size", "1")
    manifest, rows = read_output(base / "two")
    _, single = read_output(base / "one")

    expected_ids = {*clips, "audio/broken.wav"}
    assert [row["id"] for row in manifest] == sorted(expected_ids)  # every input once, in the global order
    assert {row["id"] for row in manifest if row["status"] == "ok"} == set(clips)
    broken = next(row for row in manifest if row["id"] == "audio/broken.wav")
    assert broken["status"] == "skipped" and "unreadable" in broken["error"]
    for row in manifest:  # the manifest points at each embedding
        part = pq.read_table(base / "two" / row["part"]).to_pylist()
        assert part[row["row"]]["id"] == row["id"]
    assert_same_embeddings(rows, single)  # batch size 4 with length buckets, 2 processes == 1 by 1, 1 process

    extractor = GramFeatureExtractor()
    for name in ("audio/c01.wav", "audio/sub/c09.wav"):
        with torch.no_grad():
            out = model(**extractor(clips[name].T, sampling_rate=SR, return_tensors="pt"))
        assert relative_error(torch.tensor(rows[name]["scene"]), out.pooler_output[0]) < 1e-5
        assert np.asarray(rows[name]["steps"]).shape == tuple(out.last_hidden_state.shape[1:])
        np.testing.assert_allclose(rows[name]["timestamps"], out.timestamps.numpy())


def test_two_processes_over_a_parquet_dataset(corpus, tmp_path):
    base, model, clips = corpus
    records = []
    for name, clip in clips.items():
        buffer = io.BytesIO()
        sf.write(buffer, clip, SR, format="WAV", subtype="FLOAT")
        records.append({"id": f"rec-{name}", "audio": {"bytes": buffer.getvalue(), "path": name}})
    records.append({"id": "rec-bad", "audio": {"bytes": b"not audio", "path": "bad.wav"}})
    for shard in range(2):  # two files: the dataset streams them in order
        pq.write_table(pa.Table.from_pylist(records[shard::2]), tmp_path / f"data-{shard}.parquet")
    data = [str(tmp_path / "data-0.parquet"), str(tmp_path / "data-1.parquet")]
    common = ["--model", str(base / "model"), "--hf-dataset", "parquet", "--hf-data-files", *data,
              "--hf-id-column", "id", "--part-size", "4"]  # fmt: skip
    run(tmp_path, *common, "--output-dir", "two", processes=2)
    run(tmp_path, *common, "--output-dir", "one", "--num-workers", "0")
    manifest, rows = read_output(tmp_path / "two")
    _, single = read_output(tmp_path / "one")
    assert sorted(row["id"] for row in manifest) == sorted(r["id"] for r in records)
    assert next(row for row in manifest if row["id"] == "rec-bad")["status"] == "skipped"
    assert_same_embeddings(rows, single)
    extractor = GramFeatureExtractor()
    for name in ("audio/c02.wav", "audio/sub/c12.wav"):  # the records' audio, embedded by the model directly
        with torch.no_grad():
            out = model(**extractor(clips[name].T, sampling_rate=SR, return_tensors="pt"))
        assert relative_error(torch.tensor(rows[f"rec-{name}"]["scene"]), out.pooler_output[0]) < 1e-5


def test_an_interrupted_run_resumes_and_damaged_parts_are_redone(corpus, tmp_path):
    base, _, _ = corpus
    args = [str(base / "audio"), "--model", str(base / "model"), "--sharded", "--part-size", "1", "--num-workers", "0"]
    reference = tmp_path / "reference"
    run(tmp_path, *args, "--output-dir", str(reference))
    _, expected = read_output(reference)

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    process = subprocess.Popen([sys.executable, "-m", "embed_audio", *args, "--output-dir", str(out), "--quiet"],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list((out / "parts").glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list((out / "parts").glob("part-*.parquet")))
    assert 1 <= written < 14 and not (out / "manifest.parquet").exists()  # really interrupted midway

    run(tmp_path, *args, "--output-dir", str(out))
    manifest, rows = read_output(out)
    assert len(manifest) == 14
    assert_same_embeddings(rows, expected)

    # Damage: a part deleted, one truncated, a stale temporary file; all other parts stay untouched.
    parts = sorted((out / "parts").glob("part-*.parquet"))
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    parts[2].unlink()
    parts[5].write_bytes(parts[5].read_bytes()[:40])
    (out / "parts" / f".{parts[7].name}.tmp-0-99999").write_bytes(b"half a part")
    (out / "manifest.parquet").unlink()
    run(tmp_path, *args, "--output-dir", str(out))
    manifest, rows = read_output(out)
    assert len(manifest) == 14 and not list((out / "parts").glob(".*.tmp-*"))
    assert_same_embeddings(rows, expected)
    changed = {p.name for p in (out / "parts").glob("part-*.parquet") if p.stat().st_mtime_ns != before.get(p.name)}
    assert changed == {parts[2].name, parts[5].name}


def test_other_settings_or_foreign_directories_are_refused(corpus, tmp_path):
    base, _, _ = corpus
    args = [str(base / "audio"), "--model", str(base / "model"), "--sharded", "--part-size", "5"]
    run(tmp_path, *args, "--output-dir", "out")
    other = run(tmp_path, *args, "--output-dir", "out", "--strategy", "cls", check=False)
    assert other.returncode == 2 and "holds a run with other settings (strategy)" in other.stderr
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    foreign = run(tmp_path, *args, "--output-dir", "foreign", check=False)
    assert foreign.returncode == 2 and "not empty" in foreign.stderr
    assert os.listdir(tmp_path / "foreign") == ["notes.txt"]
    flags = run(tmp_path, *args, "--output-dir", "x", "--format", "npy", check=False)
    assert flags.returncode == 2 and "sharded runs write parquet parts" in flags.stderr


def test_each_process_takes_its_own_gpu(monkeypatch):
    from embed_corpus import device_for_process

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device_for_process("cuda") == "cuda:3" and device_for_process("cuda:1") == "cuda:1"
    assert device_for_process("cpu") == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert device_for_process("cuda") == "cuda"


def test_nothing_to_embed_and_changed_data_files(corpus, tmp_path):
    base, _, clips = corpus
    model = ["--model", str(base / "model")]
    missing = run(tmp_path, "no-such-folder", *model, "--output-dir", "out", "--sharded", check=False)
    assert missing.returncode == 1 and not (tmp_path / "out").exists()  # nothing made: the fixed command can run
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"RIFF broken")
    bad = run(tmp_path, "bad", *model, "--output-dir", "out", "--sharded", check=False)
    assert (
        bad.returncode == 1 and "skipped" in pq.read_table(tmp_path / "out" / "manifest.parquet")["status"][0].as_py()
    )
    unmatched = run(tmp_path, *model, "--hf-dataset", "parquet", "--hf-data-files", "none-*.parquet",
                    "--output-dir", "ds", check=False)  # fmt: skip
    assert unmatched.returncode == 2 and "matches no file" in unmatched.stderr and not (tmp_path / "ds").exists()

    buffer = io.BytesIO()
    sf.write(buffer, next(iter(clips.values())), SR, format="WAV", subtype="FLOAT")
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([{"audio": {"bytes": buffer.getvalue(), "path": "a.wav"}}]),
                   tmp_path / "data" / "a.parquet")  # fmt: skip
    args = [
        *model,
        "--hf-dataset",
        "parquet",
        "--hf-data-files",
        str(tmp_path / "data" / "*.parquet"),
        "--output-dir",
        "ds",
    ]
    run(tmp_path, *args)
    mode = (tmp_path / "ds" / "parts" / "part-0000000.parquet").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()  # outputs follow the umask
    time.sleep(0.01)
    pq.write_table(pa.Table.from_pylist([{"audio": {"bytes": buffer.getvalue(), "path": "b.wav"}}]),
                   tmp_path / "data" / "b.parquet")  # fmt: skip
    changed = run(tmp_path, *args, check=False)
    assert changed.returncode == 2 and "other settings (inputs)" in changed.stderr


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


def test_chunk_batch_size_changes_nothing_but_memory(corpus, tmp_path):
    from embed_audio import main

    base, _, _ = corpus
    common = [str(base / "audio" / "c11.wav"), "--model", str(base / "model"), "--quiet"]
    assert main([*common, "--output-dir", str(tmp_path / "a"), "--chunk-batch-size", "1"]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "a" / "c11.wav.npy"), np.load(tmp_path / "b" / "c11.wav.npy"),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_streamed_datasets_two_processes(corpus, tmp_path):
    """A builder that is not local parquet (here `json` records holding arrays) is streamed with `datasets`; every
    reader streams it and decodes only its own parts: the same inputs once, the model's embeddings."""
    import json

    base, model, clips = corpus
    chosen = list(clips.items())[:5]
    with open(tmp_path / "data.jsonl", "w") as handle:
        for name, clip in chosen:
            record = {"key": name, "audio": {"array": clip.T[:, : SR // 2].tolist(), "sampling_rate": SR}}
            handle.write(json.dumps(record) + "\n")
    args = ["--model", str(base / "model"), "--hf-dataset", "json", "--hf-data-files", str(tmp_path / "data.jsonl"),
            "--hf-id-column", "key", "--part-size", "2", "--output-dir", "out"]  # fmt: skip
    run(tmp_path, *args, processes=2)
    manifest, rows = read_output(tmp_path / "out")
    assert sorted(row["id"] for row in manifest) == sorted(name for name, _ in chosen)
    assert (tmp_path / "out" / "stream-length.json").is_file()  # the stream's length, learned while streaming
    extractor = GramFeatureExtractor()
    for name, clip in chosen[:2]:
        with torch.no_grad():
            out = model(**extractor(clip.T[:, : SR // 2], sampling_rate=SR, return_tensors="pt"))
        assert relative_error(torch.tensor(rows[name]["scene"]), out.pooler_output[0]) < 1e-5


def test_accelerate_launch_runs_it_unchanged(corpus, tmp_path):
    """`accelerate launch --multi_gpu` starts the processes through torchrun; on this GPU-less machine the same
    command runs on CPU, as a user's multi-GPU command does on GPUs."""
    base, _, clips = corpus
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "embed_audio",
               str(base / "audio"), "--model", str(base / "model"), "--output-dir", "out", "--part-size", "4",
               "--quiet"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Process 1/2" in done.stdout and "Process 2/2" in done.stdout
    manifest, rows = read_output(tmp_path / "out")
    assert sorted(row["id"] for row in manifest) == sorted([*clips, "audio/broken.wav"])
