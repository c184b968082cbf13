"""HEAR API (https://hearbenchmark.com) for GRAM.

    import gram_hear
    model = gram_hear.load_model("path/to/gram-binaural-time", strategy="raw", layer=12)
    scene = gram_hear.get_scene_embeddings(audio, model)                   # (n_sounds, scene_embedding_size)
    steps, timestamps = gram_hear.get_timestamp_embeddings(audio, model)   # (n, T, size), (n, T) in ms

`audio` is `(n_sounds, n_samples)` float32 at 32 kHz (HEAR's layout) or, for multi-channel audio (binaural
left/right, first-order ambisonics), `(n_sounds, n_samples, channels)` as heareval and listen-eval-kit deliver
it (soundfile's layout through a default DataLoader) or `(n_sounds, channels, n_samples)`; the two are told
apart by size (a clip has at least 513 samples, and 1, 2 or 4 channels). Ambisonic audio needs its
convention: `load_model(..., ambisonics_format="ambix")` (or "fuma", "soundspaces").

`model_file_path` may be a directory of this package (or a Hub repo in its layout), or an ORIGINAL GRAM
checkpoint: a Lightning `.ckpt` of labhamlet/GRAM-T, the original wrapper's `model.safetensors`, a local copy
of an original Hub repo, or its Hub id (e.g. labhamlet/gramt-binaural-time). Originals are converted in memory
by the converter's safe loader (no code in the file runs). The options of the authors' scripts
(`in_channels`, `use_mwmae_decoder`) are accepted. Validate with the official tool:

    pip install --ignore-requires-python hearvalidator==2021.0.6
    hear-validator gram_hear --model path/to/gram-binaural-time
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from configuration_gram import AMBISONICS_FORMATS, AUDIO_CHANNELS, GRAM_VARIANTS, POOLING_STRATEGIES
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel, GramModelOutput

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "labhamlet/gramt-binaural-time"  # an original Hub repo: converted in memory
_CHANNEL_COUNTS = tuple(sorted(set(AUDIO_CHANNELS.values())))
LOAD_MODEL_OPTIONS = (
    "strategy",
    "layer",
    "variant",
    "device",
    "batch_size",
    "ambisonics_format",
    "in_channels",
    "use_mwmae_decoder",
    "num_attention_heads",
)


class GramHearModel(torch.nn.Module):
    """A GRAM encoder, its feature extractor and the HEAR settings (strategy, layer)."""

    def __init__(
        self,
        model: GramModel,
        extractor: GramFeatureExtractor,
        strategy: str,
        layer: int | None,
        batch_size: int,
        ambisonics_format: str | None = None,
    ):
        super().__init__()
        if strategy not in POOLING_STRATEGIES:
            raise ValueError(f"strategy must be one of {POOLING_STRATEGIES}, got {strategy!r}.")
        if layer is not None and not 0 <= layer <= model.config.num_hidden_layers:
            raise ValueError(f"layer must be in [0, {model.config.num_hidden_layers}], got {layer}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if ambisonics_format is not None and ambisonics_format not in AMBISONICS_FORMATS:
            raise ValueError(
                f"ambisonics_format must be one of {', '.join(AMBISONICS_FORMATS)}, got {ambisonics_format!r}."
            )
        model.config.check_feature_extractor(extractor)
        self.ambisonics_format = ambisonics_format
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
                "Expected audio (n_sounds, n_samples), (n_sounds, n_samples, channels) or (n_sounds, channels, "
                f"n_samples), got {tuple(audio.shape)}."
            )
        shortest = self.extractor.n_fft // 2 + 1  # the reflect-padded STFT needs more samples than n_fft // 2
        if audio.ndim == 3 and audio.shape[2] in _CHANNEL_COUNTS and audio.shape[1] >= shortest:
            audio = audio.transpose(1, 2)  # heareval / listen-eval-kit: soundfile's (samples, channels) per clip
        if audio.ndim == 3 and audio.shape[1] == 4 and self.model.config.audio_channels == 4:
            if self.ambisonics_format is None:
                raise ValueError(
                    "4-channel ambisonic audio of unknown convention: load the model with ambisonics_format="
                    "'ambix' (ACN/SN3D, most recordings), 'fuma' or 'soundspaces' (the published model's layout), "
                    """e.g. heareval's --model-options '{"ambisonics_format": "ambix"}'."""
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
            inputs = self.extractor(
                clips,
                sampling_rate=self.sample_rate,
                return_tensors="pt",
                device=device,
                ambisonics_format=self.ambisonics_format,
            )
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


