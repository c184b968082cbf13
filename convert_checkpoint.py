"""Convert checkpoints of the original GRAM code (labhamlet/GRAM-T) into Hub-ready directories.

    python convert_checkpoint.py --checkpoint labhamlet/gramt-binaural-time --output-dir gram-binaural-time
    python convert_checkpoint.py --checkpoint step=500000.ckpt --output-dir gram-binaural-frame
    python convert_checkpoint.py --checkpoint model.safetensors --output-dir out --push-to-hub me/gram-x --private
    python convert_checkpoint.py --random-weights ambisonics-time --output-dir gram-untrained   # offline, UNTRAINED

Accepted inputs:
  * a PyTorch Lightning checkpoint (`.ckpt`) of the original training code: a dict whose "state_dict" holds
    the GRAMT module's keys (torchvision encoder `encoder.layers.encoder_layer_{i}.*`, `patch_embed.proj`,
    `cls_token`, MW-MAE decoder `decoder_blocks.{i}.wmha.*`, `spec_pred.0`, feature buffers, ...);
  * a plain state dict of those keys (`.pt`/`.pth`/`.bin`), or the `model.safetensors` of the original
    huggingface_hub-mixin wrapper (`RuntimeGRAMT`: the same keys under `model.`, plus `mel_spec.*` buffers);
  * a Hub repo id of such a wrapper (e.g. `labhamlet/gramt-binaural-time`, `--revision` optional), or a local
    copy of one (a directory holding its `model.safetensors`): only the weight file is downloaded, through
    huggingface_hub (its cache, `HF_HUB_OFFLINE` and tokens apply); the repo's own code is never run.

The variant (feature channels from the patch convolution's input channels, patching from its kernel, the
decoder windows from the relative-position tables) is read off the weights. Checkpoints are untrusted data
(see safe_checkpoint.py and the README's Safety section): the file's pickle is interpreted without Python's
or torch's unpickler, so no code in it runs; names and shapes are checked against the GRAM architecture
before any tensor byte is read, and every byte of the weights comes from the file. The output is written
through gram_io.staged_directory: checked by loading it back, then swapped into place atomically; nothing
the converter did not write is ever deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from typing import Any, Iterable

import torch

from configuration_gram import GRAM_FORMATS, GRAM_PATCHINGS, GRAM_VARIANTS, GramConfig
from feature_extraction_gram import GramFeatureExtractor, htk_mel_filterbank
from gram_io import OUTPUT_MARKER, OutputDirectoryError, check_output_dir, printable, staged_directory
from modeling_gram import REMOTE_CODE_FILES, GramForPreTraining, GramModel
from safe_checkpoint import CheckpointError, TensorSpec, read_checkpoint

try:  # only needed for --push-to-hub
    from huggingface_hub import HfApi
except ImportError:  # pragma: no cover - huggingface_hub is a dependency of transformers
    HfApi = None


class ConversionError(CheckpointError):
    """The checkpoint cannot be converted; the message says why and names the keys."""


# ------------------------------------------------------------------------------------------------------
# Safe loading (safe_checkpoint.py: no pickle machinery, tensors described before any byte is read)
# ------------------------------------------------------------------------------------------------------
def load_untrusted_checkpoint(path: str) -> tuple[dict[str, TensorSpec], str]:
    """Descriptions (`TensorSpec`: shape, dtype, `load()`) of a checkpoint's tensors and its source kind;
    no code in the file runs and no tensor byte is read yet."""
    if not os.path.isfile(path):
        raise ConversionError(f"Checkpoint not found (or not a regular file): {path}")
    try:
        return read_checkpoint(path)
    except CheckpointError as error:
        raise ConversionError(f"Cannot read {path} as a checkpoint: {error}") from None
    except OSError as error:
        raise ConversionError(f"Cannot read {path}: {error.strerror or error}") from None


# The weight file of the original huggingface_hub-mixin wrapper in its Hub repos.
HUB_WEIGHTS_FILE = "model.safetensors"
_HUB_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def resolve_checkpoint(checkpoint: str, revision: str | None = None, progress: bool = False) -> tuple[str, str]:
    """The local file to convert and a description of its source, for `checkpoint` given as

    * a file: itself (`revision` must be None);
    * a directory (a local copy of an original Hub repo): its `model.safetensors`;
    * a Hub repo id `owner/name` that is not a local path: its `model.safetensors` at `revision` (default
      main), downloaded by huggingface_hub into its cache (offline mode, cache location and token as
      huggingface_hub handles them). Nothing else of the repo is fetched; its code is never run.

    The source reads `owner/name@<commit>` for a Hub download, so a model card can say which commit it was.
    """
    if os.path.lexists(checkpoint):
        if revision is not None:
            raise ConversionError(f"--revision applies to a Hub repo id, but {checkpoint} is a local path.")
        if os.path.isdir(checkpoint):
            weights = os.path.join(checkpoint, HUB_WEIGHTS_FILE)
            if not os.path.isfile(weights):
                raise ConversionError(f"{checkpoint} is a directory without {HUB_WEIGHTS_FILE}.")
            return weights, weights
        return checkpoint, checkpoint
    if not _HUB_REPO_ID.fullmatch(checkpoint) or ".." in checkpoint or "--" in checkpoint:
        raise ConversionError(f"Checkpoint not found: {checkpoint} is no local file and no Hub repo id (owner/name).")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    try:
        path = hf_hub_download(checkpoint, HUB_WEIGHTS_FILE, revision=revision)
    except Exception as error:  # offline and not cached, unknown repo/revision/file, gated, network: one line
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        where = f"{checkpoint}@{revision}" if revision else checkpoint
        raise ConversionError(
            f"Cannot get {HUB_WEIGHTS_FILE} of the Hub repo {where} ({type(error).__name__}: {reason})"
        ) from None
    finally:
        if not progress:
            enable_progress_bars()
    commit = os.path.basename(os.path.dirname(path))  # the cache's snapshots/<commit>/model.safetensors
    return path, f"{checkpoint}@{commit}" if _COMMIT.match(commit) else checkpoint


# ------------------------------------------------------------------------------------------------------
# Key mapping: original GRAMT -> GramForPreTraining
# ------------------------------------------------------------------------------------------------------
_LAYER = r"encoder\.layers\.encoder_layer_(\d+)\."
_BLOCK = r"decoder_blocks\.(\d+)\."
KEY_RULES: list[tuple[str, str]] = [
    (r"patch_embed\.proj\.(weight|bias)", r"gram.embeddings.patch_embeddings.projection.\1"),
    (r"cls_token", r"gram.embeddings.cls_token"),
    (r"encoder\.pos_embedding", r"gram.embeddings.position_embeddings"),
    (_LAYER + r"ln_1\.(weight|bias)", r"gram.encoder.layer.\1.layernorm_before.\2"),
    (_LAYER + r"self_attention\.in_proj_(weight|bias)", r"gram.encoder.layer.\1.attention.qkv.\2"),
    (_LAYER + r"self_attention\.out_proj\.(weight|bias)", r"gram.encoder.layer.\1.attention.proj.\2"),
    (_LAYER + r"ln_2\.(weight|bias)", r"gram.encoder.layer.\1.layernorm_after.\2"),
    (_LAYER + r"mlp\.0\.(weight|bias)", r"gram.encoder.layer.\1.mlp.fc1.\2"),
    (_LAYER + r"mlp\.3\.(weight|bias)", r"gram.encoder.layer.\1.mlp.fc2.\2"),
    (r"encoder\.ln\.(weight|bias)", r"gram.layernorm.\1"),
    (r"decoder_embed\.(weight|bias)", r"decoder.decoder_embed.\1"),
    (r"mask_token", r"decoder.mask_token"),
    (r"decoder_pos_embed", r"decoder.position_embeddings"),
    (_BLOCK + r"norm1\.(weight|bias)", r"decoder.layers.\1.layernorm_before.\2"),
    (_BLOCK + r"wmha\.qkv\.(weight|bias)", r"decoder.layers.\1.attention.qkv.\2"),
    (_BLOCK + r"wmha\.proj\.(weight|bias)", r"decoder.layers.\1.attention.proj.\2"),
    (
        _BLOCK + r"wmha\.attn_heads\.(\d+)\.relative_position_bias_table",
        r"decoder.layers.\1.attention.relative_position_bias_tables.\2",
    ),
    (_BLOCK + r"norm2\.(weight|bias)", r"decoder.layers.\1.layernorm_after.\2"),
    (_BLOCK + r"mlp\.fc1\.(weight|bias)", r"decoder.layers.\1.mlp.fc1.\2"),
    (_BLOCK + r"mlp\.fc2\.(weight|bias)", r"decoder.layers.\1.mlp.fc2.\2"),
    (r"decoder_norm\.(weight|bias)", r"decoder.layernorm.\1"),
    (r"spec_pred\.0\.(weight|bias)", r"decoder.prediction.\1"),
]
# Buffers the original saves that are derived from the configuration: checked, then dropped.
RELATIVE_INDEX = re.compile(_BLOCK + r"wmha\.attn_heads\.(\d+)\.relative_position_index")
FEATURE_BUFFER = re.compile(r"(?:.*\.)?(spectrogram\.window|mel_scale\.fb)")
_COMPILED_RULES = [(re.compile(pattern), target) for pattern, target in KEY_RULES]


def find_prefix(state: dict[str, torch.Tensor]) -> str:
    """'' for the training module's keys, 'model.' for RuntimeGRAMT's, ... (located by the patch conv)."""
    anchors = [k for k in state if k.endswith("patch_embed.proj.weight")]
    if len(anchors) != 1:
        sample = sorted(state)[:8]
        raise ConversionError(
            "Unknown checkpoint layout: expected exactly one 'patch_embed.proj.weight' key of the original GRAM "
            f"(found {len(anchors)}); first keys: {sample}"
        )
    return anchors[0][: -len("patch_embed.proj.weight")]


def map_original_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Returns (mapped weights, derived buffers); raises on keys that fit neither."""
    prefix = find_prefix(state)
    mapped, derived, unknown = {}, {}, []
    for key, value in state.items():
        if FEATURE_BUFFER.fullmatch(key):
            derived[key] = value
            continue
        if not key.startswith(prefix):
            unknown.append(key)
            continue
        name = key[len(prefix) :]
        if RELATIVE_INDEX.fullmatch(name):
            derived[name] = value
            continue
        for pattern, target in _COMPILED_RULES:
            if pattern.fullmatch(name):
                mapped[pattern.sub(target, name)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"Unexpected keys in the checkpoint (not part of the original GRAM): {sorted(unknown)[:20]}"
        )
    return mapped, derived


