"""Offline spatial material: FOA and binaural room impulse responses, the KEMAR loader, sounds and speech."""

import bz2
import json
import os
import pickle

import numpy as np
import pytest

from gram_training import rooms, simulate
from gram_training.rooms import RoomSpec, binaural_rir, direction_vector, foa_rir, load_kemar


def _direct_path(rir):
    """Samples around the direct sound (the strongest arrival), before the first reflection arrives."""
    peak = int(np.argmax(np.abs(rir).sum(axis=0)))
    return rir[:, max(peak - 40, 0) : peak + 40]


@pytest.mark.parametrize("azimuth,elevation", [(0, 0), (90, 0), (-135, 20), (45, 50)])
def test_foa_direct_sound_points_at_the_source(azimuth, elevation):
    spec = RoomSpec(
        dimensions=(12.0, 10.0, 8.0),
        absorption=0.9,
        listener=(6.0, 5.0, 4.0),
        azimuth=azimuth,
        elevation=elevation,
        distance=1.6,
        max_order=0,
    )
    rir = foa_rir(spec, layout="ambix")
    direct = _direct_path(rir)
    # Plane-wave AmbiX (ACN/SN3D) encoding: (Y, Z, X) = W * (y, z, x) of the direction (least squares over the
    # direct path); the default (published) layout is checked in test_ambisonics.
    gains = direct[1:] @ direct[0] / (direct[0] @ direct[0])
    np.testing.assert_allclose(gains, direction_vector(azimuth, elevation)[[1, 2, 0]], atol=2e-3)
    # Free-field pressure: the direct path carries 1 / r in W (pyroomacoustics' scale, without 1 / (4 pi)).
    assert direct[0].sum() == pytest.approx(1 / spec.distance, rel=0.1)


def test_binaural_interaural_cues_follow_the_source():
    hrirs = load_kemar()
    assert hrirs.hrirs.shape[:2] == (710, 2) and hrirs.sampling_rate == 32000
    energies = {}
    for azimuth in (90, -90, 0):
        spec = RoomSpec(
            dimensions=(12.0, 10.0, 8.0),
            absorption=0.5,
            listener=(6.0, 5.0, 1.5),
            azimuth=azimuth,
            elevation=0,
            distance=1.5,
            max_order=3,
        )
        direct = _direct_path(binaural_rir(spec, hrirs=hrirs))
        energies[azimuth] = (direct**2).sum(axis=1)
    assert energies[90][0] > 4 * energies[90][1]  # left source: louder at the left ear
    assert energies[-90][1] > 4 * energies[-90][0]
    assert energies[0][0] == pytest.approx(energies[0][1], rel=0.1)


def test_kemar_reader_refuses_anything_but_arrays(tmp_path, monkeypatch):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    fake = tmp_path / "mit_kemar_normal_pinna.bz2"
    with bz2.open(fake, "wb") as handle:
        pickle.dump(Payload(), handle)
    monkeypatch.setattr(rooms, "kemar_file", lambda: fake)
    load_kemar.cache_clear()
    try:
        with pytest.raises(pickle.UnpicklingError, match="Refusing to load"):
            load_kemar(32000)
    finally:
        load_kemar.cache_clear()
    assert not (tmp_path / "pwned").exists()


def test_random_rooms_hold_their_source():
    rng = np.random.default_rng(0)
    for _ in range(20):
        spec = RoomSpec.random(rng)
        assert np.all(spec.source > 0) and np.all(spec.source < spec.dimensions)


def test_sounds_music_and_speech_are_available_offline():
    effects = simulate.sound_effects()
    kinds = {kind for _, kind, _ in effects}
    assert len(effects) >= 50 and {"coin", "explosion", "jump", "laser"} <= kinds
    assert all(audio.ndim == 1 and np.isfinite(audio).all() and np.abs(audio).max() > 0.01 for _, _, audio in effects)
    assert len(simulate.music_segments()) >= 30
    clips = simulate.speech(sentences=simulate.SENTENCES[:2])
    assert len(clips) == 2 and all(len(c) > 32000 and np.abs(c).max() > 0.05 for c in clips)


def test_write_pretraining_data_is_complete_and_atomic(tmp_path):
    output = simulate.write_pretraining_data(tmp_path / "data", "ambisonics", num_rirs=2, with_speech=False)
    assert sorted(os.listdir(output)) == [".gram-output.json", "noise", "noise_rirs", "rirs", "rirs.json", "sources"]
    assert np.load(output / "rirs" / "rir0000.npy").shape[0] == 4
    assert len(os.listdir(output / "noise_rirs")) == 2
    assert np.load(output / "noise_rirs" / "rir0000.npy").shape[:2] == (3, 4)  # 3 noise positions, 4 channels
    assert json.loads((output / "rirs.json").read_text())["ambisonics_layout"] == "soundspaces"
    from gram_training.train import simulated_ambisonics_layout

    assert simulated_ambisonics_layout(str(output / "rirs")) == "soundspaces"  # what pretraining reads
    with pytest.raises(ValueError, match="exists and is not empty; pass --overwrite to replace it"):
        simulate.write_pretraining_data(output, "ambisonics", num_rirs=1)
    with pytest.raises(ValueError, match="audio_format"):
        simulate.write_pretraining_data(tmp_path / "other", "surround", num_rirs=1)
    assert sorted(os.listdir(tmp_path)) == ["data"]  # nothing half-written beside it
    assert (output.stat().st_mode & 0o077) == (0o777 & ~_umask() & 0o077)  # readable like any output


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current
