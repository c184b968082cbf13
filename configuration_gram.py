"""GRAM model configuration."""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import logging

logger = logging.get_logger(__name__)

# The published variants: audio format x patching. Feature channels: mono 1, binaural 2 (left, right
# log-mels), ambisonics 7 (4 first-order ambisonic log-mels + 3 intensity-vector channels).
GRAM_FORMATS = {"mono": 1, "binaural": 2, "ambisonics": 7}
# Audio channels each format records (first-order ambisonics: 4, see AMBISONICS_FORMATS). The one table of the package, with GRAM_FORMATS.
AUDIO_CHANNELS = {"mono": 1, "binaural": 2, "ambisonics": 4}
GRAM_PATCHINGS = {
    # (freq, time) patch size, MW-MAE decoder window size per head (0 = global attention)
    "frame": ((16, 8), [2, 5, 10, 25, 50, 100, 0, 0]),
    "time": ((128, 2), [2, 5, 10, 25, 50, 0, 0, 0]),
}
GRAM_VARIANTS = tuple(f"{fmt}-{patching}" for fmt in GRAM_FORMATS for patching in GRAM_PATCHINGS)
POOLING_STRATEGIES = ("raw", "mean", "cls")

# First-order ambisonic channel conventions. Each row is one channel's gain for a plane wave of unit pressure
# arriving from the unit direction (front, left, up) of the listener: channel = row . (1, front, left, up).
# Any two conventions convert exactly into each other by a 4 x 4 matrix (`ambisonics_conversion`).
_SQRT2, _SQRT3 = 2.0**0.5, 3.0**0.5
AMBISONICS_FORMATS = {
    # AmbiX: ACN order W, Y, Z, X with SN3D. Real recordings (STARSS23, TAU-SRIR) and most tools use it.
    "ambix": ((1, 0, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (0, 1, 0, 0)),
    # Furse-Malham (B-format): W, X, Y, Z with W at -3 dB.
    "fuma": ((1 / _SQRT2, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)),
    # SoundSpaces 2.0 (habitat-sim's RLR-Audio-Propagation), which rendered GRAM's pretraining scenes: ACN order
    # and N3D normalisation in habitat's listener frame (x right, y up, z back), so the channels are
    # W, up, back, right with first-order gains sqrt(3). The published GRAM-Ambisonics expects this layout.
    "soundspaces": ((1, 0, 0, 0), (0, 0, 0, _SQRT3), (0, -_SQRT3, 0, 0), (0, 0, -_SQRT3, 0)),
    # W, X, Y, Z with SN3D (W at 0 dB): what this package's simulator wrote before 2026-11-30 (models pretrained
    # on it carry ambisonics_layout="wxyz-sn3d"), and the layout of many ad-hoc renders.
    "wxyz-sn3d": ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)),
}
# The layout of the published ambisonic checkpoints and of this package's simulator.
DEFAULT_AMBISONICS_LAYOUT = "soundspaces"


def ambisonics_conversion(source: str, target: str) -> list[list[float]]:
    """The 4 x 4 matrix `M` with `target_channels = M @ source_channels` for first-order ambisonics."""
    for name in (source, target):
        if name not in AMBISONICS_FORMATS:
            raise ValueError(f"Unknown ambisonics format {name!r}; expected one of {', '.join(AMBISONICS_FORMATS)}.")
    # Each source row has a single nonzero gain, so its inverse is a scaled transpose.
    source_rows = AMBISONICS_FORMATS[source]
    inverse = [[0.0] * 4 for _ in range(4)]  # (1, front, left, up) from the source channels
    for channel, row in enumerate(source_rows):
        component = next(i for i, gain in enumerate(row) if gain)
        inverse[component][channel] = 1.0 / row[component]
    target_rows = AMBISONICS_FORMATS[target]
    return [[sum(target_rows[r][k] * inverse[k][c] for k in range(4)) for c in range(4)] for r in range(4)]


# Written into every saved config and preprocessor config, so a saved directory loads with
# trust_remote_code whatever classes were registered in the saving process.
GRAM_AUTO_MAP = {
    "AutoConfig": "configuration_gram.GramConfig",
    "AutoModel": "modeling_gram.GramModel",
    "AutoModelForPreTraining": "modeling_gram.GramForPreTraining",
    "AutoModelForAudioClassification": "modeling_gram.GramForAudioClassification",
    "AutoFeatureExtractor": "feature_extraction_gram.GramFeatureExtractor",
}
# transformers' `custom_pipelines`: `pipeline(task, model=<GRAM directory>, trust_remote_code=True)` builds these
# (pipeline_gram.py), which take multi-channel audio. Derived from the code, so every config has the current
# table: `config.custom_pipelines` is a fresh copy each time (transformers' pipeline() edits the one it gets).
GRAM_CUSTOM_PIPELINES = {
    "audio-classification": {
        "impl": "pipeline_gram.GramAudioClassificationPipeline",
        "pt": ["AutoModelForAudioClassification"],
        "type": "audio",
    },
    "feature-extraction": {
        "impl": "pipeline_gram.GramAudioEmbeddingPipeline",
        "pt": ["AutoModel"],
        "type": "audio",
    },
}


