"""convert_checkpoint.py with a Hub repo id (a fake Hub: huggingface_hub's own offline cache layout, built
here) and with --random-weights: the same directory as converting the file, revisions honoured, errors in
one line, untrained models labelled as such."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import HEADS, TINY, make_original
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file
from test_convert_checkpoint import save_runtime_safetensors
from transformers import AutoModel

import convert_checkpoint
from configuration_gram import GramConfig
from convert_checkpoint import main, random_model, write_random_model

REPO = "labhamlet/gramt-binaural-time"


def add_to_fake_hub(cache, repo_id, weights_file, ref="main", commit=None):
    """Puts `weights_file` into huggingface_hub's cache layout (blobs, snapshots/<commit>, refs/<ref>),
    as a download would have left it; returns the commit."""
    data = open(weights_file, "rb").read()
    commit = commit or hashlib.sha1(data).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / "model.safetensors")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def original_file(tmp_path, variant="binaural-time", seed=0):
    path = tmp_path / f"original-{variant}-{seed}" / "model.safetensors"
    path.parent.mkdir()
    save_runtime_safetensors(make_original(variant, seed), path)
    return path


def test_conversion_by_hub_id_equals_conversion_of_the_file(tmp_path):
    """The installed `gram-convert` in a fresh process, huggingface_hub configured only by the environment."""
    weights = original_file(tmp_path)
    cache = tmp_path / "hub-cache"
    commit = add_to_fake_hub(cache, REPO, weights)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "convert_checkpoint", "--quiet", *HEADS]
    for source, output in ((REPO, "by-id/gram"), (str(weights), "by-file/gram")):
        done = subprocess.run(
            [*command, "--checkpoint", source, "--output-dir", str(tmp_path / output)],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    by_id, by_file = tmp_path / "by-id" / "gram", tmp_path / "by-file" / "gram"
    assert sorted(os.listdir(by_id)) == sorted(os.listdir(by_file))
    for name in os.listdir(by_id):
        if name not in ("README.md", ".gram-output.json"):
            assert (by_id / name).read_bytes() == (by_file / name).read_bytes(), name
    card_id, card_file = (by_id / "README.md").read_text(), (by_file / "README.md").read_text()
    differing = [(a, b) for a, b in zip(card_id.splitlines(), card_file.splitlines()) if a != b]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert differing == [
        (
            f"| source checkpoint | `{REPO}@{commit}` (sha256 `{sha}`) |",
            f"| source checkpoint | `model.safetensors` (sha256 `{sha}`) |",
        )
    ]


def test_revision_picks_the_commit_and_errors_are_one_line(tmp_path, fake_hub, capsys):
    first, second = original_file(tmp_path, seed=1), original_file(tmp_path, seed=2)
    old = add_to_fake_hub(fake_hub, REPO, first, ref="v1")
    new = add_to_fake_hub(fake_hub, REPO, second, ref="main")
    for revision, (file, commit) in {
        "v1": (first, old),
        None: (second, new),
        old: (first, old),
        new: (second, new),
    }.items():
        path, source = convert_checkpoint.resolve_checkpoint(REPO, revision)
        assert source == f"{REPO}@{commit}"
        got, weights = load_file(path), load_file(file)
        assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in got)

    output = tmp_path / "out"
    assert main(["--checkpoint", REPO, "--revision", "v1", "--output-dir", str(output), "--quiet", *HEADS]) == 0
    assert f"`{REPO}@{old}`" in (output / "README.md").read_text()

    cases = [
        (["--checkpoint", "someone/not-cached"], "Cannot get model.safetensors of the Hub repo someone/not-cached"),
        (["--checkpoint", REPO, "--revision", "v9"], f"Hub repo {REPO}@v9"),
        (["--checkpoint", str(first), "--revision", "v1"], "--revision applies to a Hub repo id"),
        (["--checkpoint", "not/a/repo"], "no local file and no Hub repo id"),
        (["--checkpoint", "owner/name\n"], "no local file and no Hub repo id"),
        (["--checkpoint", str(tmp_path)], "is a directory without model.safetensors"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main([*args, "--output-dir", str(tmp_path / "never"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "never").exists()


def test_a_local_copy_of_a_hub_repo_converts(tmp_path):
    weights = original_file(tmp_path, "mono-frame")
    assert main(["--checkpoint", str(weights.parent), "--output-dir", str(tmp_path / "out"), "--quiet", *HEADS]) == 0
    assert json.load(open(tmp_path / "out" / "config.json"))["num_channels"] == 1


def test_a_bad_output_location_is_reported_before_any_download(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.setattr(convert_checkpoint, "resolve_checkpoint", lambda *a, **k: pytest.fail("downloaded"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("user data")
    assert main(["--checkpoint", str(original_file(tmp_path)), "--output-dir", str(tmp_path / "taken")]) == 2
    assert main(["--checkpoint", REPO, "--output-dir", str(tmp_path / "taken")]) == 2  # a Hub id: no download
    assert (tmp_path / "taken" / "mine.txt").read_text() == "user data"


def test_random_weights_command_writes_a_labelled_untrained_model(tmp_path, capsys):
    output = tmp_path / "untrained"
    assert main(["--random-weights", "mono-time", "--output-dir", str(output), "--seed", "3", "--quiet"]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    card = (output / "README.md").read_text()
    title = next(line for line in card.splitlines() if line.startswith("# "))
    assert "UNTRAINED" in title and "seed 3" in card
    config = json.load(open(output / "config.json"))
    reference = GramConfig.from_variant("mono-time").to_dict()
    for key in ("num_channels", "patch_size", "hidden_size", "num_hidden_layers", "decoder_window_sizes"):
        assert config[key] == reference[key]
    model = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 250, 128), strategy="mean")
    assert out.pooler_output.shape == (1, 768) and torch.isfinite(out.pooler_output).all()


def test_random_weights_are_seeded(tmp_path):
    config = GramConfig.from_variant("ambisonics-frame", **TINY)
    same = [random_model("ambisonics-frame", 5, config.__class__(**config.to_dict())).state_dict() for _ in range(2)]
    other = random_model("ambisonics-frame", 6, config.__class__(**config.to_dict())).state_dict()
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    assert not torch.equal(same[0]["gram.embeddings.patch_embeddings.projection.weight"],
                           other["gram.embeddings.patch_embeddings.projection.weight"])  # fmt: skip
    output, files = write_random_model("ambisonics-frame", str(tmp_path / "dry"), 5, dry_run=True, config=config)
    assert "model.safetensors" in files and not os.path.exists(output)
