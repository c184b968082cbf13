"""Convert checkpoints of the original GRAM code (labhamlet/GRAM-T) into Hub-ready directories.

    python convert_checkpoint.py --checkpoint step=500000.ckpt --output-dir gram-binaural-frame
    python convert_checkpoint.py --checkpoint model.safetensors --output-dir out --push-to-hub me/gram-x --private

Accepted inputs:
  * a PyTorch Lightning checkpoint (`.ckpt`) of the original training code: a dict whose "state_dict" holds
    the GRAMT module's keys (torchvision encoder `encoder.layers.encoder_layer_{i}.*`, `patch_embed.proj`,
    `cls_token`, MW-MAE decoder `decoder_blocks.{i}.wmha.*`, `spec_pred.0`, feature buffers, ...);
  * a plain state dict of those keys (`.pt`/`.pth`/`.bin`), or the `model.safetensors` of the original
    huggingface_hub-mixin wrapper (`RuntimeGRAMT`: the same keys under `model.`, plus `mel_spec.*` buffers).

The variant (feature channels from the patch convolution's input channels, patching from its kernel, the
decoder windows from the relative-position tables) is read off the weights. Checkpoints are untrusted data:
pickles are loaded with `weights_only=True`, or, for Lightning checkpoints that carry other objects, with a
restricted unpickler that only materialises tensors and plain containers and turns every other object into
an inert placeholder, so no code in the file ever runs. The output is written to a temporary directory,
checked by loading it back, and only then moved into place.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections import OrderedDict
from typing import Any, Iterable

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from configuration_gram import GRAM_FORMATS, GRAM_PATCHINGS, GramConfig  # noqa: E402
from feature_extraction_gram import GramFeatureExtractor, htk_mel_filterbank  # noqa: E402
from modeling_gram import REMOTE_CODE_FILES, GramForPreTraining, GramModel  # noqa: E402

try:  # only needed for --push-to-hub
    from huggingface_hub import HfApi
except ImportError:  # pragma: no cover - huggingface_hub is a dependency of transformers
    HfApi = None


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message says why and names the keys."""


# ------------------------------------------------------------------------------------------------------
# Safe loading
# ------------------------------------------------------------------------------------------------------
class _InertObject:
    """Stands in for any non-tensor object of an untrusted pickle: accepts its state, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _InertObject()


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor-rebuilding functions, dtypes and plain containers; anything else (classes,
    functions such as `os.system`) becomes `_InertObject`, so a payload's `__reduce__` never runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch" and name.endswith("Storage") and name in dir(torch):
            return getattr(torch, name)  # storage *types* (data come through persistent_load)
        return _InertObject


class _RestrictedPickleModule:
    """A `pickle_module` for `torch.load`: torch keeps handling storages, we decide which globals exist."""

    Unpickler = _RestrictedUnpickler
    __name__ = "gram_restricted_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def load_untrusted_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors of a checkpoint file, without executing any code from it. Returns (state dict, source kind)."""
    if not os.path.isfile(path):
        raise ConversionError(f"Checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(path)), "safetensors"
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            kind = "pickle (weights_only)"
        except pickle.UnpicklingError:
            # Lightning checkpoints also hold hyper-parameters and loop state: materialise only their tensors.
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
            kind = "pickle (restricted loader)"
    except Exception as error:  # corrupt, truncated or foreign files: say so instead of a traceback
        raise ConversionError(f"Cannot read {path} as a checkpoint ({type(error).__name__}: {error})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, kind = obj["state_dict"], kind + ", Lightning checkpoint"
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path} holds no state dict (found {type(obj).__name__}).")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = sorted(k for k in obj if k not in tensors)
    if others:
        raise ConversionError(f"The state dict has entries that are not tensors: {others[:10]}")
    return tensors, kind


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
    (_BLOCK + r"wmha\.attn_heads\.(\d+)\.relative_position_bias_table",
     r"decoder.layers.\1.attention.relative_position_bias_tables.\2"),
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
        name = key[len(prefix):]
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
        raise ConversionError(f"Unexpected keys in the checkpoint (not part of the original GRAM): {sorted(unknown)[:20]}")
    return mapped, derived


# ------------------------------------------------------------------------------------------------------
# Configuration from the weights
# ------------------------------------------------------------------------------------------------------
def infer_config(
    mapped: dict[str, torch.Tensor],
    audio_format: str | None = None,
    patching: str | None = None,
    num_attention_heads: int = 12,
    decoder_num_attention_heads: int = 8,
    encoder_only: bool = False,
) -> GramConfig:
    conv = mapped["gram.embeddings.patch_embeddings.projection.weight"]  # (D, C, patch_f, patch_t)
    hidden, channels, patch_f, patch_t = conv.shape
    formats = {v: k for k, v in GRAM_FORMATS.items()}
    if channels not in formats:
        raise ConversionError(f"Unsupported variant: the patch convolution takes {channels} channels; GRAM has 1, 2 or 7.")
    patchings = {size: name for name, (size, _) in GRAM_PATCHINGS.items()}
    if (patch_f, patch_t) not in patchings:
        raise ConversionError(f"Unsupported patching: kernel {(patch_f, patch_t)}; GRAM has (16, 8) frame and (128, 2) time.")
    for flag, inferred in (("format", (audio_format, formats[channels])), ("patching", (patching, patchings[(patch_f, patch_t)]))):
        if inferred[0] is not None and inferred[0] != inferred[1]:
            raise ConversionError(f"--{flag} {inferred[0]} contradicts the weights, which are {inferred[1]}.")
    layers = {int(m.group(1)) for k in mapped if (m := re.match(r"gram\.encoder\.layer\.(\d+)\.", k))}
    kwargs: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=num_attention_heads,
        intermediate_size=mapped["gram.encoder.layer.0.mlp.fc1.weight"].shape[0] if layers else 4 * hidden,
    )
    if not encoder_only:
        if "decoder.decoder_embed.weight" not in mapped:
            raise ConversionError(
                "The checkpoint has no decoder (missing 'decoder_embed.weight'); pass --encoder-only to convert "
                "the encoder alone."
            )
        decoder_layers = {int(m.group(1)) for k in mapped if (m := re.match(r"decoder\.layers\.(\d+)\.", k))}
        _, default_windows = GRAM_PATCHINGS[patchings[(patch_f, patch_t)]]
        windows = list(default_windows) if decoder_num_attention_heads == len(default_windows) else [0] * decoder_num_attention_heads
        tables = {
            int(m.group(1)): v.shape[0]
            for k, v in mapped.items()
            if (m := re.fullmatch(r"decoder\.layers\.0\.attention\.relative_position_bias_tables\.(\d+)", k))
        }
        for head in range(len(windows)):  # read the windows off the tables: (2w - 1, 1) per windowed head
            windows[head] = (tables[head] + 1) // 2 if head in tables else 0
        if tables and max(tables) >= len(windows):
            raise ConversionError(f"Relative-position tables for head {max(tables)} but {len(windows)} decoder heads.")
        kwargs.update(
            decoder_hidden_size=mapped["decoder.decoder_embed.weight"].shape[0],
            decoder_num_hidden_layers=len(decoder_layers),
            decoder_num_attention_heads=decoder_num_attention_heads,
            decoder_intermediate_size=mapped["decoder.layers.0.mlp.fc1.weight"].shape[0] if decoder_layers else 2048,
            decoder_window_sizes=windows,
        )
    return GramConfig.from_variant(f"{formats[channels]}-{patchings[(patch_f, patch_t)]}", **kwargs)


