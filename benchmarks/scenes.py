"""Realistic (not noise) binaural test scenes for benchmarks, made offline from scratch: harmonic notes
with onsets and vibrato, a formant-swept buzz (speech-like), a chirp and short noise bursts, each placed
at its own azimuth with interaural time and level differences, plus an exponentially decaying reverb
tail and a little background noise."""

from __future__ import annotations

import math

import torch

SR = 32000


def _tone(t: torch.Tensor, f0: float, generator: torch.Generator) -> torch.Tensor:
    vibrato = 1 + 0.01 * torch.sin(2 * math.pi * 5.5 * t)
    phase = 2 * math.pi * f0 * torch.cumsum(vibrato, 0) / SR
    return sum(torch.sin(k * phase) / k**1.3 for k in range(1, 8))


def _buzz(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    pitch = 110 + 30 * torch.sin(2 * math.pi * 0.8 * t)
    pulses = torch.sign(torch.sin(2 * math.pi * torch.cumsum(pitch, 0) / SR))
    formant = 700 + 500 * torch.sin(2 * math.pi * 2.1 * t)
    return pulses * torch.sin(2 * math.pi * torch.cumsum(formant, 0) / SR)


def _place(source: torch.Tensor, azimuth_deg: float) -> torch.Tensor:
    """Binaural placement by interaural time (up to ~0.66 ms) and level differences."""
    azimuth = math.radians(azimuth_deg)
    delay = int(round(abs(0.00066 * math.sin(azimuth)) * SR))
    gain_far = 10 ** (-6 * abs(math.sin(azimuth)) / 20)
    near, far = source, torch.nn.functional.pad(source, (delay, 0))[: source.shape[0]] * gain_far
    return torch.stack([near, far] if azimuth < 0 else [far, near])


def binaural_scene(seconds: float, seed: int) -> torch.Tensor:
    """A `(2, seconds * 32000)` float32 scene, peak-normalised to 0.5."""
    generator = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    t = torch.arange(n) / SR
    scene = torch.zeros(2, n)
    rand = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    for _ in range(max(2, int(seconds * 1.5))):  # notes, speech-like buzz, chirps, bursts
        start, length = int(rand() * n * 0.9), int((0.2 + 1.2 * rand()) * SR)
        stop = min(n, start + length)
        seg_t = t[: stop - start]
        kind = int(rand() * 4)
        if kind == 0:
            source = _tone(seg_t, 110 * 2 ** (int(rand() * 24) / 12), generator)
        elif kind == 1:
            source = _buzz(seg_t, generator)
        elif kind == 2:
            f0, f1 = 300 + 3000 * rand(), 300 + 3000 * rand()
            source = torch.sin(2 * math.pi * (f0 * seg_t + (f1 - f0) / (2 * seg_t[-1].clamp_min(1e-3)) * seg_t**2))
        else:
            source = torch.randn(stop - start, generator=generator) * torch.exp(-seg_t * 20)
        envelope = torch.clamp(seg_t / 0.02, max=1.0) * torch.exp(-seg_t * (1 + 4 * rand()))
        scene[:, start:stop] += (0.5 + rand()) * _place(source * envelope, -90 + 180 * rand())
    reverb = torch.randn(2, int(0.4 * SR), generator=generator) * torch.exp(-torch.arange(int(0.4 * SR)) / SR * 12)
    reverb[:, 0] = 1.0
    wet = torch.fft.irfft(torch.fft.rfft(scene, n=2 * n) * torch.fft.rfft(reverb, n=2 * n), n=2 * n)[:, :n]
    wet = wet + 0.003 * torch.randn(2, n, generator=generator)
    return (0.5 * wet / wet.abs().max()).float()
