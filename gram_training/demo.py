"""End-to-end demo, offline, one command: what GRAM embeddings know about *what* and *where*.

    python -m gram_training.demo --output-dir demo-output

1. Renders a small spatial dataset: the CC0 sound effects of the `arcade` wheel (14 kinds) placed at known
   directions in random simulated rooms, heard by the MIT KEMAR dummy head (binaural) or a first-order
   ambisonic microphone (`--audio-format ambisonics`), with music from another point of the room as noise.
   Test scenes use rooms and directions never seen in training.
2. Pretrains a tiny GRAM briefly on offline material (`gram_training.train`), or uses `--model DIR` (any
   saved or converted GRAM directory of the same audio format).
3. Embeds every scene with the frozen GRAM encoder, and computes a plain log-mel baseline (time-averaged
   log-mels, plus intensity vectors for ambisonics).
4. Trains linear probes with HF `Trainer` on both: sound kind (accuracy) and direction of arrival as a unit
   vector (angular error in degrees), prints them side by side, writes `results.json` and a plot of
   predicted against true azimuths (`directions.png`), and keeps the pretrained tiny GRAM (`tiny-gram/`).

A briefly pretrained tiny GRAM is a smoke test of the pipeline, not a good model: expect it near the
baseline. A real checkpoint (`python convert_checkpoint.py ...`, then `--model`) is what the demo is for.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from configuration_gram import DEFAULT_AMBISONICS_LAYOUT, GRAM_FORMATS
from feature_extraction_gram import GramFeatureExtractor
from gram_io import staged_directory
from gram_training.rooms import RoomSpec, direction_vector
from gram_training.scenes import SceneBuilder, SceneConfig
from gram_training.simulate import AUDIO_FORMATS, music_segments, noise_position, room_impulse_response, sound_effects
from modeling_gram import GramModel, angular_error_degrees

logger = logging.getLogger(__name__)
SAMPLING_RATE = 32000


@dataclass
class SpatialScenes:
    """Rendered scenes `audio (n, channels, samples)` with `kinds (n,)` (indices into `kind_names`),
    `directions (n, 3)` unit vectors, `azimuths (n,)` in degrees and `is_test (n,)`."""

    audio: np.ndarray
    kinds: np.ndarray
    kind_names: list[str]
    directions: np.ndarray
    azimuths: np.ndarray
    is_test: np.ndarray


def render_scenes(
    audio_format: str,
    num_rooms: int,
    scenes_per_room: int,
    seed: int = 0,
    seconds: float = 2.0,
    snr_db: tuple[float, float] = (10.0, 30.0),
    test_share: float = 0.25,
) -> SpatialScenes:
    """Each room gets one source direction and `scenes_per_room` different effects; the last
    `test_share` of the rooms are the test set (their rooms and directions are unseen in training). Scenes are
    mixed by the pretraining's `SceneBuilder.mix` (source and noise at -14 dBFS over where they play, the SNR
    over where the noise plays), so the probes see scenes like those GRAM is pretrained on."""
    from tqdm.auto import tqdm

    if num_rooms < 2 or scenes_per_room < 1:
        raise ValueError("Need at least 2 rooms (train and test) and 1 scene per room.")
    rng = np.random.default_rng(seed)
    mixer = SceneBuilder(
        GramFeatureExtractor(num_channels=GRAM_FORMATS[audio_format]),
        SceneConfig(sampling_rate=SAMPLING_RATE, clip_seconds=seconds, snr_db_min=snr_db[0], snr_db_max=snr_db[1]),
    )
    effects = sound_effects(SAMPLING_RATE)
    kind_names = sorted({kind for _, kind, _ in effects})
    noise = music_segments(SAMPLING_RATE, seconds)
    length = int(seconds * SAMPLING_RATE)
    audio, kinds, directions, azimuths, is_test = [], [], [], [], []
    num_test = max(1, int(round(test_share * num_rooms)))
    for room in tqdm(range(num_rooms), desc=f"rendering {audio_format} scenes", unit="room"):
        spec = RoomSpec.random(rng, elevation=float(rng.uniform(-20.0, 40.0)))
        noise_spec = noise_position(spec, rng)
        rir = torch.from_numpy(room_impulse_response(spec, audio_format, SAMPLING_RATE))
        noise_rir = torch.from_numpy(room_impulse_response(noise_spec, audio_format, SAMPLING_RATE))
        for _ in range(scenes_per_room):
            _, kind, effect = effects[int(rng.integers(len(effects)))]
            effect = effect[:length]
            dry = np.zeros(length, np.float32)  # a short effect plays from the start, zero-padded (as in pretraining)
            dry[: len(effect)] = effect
            noise_clip = torch.from_numpy(noise[int(rng.integers(len(noise)))][None])
            scene = mixer.mix(
                torch.from_numpy(dry)[None],
                rir[None],
                noise_clip,
                noise_rir[None],
                snr_db=torch.tensor([rng.uniform(*snr_db)]),
                clean=torch.tensor([False]),
                source_length=torch.tensor([len(effect)]),
            )[0]
            audio.append(scene.numpy())
            kinds.append(kind_names.index(kind))
            directions.append(direction_vector(spec.azimuth, spec.elevation))
            azimuths.append(spec.azimuth)
            is_test.append(room >= num_rooms - num_test)
    return SpatialScenes(
        np.stack(audio).astype(np.float32),
        np.array(kinds),
        kind_names,
        np.stack(directions).astype(np.float32),
        np.array(azimuths),
        np.array(is_test),
    )


# ------------------------------------------------------------------------------------------------------
# Representations
# ------------------------------------------------------------------------------------------------------
def gram_embeddings(
    model: GramModel, extractor: GramFeatureExtractor, audio: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Pooled embeddings `(n, size)` of the frozen encoder (its configured pooling strategy)."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(audio), batch_size):
            features = extractor(
                list(audio[start : start + batch_size]),
                sampling_rate=SAMPLING_RATE,
                return_tensors="pt",
                ambisonics_format=DEFAULT_AMBISONICS_LAYOUT,  # the simulator renders in this layout
            )
            outputs.append(model(**features).pooler_output.float())
    return torch.cat(outputs).numpy()


def log_mel_baseline(extractor: GramFeatureExtractor, audio: np.ndarray) -> np.ndarray:
    """Time-averaged features of every channel `(n, feature_channels * mels)`: the plain log-mel baseline."""
    features = extractor.extract(torch.from_numpy(audio))  # (n, F, frames, mels)
    return features.mean(dim=2).flatten(1).numpy()


# ------------------------------------------------------------------------------------------------------
# Linear probes, trained with HF Trainer
# ------------------------------------------------------------------------------------------------------
class LinearProbe(nn.Module):
    """A linear layer on standardised embeddings. `task="kind"`: cross-entropy over classes;
    `task="direction"`: unit-vector regression (MSE of the normalised prediction, as the GRAM
    localization head)."""

    def __init__(self, size: int, outputs: int, task: str, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        if task not in ("kind", "direction"):
            raise ValueError(f"task must be 'kind' or 'direction', got {task!r}.")
        self.task = task
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(size, outputs)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outputs = self.linear((embeddings - self.mean) / self.std)
        if self.task == "direction":
            outputs = F.normalize(outputs, dim=-1)
        result = {"logits": outputs}
        if labels is not None:
            result["loss"] = F.cross_entropy(outputs, labels) if self.task == "kind" else F.mse_loss(outputs, labels)
        return result


class _Rows(torch.utils.data.Dataset):
    def __init__(self, embeddings: np.ndarray, labels: np.ndarray):
        self.embeddings, self.labels = torch.from_numpy(embeddings).float(), torch.from_numpy(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"embeddings": self.embeddings[index], "labels": self.labels[index]}


def train_probe(
    embeddings: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    task: str,
    output_dir: str,
    epochs: int = 100,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> np.ndarray:
    """Fit a `LinearProbe` on the `train` rows with HF `Trainer`; returns its predictions for every row."""
    train_x = torch.from_numpy(embeddings[train]).float()
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    outputs = int(labels.max()) + 1 if task == "kind" else labels.shape[1]
    labels = labels.astype(np.int64) if task == "kind" else labels.astype(np.float32)
    probe = LinearProbe(embeddings.shape[1], outputs, task, mean, std)
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        seed=seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    Trainer(model=probe, args=args, train_dataset=_Rows(embeddings[train], labels[train])).train()
    probe.eval()
    with torch.no_grad():
        return probe(torch.from_numpy(embeddings).float().to(next(probe.parameters()).device))["logits"].cpu().numpy()


def evaluate(name: str, embeddings: np.ndarray, scenes: SpatialScenes, work_dir: str, epochs: int) -> dict:
    train = ~scenes.is_test
    kind_logits = train_probe(embeddings, scenes.kinds, train, "kind", work_dir, epochs)
    predicted_directions = train_probe(embeddings, scenes.directions, train, "direction", work_dir, epochs)
    test = scenes.is_test
    errors = angular_error_degrees(
        torch.from_numpy(predicted_directions[test]), torch.from_numpy(scenes.directions[test])
    )
    predicted_azimuths = np.degrees(np.arctan2(predicted_directions[:, 1], predicted_directions[:, 0]))
    return {
        "representation": name,
        "embedding_size": int(embeddings.shape[1]),
        "kind_accuracy": float((kind_logits[test].argmax(axis=1) == scenes.kinds[test]).mean()),
        "kind_chance": float(np.bincount(scenes.kinds[test]).max() / test.sum()),
        "angular_error_mean_deg": float(errors.mean()),
        "angular_error_median_deg": float(errors.median()),
        "predicted_azimuths": predicted_azimuths[test].tolist(),
        "azimuth_error_median_deg": float(
            np.median(np.abs(wrapped_azimuth_error(predicted_azimuths[test], scenes.azimuths[test])))
        ),
    }


def wrapped_azimuth_error(predicted_deg, true_deg) -> np.ndarray:
    """Signed azimuth error in [-180, 180): azimuth wraps, so -170 predicted for +170 is 20 degrees off, not 340."""
    return (np.asarray(predicted_deg) - np.asarray(true_deg) + 180.0) % 360.0 - 180.0


AZIMUTH_CONVENTION = "azimuth: 0 = front, +90 = left, ±180 = back (counter-clockwise seen from above)"


def plot_directions(results: list[dict], true_azimuths: np.ndarray, path: Path) -> None:
    """Per representation: predicted against true azimuth, each prediction drawn at its copy (±360) nearest the
    truth so that the wrap at ±180 does not look like a 340-degree miss; below, the wrapped error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 8.4), squeeze=False)
    for column, result in enumerate(results):
        error = wrapped_azimuth_error(result["predicted_azimuths"], true_azimuths)
        top, bottom = axes[0, column], axes[1, column]
        top.scatter(true_azimuths, true_azimuths + error, s=18, alpha=0.7, label="test scene (unseen room)")
        top.plot([-180, 180], [-180, 180], color="grey", linewidth=1, label="perfect prediction")
        for edge in (-180, 180):
            top.axhline(edge, color="grey", linestyle=":", linewidth=1)
        top.plot([], [], color="grey", linestyle=":", linewidth=1, label="±180: the same direction (back)")
        top.set(
            xlim=(-180, 180),
            ylim=(-360, 360),
            xticks=range(-180, 181, 90),
            yticks=range(-360, 361, 90),
            xlabel="true azimuth (deg)",
            ylabel="predicted azimuth (deg, nearest ±360 copy)",
            title=f"{result['representation']}: median angular error {result['angular_error_median_deg']:.0f} deg",
        )
        top.legend(loc="upper left", fontsize=8)
        bottom.scatter(true_azimuths, error, s=18, alpha=0.7, color="tab:orange", label="predicted − true, wrapped")
        bottom.axhline(0, color="grey", linewidth=1)
        bottom.set(
            xlim=(-180, 180),
            ylim=(-180, 180),
            xticks=range(-180, 181, 90),
            yticks=range(-180, 181, 90),
            xlabel="true azimuth (deg)",
            ylabel="azimuth error (deg, in [-180, 180))",
            title=f"median |azimuth error| {np.median(np.abs(error)):.0f} deg",
        )
        bottom.legend(loc="upper left", fontsize=8)
    figure.suptitle(AZIMUTH_CONVENTION, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------------------------------------------
# The whole demo
# ------------------------------------------------------------------------------------------------------
def pretrain_tiny(audio_format: str, work_dir: Path, steps: int, seed: int) -> Path:
    from gram_training.simulate import data_arguments, write_pretraining_data
    from gram_training.train import main as train

    data = write_pretraining_data(
        work_dir / "pretraining-data", audio_format, num_rirs=8, seed=seed + 1, with_speech=True
    )
    output = work_dir / "tiny-gram"
    variant = f"{audio_format}-time"
    train(
        [
            "--output_dir",
            str(output),
            "--variant",
            variant,
            "--model_size",
            "tiny",
            "--max_steps",
            str(steps),
            *data_arguments(data),
            "--per_device_train_batch_size",
            "4",
            "--crops_per_clip",
            "8",
            "--learning_rate",
            "1e-3",
            "--warmup_steps",
            str(max(steps // 10, 1)),
            "--logging_steps",
            str(max(steps // 10, 1)),
            "--save_strategy",
            "no",
            "--seed",
            str(seed),
        ]
    )
    return output


def run_demo(
    output_dir,
    audio_format: str = "binaural",
    model: str | None = None,
    num_rooms: int = 40,
    scenes_per_room: int = 6,
    pretraining_steps: int = 200,
    probe_epochs: int = 100,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}.")
    with staged_directory(output_dir, "demo", inputs=[model] if model else [], overwrite=overwrite) as staging:
        logger.info("Rendering %d scenes in %d rooms (%s).", num_rooms * scenes_per_room, num_rooms, audio_format)
        scenes = render_scenes(audio_format, num_rooms, scenes_per_room, seed)
        model_dir = Path(model) if model else pretrain_tiny(audio_format, staging, pretraining_steps, seed)
        encoder = GramModel.from_pretrained(model_dir)
        expected_channels = GRAM_FORMATS[audio_format]
        if encoder.config.num_channels != expected_channels:
            raise ValueError(
                f"The model at {model_dir} takes {encoder.config.num_channels} feature channels; "
                f"{audio_format} scenes give {expected_channels}."
            )
        extractor = GramFeatureExtractor.from_config(encoder.config)
        representations = {
            "GRAM": gram_embeddings(encoder, extractor, scenes.audio),
            "log-mel baseline": log_mel_baseline(extractor, scenes.audio),
        }
        results = [
            evaluate(name, values, scenes, str(staging / "probes"), probe_epochs)
            for name, values in representations.items()
        ]
        true_azimuths = scenes.azimuths[scenes.is_test]
        plot_directions(results, true_azimuths, staging / "directions.png")
        summary = {
            "audio_format": audio_format,
            "model": str(model) if model else f"tiny GRAM, {pretraining_steps} steps",
            "train_scenes": int((~scenes.is_test).sum()),
            "test_scenes": int(scenes.is_test.sum()),
            "kinds": scenes.kind_names,
            "azimuth_convention": AZIMUTH_CONVENTION,
            "true_azimuths": true_azimuths.tolist(),
            "results": results,
        }
        (staging / "results.json").write_text(json.dumps(summary, indent=1))
        for leftover in ("probes", "pretraining-data"):
            shutil.rmtree(staging / leftover, ignore_errors=True)
    return summary


def format_table(summary: dict) -> str:
    lines = [
        f"{summary['test_scenes']} test scenes in unseen rooms ({summary['audio_format']}), model: {summary['model']}",
        f"{'representation':<18} {'size':>6} {'kind accuracy':>14} {'median error':>13} {'mean error':>11} "
        f"{'median azimuth error':>21}",
    ]
    for r in summary["results"]:
        lines.append(
            f"{r['representation']:<18} {r['embedding_size']:>6} {r['kind_accuracy']:>13.1%} "
            f"{r['angular_error_median_deg']:>12.1f}° {r['angular_error_mean_deg']:>10.1f}° "
            f"{r['azimuth_error_median_deg']:>20.1f}°"
        )
    lines.append(f"(chance accuracy {summary['results'][0]['kind_chance']:.1%}; a constant direction guess errs ~90°)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="results.json and directions.png go here")
    parser.add_argument("--audio-format", choices=AUDIO_FORMATS, default="binaural")
    parser.add_argument("--model", help="a saved GRAM directory to use instead of pretraining a tiny one")
    parser.add_argument("--num-rooms", type=int, default=40)
    parser.add_argument("--scenes-per-room", type=int, default=6)
    parser.add_argument("--pretraining-steps", type=int, default=200)
    parser.add_argument("--probe-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output of the demo")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        summary = run_demo(
            args.output_dir,
            args.audio_format,
            args.model,
            args.num_rooms,
            args.scenes_per_room,
            args.pretraining_steps,
            args.probe_epochs,
            args.seed,
            args.overwrite,
        )
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(format_table(summary))
    print(f"Wrote {Path(args.output_dir) / 'results.json'} and {Path(args.output_dir) / 'directions.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
