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
