"""First-order ambisonic conventions: analytic plane waves from six directions, encoded here from the
conventions' definitions (not from the package's table), must give intensity vectors along the model's axes;
the simulator's direct sound must be encoded in the published model's layout; 4-channel audio is never
read without a declared convention."""

import math

import numpy as np
import pytest
import torch
import torchaudio

from configuration_gram import GramConfig
from feature_extraction_gram import GramFeatureExtractor
from gram_training.rooms import RoomSpec, direction_vector, foa_rir

SR = 32000
SQRT3 = math.sqrt(3.0)
# (front, left, up) unit vectors of the listener
DIRECTIONS = {
    "front": (1, 0, 0),
    "back": (-1, 0, 0),
    "left": (0, 1, 0),
    "right": (0, -1, 0),
    "up": (0, 0, 1),
    "down": (0, 0, -1),
    "front-left-up": (1 / SQRT3, 1 / SQRT3, 1 / SQRT3),
}


def encode(signal: np.ndarray, direction, convention: str) -> np.ndarray:
    """A plane wave of pressure `signal` from `direction` (front, left, up), written from each convention's
    definition: AmbiX = ACN order (W, Y, Z, X) with SN3D (first order = direction cosines); FuMa = W, X, Y, Z
    with W at 1/sqrt(2); SoundSpaces (RLR-Audio-Propagation: "Ambisonics use N3D normalization, and use the same
    coordinate convention as world space", habitat's x right, y up, z back) = ACN order over (x, y, z) with N3D
    (first order sqrt(3) times SN3D): W, sqrt(3) up, sqrt(3) back, sqrt(3) right."""
    front, left, up = direction
    if convention == "ambix":
        gains = [1, left, up, front]
    elif convention == "fuma":
        gains = [1 / math.sqrt(2), front, left, up]
    elif convention == "soundspaces":
        habitat_x, habitat_y, habitat_z = -left, up, -front  # right, up, back
        gains = [1, SQRT3 * habitat_y, SQRT3 * habitat_z, SQRT3 * habitat_x]
    elif convention == "wxyz-sn3d":  # the package's simulator before 2026-11-30
        gains = [1, front, left, up]
    else:
        raise ValueError(convention)
    return np.stack([g * signal for g in gains]).astype(np.float32)


def model_axes(direction, layout: str) -> np.ndarray:
    """What the intensity-vector channels of a model trained on `layout` must show: the first-order gains
    relative to W of a plane wave, times 1 / (1 + sum of squared gains) * 2 (I = 2 Re(W* A) / (|W|^2 + ...))."""
    encoded = encode(np.ones(1), direction, layout)[:, 0].astype(np.float64)
    return 2 * encoded[0] * encoded[1:] / (encoded**2).sum()


@pytest.fixture(scope="module")
def noise():
    return 0.1 * np.random.default_rng(3).standard_normal(SR).astype(np.float32)


@pytest.fixture(scope="module")
def mel_weight():
    """Each mel filter's total weight (torchaudio's HTK filters, as the original): a plane wave's normalised
    intensity is the same in every STFT bin, so its mel-scaled value is that times the filter's weight."""
    filters = torchaudio.functional.melscale_fbanks(513, 50.0, 16000.0, 128, SR, norm=None, mel_scale="htk")
    return filters.sum(dim=0).double().numpy()


@pytest.mark.parametrize("layout", ["soundspaces", "ambix"])
@pytest.mark.parametrize("convention", ["ambix", "fuma", "soundspaces", "wxyz-sn3d"])
@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_plane_waves_point_along_the_model_axes(name, convention, layout, noise, mel_weight):
    direction = DIRECTIONS[name]
    extractor = GramFeatureExtractor.from_config(GramConfig.from_variant("ambisonics-time", ambisonics_layout=layout))
    features = extractor(encode(noise, direction, convention), sampling_rate=SR, ambisonics_format=convention)
    intensity = features["input_values"][0, 4:, 2:-2].astype(np.float64)  # (3, frames, mels), edges left out
    per_bin = intensity / mel_weight  # the normalised intensity of each (frame, mel)
    expected = model_axes(direction, layout)
    np.testing.assert_allclose(per_bin.mean(axis=(1, 2)), expected, atol=2e-3)
    assert np.abs(per_bin - expected[:, None, None]).max() < 2e-2  # every bin, not only on average
    # W is the pressure whatever the convention: its log-mel is that of the plane wave's signal.
    pressure = GramFeatureExtractor(num_channels=1, log_offset=1e-6)(noise, sampling_rate=SR)["input_values"][0, 0]
    np.testing.assert_allclose(features["input_values"][0, 0], pressure, atol=1e-4)