# Upper bounds far above any GRAM (ViT-B: 768 wide, 12 layers) that keep a corrupt or hostile config.json
# from hanging or exhausting memory while the model is built.
_INT_FIELDS = {  # name: (lowest, highest)
    "num_channels": (1, 64),
    "num_mel_bins": (1, 1024),
    "chunk_frames": (1, 100_000),
    "hidden_size": (4, 8192),
    "num_hidden_layers": (1, 128),
    "num_attention_heads": (1, 256),
    "intermediate_size": (1, 65536),
    "decoder_hidden_size": (4, 8192),
    "decoder_num_hidden_layers": (1, 128),
    "decoder_num_attention_heads": (1, 256),
    "decoder_intermediate_size": (1, 65536),
    "sampling_rate": (1000, 768_000),
    "hop_length": (1, 100_000),
    "chunk_batch_size": (1, 1 << 20),
}
_FLOAT_FIELDS = {  # name: (lowest, highest, lowest included)
    "hidden_dropout_prob": (0.0, 1.0, True),
    "attention_probs_dropout_prob": (0.0, 1.0, True),
    "classifier_dropout": (0.0, 1.0, True),
    "mask_ratio": (0.0, 1.0, True),
    "layer_norm_eps": (0.0, 1.0, False),
    "decoder_layer_norm_eps": (0.0, 1.0, False),
    "spectrogram_norm_eps": (0.0, 1.0, False),
    "initializer_range": (0.0, 10.0, True),
}


def _validated_fields(values: dict[str, Any]) -> None:
    """Type and range checks with messages that name the field (config.json is user input)."""
    for name, (low, high) in _INT_FIELDS.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"GramConfig.{name} must be an int, got {type(value).__name__} {value!r}.")
        if not low <= value <= high:
            raise ValueError(f"GramConfig.{name} must be in [{low}, {high}], got {value}.")
    for name, (low, high, closed) in _FLOAT_FIELDS.items():
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"GramConfig.{name} must be a number, got {type(value).__name__} {value!r}.")
        if not (low <= value if closed else low < value) or not value < high:
            interval = f"{'[' if closed else '('}{low}, {high})"
            raise ValueError(f"GramConfig.{name} must be in {interval}, got {value}.")
    for name in ("qkv_bias", "freeze_encoder"):
        if not isinstance(values[name], bool):
            raise TypeError(f"GramConfig.{name} must be true or false, got {values[name]!r}.")
    if values["hidden_act"] not in ACT2FN:
        raise ValueError(
            f"GramConfig.hidden_act must be one of transformers' activations, got {values['hidden_act']!r}."
        )


