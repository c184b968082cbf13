"""Naturalistic spatial scenes, built batch-wise on the training device.

One call turns a batch of dry mono sources, multi-channel room impulse responses and noise clips into the
log-mel (+ intensity vector) crops GRAM pretrains on; every step is a batched tensor operation (FFT
convolution, mixing, normalisation, STFT), so it runs on the GPU when the model does:

    dry source and noise at -14 dBFS RMS (noise: over its active part)           level normalisation
    source (B, S) * RIR (B, C, L)  +  g * sum_k noise (B, S) * noise RIR_k        FFT convolution
    g from an SNR drawn per scene (5-40 dB), measured over all channels jointly
      and over the span where the noise is active                                keeps ITD and ILD
    optional clean scenes (no noise)
    features (B, F, frames, mels) in float32                                     GramFeatureExtractor.extract
    K random 2-second crops per scene                                          -> (B * K, F, 200, mels)

This is the original GRAM-T recipe (src/data_modules/dataset_functions.py, scene_module/generate_scenes*.py),
on the device instead of per sample on the CPU; see the README for the few deliberate differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from feature_extraction_gram import GramFeatureExtractor


@dataclass
class SceneConfig:
    """How scenes are mixed and cropped (defaults: the published GRAM recipe)."""

    sampling_rate: int = 32000
    clip_seconds: float = 10.0
    snr_db_min: float = 5.0
    snr_db_max: float = 40.0
    clean_ratio: float = 0.0
    level_dbfs: float = -14.0
    crops_per_clip: int = 16
    crop_frames: int = 200

    def __post_init__(self):
        if not self.snr_db_min <= self.snr_db_max:
            raise ValueError(f"snr_db_min ({self.snr_db_min}) must not exceed snr_db_max ({self.snr_db_max}).")
        if not 0.0 <= self.clean_ratio <= 1.0:
            raise ValueError(f"clean_ratio must lie in [0, 1], got {self.clean_ratio}.")
        if self.crops_per_clip < 1 or self.crop_frames < 1 or self.clip_seconds <= 0:
            raise ValueError("crops_per_clip, crop_frames and clip_seconds must be positive.")

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sampling_rate))


def fft_convolve(signal: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve mono signals `(B, S)` with multi-channel impulse responses `(B, C, L)`, or with several per
    signal `(B, K, C, L)` whose results are summed (the original's several noise sources); returns the first
    `S` samples of the full convolution, `(B, C, S)`, computed in float32 whatever the input dtype."""
    if signal.ndim != 2 or rir.ndim not in (3, 4) or signal.shape[0] != rir.shape[0]:
        raise ValueError(
            f"Expected signal (B, S) and rir (B, C, L) or (B, K, C, L), got {tuple(signal.shape)} and {tuple(rir.shape)}."
        )
    num_samples = signal.shape[-1]
    size = num_samples + rir.shape[-1] - 1
    size = 1 << (size - 1).bit_length()  # power of two: fast on every backend
    signal_spectrum = torch.fft.rfft(signal.float(), n=size).view(signal.shape[0], *([1] * (rir.ndim - 2)), -1)
    spectrum = signal_spectrum * torch.fft.rfft(rir.float(), n=size)
    if rir.ndim == 4:  # convolution is linear: sum the sources' spectra, one inverse FFT
        spectrum = spectrum.sum(dim=1)
    return torch.fft.irfft(spectrum, n=size)[..., :num_samples]


def active_mask(num_samples: int, active: torch.Tensor | None, device) -> torch.Tensor | None:
    """`(B, 1, S)` bool mask of the samples where each noise clip plays, from `active (B, 2)` = (start, length)."""
    if active is None:
        return None
    position = torch.arange(num_samples, device=device).view(1, 1, -1)
    start, length = active[:, 0].view(-1, 1, 1).to(device), active[:, 1].view(-1, 1, 1).to(device)
    return (position >= start) & (position < start + length)


