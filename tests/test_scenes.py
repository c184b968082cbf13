"""The on-device scene builder against independent numpy/scipy/torchaudio computations."""

import numpy as np
import pytest
import scipy.signal
import torch
import torchaudio
from conftest import relative_error

from feature_extraction_gram import GramFeatureExtractor
from gram_training.scenes import SceneBuilder, SceneConfig, fft_convolve


def _scene_batch(batch=3, channels=2, seconds=2.5, taps=3000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = int(seconds * 32000)
    decay = torch.exp(-torch.arange(taps) / 800.0)
    return {
        "source": torch.randn(batch, samples, generator=generator),
        "rir": torch.randn(batch, channels, taps, generator=generator) * decay,
        "noise": torch.randn(batch, samples, generator=generator),
        "noise_rir": torch.randn(batch, channels, taps // 2, generator=generator) * decay[: taps // 2],
    }


def test_fft_convolution_matches_scipy():
    batch = _scene_batch()
    result = fft_convolve(batch["source"], batch["rir"])
    for b in range(3):
        for c in range(2):
            expected = scipy.signal.fftconvolve(
                batch["source"][b].double().numpy(), batch["rir"][b, c].double().numpy()
            )
            assert relative_error(result[b, c], torch.from_numpy(expected[: result.shape[-1]])) < 1e-5


def test_fft_convolution_sums_several_noise_sources():
    batch = _scene_batch()
    several = torch.stack([batch["rir"][..., :1500], batch["noise_rir"]], dim=1)  # (B, 2, C, 1500)
    expected = fft_convolve(batch["noise"], several[:, 0]) + fft_convolve(batch["noise"], several[:, 1])
    assert relative_error(fft_convolve(batch["noise"], several), expected) < 1e-6


def _level(x):
    return 20 * np.log10(np.sqrt(np.mean(np.square(x))))


def test_mix_follows_the_original_recipe():
    """Dry source at -14 dBFS, noise at -14 dBFS over where it plays, SNR over all channels and that span."""
    batch = _scene_batch()
    builder = SceneBuilder(GramFeatureExtractor(num_channels=2), SceneConfig())
    snr = torch.tensor([0.0, 10.0, 25.0])
    clean = torch.tensor([False, False, True])
    active = torch.tensor([[0, 80000], [20000, 30000], [0, 80000]])  # scene 1: noise plays from 0.625 s for 0.94 s
    noise = batch["noise"].clone()
    noise[1, :20000] = 0
    noise[1, 50000:] = 0
    scene = (
        builder.mix(
            batch["source"], batch["rir"], noise, batch["noise_rir"], snr_db=snr, clean=clean, noise_active=active
        )
        .double()
        .numpy()
    )

    for b in range(3):
        dry = batch["source"][b].double().numpy()
        dry = dry * 10 ** (-14 / 20) / np.sqrt(np.mean(dry**2))
        start, length = active[b].tolist()
        playing = noise[b].double().numpy()
        playing = playing * 10 ** (-14 / 20) / np.sqrt(np.mean(playing[start : start + length] ** 2))
        source = np.stack([scipy.signal.fftconvolve(dry, batch["rir"][b, c].double())[:80000] for c in range(2)])
        noise_image = np.stack(
            [scipy.signal.fftconvolve(playing, batch["noise_rir"][b, c].double())[:80000] for c in range(2)]
        )
        residual = scene[b] - source
        if clean[b]:
            assert np.abs(residual).max() < 1e-5 * np.abs(source).max()
            continue
        gain = np.sum(residual * noise_image) / np.sum(noise_image**2)
        assert np.abs(residual - gain * noise_image).max() < 1e-4 * np.abs(residual).max()
        span = slice(start, start + length)
        measured = 10 * np.log10(np.sum(source[:, span] ** 2) / np.sum((gain * noise_image[:, span]) ** 2))
        assert measured == pytest.approx(float(snr[b]), abs=1e-3)


def test_random_snr_and_clean_ratio_are_drawn_per_scene():
    batch = _scene_batch(batch=64, seconds=0.1, taps=64)
    builder = SceneBuilder(GramFeatureExtractor(num_channels=2), SceneConfig(clean_ratio=1.0))
    clean = builder.mix(batch["source"], batch["rir"], batch["noise"], batch["noise_rir"])
    dry = builder.mix(batch["source"], batch["rir"])
    assert relative_error(clean, dry) < 1e-6
    with pytest.raises(ValueError, match="clean_ratio"):
        SceneConfig(clean_ratio=1.5)
    with pytest.raises(ValueError, match="noise_rir"):
        builder.mix(batch["source"], batch["rir"], batch["noise"])


@pytest.mark.parametrize("num_channels,audio_channels", [(2, 2), (7, 4), (1, 1)])
def test_batched_features_match_torchaudio_per_clip(num_channels, audio_channels):
    extractor = GramFeatureExtractor(num_channels=num_channels)
    audio = torch.randn(3, audio_channels, 24000, generator=torch.Generator().manual_seed(1))
    batched = extractor.extract(audio)
    mel = torchaudio.transforms.MelSpectrogram(
        32000, n_fft=1024, win_length=1024, hop_length=320, f_min=50.0, n_mels=128, power=2.0
    )
    for b in range(3):
        log_mel = torch.log(mel(audio[b]) + extractor.effective_log_offset).transpose(-1, -2)
        assert relative_error(batched[b, :audio_channels], log_mel) < 1e-5
        assert relative_error(batched[b], extractor.extract(audio[b])) < 1e-6


def test_crops_are_windows_of_each_clip():
    builder = SceneBuilder(GramFeatureExtractor(num_channels=2), SceneConfig(crops_per_clip=5, crop_frames=200))
    features = torch.randn(2, 2, 1001, 128)
    crops = builder.random_crops(features, torch.Generator().manual_seed(0))
    assert crops.shape == (10, 2, 200, 128)
    for index in range(10):
        clip = features[index // 5]
        starts = [s for s in range(1001 - 199) if torch.equal(clip[:, s : s + 200], crops[index])]
        assert len(starts) == 1
    with pytest.raises(ValueError, match="fewer than the crop"):
        builder.random_crops(torch.randn(1, 2, 150, 128))


@pytest.mark.parametrize("num_channels,audio_channels", [(2, 2), (7, 4)])
def test_builder_gives_model_inputs(num_channels, audio_channels):
    batch = _scene_batch(batch=2, channels=audio_channels, seconds=10.0)
    builder = SceneBuilder(GramFeatureExtractor(num_channels=num_channels))
    inputs = builder(batch, torch.Generator().manual_seed(0))
    assert inputs.shape == (32, num_channels, 200, 128) and inputs.dtype == torch.float32
    assert torch.isfinite(inputs).all()


def test_short_sources_are_normalised_over_their_real_samples():
    batch = _scene_batch(batch=2, seconds=1.0, taps=1)
    batch["rir"] = torch.ones(2, 2, 1)  # identity: the scene is the normalised source on both channels
    batch["source"][:, 12000:] = 0  # 12000 real samples, then zero padding
    builder = SceneBuilder(GramFeatureExtractor(num_channels=2), SceneConfig())
    scene = builder.mix(batch["source"], batch["rir"], source_length=torch.tensor([12000, 12000]))
    assert _level(scene[:, 0, :12000].numpy()) == pytest.approx(-14.0, abs=1e-3)
    padded = builder.mix(batch["source"], batch["rir"])
    assert _level(padded[:, 0].numpy()) == pytest.approx(-14.0, abs=1e-3)  # without lengths: the whole clip


def test_random_snr_spans_the_configured_range():
    batch = _scene_batch(batch=200, seconds=0.05, taps=1)
    batch["rir"] = torch.ones(200, 2, 1)
    batch["noise_rir"] = torch.ones(200, 2, 1)
    builder = SceneBuilder(
        GramFeatureExtractor(num_channels=2), SceneConfig(snr_db_min=5.0, snr_db_max=40.0, clean_ratio=0.25)
    )
    scene = (
        builder.mix(batch["source"], batch["rir"], batch["noise"], batch["noise_rir"], torch.Generator().manual_seed(0))
        .double()
        .numpy()
    )
    source = np.stack([batch["source"].double().numpy()] * 2, axis=1)
    source *= 10 ** (-14 / 20) / np.sqrt(np.mean(source**2, axis=(1, 2), keepdims=True))
    residual_power = np.mean((scene - source) ** 2, axis=(1, 2))
    clean = residual_power < 1e-9 * np.mean(source**2, axis=(1, 2))
    snr = 10 * np.log10(np.mean(source[~clean] ** 2, axis=(1, 2)) / residual_power[~clean])
    assert 0.15 < clean.mean() < 0.35
    assert snr.min() >= 5 - 1e-3 and snr.max() <= 40 + 1e-3 and snr.min() < 10 and snr.max() > 35
