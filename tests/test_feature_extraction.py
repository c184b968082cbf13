"""GramFeatureExtractor against torchaudio called directly, a float64 intensity-vector computation and the
original runtime's feature code; channel adaptation; every bad input."""

import numpy as np
import pytest
import torch
import torchaudio
from reference_gram import original_features, original_melspec

from feature_extraction_gram import GramFeatureExtractor

SR = 32000


def extract(audio, num_channels=2, **kwargs):
    """Features; 4-channel audio is taken in the published model's own layout (as the original code did)."""
    kwargs.setdefault("ambisonics_format", "soundspaces")
    return GramFeatureExtractor(num_channels=num_channels)(audio, sampling_rate=SR, return_tensors="pt", **kwargs)


@pytest.mark.parametrize("num_channels, audio_channels", [(1, 1), (2, 2)])
def test_log_mel_equals_torchaudio(num_channels, audio_channels, audio_clips):
    audio = audio_clips(audio_channels, 3.0113)
    ours = extract(audio, num_channels)["input_values"][0]
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SR,
        n_fft=1024,
        win_length=1024,
        hop_length=320,
        f_min=50,
        f_max=16000,
        n_mels=128,
        power=2.0,
        mel_scale="htk",
        center=True,
        pad_mode="reflect",
    )(audio)
    expected = torch.log(mel + torch.finfo(torch.float32).eps).transpose(-1, -2)
    assert ours.shape == (num_channels, audio.shape[-1] // 320 + 1, 128)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)


def test_long_audio_computed_in_blocks_equals_torchaudio(audio_clips):
    audio = audio_clips(1, 50.0)  # 5001 frames: more than one STFT block
    ours = extract(audio, 1)["input_values"][0]
    expected = torch.log(original_melspec()(audio) + torch.finfo(torch.float32).eps).transpose(-1, -2)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("num_samples", [4096 * 320, 4096 * 320 - 1, 4096 * 320 + 1, 2 * 4096 * 320])
def test_stft_block_boundaries(num_samples):
    # 4096-frame blocks: at k * 1310720 samples the last block holds a single frame at the very end.
    audio = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(num_samples))
    ours = extract(audio, 1)["input_values"][0]
    expected = torch.log(original_melspec()(audio) + torch.finfo(torch.float32).eps).transpose(-1, -2)
    assert ours.shape == expected.shape == (1, num_samples // 320 + 1, 128)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)


def _float64_foa_features(audio: np.ndarray) -> np.ndarray:
    """Log-mels and intensity vectors from scratch in float64: numpy STFT + torchaudio's mel filters."""
    n_fft, hop = 1024, 320
    padded = np.pad(audio, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    frames = audio.shape[1] // hop + 1
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
    spectrum = np.fft.rfft(padded[:, index] * window, axis=-1)  # (4, frames, 513)
    filters = torchaudio.functional.melscale_fbanks(513, 50.0, 16000.0, 128, SR, None, "htk").double().numpy()
    power = np.abs(spectrum) ** 2
    log_mel = np.log(power @ filters + 1e-6)
    intensity = 2 * np.real(np.conj(spectrum[:1]) * spectrum[1:]) / (1e-6 + power.sum(axis=0, keepdims=True))
    return np.concatenate([log_mel, intensity @ filters], axis=0)


def test_ambisonic_features_equal_a_float64_computation(audio_clips):
    audio = audio_clips(4, 1.5)
    ours = extract(audio, 7)["input_values"][0].double().numpy()
    expected = _float64_foa_features(audio.double().numpy())
    assert ours.shape == expected.shape == (7, 151, 128)
    np.testing.assert_allclose(ours[:4], expected[:4], rtol=1e-4, atol=1e-3)
    scale = np.abs(expected[4:]).max()
    assert scale > 0.1  # the intensity vectors carry signal
    np.testing.assert_allclose(ours[4:], expected[4:], atol=1e-4 * scale)


@pytest.mark.parametrize(
    "num_channels, audio_channels",
    [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4), (7, 1), (7, 4)],
)
def test_channel_adaptation_matches_the_original_runtime(num_channels, audio_channels, audio_clips):
    audio = audio_clips(audio_channels, 1.2)
    ours = extract(audio, num_channels)["input_values"]
    expected = original_features([audio], num_channels)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)