def test_published_layout_axes_are_up_back_right(noise):
    """The published model's intensity channels read (up, back, right), sqrt(3)/2 long for a plane wave (N3D)."""
    for name, axis, sign in [("up", 0, 1), ("down", 0, -1), ("back", 1, 1), ("front", 1, -1), ("right", 2, 1)]:
        expected = np.zeros(3)
        expected[axis] = sign * SQRT3 / 2
        np.testing.assert_allclose(model_axes(DIRECTIONS[name], "soundspaces"), expected, atol=1e-12)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_simulated_direct_sound_is_in_the_published_layout(name):
    direction = np.asarray(DIRECTIONS[name], dtype=float)
    elevation = math.degrees(math.asin(direction[2]))
    azimuth = math.degrees(math.atan2(direction[1], direction[0]))
    np.testing.assert_allclose(direction_vector(azimuth, elevation), direction, atol=1e-12)
    spec = RoomSpec((12.0, 10.0, 8.0), 0.9, (6.0, 5.0, 4.0), azimuth, elevation, 1.6, max_order=0)
    rir = foa_rir(spec)
    peak = int(np.argmax(np.abs(rir).sum(axis=0)))
    direct = rir[:, max(peak - 40, 0) : peak + 40].astype(np.float64)
    gains = direct[1:] @ direct[0] / (direct[0] @ direct[0])  # least squares over the direct path
    expected = encode(np.ones(1), direction, "soundspaces")[1:, 0]
    np.testing.assert_allclose(gains, expected, atol=5e-3)
    # and in any other layout on request: AmbiX gives the direction cosines (left, up, front)
    ambix = foa_rir(spec, layout="ambix")[:, max(peak - 40, 0) : peak + 40].astype(np.float64)
    np.testing.assert_allclose(ambix[1:] @ ambix[0] / (ambix[0] @ ambix[0]), direction[[1, 2, 0]], atol=5e-3)


def test_four_channels_need_a_declared_convention(noise):
    extractor = GramFeatureExtractor(num_channels=7)
    foa = encode(noise, DIRECTIONS["left"], "ambix")
    with pytest.raises(ValueError, match="4-channel ambisonics of unknown convention: pass ambisonics_format="):
        extractor(foa, sampling_rate=SR)
    with pytest.raises(
        ValueError, match="ambisonics_format must be one of ambix, fuma, soundspaces, wxyz-sn3d, got 'acn'"
    ):
        extractor(foa, sampling_rate=SR, ambisonics_format="acn")
    with pytest.raises(ValueError, match="ambisonics_layout must be one of"):
        GramConfig(ambisonics_layout="b-format")
    # a default for the extractor, saved with it; mono and stereo need none
    extractor = GramFeatureExtractor(num_channels=7, ambisonics_format="ambix")
    assert extractor.to_dict()["ambisonics_format"] == "ambix"
    extractor(foa, sampling_rate=SR)
    GramFeatureExtractor(num_channels=7)(noise, sampling_rate=SR)


def test_fuma_into_a_mono_or_binaural_model_uses_w_as_pressure(noise):
    fuma = encode(noise, DIRECTIONS["up"], "fuma")
    for channels in (1, 2):
        extractor = GramFeatureExtractor(num_channels=channels)
        ours = extractor(fuma, sampling_rate=SR, ambisonics_format="fuma")["input_values"]
        pressure = extractor(noise, sampling_rate=SR)["input_values"]
        np.testing.assert_allclose(ours, pressure, atol=1e-4)


