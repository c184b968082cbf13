"""The offline end-to-end demo: scene rendering, Trainer-fitted linear probes, and the one-command run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_config

from gram_training import demo
from modeling_gram import GramModel


def test_probes_fit_separable_data(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 12)).astype(np.float32)
    kinds = np.argmax(embeddings[:, :4], axis=1)
    directions = embeddings[:, 4:7] @ rng.normal(size=(3, 3)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    train = np.arange(300) < 200
    logits = demo.train_probe(embeddings, kinds, train, "kind", str(tmp_path), epochs=60, learning_rate=5e-2)
    assert (logits[~train].argmax(axis=1) == kinds[~train]).mean() > 0.9
    predicted = demo.train_probe(
        embeddings, directions, train, "direction", str(tmp_path), epochs=60, learning_rate=5e-2
    )
    cosine = np.clip(
        (predicted[~train] * directions[~train]).sum(axis=1) / np.linalg.norm(predicted[~train], axis=1), -1, 1
    )
    assert np.median(np.degrees(np.arccos(cosine))) < 15
    with pytest.raises(ValueError, match="task"):
        demo.LinearProbe(3, 2, "pitch", torch.zeros(3), torch.ones(3))


def test_rendered_scenes_carry_their_labels():
    scenes = demo.render_scenes("binaural", num_rooms=8, scenes_per_room=3, seed=1)
    assert scenes.audio.shape == (24, 2, 64000) and scenes.is_test.sum() == 6
    assert np.allclose(np.linalg.norm(scenes.directions, axis=1), 1, atol=1e-5)
    # Scenes come 3 per room, each room one direction; the last 2 rooms are the test set. The binaural level
    # difference follows the azimuth.
    rooms = np.arange(24) // 3
    assert np.array_equal(scenes.is_test, rooms >= 6)
    assert all(len(set(scenes.azimuths[rooms == r])) == 1 for r in range(8))
    level_difference = 10 * np.log10((scenes.audio[:, 0] ** 2).mean(axis=1) / (scenes.audio[:, 1] ** 2).mean(axis=1))
    assert np.corrcoef(level_difference, np.sin(np.radians(scenes.azimuths)))[0, 1] > 0.5
    ambisonic = demo.render_scenes("ambisonics", num_rooms=2, scenes_per_room=1)
    assert ambisonic.audio.shape == (2, 4, 64000)


def _run(args):
    return subprocess.run(
        [sys.executable, "-m", "gram_training.demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_demo_command_end_to_end(tmp_path):
    output = tmp_path / "demo"
    result = _run(
        [
            "--output-dir",
            str(output),
            "--num-rooms",
            "4",
            "--scenes-per-room",
            "3",
            "--pretraining-steps",
            "4",
            "--probe-epochs",
            "5",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(output)) == [".gram-output.json", "directions.png", "results.json", "tiny-gram"]
    assert (output / "tiny-gram" / "model.safetensors").is_file()
    assert (output / "directions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(output / "results.json"))
    assert [r["representation"] for r in summary["results"]] == ["GRAM", "log-mel baseline"]
    for r in summary["results"]:
        assert 0 <= r["kind_accuracy"] <= 1 and 0 <= r["angular_error_median_deg"] <= 180
        assert len(r["predicted_azimuths"]) == summary["test_scenes"] == 3
        assert 0 <= r["azimuth_error_median_deg"] <= 180
    assert summary["azimuth_convention"].startswith("azimuth: 0 = front, +90 = left")
    assert "log-mel baseline" in result.stdout and "kind accuracy" in result.stdout


def test_demo_with_a_given_model_checks_its_format(tmp_path):
    model_dir = tmp_path / "model"
    GramModel(tiny_config("binaural-time")).save_pretrained(model_dir)
    output = tmp_path / "demo"
    result = _run(
        [
            "--output-dir",
            str(output),
            "--audio-format",
            "ambisonics",
            "--model",
            str(model_dir),
            "--num-rooms",
            "2",
            "--scenes-per-room",
            "1",
        ]
    )
    assert result.returncode == 2 and "takes 2 feature channels" in result.stderr
    assert not output.exists() and [p for p in os.listdir(tmp_path) if p != "model"] == []


def test_azimuth_errors_wrap_at_180_degrees():
    # -170 predicted for +170 is 20 degrees off (across the back), not 340; +90 for -90 is a half turn
    np.testing.assert_allclose(demo.wrapped_azimuth_error([-170.0, 170.0, 90.0, 10.0], [170.0, -170.0, -90.0, 10.0]),
                               [20.0, -20.0, -180.0, 0.0])  # fmt: skip
    rng = np.random.default_rng(0)
    predicted, true = rng.uniform(-180, 180, 500), rng.uniform(-180, 180, 500)
    error = demo.wrapped_azimuth_error(predicted, true)
    # an independent reference: the angle between the two horizontal directions, with its sign
    unit = lambda deg: np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))])  # noqa: E731
    between = np.degrees(np.arccos(np.clip((unit(predicted) * unit(true)).sum(0), -1, 1)))
    np.testing.assert_allclose(np.abs(error), between, atol=1e-6)
    cross = unit(true)[0] * unit(predicted)[1] - unit(true)[1] * unit(predicted)[0]
    assert np.all(np.sign(error[np.abs(error) > 1e-3]) == np.sign(cross[np.abs(error) > 1e-3]))