# ------------------------------------------------------------------------------------------------------
# Configuration from the weights (shapes only: nothing is read or allocated before it is validated)
# ------------------------------------------------------------------------------------------------------
def _layer_count(mapped: dict[str, TensorSpec], pattern: str, what: str) -> int:
    """Number of layers, whose indices must run 0..n-1 (a gap or a huge index is a broken checkpoint)."""
    indices = {m.group(1) for k in mapped if (m := re.match(pattern, k))}
    if not all(index.isascii() and index.isdigit() and len(index) <= 4 for index in indices):
        raise ConversionError(f"Invalid {what} indices in the checkpoint: {sorted(indices)[:5]}")
    numbers = sorted(int(index) for index in indices)
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
        raise ConversionError(f"The checkpoint's {what}s are not numbered 0..n-1: missing {what} {missing[:10]}.")
    return len(numbers)


def _shape(mapped: dict[str, TensorSpec], key: str, dims: int) -> torch.Size:
    if key not in mapped:
        raise ConversionError(f"The checkpoint has no {key!r} (missing from the original GRAM's keys).")
    shape = mapped[key].shape
    if len(shape) != dims:
        raise ConversionError(f"{key} has shape {tuple(shape)}; expected {dims} dimensions.")
    return shape


def infer_config(
    mapped: dict[str, TensorSpec],
    audio_format: str | None = None,
    patching: str | None = None,
    num_attention_heads: int = 12,
    decoder_num_attention_heads: int = 8,
    encoder_only: bool = False,
) -> GramConfig:
    hidden, channels, patch_f, patch_t = _shape(mapped, "gram.embeddings.patch_embeddings.projection.weight", 4)
    formats = {v: k for k, v in GRAM_FORMATS.items()}
    if channels not in formats:
        raise ConversionError(
            f"Unsupported variant: the patch convolution takes {channels} channels; GRAM has 1, 2 or 7."
        )
    patchings = {size: name for name, (size, _) in GRAM_PATCHINGS.items()}
    if (patch_f, patch_t) not in patchings:
        raise ConversionError(
            f"Unsupported patching: kernel {(patch_f, patch_t)}; GRAM has (16, 8) frame and (128, 2) time."
        )
    for flag, inferred in (
        ("format", (audio_format, formats[channels])),
        ("patching", (patching, patchings[(patch_f, patch_t)])),
    ):
        if inferred[0] is not None and inferred[0] != inferred[1]:
            raise ConversionError(f"--{flag} {inferred[0]} contradicts the weights, which are {inferred[1]}.")
    layers = _layer_count(mapped, r"gram\.encoder\.layer\.([^.]+)\.", "encoder layer")
    kwargs: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=_shape(mapped, "gram.encoder.layer.0.mlp.fc1.weight", 2)[0] if layers else 4 * hidden,
    )
    if not encoder_only:
        if "decoder.decoder_embed.weight" not in mapped:
            raise ConversionError(
                "The checkpoint has no decoder (missing 'decoder_embed.weight'); pass --encoder-only to convert "
                "the encoder alone."
            )
        decoder_layers = _layer_count(mapped, r"decoder\.layers\.([^.]+)\.", "decoder block")
        _, default_windows = GRAM_PATCHINGS[patchings[(patch_f, patch_t)]]
        windows = (
            list(default_windows)
            if decoder_num_attention_heads == len(default_windows)
            else [0] * decoder_num_attention_heads
        )
        tables = {}
        for key, spec in mapped.items():
            if m := re.fullmatch(r"decoder\.layers\.0\.attention\.relative_position_bias_tables\.(\d{1,3})", key):
                tables[int(m.group(1))] = spec.shape[0] if len(spec.shape) == 2 else 0
        if tables and max(tables) >= len(windows):
            raise ConversionError(f"Relative-position tables for head {max(tables)} but {len(windows)} decoder heads.")
        for head in range(len(windows)):  # read the windows off the tables: (2w - 1, 1) per windowed head
            windows[head] = (tables[head] + 1) // 2 if head in tables else 0
        kwargs.update(
            decoder_hidden_size=_shape(mapped, "decoder.decoder_embed.weight", 2)[0],
            decoder_num_hidden_layers=decoder_layers,
            decoder_num_attention_heads=decoder_num_attention_heads,
            decoder_intermediate_size=_shape(mapped, "decoder.layers.0.mlp.fc1.weight", 2)[0]
            if decoder_layers
            else 2048,
            decoder_window_sizes=windows,
        )
    try:  # GramConfig validates types and bounds (heads dividing the size, at most 128 layers, ...)
        return GramConfig.from_variant(f"{formats[channels]}-{patchings[(patch_f, patch_t)]}", **kwargs)
    except (TypeError, ValueError) as error:
        raise ConversionError(f"The weights do not describe a valid GRAM: {error}") from None