def test_model_and_extractor_must_agree_on_the_layout(tmp_path):
    config = GramConfig.from_variant("ambisonics-frame")
    config.check_feature_extractor(GramFeatureExtractor.from_config(config))
    with pytest.raises(ValueError, match="ambisonics_layout: model soundspaces, extractor ambix"):
        config.check_feature_extractor(GramFeatureExtractor(num_channels=7, ambisonics_layout="ambix"))
    config.save_pretrained(tmp_path)
    assert GramConfig.from_pretrained(tmp_path).ambisonics_layout == "soundspaces"
    GramFeatureExtractor(num_channels=7, ambisonics_format="fuma").save_pretrained(tmp_path)
    loaded = GramFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.ambisonics_layout, loaded.ambisonics_format) == ("soundspaces", "fuma")


def test_the_published_wrapper_remap_is_the_ambix_conversion(noise):
    """The public HEAR wrapper for labhamlet/gramt-ambisonics feeds AmbiX recordings as sqrt(3) [W, Z, -X, -Y]
    (its comments: the model expects up, -front, right); the extractor's conversion gives the same features."""
    ambix = encode(noise, DIRECTIONS["front-left-up"], "ambix")
    w, y, z, x = ambix
    remapped = np.stack([w, SQRT3 * z, -SQRT3 * x, -SQRT3 * y])
    extractor = GramFeatureExtractor(num_channels=7)
    ours = extractor(ambix, sampling_rate=SR, ambisonics_format="ambix")["input_values"]
    theirs = extractor(remapped, sampling_rate=SR, ambisonics_format="soundspaces")["input_values"]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert torch.is_tensor(torch.from_numpy(ours))


def test_pretraining_reads_ambisonic_impulse_responses_in_their_declared_convention(tmp_path):
    from gram_training.data import SkippedFiles
    from gram_training.train import DataArguments, build_dataset

    spec = RoomSpec((12.0, 10.0, 8.0), 0.9, (6.0, 5.0, 4.0), 30.0, 10.0, 1.6, max_order=0)
    (tmp_path / "sources").mkdir()
    np.save(tmp_path / "sources" / "a.npy", np.zeros(SR, np.float32))
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    np.save(rirs / "r.npy", foa_rir(spec, layout="ambix"))
    config = GramConfig.from_variant("ambisonics-time")
    arguments = {"rir_dir": str(rirs), "audio_dir": str(tmp_path / "sources")}
    with pytest.raises(ValueError, match="Unknown convention of the ambisonic impulse responses"):
        build_dataset(DataArguments(**arguments), config, seed=0)
    dataset = build_dataset(DataArguments(**arguments, rir_ambisonics_format="ambix"), config, seed=0)
    drawn = dataset.rirs.draw(np.random.default_rng(0), SkippedFiles())
    np.testing.assert_allclose(drawn, foa_rir(spec), atol=1e-6)  # converted into the model's (published) layout
    (tmp_path / "rirs.json").write_text('{"ambisonics_layout": "soundspaces"}')  # as gram-simulate records it
    np.save(rirs / "r.npy", foa_rir(spec))
    dataset = build_dataset(DataArguments(**arguments), config, seed=0)
    np.testing.assert_allclose(dataset.rirs.draw(np.random.default_rng(0), SkippedFiles()), foa_rir(spec), atol=0)


def test_old_ambisonic_configs_warn_about_their_assumed_layout(tmp_path, caplog):
    import json

    config = GramConfig.from_variant("ambisonics-time")
    config.save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    assert values["ambisonics_layout"] == "soundspaces"
    del values["ambisonics_layout"]  # as written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(values))
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            loaded = GramConfig.from_pretrained(tmp_path)
    finally:
        hf_logging.disable_propagation()
    assert loaded.ambisonics_layout == "soundspaces" and "no ambisonics_layout" in caplog.text
    loaded.custom_pipelines = {}  # transformers assigns it (Pipeline.save_pretrained); the code's table stays
    assert "feature-extraction" in loaded.custom_pipelines
