"""Offline spatial room impulse responses: pyroomacoustics shoebox rooms heard by a first-order ambisonic
microphone (its built-in real spherical-harmonic directivities) or by the MIT KEMAR dummy head (measured
HRIRs placed on the image sources).

Coordinates: the listener faces +x, +y is its left, +z up; azimuth is counter-clockwise from the front and
elevation upwards, both in degrees (the KEMAR set uses the same convention: azimuth 90 = left ear side).
"""

from __future__ import annotations

import bz2
import importlib.util
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from configuration_gram import AMBISONICS_FORMATS, DEFAULT_AMBISONICS_LAYOUT

SPEED_OF_SOUND = 343.0
# ACN channels 0..3 are W, Y, Z, X: reordered to (pressure, front, left, up) in the listener's frame.
_ACN_TO_FRONT_LEFT_UP = [0, 3, 1, 2]


def direction_vector(azimuth_deg, elevation_deg) -> np.ndarray:
    """Unit vector(s) `(..., 3)` of the given azimuth/elevation in degrees."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    return np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el) * np.ones_like(az)], axis=-1)


@dataclass
class RoomSpec:
    """A shoebox room, a listener and one source at a known direction from it."""

    dimensions: tuple[float, float, float]
    absorption: float
    listener: tuple[float, float, float]
    azimuth: float
    elevation: float
    distance: float
    max_order: int = 12

    @property
    def source(self) -> np.ndarray:
        return np.asarray(self.listener) + self.distance * direction_vector(self.azimuth, self.elevation)

    @classmethod
    def random(cls, rng: np.random.Generator, azimuth: float | None = None, elevation: float | None = None) -> RoomSpec:
        """A random room in which the source, at the given (or a random) direction, fits inside."""
        for _ in range(1000):
            dims = rng.uniform([3.0, 3.0, 2.5], [10.0, 8.0, 4.0])
            listener = rng.uniform([1.0, 1.0, 1.2], dims - [1.0, 1.0, 0.8])
            az = rng.uniform(-180.0, 180.0) if azimuth is None else azimuth
            el = rng.uniform(-30.0, 60.0) if elevation is None else elevation
            spec = cls(
                tuple(dims),
                float(rng.uniform(0.15, 0.6)),
                tuple(listener),
                float(az),
                float(el),
                float(rng.uniform(1.0, 3.0)),
            )
            if np.all(spec.source > 0.3) and np.all(spec.source < dims - 0.3):
                return spec
        raise RuntimeError("Could not place the source inside a random room.")

    def _room(self, sampling_rate: int):
        import pyroomacoustics as pra

        room = pra.ShoeBox(
            list(self.dimensions),
            fs=sampling_rate,
            materials=pra.Material(self.absorption),
            max_order=self.max_order,
            air_absorption=False,
        )
        room.add_source(self.source)
        return room


def foa_rir(spec: RoomSpec, sampling_rate: int = 32000, layout: str = DEFAULT_AMBISONICS_LAYOUT) -> np.ndarray:
    """First-order ambisonic RIR `(4, length)` float32 in the channel convention `layout` (see
    `configuration_gram.AMBISONICS_FORMATS`). The default is the layout the published GRAM-Ambisonics was
    pretrained on (SoundSpaces: W, up, back, right with N3D gains), so that models pretrained here and converted
    published checkpoints read 4-channel audio the same way. W is the omnidirectional pressure."""
    import pyroomacoustics as pra
    from pyroomacoustics.directivities import RealSphericalHarmonicsDirectivity

    room = spec._room(sampling_rate)
    acn = [
        RealSphericalHarmonicsDirectivity(0, 0),
        RealSphericalHarmonicsDirectivity(-1, 1),
        RealSphericalHarmonicsDirectivity(0, 1),
        RealSphericalHarmonicsDirectivity(1, 1),
    ]
    position = np.tile(np.asarray(spec.listener, dtype=float)[:, None], (1, 4))
    room.add_microphone_array(pra.MicrophoneArray(position, sampling_rate, directivity=acn))
    room.compute_rir()
    # pyroomacoustics' harmonics are orthonormal (N3D over the sphere): Y00 = 1/sqrt(4 pi) and first order
    # sqrt(3) times larger than SN3D; rescale so that W is the pressure and first order is SN3D.
    scale = np.array([1.0, 1.0 / np.sqrt(3.0), 1.0 / np.sqrt(3.0), 1.0 / np.sqrt(3.0)]) * np.sqrt(4.0 * np.pi)
    length = min(len(room.rir[m][0]) for m in range(4))
    acn_rir = np.stack([np.asarray(room.rir[m][0][:length]) for m in range(4)]) * scale[:, None]
    # SN3D components along (front, left, up) are a plane wave's gains (1, u_front, u_left, u_up): the
    # convention table's rows encode them into any layout.
    components = acn_rir[_ACN_TO_FRONT_LEFT_UP]
    return (np.asarray(AMBISONICS_FORMATS[layout], dtype=np.float64) @ components).astype(np.float32)


@dataclass
class HrirSet:
    """Head-related impulse responses: unit `directions (n, 3)` and `hrirs (n, 2, taps)` (left, right)."""

    directions: np.ndarray
    hrirs: np.ndarray
    sampling_rate: int

    def nearest(self, unit_vectors: np.ndarray) -> np.ndarray:
        """Index of the measured direction closest to each of `unit_vectors (k, 3)`."""
        return np.argmax(unit_vectors @ self.directions.T, axis=1)


class _SlabRecord:
    """Inert stand-in for slab's HRTF/Filter objects: keeps their pickled attributes, runs nothing."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("Unexpected object state in the KEMAR file.")
        self.__dict__.update(state)