def check_derived_buffers(derived: dict[str, torch.Tensor], config: GramConfig) -> None:
    """The original saves its mel filterbank, STFT window and relative-position indices: they must be the
    ones this package computes, or the converted model would not reproduce the original."""
    extractor = GramFeatureExtractor(num_channels=config.num_channels)
    expected_fb = htk_mel_filterbank(extractor.n_fft // 2 + 1, extractor.f_min, extractor.f_max, extractor.num_mel_bins, extractor.sampling_rate)
    for key, value in derived.items():
        if key.endswith("mel_scale.fb"):
            if value.shape != expected_fb.shape or not torch.allclose(value.float(), expected_fb, atol=1e-5):
                raise ConversionError(f"{key}: the checkpoint's mel filterbank differs from GRAM's (128 HTK mels, 50-16000 Hz).")
        elif key.endswith("spectrogram.window"):
            window = torch.hann_window(extractor.win_length)
            if value.shape != window.shape or not torch.allclose(value.float(), window, atol=1e-6):
                raise ConversionError(f"{key}: the checkpoint's STFT window is not a {extractor.win_length}-sample Hann window.")
        else:
            match = RELATIVE_INDEX.fullmatch(key)
            window = config.decoder_window_sizes[int(match.group(2))] if int(match.group(2)) < len(config.decoder_window_sizes) else 0
            position = torch.arange(window)
            if window == 0 or not torch.equal(value.long(), position[:, None] - position[None, :] + window - 1):
                raise ConversionError(f"{key}: unexpected relative-position index for window size {window}.")


def build_model(mapped: dict[str, torch.Tensor], config: GramConfig, encoder_only: bool):
    if encoder_only:
        model = GramModel(config)
        mapped = {k[len("gram."):]: v for k, v in mapped.items() if k.startswith("gram.")}
    else:
        model = GramForPreTraining(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            "The checkpoint does not fit the inferred GRAM configuration "
            f"({config.audio_format}-{config.patching}): missing {missing[:20]}, unexpected {unexpected[:20]}."
        )
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in mapped.items() if v.shape != expected[k].shape]
    if mismatched:
        raise ConversionError(f"Shape mismatches: {mismatched[:20]}")
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
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

# GRAM-{title} ({patching} patching)

