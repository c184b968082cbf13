"""Feature extractor for GRAM: multi-channel log-mel spectrograms (+ FOA intensity vectors)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor

try:  # loaded by transformers as remote code (a package)
    from .configuration_gram import (
        AMBISONICS_FORMATS,
        AUDIO_CHANNELS,
        DEFAULT_AMBISONICS_LAYOUT,
        GRAM_FORMATS,
        ambisonics_conversion,
    )
except ImportError:  # imported directly from the repository root
    from configuration_gram import (
        AMBISONICS_FORMATS,
        AUDIO_CHANNELS,
        DEFAULT_AMBISONICS_LAYOUT,
        GRAM_FORMATS,
        ambisonics_conversion,
    )

# Audio channels each model format consumes, by feature channels (from the configuration's one table).
AUDIO_CHANNELS_FOR_FEATURES = {GRAM_FORMATS[name]: AUDIO_CHANNELS[name] for name in GRAM_FORMATS}
ACCEPTED_AUDIO_CHANNELS = tuple(sorted(AUDIO_CHANNELS.values()))
AMBISONIC_FEATURES = GRAM_FORMATS["ambisonics"]
# Frames computed at once: bounds the memory of the complex STFT for long recordings.
_FRAMES_PER_BLOCK = 4096


def htk_mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sampling_rate: int) -> torch.Tensor:
    """Triangular HTK-scale mel filters without area normalisation, shape `(n_freqs, n_mels)`.

    The filters of `torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="htk")`, computed in
    the same float32 steps (the original features were made with them), without needing torchaudio.
    """
    mel_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    mel_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    all_freqs = torch.linspace(0, sampling_rate // 2, n_freqs)
    hz_points = 700.0 * (10.0 ** (torch.linspace(mel_min, mel_max, n_mels + 2) / 2595.0) - 1.0)
    widths = hz_points[1:] - hz_points[:-1]  # (n_mels + 1,)
    slopes = hz_points.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def resample_audio(audio: np.ndarray | torch.Tensor, orig_rate: int, target_rate: int) -> np.ndarray:
    """`(channels, samples)` float audio at `orig_rate` resampled to `target_rate`, as float32 numpy.

    The one resampler of the package (extractor, embedding CLI, training data): libsoxr's "HQ" quality through
    python-soxr, whose memory stays bounded for any pair of rates, coprime ones included (a sinc kernel built
    for 32001 -> 32000 Hz, as torchaudio's resample does, needs gigabytes).
    """
    for name, rate in (("orig_rate", orig_rate), ("target_rate", target_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 1 <= rate <= 10_000_000:
            raise ValueError(f"{name} must be a sampling rate in Hz (an int from 1 to 10,000,000), got {rate!r}.")
    samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if samples.ndim != 2:
        raise ValueError(f"Expected (channels, samples) audio to resample, got shape {samples.shape}.")
    samples = samples.astype(np.float32, copy=False)
    if orig_rate == target_rate:
        return samples
    try:
        import soxr
    except ImportError as error:  # pragma: no cover - soxr is part of every install of this package
        raise ImportError("Resampling needs python-soxr: pip install soxr (or resample the audio yourself).") from error
    # soxr takes (samples, channels); a contiguous copy of the transposed view keeps channels interleaved.
    resampled = soxr.resample(np.ascontiguousarray(samples.T), int(orig_rate), int(target_rate), quality="HQ")
    return np.ascontiguousarray(resampled.reshape(-1, samples.shape[0]).T)


class GramFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns waveforms into the log-mel spectrograms GRAM was trained on, exactly as the original code:
    a centred, reflect-padded STFT (Hann window of 1024 samples, hop 320 = 10 ms at 32 kHz), power
    spectrum, 128 HTK mel filters from 50 Hz to 16 kHz, natural log of (mel + `log_offset`).

    For ambisonics (`num_channels=7`) the input is first-order ambisonics in a declared convention
    (`ambisonics_format`: "ambix", "fuma" or "soundspaces", see `configuration_gram.AMBISONICS_FORMATS`),
    converted into the model's `ambisonics_layout` (channels `[W, A, B, C]`; for the published models
    "soundspaces": W, up, back, right, N3D). The features are its 4 log-mels followed by the 3 mel-scaled
    normalised active intensity vectors `I = 2 Re(conj(W) [A, B, C]) / (eps + |W|^2 + |A|^2 + |B|^2 + |C|^2)`.
    4-channel audio has no default convention: nothing in the samples tells AmbiX from FuMa, so it is never
    guessed.

    Channel adaptation (as the original runtime does): into a binaural model, mono is duplicated and FOA
    uses its W channel twice; into a mono model, stereo is averaged and FOA uses W; into an ambisonics
    model, mono is repeated on W, X, Y and Z (the original's rule for clean training data) and stereo is
    first averaged to mono. Other channel counts are rejected.

    Args:
        num_channels (`int`, defaults to 2): feature channels of the model: 1, 2 or 7.
        num_mel_bins (`int`, defaults to 128): mel filters.
        sampling_rate (`int`, defaults to 32000): the only rate accepted unless `resample=True` is given.
        n_fft, win_length, hop_length, f_min, f_max: STFT and filterbank settings.
        log_offset (`float`, *optional*): added before the log. By default (None) the published inference
            code's value: float32 machine epsilon (1.19e-7) for mono/binaural, 1e-6 for ambisonics. The
            original pretraining used 1e-5 for mono/binaural.
        intensity_eps (`float`, defaults to 1e-6): epsilon of the intensity-vector normalisation.
        padding_value (`float`, defaults to 0.0): the log-mel value of padded frames (the original pads with 0).
        ambisonics_layout (`str`, defaults to "soundspaces"): the convention the model was trained on (from
            `GramConfig.ambisonics_layout`); 4-channel audio is converted into it.
        ambisonics_format (`str`, *optional*): the convention of the 4-channel audio this extractor will be
            given, unless a call says otherwise. None (the default): every call with 4-channel audio must pass
            `ambisonics_format`.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        num_channels: int = 2,
        num_mel_bins: int = 128,
        sampling_rate: int = 32000,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 320,
        f_min: float = 50.0,
        f_max: float | None = None,
        log_offset: float | None = None,
        intensity_eps: float = 1e-6,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        ambisonics_layout: str = DEFAULT_AMBISONICS_LAYOUT,
        ambisonics_format: str | None = None,
        **kwargs,
    ):
        kwargs.pop("feature_size", None)  # saved by the base class; always num_mel_bins here
        super().__init__(
            feature_size=num_mel_bins,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        if num_channels not in AUDIO_CHANNELS_FOR_FEATURES:
            raise ValueError(f"num_channels must be 1 (mono), 2 (binaural) or 7 (ambisonics), got {num_channels}.")
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft}).")
        self.num_channels = num_channels
        self.num_mel_bins = num_mel_bins
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.f_min = float(f_min)
        self.f_max = float(f_max if f_max is not None else sampling_rate // 2)
        # None = the published default of the format, resolved when used, so that overriding num_channels
        # (e.g. from_pretrained(..., num_channels=7)) also gets the right offset.
        self.log_offset = None if log_offset is None else float(log_offset)
        self.intensity_eps = float(intensity_eps)
        self.ambisonics_layout = _checked_ambisonics_format(ambisonics_layout, "ambisonics_layout")
        self.ambisonics_format = (
            None if ambisonics_format is None else _checked_ambisonics_format(ambisonics_format, "ambisonics_format")
        )
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, config, **kwargs) -> "GramFeatureExtractor":
        """The extractor of a model configuration: channels, mel bins, sampling rate and hop come from the config
        (the one source of truth, so features and timestamps cannot silently disagree with the model)."""
        settings = dict(
            num_channels=config.num_channels,
            num_mel_bins=config.num_mel_bins,
            sampling_rate=config.sampling_rate,
            hop_length=config.hop_length,
            ambisonics_layout=getattr(config, "ambisonics_layout", DEFAULT_AMBISONICS_LAYOUT),
        )
        return cls(**{**settings, **kwargs})

    @property
    def effective_log_offset(self) -> float:
        """`log_offset`, or the published default: 1e-6 for ambisonics, float32 epsilon otherwise."""
        if self.log_offset is not None:
            return self.log_offset
        return 1e-6 if self.num_channels == AMBISONIC_FEATURES else float(torch.finfo(torch.float32).eps)

    @property
    def audio_channels(self) -> int:
        """Channels of the audio the model is made for: 1 (mono), 2 (binaural: left, right) or 4 (first-order ambisonics)."""
        return AUDIO_CHANNELS_FOR_FEATURES[self.num_channels]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_device_cache", None)
        return output

    # ----------------------------------------------------------------------------------------------
    # Public entry point
    # ----------------------------------------------------------------------------------------------
    def __call__(
        self,
        raw_audio: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        return_attention_mask: bool | None = None,
        resample: bool = False,
        device: str | torch.device | None = None,
        ambisonics_format: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Computes features of one clip or a batch of clips.

        Args:
            raw_audio: one clip, `(num_samples,)` (mono) or `(channels, num_samples)`; or a batch, as a list
                of such clips (lengths may differ) or an array `(batch, channels, num_samples)`. numpy or
                torch; float audio in [-1, 1]; int16/int32/uint8 PCM is scaled to [-1, 1). A 2-D array is
                always ONE clip: pass a batch of mono clips as a list or as `(batch, 1, num_samples)`.
            sampling_rate (`int`): the rate of `raw_audio`. Required, so that audio at another rate is
                never silently misread.
            return_tensors (`str`, *optional*): "pt" for torch tensors, "np" (default) for numpy arrays.
            return_attention_mask (`bool`, *optional*): defaults to the extractor's setting (True).
            resample (`bool`, defaults to False): resample audio at another rate (with python-soxr, see
                `resample_audio`) instead of raising an error.
            device (*optional*): compute (and, with "pt", return) the features on this device.
            ambisonics_format (`str`, *optional*): the convention of 4-channel input: "ambix" (ACN order
                W, Y, Z, X, SN3D: most recordings, e.g. STARSS23), "fuma" (W, X, Y, Z, W at -3 dB) or
                "soundspaces" (the published model's own layout). Required for 4-channel audio unless the
                extractor was made with a default `ambisonics_format`.

        Returns:
            [`BatchFeature`] with `input_values` float32 `(batch, num_channels, num_frames, num_mel_bins)`,
            `num_frames = num_samples // hop_length + 1` of the longest clip, shorter clips padded with
            `padding_value`; and `attention_mask` int32 `(batch, num_frames)`, 1 on each clip's real frames.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments: {', '.join(sorted(kwargs))}.")
        if sampling_rate is not None and (
            isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer))
        ):
            raise TypeError(f"sampling_rate must be an int (Hz), got {type(sampling_rate).__name__} {sampling_rate!r}.")
        if sampling_rate is None:
            raise ValueError(
                f"`sampling_rate` is required: GRAM expects {self.sampling_rate} Hz audio; call "
                f"extractor(audio, sampling_rate={self.sampling_rate})."
            )
        if sampling_rate != self.sampling_rate and not resample:
            raise ValueError(
                f"GRAM expects audio at {self.sampling_rate} Hz, got {sampling_rate} Hz. Resample it first, "
                "or pass resample=True."
            )
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")
        device = torch.device(device) if device is not None else torch.device("cpu")
        if ambisonics_format is not None:
            ambisonics_format = _checked_ambisonics_format(ambisonics_format, "ambisonics_format")
        ambisonics_format = ambisonics_format or self.ambisonics_format

        clips = [
            self._adapt_channels(clip, i, ambisonics_format) for i, clip in enumerate(self._split_batch(raw_audio))
        ]
        if sampling_rate != self.sampling_rate:
            clips = [self._resample(clip, sampling_rate) for clip in clips]
        features = [self.extract(clip.to(device)) for clip in clips]
        for index, (clip, feat) in enumerate(zip(clips, features)):
            if not torch.isfinite(feat).all():  # finite but huge samples overflow the float32 power spectrum
                raise ValueError(
                    f"Clip {index} gives non-finite features: its peak amplitude {clip.abs().max().item():.3g} is out "
                    "of range. Pass float audio scaled to [-1, 1] (or int16/int32 PCM, which is scaled for you)."
                )

        num_frames = [feat.shape[1] for feat in features]
        longest = max(num_frames)
        input_values = torch.full(
            (len(features), self.num_channels, longest, self.num_mel_bins), self.padding_value, device=device
        )
        attention_mask = torch.zeros(len(features), longest, dtype=torch.int32, device=device)
        for i, feat in enumerate(features):
            input_values[i, :, : feat.shape[1]] = feat
            attention_mask[i, : feat.shape[1]] = 1

        data = {"input_values": input_values}
        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            data["attention_mask"] = attention_mask
        if return_tensors != "pt":
            data = {k: v.cpu().numpy() for k, v in data.items()}
        return BatchFeature(data, tensor_type=return_tensors)

    def pad(self, *args, **kwargs):
        raise NotImplementedError(
            "GramFeatureExtractor pads log-mel features itself: pass all clips in one call, "
            "extractor([clip_1, clip_2, ...], sampling_rate=32000)."
        )

    # ----------------------------------------------------------------------------------------------
    # Features
    # ----------------------------------------------------------------------------------------------
    def extract(self, audio: torch.Tensor) -> torch.Tensor:
        """Features of audio already in the model's channel layout, one clip or a batch of equal-length clips
        (the pretraining pipeline extracts a whole batch on its device in one call).

        Args:
            audio (`torch.FloatTensor` of shape `(..., audio_channels, num_samples)`).

        Returns:
            `torch.FloatTensor` of shape `(..., num_channels, num_samples // hop_length + 1, num_mel_bins)`.
        """
        num_samples = audio.shape[-1]
        if num_samples <= self.n_fft // 2:
            raise ValueError(
                f"Audio too short: {num_samples} samples; the reflect-padded STFT needs more than "
                f"{self.n_fft // 2} samples ({1000 * (self.n_fft // 2 + 1) / self.sampling_rate:.0f} ms)."
            )
        window, filterbank = self._get_buffers(audio.device)
        total_frames = num_samples // self.hop_length + 1
        audio = audio.float()
        half = self.n_fft // 2
        blocks = []
        for start in range(0, total_frames, _FRAMES_PER_BLOCK):
            stop = min(start + _FRAMES_PER_BLOCK, total_frames)
            # Samples of these frames in the centred (reflect-padded) signal; only the edge blocks need the
            # reflection, so the whole recording is never copied: identical frames, bounded memory.
            low, high = start * self.hop_length - half, (stop - 1) * self.hop_length + half
            pieces = [audio[..., max(low, 0) : min(high, num_samples)]]
            if low < 0:  # reflection of the whole signal's start: x[-low], ..., x[1]
                pieces.insert(0, audio[..., 1 : 1 - low].flip(-1))
            if high > num_samples:  # and of its end: x[N-2], ..., x[N-1-(high-N)]
                pieces.append(audio[..., 2 * num_samples - 1 - high : num_samples - 1].flip(-1))
            segment = torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]
            spectrum = torch.stft(
                segment.reshape(-1, segment.shape[-1]),
                self.n_fft,
                self.hop_length,
                self.win_length,
                window,
                center=False,
                return_complex=True,
            )  # (prod(leading dims), n_fft // 2 + 1, frames)
            spectrum = spectrum.reshape(*segment.shape[:-1], *spectrum.shape[-2:])  # (..., C, freqs, frames)
            blocks.append(self._spectrum_to_features(spectrum, filterbank))
        return torch.cat(blocks, dim=-2)

    def _spectrum_to_features(self, spectrum: torch.Tensor, filterbank: torch.Tensor) -> torch.Tensor:
        power = spectrum.real.square() + spectrum.imag.square()  # (..., C, freqs, frames)
        log_mel = torch.log(power.transpose(-1, -2) @ filterbank + self.effective_log_offset)  # (..., C, frames, mels)
        if self.num_channels != AMBISONIC_FEATURES:
            return log_mel
        omni, directional = spectrum[..., :1, :, :], spectrum[..., 1:, :, :]
        intensity = 2.0 * (omni.conj() * directional).real  # (..., 3, freqs, frames)
        energy = self.intensity_eps + power.sum(dim=-3, keepdim=True)
        intensity_mel = (intensity / energy).transpose(-1, -2) @ filterbank  # (..., 3, frames, mels)
        return torch.cat([log_mel, intensity_mel], dim=-3)

    def _get_buffers(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._device_cache:
            window = torch.hann_window(self.win_length, device=device)
            filterbank = htk_mel_filterbank(
                self.n_fft // 2 + 1, self.f_min, self.f_max, self.num_mel_bins, self.sampling_rate
            ).to(device)
            self._device_cache[device] = (window, filterbank)
        return self._device_cache[device]

    # ----------------------------------------------------------------------------------------------
    # Input checking and channel adaptation
    # ----------------------------------------------------------------------------------------------
    def _split_batch(self, raw_audio) -> list[torch.Tensor]:
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("Expected audio, got an empty list.")
            if all(np.isscalar(x) for x in raw_audio):  # one mono clip as a list of samples
                return [self._to_tensor(np.asarray(raw_audio), 0)]
            clips = [self._to_tensor(clip, i) for i, clip in enumerate(raw_audio)]
            for i, clip in enumerate(clips):
                if clip.ndim > 2:
                    raise ValueError(
                        f"Clip {i} has shape {tuple(clip.shape)}; each clip in a list must be (num_samples,) "
                        "or (channels, num_samples)."
                    )
            return clips
        audio = self._to_tensor(raw_audio, 0)
        if audio.ndim == 3:
            return list(audio.unbind(0))
        if audio.ndim in (1, 2):
            return [audio]
        raise ValueError(
            f"Expected audio of shape (num_samples,), (channels, num_samples) or (batch, channels, num_samples), "
            f"got {tuple(audio.shape)}."
        )

    @staticmethod
    def _to_tensor(clip, index: int) -> torch.Tensor:
        if isinstance(clip, torch.Tensor):
            tensor = clip.detach()
            if tensor.dtype == torch.int16:
                tensor = tensor.float() / 32768.0
            elif tensor.dtype == torch.int32:
                tensor = tensor.double() / 2147483648.0
            elif tensor.dtype == torch.uint8:
                tensor = (tensor.float() - 128.0) / 128.0
            elif not tensor.is_floating_point():
                raise TypeError(
                    f"Clip {index} has dtype {tensor.dtype}; expected float audio or int16/int32/uint8 PCM."
                )
            tensor = tensor.float()
        elif isinstance(clip, np.ndarray):
            if clip.dtype == np.int16:
                clip = clip.astype(np.float32) / 32768.0
            elif clip.dtype == np.int32:
                clip = clip.astype(np.float64) / 2147483648.0
            elif clip.dtype == np.uint8:
                clip = (clip.astype(np.float32) - 128.0) / 128.0
            elif clip.dtype.kind != "f":
                raise TypeError(f"Clip {index} has dtype {clip.dtype}; expected float audio or int16/int32/uint8 PCM.")
            tensor = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))
        else:
            raise TypeError(f"Clip {index} is a {type(clip).__name__}; expected a numpy array or a torch tensor.")
        if tensor.numel() == 0:
            raise ValueError(f"Clip {index} is empty (shape {tuple(tensor.shape)}).")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"Clip {index} contains NaN or Inf samples.")
        return tensor

    def _adapt_channels(self, clip: torch.Tensor, index: int, ambisonics_format: str | None) -> torch.Tensor:
        """(channels, samples) in the layout the model was trained on."""
        if clip.ndim == 1:
            clip = clip.unsqueeze(0)
        channels, samples = clip.shape
        if channels not in ACCEPTED_AUDIO_CHANNELS:
            if samples in ACCEPTED_AUDIO_CHANNELS and channels > samples:
                raise ValueError(
                    f"Clip {index} has shape {tuple(clip.shape)}, which looks like (num_samples, channels); "
                    "GRAM expects (channels, num_samples): pass audio.T."
                )
            raise ValueError(
                f"Clip {index} has {channels} channels (shape {tuple(clip.shape)}); expected (num_samples,) or "
                "(channels, num_samples) with 1 (mono), 2 (binaural/stereo) or 4 (first-order ambisonics) channels. "
                "A batch of mono clips is a list or a (batch, 1, num_samples) array."
            )
        target = self.audio_channels
        if channels == 4:
            if target == 4 and ambisonics_format is None:
                raise ValueError(
                    f"Clip {index} is 4-channel ambisonics of unknown convention: pass ambisonics_format="
                    "'ambix' (ACN order W, Y, Z, X with SN3D: most recordings and tools), 'fuma' (W, X, Y, Z) or "
                    f"'soundspaces' (the layout the published GRAM-Ambisonics was trained on); this model "
                    f"expects {self.ambisonics_layout!r} and converts the others."
                )
            if ambisonics_format is not None:
                clip = self._convert_ambisonics(clip, ambisonics_format)
        if channels == target:
            return clip
        if target == 1:  # stereo -> mean, FOA -> W
            return clip.mean(dim=0, keepdim=True) if channels == 2 else clip[:1]
        if target == 2:  # mono -> duplicated, FOA -> W twice
            return clip[:1].expand(2, -1)
        # ambisonics: mono (or stereo averaged to mono) on all four channels
        mono = clip.mean(dim=0, keepdim=True) if channels == 2 else clip
        return mono.expand(4, -1)

    def _convert_ambisonics(self, clip: torch.Tensor, ambisonics_format: str) -> torch.Tensor:
        """FOA `(4, samples)` from `ambisonics_format` into the model's layout (for a mono or binaural model,
        whose W is all that is used, into the same convention: W as pressure)."""
        if ambisonics_format == self.ambisonics_layout:
            return clip
        matrix = torch.tensor(ambisonics_conversion(ambisonics_format, self.ambisonics_layout), dtype=torch.float64)
        return (matrix @ clip.double()).float()

    def _resample(self, clip: torch.Tensor, sampling_rate: int) -> torch.Tensor:
        return torch.from_numpy(resample_audio(clip, int(sampling_rate), int(self.sampling_rate)))


def _checked_ambisonics_format(name, what: str) -> str:
    if name not in AMBISONICS_FORMATS:
        raise ValueError(f"{what} must be one of {', '.join(AMBISONICS_FORMATS)}, got {name!r}.")
    return name


GramFeatureExtractor.register_for_auto_class()
