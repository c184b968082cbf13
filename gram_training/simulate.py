"""Offline spatial audio material from registry packages only, for tests, demos and smoke-test pretraining.

- Real sounds: the CC0 sound effects shipped inside the `arcade` wheel (Kenney's game sounds, 14 kinds:
  coin, explosion, jump, laser, ...) and its two music tracks (used as noise); speech synthesised with
  eSpeak NG (`espeakng-loader` ships the library and voices).
- Rooms: random pyroomacoustics shoeboxes heard binaurally (measured MIT KEMAR HRIRs) or by a first-order
  ambisonic microphone (see `gram_training.rooms`).

    python -m gram_training.simulate --output-dir data/offline --audio-format binaural --num-rirs 64

writes `sources/*.wav` (mono, 32 kHz), `noise/*.wav`, `rirs/*.npy` (`(channels, taps)` float32),
`noise_rirs/*.npy` (`(noise_sources, channels, taps)`: other points of the same rooms) and `rirs.json` (each
RIR's room and source direction), ready for `python -m gram_training.train`. Binaural channels are left, right;
ambisonic ones are in the layout the published GRAM-Ambisonics was pretrained on (SoundSpaces: W, up, back,
right with N3D gains; `configuration_gram.AMBISONICS_FORMATS`), recorded in `rirs.json`.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile

from configuration_gram import DEFAULT_AMBISONICS_LAYOUT
from feature_extraction_gram import resample_audio
from gram_io import read_audio, staged_directory
from gram_training.rooms import RoomSpec, binaural_rir, foa_rir, load_kemar

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please close the window, it is getting cold in here.",
    "Where did you put the keys to the red car?",
    "Turn left at the next corner and walk two blocks.",
    "Sound tells us where things are, not only what they are.",
    "The meeting starts at nine thirty tomorrow morning.",
)
VOICES = ("en", "en-us", "en-gb-x-rp", "de", "fr")
AUDIO_FORMATS = ("binaural", "ambisonics")


def _arcade_assets() -> Path:
    spec = importlib.util.find_spec("arcade")  # located, not imported: arcade would open a window system
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The `arcade` package (which ships the CC0 sounds) is not installed.")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "assets"


def _to_mono(audio: np.ndarray, rate: int, sampling_rate: int) -> np.ndarray:
    """Synthesised speech `(samples,)` at `rate`, resampled (files are read with gram_io.read_audio)."""
    return resample_audio(audio[None], rate, sampling_rate)[0]


def sound_effects(sampling_rate: int = 32000) -> list[tuple[str, str, np.ndarray]]:
    """`(name, kind, mono audio)` of arcade's wav effects; the kind is the name without its number."""
    effects = []
    for path in sorted((_arcade_assets() / "sounds").glob("*.wav")):
        effects.append((path.stem, re.sub(r"\d+$", "", path.stem), read_audio(path, sampling_rate).mean(axis=0)))
    return effects


def music_segments(sampling_rate: int = 32000, seconds: float = 10.0) -> list[np.ndarray]:
    """Arcade's music tracks cut into mono `seconds`-long segments."""
    length, segments = int(seconds * sampling_rate), []
    for path in sorted((_arcade_assets() / "music").glob("*.mp3")):
        mono = read_audio(path, sampling_rate).mean(axis=0)
        segments += [mono[start : start + length] for start in range(0, len(mono) - length + 1, length)]
    return segments


def speech(sampling_rate: int = 32000, sentences=SENTENCES, voices=VOICES) -> list[np.ndarray]:
    """Sentences spoken by eSpeak NG voices (one clip per sentence, voices in turn), mono float32."""
    import espeakng_loader

    library = ctypes.CDLL(espeakng_loader.get_library_path())
    rate = library.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # 2: synchronous
    if rate <= 0:
        raise RuntimeError("eSpeak NG failed to initialise.")
    chunks: list[np.ndarray] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def collect(samples, count, events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    callback = callback_type(collect)  # kept alive for the whole synthesis
    library.espeak_SetSynthCallback(callback)
    clips = []
    for index, sentence in enumerate(sentences):
        if library.espeak_SetVoiceByName(voices[index % len(voices)].encode()) != 0:
            library.espeak_SetVoiceByName(b"en")
        chunks.clear()
        text = sentence.encode()
        library.espeak_Synth(text, ctypes.c_size_t(len(text) + 1), 0, 1, 0, 0, None, None)
        library.espeak_Synchronize()
        clips.append(_to_mono(np.concatenate(chunks).astype(np.float32) / 32768.0, rate, sampling_rate))
    return clips


def room_impulse_response(spec: RoomSpec, audio_format: str, sampling_rate: int = 32000) -> np.ndarray:
    """`(2, taps)` binaural (left, right) or `(4, taps)` first-order ambisonic impulse response of `spec`, the
    latter in the published GRAM-Ambisonics' layout (`DEFAULT_AMBISONICS_LAYOUT`: W, up, back, right, N3D)."""
    if audio_format == "binaural":
        return binaural_rir(spec, sampling_rate)
    if audio_format == "ambisonics":
        return foa_rir(spec, sampling_rate)
    raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}.")