GRAM (General-purpose, Real-world Audio Model) for {audio_description}, converted from an original GRAM
checkpoint with `convert_checkpoint.py` of the GRAM Hugging Face package. Encoder and MW-MAE decoder are
both included, so pretraining can resume from this repository.

| | |
|---|---|
| audio input | {audio_channels} channel(s) at 32 kHz |
| feature channels | {num_channels} |
| patch (mel x frames) | {patch} |
| raw embedding | {steps_per_second} steps/s of {frame_dim} |
| mean / cls embedding | {hidden} |
| source checkpoint | `{source_name}` (sha256 `{sha256}`) |

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


def write_model_card(directory: str, config: GramConfig, repo_id: str, source: str, sha256: str) -> None:
    descriptions = {
        "binaural": "two-channel binaural audio",
        "ambisonics": "four-channel first-order ambisonics (W, X, Y, Z)",
        "mono": "single-channel audio",
    }
    card = MODEL_CARD.format(
        audio_format=config.audio_format,
        title=config.audio_format.capitalize(),
        patching=config.patching,
        audio_description=descriptions[config.audio_format],
        audio_channels={1: 1, 2: 2, 7: 4}[config.num_channels],
        num_channels=config.num_channels,
        patch=f"{config.patch_size[0]} x {config.patch_size[1]}",
        steps_per_second=f"{1000 / config.step_duration_ms:g}",
        frame_dim=config.frame_embedding_size,
        hidden=config.hidden_size,
        source_name=os.path.basename(source),
        sha256=sha256,
        repo_id=repo_id,
    )
    with open(os.path.join(directory, "README.md"), "w") as f:
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
) -> str:
    """Converts `checkpoint` into `output_dir` atomically; returns the output directory."""
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise ConversionError(f"{output_dir} exists; pass --overwrite to replace it.")
    state, _ = load_untrusted_checkpoint(checkpoint)
    mapped, derived = map_original_keys(state)
    config = infer_config(mapped, audio_format, patching, num_attention_heads, decoder_num_attention_heads, encoder_only)
    check_derived_buffers(derived, config)
    model = build_model(mapped, config, encoder_only)
    config.architectures = [type(model).__name__]

    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".gram-convert-", dir=parent)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        GramFeatureExtractor(num_channels=config.num_channels).save_pretrained(staging)
        write_model_card(staging, config, repo_id or os.path.basename(output_dir), checkpoint, file_sha256(checkpoint))
        _verify_saved(staging, model)
        if os.path.exists(output_dir):
            retired = tempfile.mkdtemp(prefix=".gram-old-", dir=parent)
            os.replace(output_dir, os.path.join(retired, "old"))
            os.replace(staging, output_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return output_dir


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
    return sorted(
        os.path.relpath(os.path.join(base, name), directory)
        for base, _, files in os.walk(directory)
        for name in files
    )


def push_to_hub(directory: str, repo_id: str, private: bool, dry_run: bool, commit_message: str) -> list[str]:
    files = upload_files(directory)
    if dry_run:
        return files
    if HfApi is None:  # pragma: no cover
        raise ConversionError("--push-to-hub needs huggingface_hub.")
    api = HfApi()  # token: HF_TOKEN in the environment or `hf auth login`
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=directory, repo_id=repo_id, repo_type="model", commit_message=commit_message)
    return files


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .ckpt / .pt / model.safetensors")
    parser.add_argument("--output-dir", required=True, help="directory to create (atomically)")
    parser.add_argument("--format", choices=sorted(GRAM_FORMATS), help="check the audio format read off the weights")
    parser.add_argument("--patching", choices=sorted(GRAM_PATCHINGS), help="check the patching read off the weights")
    parser.add_argument("--num-attention-heads", type=int, default=12, help="encoder heads (not visible in the weights)")
    parser.add_argument("--decoder-num-attention-heads", type=int, default=8)
    parser.add_argument("--encoder-only", action="store_true", help="convert a checkpoint without decoder (AutoModel only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="create the Hub repo and upload the directory")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list what would be uploaded")
    parser.add_argument("--commit-message", default="Upload GRAM converted with convert_checkpoint.py")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        directory = convert(
            args.checkpoint,
            args.output_dir,
            audio_format=args.format,
            patching=args.patching,
            num_attention_heads=args.num_attention_heads,
            decoder_num_attention_heads=args.decoder_num_attention_heads,
            encoder_only=args.encoder_only,
            overwrite=args.overwrite,
            repo_id=args.push_to_hub,
        )
        print(f"Converted {args.checkpoint} -> {directory}")
        if args.push_to_hub:
            files = push_to_hub(directory, args.push_to_hub, args.private, args.dry_run, args.commit_message)
            verb = "Would upload" if args.dry_run else "Uploaded"
            print(f"{verb} to {args.push_to_hub}{' (private)' if args.private else ''}:")
            for name in files:
                print(f"  {name}")
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
