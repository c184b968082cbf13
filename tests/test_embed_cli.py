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
    assert (
        main([str(base / "audio"), "--model", str(base / "model"), "--output-dir", str(out), "--timestamps", "--quiet"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "Embedded 4 file(s)" in printed and "skipped 2" in printed
    assert "broken.wav: unreadable" in printed and "slow.wav: 16000 Hz, expected 32000 Hz" in printed
    for name in ("a.wav", "sub/b.flac", "c.ogg", "d.mp3"):
        scene = np.load(out / "audio" / f"{name}.npy")  # the input folder mirrored by its own name
        expected = direct_scene(model, base / "audio" / name)
        assert relative_error(torch.from_numpy(scene), expected.pooler_output[0]) < 1e-5
        steps, times = np.load(out / "audio" / f"{name}.steps.npy"), np.load(out / "audio" / f"{name}.timestamps.npy")
        assert steps.shape == tuple(expected.last_hidden_state.shape[1:]) and times.shape == (steps.shape[0],)


def test_safetensors_resample_and_strategy(setup, capsys):
    from safetensors.numpy import load_file

    base, model = setup
    out = base / "st"
    args = [
        str(base / "audio" / "slow.wav"),
        str(base / "audio" / "a.wav"),
        "--model",
        str(base / "model"),
        "--output-dir",
        str(out),
        "--format",
        "safetensors",
        "--strategy",
        "mean",
        "--resample",
        "--quiet",
    ]
    assert main(args) == 0
    assert sorted(os.listdir(out)) == [".gram-output.json", "a.wav.safetensors", "slow.wav.safetensors"]
    scene = load_file(str(out / "a.wav.safetensors"))["scene"]
    expected = direct_scene(model, base / "audio" / "a.wav", "mean").pooler_output[0]
    assert relative_error(torch.from_numpy(scene), expected) < 1e-5


def test_nothing_readable_exits_1(setup, capsys):
    base, _ = setup
    code = main(
        [
            str(base / "audio" / "broken.wav"),
            str(base / "missing.wav"),
            "--model",
            str(base / "model"),
            "--output-dir",
            str(base / "none"),
            "--quiet",
        ]
    )
    assert code == 1
    printed = capsys.readouterr().out
    assert "Embedded 0 file(s) (nothing written)" in printed and "missing.wav: no such file or folder" in printed
    assert not (base / "none").exists()


def test_parquet_needs_pyarrow_or_writes_a_table(setup, capsys):
    base, model = setup
    args = [
        str(base / "audio" / "a.wav"),
        "--model",
        str(base / "model"),
        "--output-dir",
        str(base / "pq"),
        "--format",
        "parquet",
        "--quiet",
    ]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(SystemExit, match="needs pyarrow"):
            main(args)
        return
    assert main(args) == 0
    table = pq.read_table(base / "pq" / "embeddings.parquet").to_pylist()
    assert table[0]["path"] == "a.wav" and len(table[0]["scene"]) == model.config.frame_embedding_size


# ----------------------------------------------------------------------------------------------------------
# Mistakes that used to lose or corrupt output (issue: nothing a user owns is lost)
# ----------------------------------------------------------------------------------------------------------
def _embed(base, *inputs, output, extra=()):
    return main([*map(str, inputs), "--model", str(base / "model"), "--output-dir", str(output), "--quiet", *extra])


def test_same_names_in_two_inputs_are_refused_before_writing(setup, tmp_path, capsys):
    base, _ = setup
    for folder in ("a", "b"):
        (tmp_path / folder / "data").mkdir(parents=True)
        sf.write(str(tmp_path / folder / "x.wav"), np.zeros((SR, 2), np.float32) + 0.1, SR)
        sf.write(str(tmp_path / folder / "data" / "y.wav"), np.zeros((SR, 2), np.float32) + 0.1, SR)
    for inputs in (
        [tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"],
        [tmp_path / "a" / "data", tmp_path / "b" / "data"],
    ):
        assert _embed(base, *inputs, output=tmp_path / "out") == 2
        assert "would both be written as" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()
    # Distinct names: two folders holding the same relative file each get their own output.
    (tmp_path / "b" / "data").rename(tmp_path / "b" / "data2")
    assert (
        _embed(
            base, tmp_path / "a" / "data", tmp_path / "b" / "data2", tmp_path / "a" / "x.wav", output=tmp_path / "out"
        )
        == 0
    )
    assert "Embedded 3 file(s)" in capsys.readouterr().out
    assert {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.npy")} == {
        "data/y.wav.npy",
        "data2/y.wav.npy",
        "x.wav.npy",
    }


def test_named_pipes_are_skipped_not_waited_on(setup, tmp_path, capsys):
    base, _ = setup
    (tmp_path / "in").mkdir()
    os.mkfifo(tmp_path / "in" / "pipe.wav")
    sf.write(str(tmp_path / "in" / "ok.wav"), np.full((SR, 2), 0.1, np.float32), SR)
    assert _embed(base, tmp_path / "in", tmp_path / "in" / "pipe.wav", output=tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "Embedded 1 file(s)" in printed and printed.count("not a regular file") == 2


def test_bad_output_locations_and_layers_fail_before_any_work(setup, tmp_path, capsys, monkeypatch):
    base, _ = setup
    clip = base / "audio" / "a.wav"
    calls = []
    monkeypatch.setattr("embed_audio.read_audio", lambda *a: calls.append(a))
    (tmp_path / "file").write_text("x")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("mine")
    for output, extra, message in [
        (tmp_path / "file", (), "is not a directory"),
        (tmp_path / "file" / "sub", (), "is not a directory"),
        (tmp_path / "taken", (), "exists and is not empty"),
        (tmp_path / "taken", ("--overwrite",), "no GRAM command wrote"),
        (tmp_path / "new", ("--layer", "99"), "--layer must be in \\[0, 2\\]"),
        (base, ("--overwrite",), "contains the input"),
    ]:
        assert _embed(base, base / "audio", output=output, extra=extra) == 2
        assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert calls == [] and (tmp_path / "taken" / "mine.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        _embed(base, clip, output=tmp_path / "new", extra=("--batch-size", "0"))
    assert not (tmp_path / "new").exists()


def test_huge_amplitudes_and_non_finite_embeddings_are_never_written(setup, tmp_path, capsys, monkeypatch):
    base, model = setup
    (tmp_path / "in").mkdir()
    sf.write(str(tmp_path / "in" / "ok.wav"), np.full((SR, 2), 0.1, np.float32), SR)
    np_huge = np.full((SR, 2), 1e19, np.float32)  # finite, but its power spectrum overflows float32
    sf.write(str(tmp_path / "in" / "huge.wav"), np_huge, SR, subtype="FLOAT")
    assert _embed(base, tmp_path / "in", output=tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "huge.wav: peak amplitude 1e+19 is not audio" in printed  # read check (the extractor has its own)
    assert sorted(p.name for p in (tmp_path / "out" / "in").iterdir()) == ["ok.wav.npy"]

    # A model whose output overflows (as float16 can): the file is reported, nothing is written for it.
    original_forward = GramModel.forward

    def overflowing(self, *args, **kwargs):
        out = original_forward(self, *args, **kwargs)
        out.pooler_output[:] = float("inf")
        return out

    monkeypatch.setattr(GramModel, "forward", overflowing)
    assert _embed(base, tmp_path / "in" / "ok.wav", output=tmp_path / "out2") == 1
    assert "non-finite embedding" in capsys.readouterr().out and not (tmp_path / "out2").exists()


def test_coprime_rates_resample_with_bounded_memory(tmp_path):
    """32001 Hz -> 32000 Hz (a 4 GB kernel for torchaudio) in a fresh process: the resampled 1 kHz tone equals the
    analytic tone at 32 kHz, and the process stays small."""
    import subprocess
    import sys

    script = (
        "import resource, numpy as np\n"
        "from feature_extraction_gram import resample_audio\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = np.arange(32001 * 5) / 32001\n"
        "out = resample_audio(np.stack([np.sin(2 * np.pi * 1000 * t)] * 2).astype(np.float32), 32001, 32000)\n"
        "expected = np.sin(2 * np.pi * 1000 * np.arange(out.shape[1]) / 32000)\n"
        "error = np.abs(out[:, 1000:-1000] - expected[1000:-1000]).max()\n"
        "print(out.shape[1], error, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    samples, error, max_rss_kb = result.stdout.split()
    assert int(samples) == 32000 * 5 and float(error) < 1e-3
    assert int(max_rss_kb) < 300_000  # kB of growth while resampling: far below a 32001-phase sinc kernel's GBs


def test_ambisonic_files_need_their_convention(tmp_path, capsys):
    """A 4-channel file into an ambisonic model is skipped, with the reason, unless --ambisonics-format says
    its convention; then the embedding is the model's on the converted channels."""
    torch.manual_seed(0)
    model = GramModel(tiny_config("ambisonics-time")).eval()
    model.save_pretrained(tmp_path / "model")
    GramFeatureExtractor.from_config(model.config).save_pretrained(tmp_path / "model")
    foa = np.random.default_rng(2).uniform(-0.3, 0.3, (int(1.5 * SR), 4)).astype(np.float32)
    sf.write(str(tmp_path / "foa.wav"), foa, SR, subtype="FLOAT")
    base = [str(tmp_path / "foa.wav"), "--model", str(tmp_path / "model"), "--quiet"]
    assert main([*base, "--output-dir", str(tmp_path / "unknown")]) == 1
    assert "4-channel ambisonics of unknown convention" in capsys.readouterr().out
    assert main([*base, "--output-dir", str(tmp_path / "out"), "--ambisonics-format", "ambix"]) == 0
    extractor = GramFeatureExtractor.from_config(model.config)
    with torch.no_grad():
        inputs = extractor(foa.T, sampling_rate=SR, return_tensors="pt", ambisonics_format="ambix")
        expected = model(**inputs).pooler_output[0]
    assert relative_error(torch.from_numpy(np.load(tmp_path / "out" / "foa.wav.npy")), expected) < 1e-5