def test_stereo_into_ambisonics_is_averaged_then_repeated(audio_clips):
    stereo = audio_clips(2, 1.0)
    ours = extract(stereo, 7)["input_values"]
    as_mono = extract(stereo.mean(dim=0), 7)["input_values"]
    torch.testing.assert_close(ours, as_mono)


def test_batch_padding_and_attention_mask(audio_clips):
    clips = [audio_clips(2, 1.0), audio_clips(2, 2.5).numpy(), audio_clips(2, 0.5)]
    out = extract(clips, 2)
    frames = [c.shape[-1] // 320 + 1 for c in clips]
    assert out["input_values"].shape == (3, 2, max(frames), 128)
    assert out["input_values"].dtype == torch.float32
    assert out["attention_mask"].tolist() == [[1] * n + [0] * (max(frames) - n) for n in frames]
    for i, clip in enumerate(clips):
        alone = extract(clip, 2)["input_values"][0]
        torch.testing.assert_close(out["input_values"][i, :, : frames[i]], alone)
        assert not out["input_values"][i, :, frames[i] :].any()  # the original pads log-mels with 0


def test_numpy_torch_and_3d_batch_inputs_agree(audio_clips):
    audio = audio_clips(2, 0.7)
    from_torch = extract(audio, 2)["input_values"]
    from_numpy = GramFeatureExtractor()(audio.numpy(), sampling_rate=SR)["input_values"]
    from_batch = extract(torch.stack([audio, audio]), 2)["input_values"]
    assert isinstance(from_numpy, np.ndarray)
    np.testing.assert_allclose(from_numpy, from_torch.numpy())
    torch.testing.assert_close(from_batch, torch.cat([from_torch, from_torch]))


def test_integer_pcm_is_scaled(audio_clips):
    audio = audio_clips(2, 0.5)
    pcm16 = (audio.clamp(-1, 0.999) * 32768).round().to(torch.int16)
    torch.testing.assert_close(extract(pcm16, 2)["input_values"], extract(pcm16.float() / 32768, 2)["input_values"])
    pcm16_np = pcm16.numpy()
    np.testing.assert_allclose(
        GramFeatureExtractor()(pcm16_np, sampling_rate=SR)["input_values"], extract(pcm16, 2)["input_values"].numpy()
    )


@pytest.mark.parametrize(
    "dtype, scale, offset",
    [(np.int16, 32768.0, 0.0), (np.int32, 2147483648.0, 0.0), (np.uint8, 128.0, 128.0)],
)
def test_pcm_scaling_rules(dtype, scale, offset):
    info = np.iinfo(dtype)
    pcm = np.random.default_rng(0).integers(info.min, info.max, size=(2, 16000), endpoint=True).astype(dtype)
    expected = extract(torch.from_numpy((pcm.astype(np.float64) - offset) / scale).float(), 2)["input_values"]
    torch.testing.assert_close(extract(pcm, 2)["input_values"], expected)
    torch.testing.assert_close(extract(torch.from_numpy(pcm), 2)["input_values"], expected)


def test_list_of_samples_and_device_argument(audio_clips):
    audio = audio_clips(1, 0.5)[0]
    from_list = extract([float(x) for x in audio], 1)["input_values"]
    from_np_scalars = extract(list(audio.numpy()), 1)["input_values"]
    torch.testing.assert_close(from_list, extract(audio, 1)["input_values"])
    torch.testing.assert_close(from_np_scalars, from_list)
    with pytest.raises(TypeError, match="int16/int32/uint8"):
        extract([1, 2, 3] * 400, 1)  # a list of Python ints is integer audio of unknown scale
    on_device = GramFeatureExtractor(num_channels=1)(audio, sampling_rate=SR, return_tensors="pt", device="cpu")
    torch.testing.assert_close(on_device["input_values"], from_list)


def test_log_offset_follows_the_format_unless_set(audio_clips):
    assert GramFeatureExtractor(num_channels=7).effective_log_offset == 1e-6
    assert GramFeatureExtractor(num_channels=2).effective_log_offset == float(np.finfo(np.float32).eps)
    import os

    from conftest import ROOT
    from transformers import AutoFeatureExtractor

    ambisonic = AutoFeatureExtractor.from_pretrained(ROOT, trust_remote_code=True, num_channels=7)
    assert ambisonic.effective_log_offset == 1e-6
    quiet = 1e-4 * audio_clips(4, 0.5)  # quiet audio: where the offset matters
    torch.testing.assert_close(
        ambisonic(quiet, sampling_rate=SR, return_tensors="pt", ambisonics_format="soundspaces")["input_values"],
        extract(quiet, 7)["input_values"],
    )
    assert os.path.isfile(os.path.join(ROOT, "preprocessor_config.json"))
    assert GramFeatureExtractor(num_channels=2, log_offset=1e-5).effective_log_offset == 1e-5


def test_pad_is_not_a_silent_second_path():
    with pytest.raises(NotImplementedError, match="pass all clips in one call"):
        GramFeatureExtractor().pad({"input_values": [np.zeros((2, 3, 128))]})


def test_resampling_only_when_asked(audio_clips):
    audio_16k = audio_clips(2, 1.0)[:, ::2].contiguous()
    with pytest.raises(ValueError, match="expects audio at 32000 Hz, got 16000 Hz"):
        GramFeatureExtractor()(audio_16k, sampling_rate=16000)
    out = GramFeatureExtractor()(audio_16k, sampling_rate=16000, resample=True, return_tensors="pt")
    assert out["input_values"].shape == (1, 2, 32000 // 320 + 1, 128)


@pytest.mark.parametrize(
    "audio, kwargs, error, message",
    [
        (np.zeros((2, 8000), np.float32), {"sampling_rate": None}, ValueError, "sampling_rate` is required"),
        (np.zeros((2, 8000), np.float32), {"sampling_rate": "32000"}, TypeError, "sampling_rate must be an int"),
        (np.full((2, 8000), np.nan, np.float32), {}, ValueError, "NaN or Inf"),
        (np.array([0.0, np.inf] * 4000, np.float32), {}, ValueError, "NaN or Inf"),
        (np.zeros((2, 0), np.float32), {}, ValueError, "empty"),
        ([], {}, ValueError, "empty list"),
        (np.zeros((8000, 2), np.float32), {}, ValueError, r"looks like \(num_samples, channels\)"),
        (np.zeros((3, 8000), np.float32), {}, ValueError, "1 \\(mono\\), 2 \\(binaural/stereo\\) or 4"),
        (np.zeros((2, 8000), np.int64), {}, TypeError, "int16/int32/uint8"),
        (torch.zeros(2, 8000, dtype=torch.bool), {}, TypeError, "int16/int32/uint8"),
        (np.zeros((2, 100), np.float32), {}, ValueError, "too short"),
        (np.zeros((1, 1, 2, 8000), np.float32), {}, ValueError, "Expected audio of shape"),
        ("audio.wav", {}, TypeError, "numpy array or a torch tensor"),
        (np.zeros((2, 8000), np.float32), {"return_tensors": "tf"}, ValueError, "return_tensors"),
        (np.zeros((2, 8000), np.float32), {"padding": True}, TypeError, "Unexpected arguments"),
    ],
)
def test_bad_inputs_raise_clear_errors(audio, kwargs, error, message):
    kwargs = {"sampling_rate": SR, **kwargs}
    with pytest.raises(error, match=message):
        GramFeatureExtractor()(audio, **kwargs)


def test_unsupported_feature_channels():
    with pytest.raises(ValueError, match="1 \\(mono\\), 2 \\(binaural\\) or 7"):
        GramFeatureExtractor(num_channels=4)


@pytest.mark.parametrize("channels", [2, 4])
def test_finite_but_huge_audio_is_refused_not_turned_into_nan(channels):
    """|x| ~ 1e18 overflows the float32 power spectrum (and the FOA intensity products): every feature would be
    NaN/Inf. The extractor says so instead; ordinary loud PCM-scaled floats still work."""
    extractor = GramFeatureExtractor(num_channels=7 if channels == 4 else 2, ambisonics_format="soundspaces")
    t = np.arange(32000) / 32000
    tone = np.stack([np.sin(2 * np.pi * 440 * t + c) for c in range(channels)]).astype(np.float32)
    assert np.isfinite(extractor(tone * 32767.0, sampling_rate=32000)["input_values"]).all()
    with pytest.raises(ValueError, match="Clip 0 gives non-finite features: its peak amplitude 1e\\+18"):
        extractor(tone * 1e18, sampling_rate=32000)