def _load_checked(key: str, spec: TensorSpec, shape: tuple[int, ...]) -> torch.Tensor:
    """Reads one tensor whose shape was validated, as float32; refuses non-float values and values that are not
    finite in float32 (a float64 1e300 is finite until the cast)."""
    if tuple(spec.shape) != tuple(shape):
        raise ConversionError(f"{key}: checkpoint {tuple(spec.shape)} vs expected {tuple(shape)}.")
    if not spec.dtype.is_floating_point:
        raise ConversionError(f"{key} holds {spec.dtype} values; GRAM weights are floating-point.")
    tensor = spec.load().float()
    if not torch.isfinite(tensor).all():
        raise ConversionError(
            f"{key} holds NaN or Inf values (in float32); the checkpoint is corrupt or from a diverged run."
        )
    return tensor


def check_derived_buffers(derived: dict[str, TensorSpec], config: GramConfig) -> None:
    """The original saves its mel filterbank, STFT window and relative-position indices: they must be the
    ones this package computes, or the converted model would not reproduce the original."""
    extractor = GramFeatureExtractor.from_config(config)
    expected_fb = htk_mel_filterbank(
        extractor.n_fft // 2 + 1, extractor.f_min, extractor.f_max, extractor.num_mel_bins, extractor.sampling_rate
    )
    feature_buffers = [key for key in derived if not RELATIVE_INDEX.fullmatch(key)]
    if len(feature_buffers) > 4:  # the training module's and the runtime wrapper's filterbank and window
        raise ConversionError(f"Unexpected feature buffers in the checkpoint: {sorted(feature_buffers)[:10]}")
    for key, spec in derived.items():
        if key.endswith("mel_scale.fb"):
            if spec.shape != expected_fb.shape or not torch.allclose(spec.load().float(), expected_fb, atol=1e-5):
                raise ConversionError(
                    f"{key}: the checkpoint's mel filterbank differs from GRAM's (128 HTK mels, 50-16000 Hz)."
                )
        elif key.endswith("spectrogram.window"):
            window = torch.hann_window(extractor.win_length)
            if spec.shape != window.shape or not torch.allclose(spec.load().float(), window, atol=1e-6):
                raise ConversionError(
                    f"{key}: the checkpoint's STFT window is not a {extractor.win_length}-sample Hann window."
                )
        else:
            match = RELATIVE_INDEX.fullmatch(key)
            block, head = (int(g) if g.isascii() and len(g) <= 4 else -1 for g in match.groups())
            if not 0 <= block < config.decoder_num_hidden_layers:
                raise ConversionError(
                    f"Unexpected key {key} (the decoder has {config.decoder_num_hidden_layers} blocks)."
                )
            window = config.decoder_window_sizes[head] if 0 <= head < len(config.decoder_window_sizes) else 0
            position = torch.arange(window)
            expected = position[:, None] - position[None, :] + window - 1
            if window == 0 or spec.shape != expected.shape or not torch.equal(spec.load().long(), expected):
                name = key if len(key) <= 120 else f"{key[:117]}..."
                raise ConversionError(f"{name}: unexpected relative-position index for window size {window}.")