class GramConfig(PretrainedConfig):
    r"""
    Configuration of a GRAM model (General-purpose, Real-world Audio Model): a ViT encoder over
    multi-channel log-mel spectrograms cut into 2-second chunks, with an MW-MAE decoder for pretraining.
    The defaults are GRAM-Binaural with time patching; `GramConfig.from_variant(name)` gives any
    published variant.

    New fields (the others carry their usual `transformers` meaning):
        num_channels (`int`, defaults to 2): feature channels of the spectrogram: 1 (mono), 2 (binaural),
            7 (ambisonics: 4 log-mels + 3 intensity vectors).
        chunk_frames (`int`, defaults to 200): spectrogram frames per chunk seen by the encoder (2 s).
        patch_size (`tuple[int, int]`, defaults to `(128, 2)`): (mel bins, frames) of one patch; "time"
            patching is `(128, 2)`, "frame" patching `(16, 8)`.
        patch_stride (`tuple[int, int]`, *optional*): stride of the patch convolution; defaults to
            `patch_size` (non-overlapping patches).
        spectrogram_norm_eps (`float`, defaults to 1e-5): epsilon of the per-chunk normalisation.
        decoder_window_sizes (`list[int]`): attention window of each decoder head, 0 = global.
        pooling_strategy (`str`, defaults to `"raw"`): default of `GramModel.forward(strategy=...)`.
        chunk_batch_size (`int`, defaults to 32): most chunks run through the encoder at once; longer
            audio is encoded in sub-batches of this size to bound memory.
        freeze_encoder (`bool`, defaults to False): task heads train their head only (linear probing).
        classifier_dropout (`float`, defaults to 0.0): dropout before the task heads.
        ambisonics_layout (`str`, defaults to `"soundspaces"`): the first-order ambisonic channel convention
            of the audio an ambisonic model was trained on (`AMBISONICS_FORMATS`): "soundspaces" for the
            published checkpoints and for models pretrained with this package's simulator. The feature
            extractor converts 4-channel input from its declared `ambisonics_format` into this layout.

    Example:

    ```python
    >>> from configuration_gram import GramConfig
    >>> config = GramConfig.from_variant("ambisonics-frame")
    >>> config.num_channels, config.patch_size, config.num_patches
    (7, (16, 8), 200)
    ```
    """

    model_type = "gram"

    def __init__(
        self,
        num_channels: int = 2,
        num_mel_bins: int = 128,
        chunk_frames: int = 200,
        patch_size: tuple[int, int] = (128, 2),
        patch_stride: tuple[int, int] | None = None,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        initializer_range: float = 0.02,
        spectrogram_norm_eps: float = 1e-5,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 8,
        decoder_intermediate_size: int = 2048,
        decoder_layer_norm_eps: float = 1e-5,
        decoder_window_sizes: list[int] | None = None,
        mask_ratio: float = 0.8,
        pooling_strategy: str = "raw",
        sampling_rate: int = 32000,
        hop_length: int = 320,
        chunk_batch_size: int = 32,
        freeze_encoder: bool = False,
        classifier_dropout: float = 0.0,
        ambisonics_layout: str = DEFAULT_AMBISONICS_LAYOUT,
        **kwargs,
    ):
        # The original Hub config carried `max_length`, a generation parameter that transformers 5.x refuses on
        # model configs ("object has no attribute 'max_length'" / save_pretrained errors). GRAM's chunk is
        # always 200 frames (`chunk_frames`), so the key is dropped rather than trusted.
        legacy = kwargs.pop("max_length", None)
        if legacy is not None and int(legacy) != chunk_frames:
            logger.warning(
                f"Ignoring legacy config key max_length={legacy}; GRAM chunks are chunk_frames={chunk_frames}."
            )
        auto_map = kwargs.pop("auto_map", None)
        kwargs.pop("custom_pipelines", None)  # derived from the code (the property below), never from a file
        super().__init__(**kwargs)
        self.auto_map = {**GRAM_AUTO_MAP, **(auto_map or {})}

        _validated_fields(locals())
        patch_stride = patch_stride if patch_stride is not None else patch_size
        for name, pair in (("patch_size", patch_size), ("patch_stride", patch_stride)):
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pair)
            ):
                raise ValueError(f"GramConfig.{name} must be a (mel_bins, frames) pair of positive ints, got {pair!r}.")
        patch_size, patch_stride = tuple(patch_size), tuple(patch_stride)
        if num_mel_bins % patch_stride[0] or chunk_frames % patch_stride[1] or patch_size != patch_stride:
            raise ValueError(
                f"Patches must tile the ({num_mel_bins} mel x {chunk_frames} frame) chunk without overlap: "
                f"got patch_size={patch_size}, patch_stride={patch_stride}."
            )
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})."
            )
        if decoder_hidden_size % decoder_num_attention_heads:
            raise ValueError(
                f"decoder_hidden_size ({decoder_hidden_size}) must be divisible by decoder_num_attention_heads "
                f"({decoder_num_attention_heads})."
            )
        if hidden_size % 4:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by 4 for the 2-D sin-cos position embedding."
            )
        if decoder_window_sizes is None:
            known = {size: windows for size, windows in GRAM_PATCHINGS.values()}
            decoder_window_sizes = known.get(patch_size, [0] * decoder_num_attention_heads)
            if len(decoder_window_sizes) != decoder_num_attention_heads:
                decoder_window_sizes = [0] * decoder_num_attention_heads
        if not isinstance(decoder_window_sizes, (list, tuple)) or not all(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= chunk_frames for w in decoder_window_sizes
        ):
            raise ValueError(
                f"GramConfig.decoder_window_sizes must be ints in [0, chunk_frames], got {decoder_window_sizes!r}."
            )
        decoder_window_sizes = list(decoder_window_sizes)
        if len(decoder_window_sizes) != decoder_num_attention_heads:
            raise ValueError(
                f"Expected one decoder window size per decoder head ({decoder_num_attention_heads}), "
                f"got {len(decoder_window_sizes)}: {decoder_window_sizes}."
            )
        if pooling_strategy not in POOLING_STRATEGIES:
            raise ValueError(f"pooling_strategy must be one of {POOLING_STRATEGIES}, got {pooling_strategy!r}.")
        if ambisonics_layout not in AMBISONICS_FORMATS:
            raise ValueError(
                f"GramConfig.ambisonics_layout must be one of {', '.join(AMBISONICS_FORMATS)}, got {ambisonics_layout!r}."
            )
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")

        self.num_channels = num_channels
        self.num_mel_bins = num_mel_bins
        self.chunk_frames = chunk_frames
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        self.spectrogram_norm_eps = spectrogram_norm_eps
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.decoder_layer_norm_eps = decoder_layer_norm_eps
        self.decoder_window_sizes = decoder_window_sizes
        self.mask_ratio = mask_ratio
        self.pooling_strategy = pooling_strategy
        self.sampling_rate = sampling_rate
        self.hop_length = hop_length
        self.chunk_batch_size = chunk_batch_size
        self.freeze_encoder = freeze_encoder
        self.classifier_dropout = classifier_dropout
        self.ambisonics_layout = ambisonics_layout

    @classmethod
    def from_variant(cls, variant: str, **kwargs) -> "GramConfig":
        """The configuration of a published variant, e.g. `"binaural-time"` or `"ambisonics-frame"`."""
        fmt, _, patching = variant.partition("-")
        if fmt not in GRAM_FORMATS or patching not in GRAM_PATCHINGS:
            raise ValueError(f"Unknown GRAM variant {variant!r}; expected one of {', '.join(GRAM_VARIANTS)}.")
        patch_size, window_sizes = GRAM_PATCHINGS[patching]
        defaults = {
            "num_channels": GRAM_FORMATS[fmt],
            "patch_size": patch_size,
            "decoder_window_sizes": list(window_sizes),
        }
        defaults.update(kwargs)
        return cls(**defaults)

    def check_feature_extractor(self, extractor) -> None:
        """Raises ValueError when a feature extractor's settings disagree with this model's: the features would
        not be what the model was trained on, or timestamps would be silently shifted."""
        pairs = [
            ("num_channels", self.num_channels, getattr(extractor, "num_channels", None)),
            ("num_mel_bins", self.num_mel_bins, getattr(extractor, "num_mel_bins", None)),
            ("sampling_rate", self.sampling_rate, getattr(extractor, "sampling_rate", None)),
            ("hop_length", self.hop_length, getattr(extractor, "hop_length", None)),
        ]
        if self.audio_format == "ambisonics":
            pairs.append(("ambisonics_layout", self.ambisonics_layout, getattr(extractor, "ambisonics_layout", None)))
        different = [f"{name}: model {ours}, extractor {theirs}" for name, ours, theirs in pairs if ours != theirs]
        if different:
            raise ValueError(f"The feature extractor does not match the model ({'; '.join(different)}).")

    @property
    def custom_pipelines(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(GRAM_CUSTOM_PIPELINES)

    @custom_pipelines.setter
    def custom_pipelines(self, value) -> None:
        # transformers' Pipeline.save_pretrained and config.update assign it; GRAM's table comes from the code.
        logger.info("GramConfig.custom_pipelines is derived from pipeline_gram.py; the assigned value is ignored.")

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        if config_dict.get("num_channels") == GRAM_FORMATS["ambisonics"] and "ambisonics_layout" not in config_dict:
            logger.warning(
                "This ambisonic config has no ambisonics_layout (written before it existed); assuming "
                f"{DEFAULT_AMBISONICS_LAYOUT!r}, the published checkpoints' layout. A model pretrained with this "
                "package before 2026-11-30 saw 'wxyz-sn3d': set ambisonics_layout in its config.json."
            )
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["custom_pipelines"] = self.custom_pipelines  # for the Hub and for readers of config.json
        return output

    @property
    def grid_size(self) -> tuple[int, int]:
        """(frequency, time) patches per chunk."""
        return self.num_mel_bins // self.patch_stride[0], self.chunk_frames // self.patch_stride[1]

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def frame_embedding_size(self) -> int:
        """Size of one time step of the "raw" embedding: the frequency patches of a step concatenated."""
        return self.grid_size[0] * self.hidden_size

    @property
    def step_duration_ms(self) -> float:
        """Duration of one "raw" embedding step in milliseconds (20 ms time patching, 80 ms frame)."""
        return 1000.0 * self.patch_stride[1] * self.hop_length / self.sampling_rate

    @property
    def audio_channels(self) -> int:
        """Channels of the audio this model takes: 1 (mono), 2 (binaural: left, right) or 4 (first-order ambisonics)."""
        return AUDIO_CHANNELS[self.audio_format]

    @property
    def audio_format(self) -> str:
        return {v: k for k, v in GRAM_FORMATS.items()}.get(self.num_channels, f"{self.num_channels}-channel")

    @property
    def patching(self) -> str:
        for name, (size, _) in GRAM_PATCHINGS.items():
            if tuple(self.patch_size) == size:
                return name
        return f"{self.patch_size[0]}x{self.patch_size[1]}"