def normalize_level(audio: torch.Tensor, level_dbfs: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scale each clip `(B, S)` to an RMS of `level_dbfs` dB full scale (over its `mask (B, 1, S)` part
    when given); silent clips stay silent."""
    squares = audio.float().square()
    if mask is None:
        mean_square = squares.mean(dim=-1, keepdim=True)
    else:
        weights = mask[:, 0].float()
        mean_square = (squares * weights).sum(dim=-1, keepdim=True) / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
    rms = mean_square.sqrt()
    gain = torch.where(rms > 0, 10.0 ** (level_dbfs / 20.0) / rms.clamp_min(1e-30), torch.ones_like(rms))
    return audio.float() * gain


def _energy(audio: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Energy over channels and samples (those of `mask` when given), `(B, C, S)` -> `(B, 1, 1)`."""
    squares = audio.square() if mask is None else (audio * mask).square()
    return squares.sum(dim=(-2, -1), keepdim=True)


class SceneBuilder:
    """Builds pretraining inputs from a collated batch (see `gram_training.data.collate_scenes`)."""

    def __init__(self, feature_extractor: GramFeatureExtractor, config: SceneConfig | None = None):
        self.feature_extractor = feature_extractor
        self.config = config or SceneConfig(sampling_rate=feature_extractor.sampling_rate)
        if self.config.sampling_rate != feature_extractor.sampling_rate:
            raise ValueError(
                f"Scene sampling rate {self.config.sampling_rate} differs from the feature extractor's "
                f"{feature_extractor.sampling_rate}."
            )

    def mix(
        self,
        source: torch.Tensor,
        rir: torch.Tensor,
        noise: torch.Tensor | None = None,
        noise_rir: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        snr_db: torch.Tensor | None = None,
        clean: torch.Tensor | None = None,
        noise_active: torch.Tensor | None = None,
        source_length: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Spatial scenes `(B, C, S)`: the level-normalised dry source through its RIR, plus the normalised
        noise through its RIR(s) `(B, C, L)` or `(B, K, C, L)` at a random SNR (or the given `snr_db (B,)`;
        `clean (B,)` True drops the noise), measured where the noise plays (`noise_active (B, 2)`: start and
        length; the whole clip when not given). `source_length (B,)`: the real samples of zero-padded sources,
        over which their level is measured (as the original normalises before padding)."""
        config = self.config
        source_mask = None
        if source_length is not None:
            source_mask = active_mask(
                source.shape[-1], torch.stack([torch.zeros_like(source_length), source_length], 1), source.device
            )
        scene = fft_convolve(normalize_level(source, config.level_dbfs, source_mask), rir)
        batch, device = scene.shape[0], scene.device
        if noise is not None:
            if noise_rir is None:
                raise ValueError("noise needs its impulse responses (noise_rir).")
            mask = active_mask(scene.shape[-1], noise_active, device)
            noise_image = fft_convolve(normalize_level(noise, config.level_dbfs, mask), noise_rir)
            if snr_db is None:
                uniform = torch.rand(batch, generator=generator, device=generator.device if generator else "cpu")
                snr_db = config.snr_db_min + (config.snr_db_max - config.snr_db_min) * uniform.to(device)
            if clean is None:
                draw = torch.rand(batch, generator=generator, device=generator.device if generator else "cpu")
                clean = draw.to(device) < config.clean_ratio
            # One gain per scene over all channels, so the noise keeps its own inter-channel cues.
            ratio = _energy(scene, mask) / (_energy(noise_image, mask) + 1e-9)
            gain = torch.sqrt(ratio * 10.0 ** (-snr_db.view(-1, 1, 1) / 10.0))
            scene = scene + torch.where(clean.view(-1, 1, 1), 0.0, gain) * noise_image
        return scene

    def random_crops(self, features: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """`crops_per_clip` random `crop_frames`-frame crops of each clip: `(B, F, T, M)` -> `(B * K, F, crop, M)`."""
        batch, channels, frames, mels = features.shape
        crop, count = self.config.crop_frames, self.config.crops_per_clip
        if frames < crop:
            raise ValueError(f"Clips give {frames} frames, fewer than the crop of {crop}.")
        cpu = generator.device if generator is not None else "cpu"
        starts = torch.randint(0, frames - crop + 1, (batch, count), generator=generator, device=cpu).to(
            features.device
        )
        index = starts.unsqueeze(-1) + torch.arange(crop, device=features.device)  # (B, K, crop)
        index = index.view(batch, 1, count * crop, 1).expand(batch, channels, count * crop, mels)
        crops = features.gather(2, index).view(batch, channels, count, crop, mels)
        return crops.transpose(1, 2).reshape(batch * count, channels, crop, mels)

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Model inputs `(B * crops_per_clip, F, crop_frames, mels)` float32 from a collated batch."""
        scene = self.mix(
            batch["source"],
            batch["rir"],
            batch.get("noise"),
            batch.get("noise_rir"),
            generator,
            noise_active=batch.get("noise_active"),
            source_length=batch.get("source_length"),
        )
        with torch.autocast(scene.device.type, enabled=False):  # features in float32 even under bf16 training
            features = self.feature_extractor.extract(scene.float())
        if not torch.isfinite(features).all():  # one bad scene would make every weight NaN
            raise ValueError(
                "The scene batch has non-finite features; sources are checked when read (see the "
                "warnings about skipped files), so check the impulse responses and noise files."
            )
        return self.random_crops(features, generator)