def checked_shapes(mapped: dict[str, TensorSpec], config: GramConfig, encoder_only: bool) -> dict[str, tuple[int, ...]]:
    """Checks names and shapes against the architecture built on the meta device (no memory, no bytes read);
    returns the expected shape of every weight under the model's own names."""
    model_class = GramModel if encoder_only else GramForPreTraining
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    if encoder_only:
        expected = {f"gram.{k}": v for k, v in expected.items()}
        mapped = {k: v for k, v in mapped.items() if k.startswith("gram.")}
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            "The checkpoint does not fit the inferred GRAM configuration "
            f"({config.audio_format}-{config.patching}): missing {missing[:20]}, unexpected {unexpected[:20]}."
        )
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {expected[k]}"
        for k, v in mapped.items()
        if tuple(v.shape) != expected[k]
    ]
    if mismatched:
        raise ConversionError(f"Shape mismatches: {mismatched[:20]}")
    return expected


def build_model(mapped: dict[str, TensorSpec], config: GramConfig, encoder_only: bool, progress: bool = False):
    """Reads the (validated) tensors and loads them into a real model."""
    from tqdm.auto import tqdm

    expected = checked_shapes(mapped, config, encoder_only)
    names = tqdm(expected, desc="reading weights", unit="tensor", disable=not progress)
    weights = {k: _load_checked(k, mapped[k], expected[k]) for k in names}
    if encoder_only:
        weights = {k[len("gram.") :]: v for k, v in weights.items()}
    model = (GramModel if encoder_only else GramForPreTraining)(config)
    model.load_state_dict(weights, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------------
MODEL_CARD = """---
license: mit
library_name: transformers
pipeline_tag: feature-extraction
tags:
  - audio
  - spatial-audio
  - {audio_format}
  - gram
---

# GRAM-{title} ({patching} patching){untrained_title}

{origin}

| | |
|---|---|
| audio input | {audio_channels} channel(s) at 32 kHz |
| feature channels | {num_channels} |
| patch (mel x frames) | {patch} |
| raw embedding | {steps_per_second} steps/s of {frame_dim} |
| mean / cls embedding | {hidden} |
| {source_line} |

```python
import torch
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained("{repo_id}", trust_remote_code=True)
audio = 0.1 * torch.randn({audio_channels}, 10 * 32000)  # 10 s at 32 kHz
inputs = extractor(audio, sampling_rate=32000, return_tensors="pt")
with torch.no_grad():
    output = model(**inputs, strategy="raw")  # or "mean", "cls"
print(output.pooler_output.shape, output.last_hidden_state.shape)
```

For pretraining: `AutoModelForPreTraining.from_pretrained("{repo_id}", trust_remote_code=True)`.
"""


def write_model_card(
    directory: str, config: GramConfig, repo_id: str, source_line: str, untrained: bool = False
) -> None:
    descriptions = {
        "binaural": "two-channel binaural audio",
        "ambisonics": "four-channel first-order ambisonics (declare its convention: `ambisonics_format`)",
        "mono": "single-channel audio",
    }
    if untrained:
        origin = (
            "**UNTRAINED: random weights.** Made by `convert_checkpoint.py --random-weights` of the GRAM Hugging "
            "Face package to try the API offline; its embeddings carry no information. Convert a published "
            "checkpoint for real use."
        )
    else:
        origin = (
            "GRAM (General-purpose, Real-world Audio Model) for {audio}, converted from an original GRAM checkpoint "
            "with `convert_checkpoint.py` of the GRAM Hugging Face package. Encoder and MW-MAE decoder are both "
            "included, so pretraining can resume from this repository."
        ).format(audio=descriptions[config.audio_format])
    card = MODEL_CARD.format(
        audio_format=config.audio_format,
        title=config.audio_format.capitalize(),
        patching=config.patching,
        untrained_title=" — UNTRAINED (random weights)" if untrained else "",
        origin=origin,
        audio_channels=config.audio_channels,
        num_channels=config.num_channels,
        patch=f"{config.patch_size[0]} x {config.patch_size[1]}",
        steps_per_second=f"{1000 / config.step_duration_ms:g}",
        frame_dim=config.frame_embedding_size,
        hidden=config.hidden_size,
        source_line=source_line,
        repo_id=repo_id,
    )
    # Names from the command line may not be valid UTF-8 (surrogate-escaped bytes): written escaped.
    with open(os.path.join(directory, "README.md"), "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(card)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(
    checkpoint: str,
    output_dir: str,
    audio_format: str | None = None,
    patching: str | None = None,
    num_attention_heads: int = 12,
    decoder_num_attention_heads: int = 8,
    encoder_only: bool = False,
    overwrite: bool = False,
    repo_id: str | None = None,
    dry_run: bool = False,
    progress: bool = False,
    revision: str | None = None,
) -> tuple[str, list[str]]:
    """Converts `checkpoint` (a file, a local copy of an original Hub repo, or a Hub repo id at `revision`;
    see `resolve_checkpoint`) into `output_dir` atomically; returns the output directory and its files.
    With `dry_run`, the conversion is made and verified in a temporary directory that is then removed:
    nothing is written at `output_dir`."""
    say = _printer(progress)
    # A bad output location is reported before any download (and checked again against the file).
    _checked_output(output_dir, [checkpoint] if os.path.lexists(checkpoint) else [], overwrite)
    path, source = resolve_checkpoint(checkpoint, revision, progress)
    output = _checked_output(output_dir, [path], overwrite)

    say(f"Reading {source} (names and shapes only) ...")
    model = read_original(
        path, audio_format, patching, num_attention_heads, decoder_num_attention_heads, encoder_only, progress
    )
    model.config.architectures = [type(model).__name__]
    source_line = f"source checkpoint | `{_card_name(source)}` (sha256 `{file_sha256(path)}`)"
    say("Writing and verifying the directory (reloaded and compared) ...")
    return output, _write_output(model, output, [path], overwrite, dry_run, repo_id, source_line)


def read_original(
    path: str,
    audio_format: str | None,
    patching: str | None,
    num_attention_heads: int,
    decoder_num_attention_heads: int,
    encoder_only: bool | None,
    progress: bool = False,
):
    """The model of a local original checkpoint, through every check: safe reading, the key table, the
    configuration and shapes validated before any byte is read, the derived buffers compared. `encoder_only`
    None: as the checkpoint is (with or without decoder)."""
    specs, kind = load_untrusted_checkpoint(path)
    mapped, derived = map_original_keys(specs)
    if encoder_only is None:
        encoder_only = not any(key.startswith("decoder.") for key in mapped)
    config = infer_config(
        mapped, audio_format, patching, num_attention_heads, decoder_num_attention_heads, encoder_only
    )
    checked_shapes(mapped, config, encoder_only)
    check_derived_buffers(derived, config)
    _printer(progress)(
        f"{kind}: {len(mapped)} weights fit GRAM {config.audio_format}-{config.patching} "
        f"({config.num_hidden_layers} layers, width {config.hidden_size}); reading them ..."
    )
    return build_model(mapped, config, encoder_only, progress)


def load_original_encoder(
    checkpoint: str, revision: str | None = None, num_attention_heads: int = 12, decoder_num_attention_heads: int = 8
) -> GramModel:
    """The encoder of an original checkpoint (file, local copy of an original Hub repo, or Hub id), converted
    in memory with the same checks as `convert` (safe reading, shapes validated before any byte is read,
    derived buffers compared): for tools that take original checkpoints directly (the HEAR module)."""
    path, _ = resolve_checkpoint(checkpoint, revision)
    model = read_original(path, None, None, num_attention_heads, decoder_num_attention_heads, encoder_only=None)
    encoder = getattr(model, "gram", model)
    encoder.config.architectures = ["GramModel"]
    return encoder.eval()


def random_model(variant: str, seed: int = 0, config: GramConfig | None = None) -> GramForPreTraining:
    """An UNTRAINED `GramForPreTraining` of a published variant's configuration (or of `config`), with the
    package's initialisation seeded by `seed`: for trying the API offline, not for embeddings."""
    config = GramConfig.from_variant(variant) if config is None else config
    config.architectures = ["GramForPreTraining"]
    torch.manual_seed(seed)
    return GramForPreTraining(config).eval()


def write_random_model(
    variant: str,
    output_dir: str,
    seed: int = 0,
    overwrite: bool = False,
    dry_run: bool = False,
    config: GramConfig | None = None,
) -> tuple[str, list[str]]:
    """Writes `random_model(variant, seed, config)` as a complete model directory (same layout as a
    conversion), labelled untrained in its model card; returns the directory and its files."""
    output = _checked_output(output_dir, [], overwrite)
    model = random_model(variant, seed, config)
    source_line = f"weights | **UNTRAINED**: random initialisation, seed {seed} (for trying the API only)"
    return output, _write_output(model, output, [], overwrite, dry_run, None, source_line, untrained=True)


def _printer(progress: bool):
    def say(message: str) -> None:
        if progress:
            print(printable(message), file=sys.stderr, flush=True)

    return say


def _checked_output(output_dir: str, inputs: list[str], overwrite: bool) -> str:
    try:
        return str(check_output_dir(output_dir, inputs, overwrite))
    except OutputDirectoryError as error:
        raise ConversionError(str(error)) from None


def _card_name(source: str) -> str:
    """A Hub source (`owner/name@commit`) in full, a local file by its base name."""
    return source if not os.path.lexists(source) else os.path.basename(source)


def _write_output(
    model,
    output: str,
    inputs: list[str],
    overwrite: bool,
    dry_run: bool,
    repo_id: str | None,
    source_line: str,
    untrained: bool = False,
) -> list[str]:
    config = model.config

    def write(directory: str) -> list[str]:
        model.save_pretrained(directory, safe_serialization=True)
        GramFeatureExtractor.from_config(config).save_pretrained(directory)
        write_model_card(directory, config, repo_id or os.path.basename(output), source_line, untrained)
        _verify_saved(directory, model)
        return upload_files(directory)

    if dry_run:
        with tempfile.TemporaryDirectory(prefix="gram-convert-dry-run-") as scratch:
            return write(scratch)
    try:
        with staged_directory(output, "convert_checkpoint", inputs, overwrite) as staging:
            return write(str(staging))
    except OutputDirectoryError as error:
        raise ConversionError(str(error)) from None


def _verify_saved(directory: str, model) -> None:
    """The written directory must hold exactly the converted weights, as safetensors, with its code."""
    names = set(os.listdir(directory))
    required = {"config.json", "preprocessor_config.json", "model.safetensors", "README.md", *REMOTE_CODE_FILES}
    if not required <= names:
        raise ConversionError(f"Incomplete output, missing {sorted(required - names)}")
    if any(name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) for name in names):
        raise ConversionError(f"Output must hold safetensors weights only, found {sorted(names)}")
    reloaded = type(model).from_pretrained(directory)
    saved, original = reloaded.state_dict(), model.state_dict()
    different = [k for k in original if not torch.equal(saved[k], original[k])]
    if different:
        raise ConversionError(f"Reloaded weights differ from the converted ones: {different[:10]}")


