"""embed_audio.py: folders and files of wav/flac/ogg/mp3 to npy / safetensors / parquet, equal to running
the model directly; unreadable files are skipped and reported."""

import os

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import relative_error, tiny_config

from embed_audio import main
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel

SR = 32000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    model = GramModel(tiny_config("binaural-time")).eval()
    model.save_pretrained(base / "model")
    GramFeatureExtractor().save_pretrained(base / "model")
    audio_dir = base / "audio"
    (audio_dir / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    clips = {
        "a.wav": (rng.uniform(-0.5, 0.5, (int(1.3 * SR), 2)), SR),
        "sub/b.flac": (rng.uniform(-0.5, 0.5, (int(2.6 * SR), 2)), SR),
        "c.ogg": (rng.uniform(-0.5, 0.5, (SR, 1)), SR),
        "d.mp3": (rng.uniform(-0.5, 0.5, (SR, 2)), SR),
        "slow.wav": (rng.uniform(-0.5, 0.5, (16000, 2)), 16000),
    }
    for name, (data, rate) in clips.items():
        sf.write(str(audio_dir / name), data.astype(np.float32), rate)
    (audio_dir / "broken.wav").write_bytes(b"RIFF....not a wav file")
    (audio_dir / "notes.txt").write_text("ignored")
    return base, model


def direct_scene(model, path, strategy="raw"):
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    inputs = GramFeatureExtractor()(data.T, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs, strategy=strategy)


def test_npy_output_equals_the_model_and_skips_are_reported(setup, capsys):
    base, model = setup
    out = base / "npy"
    assert main([str(base / "audio"), "--model", str(base / "model"), "--output-dir", str(out), "--timestamps", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Embedded 4 file(s)" in printed and "skipped 2" in printed
    assert "broken.wav: unreadable" in printed and "slow.wav: 16000 Hz, expected 32000 Hz" in printed
    for name in ("a.wav", "sub/b.flac", "c.ogg", "d.mp3"):
        scene = np.load(out / f"{name}.npy")
        expected = direct_scene(model, base / "audio" / name)
        assert relative_error(torch.from_numpy(scene), expected.pooler_output[0]) < 1e-5
        steps, times = np.load(out / f"{name}.steps.npy"), np.load(out / f"{name}.timestamps.npy")
        assert steps.shape == tuple(expected.last_hidden_state.shape[1:]) and times.shape == (steps.shape[0],)


def test_safetensors_resample_and_strategy(setup, capsys):
    from safetensors.numpy import load_file

    base, model = setup
    out = base / "st"
    args = [str(base / "audio" / "slow.wav"), str(base / "audio" / "a.wav"), "--model", str(base / "model"),
            "--output-dir", str(out), "--format", "safetensors", "--strategy", "mean", "--resample", "--quiet"]
    assert main(args) == 0
    assert sorted(os.listdir(out)) == ["a.wav.safetensors", "slow.wav.safetensors"]
    scene = load_file(str(out / "a.wav.safetensors"))["scene"]
    expected = direct_scene(model, base / "audio" / "a.wav", "mean").pooler_output[0]
    assert relative_error(torch.from_numpy(scene), expected) < 1e-5


def test_nothing_readable_exits_1(setup, capsys):
    base, _ = setup
    code = main([str(base / "audio" / "broken.wav"), str(base / "missing.wav"), "--model", str(base / "model"),
                 "--output-dir", str(base / "none"), "--quiet"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "Embedded 0 file(s)" in printed and "missing.wav: no such file or folder" in printed


def test_parquet_needs_pyarrow_or_writes_a_table(setup, capsys):
    base, model = setup
    args = [str(base / "audio" / "a.wav"), "--model", str(base / "model"), "--output-dir", str(base / "pq"),
            "--format", "parquet", "--quiet"]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(SystemExit, match="needs pyarrow"):
            main(args)
        return
    assert main(args) == 0
    table = pq.read_table(base / "pq" / "embeddings.parquet").to_pylist()
    assert table[0]["path"] == "a.wav" and len(table[0]["scene"]) == model.config.frame_embedding_size
