"""The real HEAR evaluation kit: heareval 2021.1.3's own runners (through `gram-heareval`, installed by `make
setup`) embed a tiny binaural task in heareval's layout with `gram_hear` and train its prediction head, in fresh
processes that import gram_hear as the runners do (no PYTHONPATH). The embeddings they write must equal
gram_hear's own on the same files, and the authors' listen-eval-kit options with an original Lightning
checkpoint must give the same embeddings as the converted directory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from conftest import TINY, make_original, relative_error
from test_convert_checkpoint import save_lightning_checkpoint

import gram_hear
from convert_checkpoint import convert

pytest.importorskip("heareval", reason="make setup installs heareval==2021.1.3 (requirements-no-deps.txt)")

SR = 32000
TASK = "spatial_lr-v1.0-full"
# The tiny test models' encoder heads, which an original checkpoint's weights do not show (published: 12).
HEADS = {"num_attention_heads": TINY["num_attention_heads"]}


def write_task(root):
    """A scene task in heareval's on-disk layout: which ear hears the louder noise (left/right)."""
    task = root / TASK
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        folder = task / str(SR) / split
        folder.mkdir(parents=True)
        labels = {}
        for index in range(6):
            side = ("left", "right")[index % 2]
            audio = 0.05 * rng.standard_normal((int(1.1 * SR), 2)).astype(np.float32)  # soundfile: (samples, ch)
            audio[:, 0 if side == "left" else 1] *= 6.0
            name = f"{split}_{index}.wav"
            soundfile.write(folder / name, audio, SR, subtype="FLOAT")
            labels[name] = [side]
        (task / f"{split}.json").write_text(json.dumps(labels))
    (task / "labelvocabulary.csv").write_text("idx,label\n0,left\n1,right\n")
    metadata = {
        "task_name": "spatial_lr",
        "version": "v1.0",
        "mode": "full",
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "trainvaltest",
        "splits": ["train", "valid", "test"],
        "sample_duration": 1.1,
        "evaluation": ["top1_acc"],
        "download_urls": [],
    }
    (task / "task_metadata.json").write_text(json.dumps(metadata))
    return task


def run(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "gram_heareval", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def original_and_converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("heareval-models")
    checkpoint = base / "step=500000.ckpt"
    save_lightning_checkpoint(make_original("binaural-time"), checkpoint)
    convert(str(checkpoint), str(base / "gram-binaural-time"), num_attention_heads=TINY["num_attention_heads"])
    return checkpoint, base / "gram-binaural-time"


def test_heareval_runners_score_gram_on_a_binaural_task(tmp_path, original_and_converted):
    _, directory = original_and_converted
    write_task(tmp_path / "tasks")
    options = json.dumps({"strategy": "mean", "layer": 2})
    run(tmp_path, "embeddings", "gram_hear", "--model", str(directory), "--tasks-dir", "tasks",
        "--embeddings-dir", "embeddings", "--model-options", options)  # fmt: skip
    (output,) = (tmp_path / "embeddings").iterdir()
    assert output.name == "gram_hear-strategy=mean-layer=2"
    embedded = output / TASK

    # The runner's per-file embeddings are gram_hear's own on the same files, read as (channels, samples).
    model = gram_hear.load_model(str(directory), strategy="mean", layer=2)
    for split in ("train", "test"):
        for name in json.loads((embedded / f"{split}.json").read_text()):
            audio, _ = soundfile.read(tmp_path / "tasks" / TASK / str(SR) / split / name, dtype="float32")
            ours = gram_hear.get_scene_embeddings(torch.from_numpy(audio.T.copy())[None], model)[0]
            theirs = torch.from_numpy(np.load(embedded / split / f"{name}.embedding.npy"))
            assert theirs.shape == (model.scene_embedding_size,)
            assert relative_error(theirs, ours) < 1e-5

    run(tmp_path, "predictions", str(embedded), "--grid", "faster", "--grid-points", "1")  # an absolute path
    scores = json.loads((embedded / "test.predicted-scores.json").read_text())
    assert 0.0 <= scores["test"]["test_top1_acc"] <= 1.0


def test_listen_eval_kit_options_with_an_original_checkpoint(tmp_path, original_and_converted):
    """The command line of the authors' run_binaural_nat_hear.sh: an original .ckpt as --model, their options."""
    checkpoint, directory = original_and_converted
    write_task(tmp_path / "tasks")
    options = json.dumps({"strategy": "raw", "use_mwmae_decoder": "true", "in_channels": 2, **HEADS})
    run(tmp_path, "embeddings", "gram_hear", "--model", str(checkpoint), "--tasks-dir", "tasks",
        "--embeddings-dir", "from-original", "--model-options", options)  # fmt: skip
    run(tmp_path, "embeddings", "gram_hear", "--model", str(directory), "--tasks-dir", "tasks",
        "--embeddings-dir", "from-converted", "--model-options", json.dumps({"strategy": "raw"}))  # fmt: skip
    (original,) = (tmp_path / "from-original").iterdir()
    assert original.name.startswith("gram_hear-strategy=raw-use-mwmae-decoder=true-in-channels=2")
    (converted,) = (tmp_path / "from-converted").iterdir()
    for split in ("train", "test"):
        for name in json.loads((converted / TASK / f"{split}.json").read_text()):
            a = np.load(original / TASK / split / f"{name}.embedding.npy")
            b = np.load(converted / TASK / split / f"{name}.embedding.npy")
            np.testing.assert_array_equal(a, b)


def test_load_model_checks_the_authors_options(original_and_converted):
    checkpoint, _ = original_and_converted
    with pytest.raises(ValueError, match="in_channels=7, but .* is a binaural model with 2 feature channels"):
        gram_hear.load_model(str(checkpoint), in_channels="7", **HEADS)
    with pytest.raises(TypeError, match="Unknown load_model arguments: \\['use_decoder'\\]"):
        gram_hear.load_model(str(checkpoint), use_decoder="true")
    model = gram_hear.load_model(str(checkpoint), strategy="cls", use_mwmae_decoder="false", in_channels=2, **HEADS)
    assert model.scene_embedding_size == TINY["hidden_size"]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_only_the_checkpoints_this_process_saved_load_with_pickles(tmp_path, monkeypatch):
    import lightning_fabric.plugins.io.torch_io as torch_io

    import gram_heareval

    monkeypatch.setattr(torch, "load", torch.load)  # restored after the test
    monkeypatch.setattr(torch_io.TorchCheckpointIO, "save_checkpoint", torch_io.TorchCheckpointIO.save_checkpoint)
    monkeypatch.chdir(tmp_path)
    gram_heareval.trust_own_checkpoints()
    (tmp_path / "logs").mkdir()
    planted = tmp_path / "logs" / "epoch=0.ckpt"
    torch.save({"state": Payload(tmp_path / "ran")}, planted)  # already on disk: not this process's checkpoint
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(planted)
    assert not (tmp_path / "ran").exists()

    own = tmp_path / "logs" / "best.ckpt"
    torch_io.TorchCheckpointIO().save_checkpoint({"epoch": 3, "norm": torch.nn.Identity}, own)
    assert torch.load(own)["norm"] is torch.nn.Identity  # heareval's own checkpoint (hyper-parameters hold classes)
    torch.save({"state": Payload(tmp_path / "ran")}, own)  # replaced afterwards: no longer the one it saved
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(own)
    assert not (tmp_path / "ran").exists()