def upload_files(directory: str) -> list[str]:
    """What a push uploads: every file but the local output marker."""
    return sorted(
        os.path.relpath(os.path.join(base, name), directory)
        for base, _, files in os.walk(directory)
        for name in files
        if name != OUTPUT_MARKER
    )


def push_to_hub(directory: str, repo_id: str, private: bool, commit_message: str) -> list[str]:
    if HfApi is None:  # pragma: no cover
        raise ConversionError("--push-to-hub needs huggingface_hub.")
    api = HfApi()  # token: HF_TOKEN in the environment or `hf auth login`
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=directory,
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=[OUTPUT_MARKER],
        )
    except Exception as error:  # network, auth and Hub errors come as many types (httpx, HfHubHTTPError, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(
            f"Upload to {repo_id} failed ({type(error).__name__}: {reason}). The converted directory {directory} is "
            "complete; push it later with `hf upload`."
        ) from None
    return upload_files(directory)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        help="original .ckpt / .pt / model.safetensors, a local copy of an original Hub repo, or its Hub id "
        "(e.g. labhamlet/gramt-binaural-time)",
    )
    source.add_argument(
        "--random-weights",
        metavar="VARIANT",
        choices=GRAM_VARIANTS,
        help=f"no checkpoint: write an UNTRAINED model of a variant ({', '.join(GRAM_VARIANTS)}) to try the API offline",
    )
    parser.add_argument("--revision", help="with a Hub repo id: branch, tag or commit (default: main)")
    parser.add_argument("--seed", type=int, default=0, help="with --random-weights: initialisation seed")
    parser.add_argument("--output-dir", required=True, help="directory to create (atomically)")
    parser.add_argument("--format", choices=sorted(GRAM_FORMATS), help="check the audio format read off the weights")
    parser.add_argument("--patching", choices=sorted(GRAM_PATCHINGS), help="check the patching read off the weights")
    parser.add_argument(
        "--num-attention-heads", type=int, default=12, help="encoder heads (not visible in the weights)"
    )
    parser.add_argument("--decoder-num-attention-heads", type=int, default=8)
    parser.add_argument(
        "--encoder-only", action="store_true", help="convert a checkpoint without decoder (AutoModel only)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="create the Hub repo and upload the directory")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    parser.add_argument(
        "--dry-run", action="store_true", help="convert and verify in a temporary folder, list the files, write nothing"
    )
    parser.add_argument("--commit-message", default="Upload GRAM converted with convert_checkpoint.py")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    for flag, value in (("--num-attention-heads", args.num_attention_heads),
                        ("--decoder-num-attention-heads", args.decoder_num_attention_heads)):  # fmt: skip
        if not 1 <= value <= 256:
            parser.error(f"{flag} must be in [1, 256], got {value}")
    if args.revision is not None and args.checkpoint is None:
        parser.error("--revision needs --checkpoint (a Hub repo id)")
    if args.random_weights and (args.encoder_only or args.format or args.patching):
        parser.error(
            "--random-weights takes the variant's configuration; --format/--patching/--encoder-only do not apply"
        )
    if args.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    return args


