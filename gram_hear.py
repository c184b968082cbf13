"""HEAR API (https://hearbenchmark.com) for GRAM.

    import gram_hear
    model = gram_hear.load_model("path/to/gram-binaural-time", strategy="raw", layer=12)
    scene = gram_hear.get_scene_embeddings(audio, model)                   # (n_sounds, scene_embedding_size)
    steps, timestamps = gram_hear.get_timestamp_embeddings(audio, model)   # (n, T, size), (n, T) in ms

`audio` is `(n_sounds, n_samples)` float32 at 32 kHz (HEAR's layout), or `(n_sounds, channels, n_samples)`
for multi-channel audio (binaural L/R, FOA W/X/Y/Z), adapted to the model's format like the feature
extractor does. Validate with the official tool:

    pip install --ignore-requires-python hearvalidator==2021.0.6
    hear-validator gram_hear --model path/to/gram-binaural-time
"""

from __future__ import annotations

import os

import numpy as np
import torch

from configuration_gram import GRAM_VARIANTS, POOLING_STRATEGIES
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel, GramModelOutput

DEFAULT_MODEL = "labhamlet/gramt-binaural-time"


class GramHearModel(torch.nn.Module):
    """A GRAM encoder, its feature extractor and the HEAR settings (strategy, layer)."""

    def __init__(
        self, model: GramModel, extractor: GramFeatureExtractor, strategy: str, layer: int | None, batch_size: int
    ):
        super().__init__()
        if strategy not in POOLING_STRATEGIES:
            raise ValueError(f"strategy must be one of {POOLING_STRATEGIES}, got {strategy!r}.")
        if layer is not None and not 0 <= layer <= model.config.num_hidden_layers:
            raise ValueError(f"layer must be in [0, {model.config.num_hidden_layers}], got {layer}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        model.config.check_feature_extractor(extractor)
        self.model = model.eval()
        self.extractor = extractor
        self.strategy = strategy
        self.layer = layer
        self.batch_size = batch_size
        config = model.config
        self.sample_rate = int(extractor.sampling_rate)
        self.scene_embedding_size = int(config.frame_embedding_size if strategy == "raw" else config.hidden_size)
        self.timestamp_embedding_size = int(config.frame_embedding_size)

    @torch.no_grad()
    def embed(self, audio: torch.Tensor | np.ndarray) -> GramModelOutput:
        if isinstance(audio, np.ndarray):
            audio = torch.from_numpy(audio)
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"Expected audio as a torch tensor (or numpy array), got {type(audio).__name__}.")
        if audio.ndim not in (2, 3):
            raise ValueError(
                f"Expected audio (n_sounds, n_samples) or (n_sounds, channels, n_samples), got {tuple(audio.shape)}."
            )
        device = next(self.model.parameters()).device
        if audio.shape[0] == 0:  # no sounds: empty embeddings of the right sizes
            empty = torch.zeros(0, 0, self.timestamp_embedding_size, device=device)
            return GramModelOutput(
                last_hidden_state=empty,
                pooler_output=torch.zeros(0, self.scene_embedding_size, device=device),
                timestamps=torch.zeros(0, device=device),
            )
        outputs = []
        for start in range(0, audio.shape[0], self.batch_size):
            # PCM stays integer here: the extractor scales int16/int32/uint8 to [-1, 1).
            clips = list(audio[start : start + self.batch_size].detach().cpu())
            inputs = self.extractor(clips, sampling_rate=self.sample_rate, return_tensors="pt", device=device)
            outputs.append(self.model(**inputs, strategy=self.strategy, layer=self.layer))
        return GramModelOutput(
            last_hidden_state=torch.cat([o.last_hidden_state for o in outputs]),
            pooler_output=torch.cat([o.pooler_output for o in outputs]),
            timestamps=outputs[0].timestamps,
        )


def _resolve(model_file_path: str, variant: str | None) -> str:
    path = model_file_path or os.environ.get("GRAM_HEAR_MODEL", "") or DEFAULT_MODEL
    if variant is not None:
        if variant not in GRAM_VARIANTS:
            raise ValueError(f"variant must be one of {GRAM_VARIANTS}, got {variant!r}.")
        for candidate in (os.path.join(path, variant), os.path.join(path, f"gram-{variant}")):
            if os.path.isdir(candidate):  # a folder holding one directory per variant
                return candidate
    return path


def load_model(model_file_path: str = "", **kwargs) -> GramHearModel:
    """Loads a GRAM directory or Hub id (default: $GRAM_HEAR_MODEL, else the binaural time-patching model).

    Keyword arguments (strings work too, as HEAR passes them):
        strategy: "raw" (default), "mean" or "cls", the scene embedding's pooling.
        layer: embed from this encoder layer's output (0..num_hidden_layers; default the last).
        variant: e.g. "ambisonics-frame": picks `<path>/<variant>` or `<path>/gram-<variant>` when `path`
            holds one directory per variant, and checks the loaded model is that variant.
        device: "cpu" (default) or "cuda"; batch_size: clips per forward pass (default 8).
    """
    unknown = set(kwargs) - {"strategy", "layer", "variant", "device", "batch_size"}
    if unknown:
        raise TypeError(f"Unknown load_model arguments: {sorted(unknown)}.")
    variant = kwargs.get("variant")
    path = _resolve(model_file_path, variant)
    model = GramModel.from_pretrained(path)
    if variant is not None and f"{model.config.audio_format}-{model.config.patching}" != variant:
        raise ValueError(f"{path} holds a {model.config.audio_format}-{model.config.patching} model, not {variant}.")
    try:
        extractor = GramFeatureExtractor.from_pretrained(path)
    except OSError:  # a directory with weights only: the extractor for the model's format
        extractor = GramFeatureExtractor.from_config(model.config)
    layer = kwargs.get("layer")
    wrapper = GramHearModel(
        model,
        extractor,
        strategy=str(kwargs.get("strategy", "raw")),
        layer=None if layer in (None, "") else _as_int(layer, "layer"),
        batch_size=_as_int(kwargs.get("batch_size", 8), "batch_size"),
    )
    return wrapper.to(kwargs.get("device", "cpu"))


def _as_int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int, got {value!r}.") from None


def get_scene_embeddings(audio: torch.Tensor, model: GramHearModel) -> torch.Tensor:
    """`(n_sounds, scene_embedding_size)` float32: the clip embedding by the model's strategy."""
    return model.embed(audio).pooler_output


def get_timestamp_embeddings(audio: torch.Tensor, model: GramHearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """`(n_sounds, n_steps, timestamp_embedding_size)` float32 time-resolved embeddings and their
    timestamps `(n_sounds, n_steps)` in ms: evenly spaced from 0 (20 ms time patching, 80 ms frame
    patching), the time of each step's first frame, never past the end of the audio."""
    output = model.embed(audio)
    timestamps = output.timestamps.unsqueeze(0).expand(output.last_hidden_state.shape[0], -1)
    return output.last_hidden_state, timestamps.contiguous()