def _is_package_layout(path: str) -> bool:
    """True for a directory (or Hub repo) of this package (config.json of model_type "gram"); False for an
    original checkpoint or original Hub repo (whose config, if any, is the original wrapper's)."""
    if os.path.isdir(path):
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            return False
    elif os.path.lexists(path):
        return False
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_file = hf_hub_download(path, "config.json")
        except Exception:  # no such file in the repo, or offline and not cached: treated as an original
            return False
    try:
        with open(config_file, encoding="utf-8") as f:
            return json.load(f).get("model_type") == "gram"
    except (OSError, ValueError, AttributeError):
        return False


def _load_encoder(path: str, num_attention_heads: int = 12) -> tuple[GramModel, GramFeatureExtractor]:
    if _is_package_layout(path):
        model = GramModel.from_pretrained(path)
        try:
            extractor = GramFeatureExtractor.from_pretrained(path)
        except OSError:  # a directory with weights only: the extractor for the model's format
            extractor = GramFeatureExtractor.from_config(model.config)
        return model, extractor
    from convert_checkpoint import load_original_encoder  # original checkpoints only

    logger.info("%s is an original GRAM checkpoint: converting it in memory.", path)
    model = load_original_encoder(path, num_attention_heads=num_attention_heads)
    return model, GramFeatureExtractor.from_config(model.config)


def load_model(model_file_path: str = "", **kwargs) -> GramHearModel:
    """Loads GRAM from a directory or Hub repo of this package, or from an original checkpoint (a GRAM-T
    Lightning `.ckpt`, the original wrapper's `model.safetensors` or Hub repo), converted in memory. Without
    a path: $GRAM_HEAR_MODEL, else the original binaural time-patching Hub model.

    Keyword arguments (strings work too, as the HEAR runners pass them):
        strategy: "raw" (default), "mean" or "cls", the scene embedding's pooling.
        layer: embed from this encoder layer's output (0..num_hidden_layers; default the last).
        variant: e.g. "ambisonics-frame": picks `<path>/<variant>` or `<path>/gram-<variant>` when `path`
            holds one directory per variant, and checks the loaded model is that variant.
        ambisonics_format: the convention of 4-channel input, "ambix", "fuma" or "soundspaces" (required to
            embed 4-channel audio with an ambisonic model).
        in_channels: as the original's scripts pass it: the model's feature channels (1, 2 or 7), checked.
        use_mwmae_decoder: accepted for the original's scripts; the decoder plays no part in embeddings.
        num_attention_heads: encoder heads of an original checkpoint, which its weights do not show (default 12,
            the published models'); ignored for directories of this package.
        device: "cpu" (default) or "cuda"; batch_size: clips per forward pass (default 8).
    """
    unknown = set(kwargs) - set(LOAD_MODEL_OPTIONS)
    if unknown:
        raise TypeError(f"Unknown load_model arguments: {sorted(unknown)}; expected some of {LOAD_MODEL_OPTIONS}.")
    variant = kwargs.get("variant")
    path = _resolve(model_file_path, variant)
    heads = _as_int(kwargs.get("num_attention_heads", 12), "num_attention_heads")
    model, extractor = _load_encoder(path, heads)
    if variant is not None and f"{model.config.audio_format}-{model.config.patching}" != variant:
        raise ValueError(f"{path} holds a {model.config.audio_format}-{model.config.patching} model, not {variant}.")
    if kwargs.get("in_channels") not in (None, ""):
        in_channels = _as_int(kwargs["in_channels"], "in_channels")
        if in_channels != model.config.num_channels:
            raise ValueError(
                f"in_channels={in_channels}, but {path} is a {model.config.audio_format} model with "
                f"{model.config.num_channels} feature channels."
            )
    if "use_mwmae_decoder" in kwargs:
        logger.info(
            "use_mwmae_decoder=%r ignored: the decoder plays no part in embeddings.", kwargs["use_mwmae_decoder"]
        )
    layer = kwargs.get("layer")
    wrapper = GramHearModel(
        model,
        extractor,
        strategy=str(kwargs.get("strategy", "raw")),
        layer=None if layer in (None, "") else _as_int(layer, "layer"),
        batch_size=_as_int(kwargs.get("batch_size", 8), "batch_size"),
        ambisonics_format=kwargs.get("ambisonics_format") or None,
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