def _convert_from_args(args: argparse.Namespace) -> tuple[str, list[str]]:
    return convert(
        args.checkpoint,
        args.output_dir,
        audio_format=args.format,
        patching=args.patching,
        num_attention_heads=args.num_attention_heads,
        decoder_num_attention_heads=args.decoder_num_attention_heads,
        encoder_only=args.encoder_only,
        overwrite=args.overwrite,
        repo_id=args.push_to_hub,
        dry_run=args.dry_run,
        progress=not args.quiet,
        revision=args.revision,
    )


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    source = args.checkpoint or f"random weights ({args.random_weights}, seed {args.seed})"
    try:
        if args.random_weights:
            directory, files = write_random_model(
                args.random_weights, args.output_dir, args.seed, overwrite=args.overwrite, dry_run=args.dry_run
            )
        else:
            directory, files = _convert_from_args(args)
        if args.dry_run:
            target = f"{args.push_to_hub}{' (private)' if args.private else ''}" if args.push_to_hub else directory
            print(printable(f"Dry run: {source} converts and verifies; nothing was written. Would write to {target}:"))
        else:
            print(printable(f"Converted {source} -> {directory}"))
            if args.random_weights:
                print("Note: UNTRAINED model (random weights), for trying the API only.")
            if args.push_to_hub:
                files = push_to_hub(directory, args.push_to_hub, args.private, args.commit_message)
                print(printable(f"Uploaded to {args.push_to_hub}{' (private)' if args.private else ''}:"))
        if args.dry_run or args.push_to_hub:
            for name in files:
                print(f"  {name}")
    except CheckpointError as error:  # keys and names come from the file: printed escaped and bounded
        print(f"error: {printable(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # the output location: permissions, a full disk, ...
        print(f"error: {printable(f'{error.strerror or error}: {error.filename or args.output_dir}')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