def noise_position(spec: RoomSpec, rng: np.random.Generator) -> RoomSpec:
    """Another random point of `spec`'s room, heard from the same listener position."""
    noise = RoomSpec.random(rng)
    noise.dimensions, noise.absorption, noise.listener = spec.dimensions, spec.absorption, spec.listener
    if not (np.all(noise.source > 0.3) and np.all(noise.source < np.asarray(spec.dimensions) - 0.3)):
        noise.distance = 0.5  # a close point always fits: the listener is 1 m from the walls
    return noise


def write_pretraining_data(
    output_dir,
    audio_format: str = "binaural",
    num_rirs: int = 32,
    seed: int = 0,
    sampling_rate: int = 32000,
    with_speech: bool = True,
    noise_sources: int = 3,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the offline pretraining material (see the module docstring) atomically to `output_dir`."""
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}.")
    if num_rirs < 1 or noise_sources < 1:
        raise ValueError(f"num_rirs and noise_sources must be positive, got {num_rirs} and {noise_sources}.")
    if audio_format == "binaural":
        load_kemar(sampling_rate)  # fail before writing anything if the HRIRs are missing
    rng = np.random.default_rng(seed)
    from tqdm.auto import tqdm

    with staged_directory(output_dir, "simulate", overwrite=overwrite) as staging:
        for sub in ("sources", "noise", "rirs", "noise_rirs"):
            (staging / sub).mkdir()
        for name, _, audio in sound_effects(sampling_rate):
            soundfile.write(staging / "sources" / f"{name}.wav", audio, sampling_rate)
        if with_speech:
            for index, audio in enumerate(speech(sampling_rate)):
                soundfile.write(staging / "sources" / f"speech{index}.wav", audio, sampling_rate)
        for index, audio in enumerate(music_segments(sampling_rate)):
            soundfile.write(staging / "noise" / f"music{index:03d}.wav", audio, sampling_rate)
        metadata = []
        for index in tqdm(range(num_rirs), desc=f"simulating {audio_format} rooms", unit="room", disable=not progress):
            spec = RoomSpec.random(rng)
            np.save(staging / "rirs" / f"rir{index:04d}.npy", room_impulse_response(spec, audio_format, sampling_rate))
            # The noise comes from other points of the same room, summed in the scene as the original does.
            noise_specs = [noise_position(spec, rng) for _ in range(noise_sources)]
            responses = [room_impulse_response(n, audio_format, sampling_rate) for n in noise_specs]
            taps = max(r.shape[-1] for r in responses)
            np.save(
                staging / "noise_rirs" / f"rir{index:04d}.npy",
                np.stack([np.pad(r, ((0, 0), (0, taps - r.shape[-1]))) for r in responses]),
            )
            metadata.append({"file": f"rir{index:04d}.npy", **asdict(spec), "noise": [asdict(n) for n in noise_specs]})
        (staging / "rirs.json").write_text(
            json.dumps(
                {
                    "audio_format": audio_format,
                    "sampling_rate": sampling_rate,
                    **({"ambisonics_layout": DEFAULT_AMBISONICS_LAYOUT} if audio_format == "ambisonics" else {}),
                    "rirs": metadata,
                },
                indent=1,
            )
        )
    return Path(output_dir)


def data_arguments(data_dir: str | Path) -> list[str]:
    """The `gram_training.train` arguments that read the material `write_pretraining_data` wrote to `data_dir`."""
    data = Path(data_dir)
    return ["--audio_dir", str(data / "sources"), "--rir_dir", str(data / "rirs"),
            "--noise_dir", str(data / "noise"), "--noise_rir_dir", str(data / "noise_rirs")]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--audio-format", choices=AUDIO_FORMATS, default="binaural")
    parser.add_argument("--num-rirs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-sources", type=int, default=3, help="noise positions per room (summed in a scene)")
    parser.add_argument("--no-speech", action="store_true", help="leave out the eSpeak NG sentences")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of this command")
    args = parser.parse_args(argv)
    try:
        path = write_pretraining_data(
            args.output_dir,
            args.audio_format,
            args.num_rirs,
            args.seed,
            with_speech=not args.no_speech,
            noise_sources=args.noise_sources,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