class _KemarUnpickler(pickle.Unpickler):
    """The slab wheel stores its KEMAR set as a pickle; only numpy arrays and plain records may come out."""

    def find_class(self, module, name):
        if (module, name) in {("slab.hrtf", "HRTF"), ("slab.filter", "Filter")}:
            return _SlabRecord
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return np._core.multiarray._reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"Refusing to load {module}.{name} from the KEMAR file.")


def kemar_file() -> Path:
    """The MIT KEMAR (normal pinna) set shipped inside the `slab` wheel (found without importing slab)."""
    spec = importlib.util.find_spec("slab")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The `slab` package (which ships the MIT KEMAR HRIRs) is not installed.")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mit_kemar_normal_pinna.bz2"
    if not path.is_file():
        raise FileNotFoundError(f"KEMAR HRIRs not found at {path}.")
    return path


@lru_cache(maxsize=4)
def load_kemar(sampling_rate: int = 32000) -> HrirSet:
    """The 710 measured MIT KEMAR HRIRs, resampled to `sampling_rate`."""
    from feature_extraction_gram import resample_audio

    with bz2.open(kemar_file(), "rb") as handle:
        record = _KemarUnpickler(handle).load()
    sources = np.asarray(record.sources, dtype=np.float64)  # (n, 3): azimuth, elevation (degrees), distance
    hrirs = np.stack([np.asarray(f.data, dtype=np.float64).T for f in record.data])  # (n, 2, taps)
    original_rate = int(round(record.samplerate))
    count, ears, taps = hrirs.shape
    hrirs = resample_audio(hrirs.reshape(count * ears, taps), original_rate, sampling_rate).reshape(count, ears, -1)
    return HrirSet(direction_vector(sources[:, 0], sources[:, 1]), hrirs.astype(np.float32), sampling_rate)


def binaural_rir(spec: RoomSpec, sampling_rate: int = 32000, hrirs: HrirSet | None = None) -> np.ndarray:
    """Binaural RIR `(2, length)` float32 (left, right): every image source of the room contributes the
    KEMAR HRIR of its direction, delayed by its distance (rounded to a sample) and attenuated by its wall
    reflections and 1 / distance spreading, as pyroomacoustics' own image-source model does (it leaves out
    the constant 1 / (4 pi))."""
    hrirs = hrirs or load_kemar(sampling_rate)
    import pyroomacoustics as pra

    room = spec._room(sampling_rate)
    room.add_microphone_array(pra.MicrophoneArray(np.asarray(spec.listener, dtype=float)[:, None], sampling_rate))
    room.image_source_model()
    source = room.sources[0]
    offsets = np.asarray(source.images).T - np.asarray(spec.listener)  # (k, 3)
    distance = np.linalg.norm(offsets, axis=1)
    gain = np.asarray(source.damping).reshape(-1, len(distance)).mean(axis=0) / distance
    delay = np.round(distance / SPEED_OF_SOUND * sampling_rate).astype(int)
    nearest = hrirs.nearest(offsets / distance[:, None])
    taps = hrirs.hrirs.shape[-1]
    rir = np.zeros((2, delay.max() + taps))
    positions = delay[:, None] + np.arange(taps)  # (k, taps)
    for ear in range(2):
        np.add.at(rir[ear], positions, gain[:, None] * hrirs.hrirs[nearest, ear])
    return rir.astype(np.float32)
