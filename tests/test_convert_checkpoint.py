"""convert_checkpoint.py: original checkpoints (built here from the independent re-implementation of the
original GRAMT, exported with its key names) become directories that reproduce the original exactly;
untrusted pickles never run code; errors are clear and nothing half-written is left."""

import json
import os
import pickle

import pytest
import torch
from conftest import HEADS, TINY, FakeHubApi, make_original, relative_error
from reference_gram import original_features, original_runtime_encode, original_scene_embedding
from safetensors.torch import save_file
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

import convert_checkpoint
from configuration_gram import GRAM_FORMATS, GRAM_PATCHINGS
from convert_checkpoint import main
from feature_extraction_gram import AUDIO_CHANNELS_FOR_FEATURES

VARIANT_SHAPES = {  # (feature channels, patch f, patch t, decoder windows), from the configuration's tables
    f"{fmt}-{patching}": (channels, *size, windows)
    for fmt, channels in GRAM_FORMATS.items()
    for patching, (size, windows) in GRAM_PATCHINGS.items()
}


class Payload:
    """Pickles as a call to os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class HyperParameters:  # stands for Lightning's AttributeDict / the original's PatchStrategy object
    def __init__(self):
        self.lr, self.patch_strategy = 2e-4, object.__new__(HyperParameters)


def save_lightning_checkpoint(original, path, extra=None):
    checkpoint = {
        "epoch": 3,
        "global_step": 325000,
        "state_dict": original.state_dict(),
        "hyper_parameters": {"in_channels": original.in_channels, "strategy": HyperParameters()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 2e-4}]}],
        **(extra or {}),
    }
    torch.save(checkpoint, path)


def save_runtime_safetensors(original, path, with_decoder=True):
    """The huggingface_hub-mixin wrapper's layout: RuntimeGRAMT keys `model.*` plus `mel_spec.*` buffers."""
    state = {f"model.{k}": v.clone().contiguous() for k, v in original.state_dict().items()}
    if not with_decoder:
        state = {
            k: v for k, v in state.items() if k.split(".")[1] in ("patch_embed", "cls_token", "encoder", "melspec")
        }
    for name, buffer in original.melspec.state_dict().items():
        state[f"mel_spec.melspec.{name}"] = buffer.clone().contiguous()
    save_file(state, str(path))


@pytest.fixture
def audio_clips_for():
    generator = torch.Generator().manual_seed(7)

    def make(channels, seconds):
        t = torch.arange(int(seconds * 32000)) / 32000
        return torch.stack(
            [
                0.3 * torch.sin(2 * torch.pi * (300 + 50 * c) * t) * torch.sin(2 * torch.pi * 0.7 * t).abs()
                + 0.02 * torch.randn(t.shape, generator=generator)
                for c in range(channels)
            ]
        )

    return make


@pytest.mark.parametrize("variant", sorted(VARIANT_SHAPES))
@pytest.mark.parametrize("source", ["lightning", "runtime-safetensors"])
def test_conversion_reproduces_the_original(variant, source, tmp_path, audio_clips_for, capsys):
    original = make_original(variant)
    checkpoint = tmp_path / ("step=325000.ckpt" if source == "lightning" else "model.safetensors")
    if source == "lightning":
        save_lightning_checkpoint(original, checkpoint)
    else:
        save_runtime_safetensors(original, checkpoint)
    output = tmp_path / f"gram-{variant}"
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS]) == 0

    names = set(os.listdir(output))
    assert names == {
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
        "README.md",
        "configuration_gram.py",
        "modeling_gram.py",
        "feature_extraction_gram.py",
        "pipeline_gram.py",
        ".gram-output.json",
    }
    config = json.load(open(output / "config.json"))
    channels, fshape, tshape, windows = VARIANT_SHAPES[variant]
    assert (config["num_channels"], config["patch_size"], config["decoder_window_sizes"]) == (
        channels,
        [fshape, tshape],
        windows,
    )
    assert variant.split("-")[0] in (output / "README.md").read_text()

    model = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    extractor = AutoFeatureExtractor.from_pretrained(output, trust_remote_code=True)
    audio = audio_clips_for(AUDIO_CHANNELS_FOR_FEATURES[channels], 4.5)
    # 4-channel audio in the original's own (SoundSpaces) layout, which it took as is
    features = extractor(audio, sampling_rate=32000, return_tensors="pt", ambisonics_format="soundspaces")
    features = features["input_values"]
    expected_features = original_features([audio], channels)
    assert relative_error(features, expected_features) < 1e-5
    with torch.no_grad():
        for strategy in ("raw", "mean", "cls"):
            ours = model(features, strategy=strategy).pooler_output
            assert relative_error(ours, original_scene_embedding(original, expected_features, strategy)) < 1e-4
        raw = model(features).last_hidden_state
        assert relative_error(raw, original_runtime_encode(original, expected_features, "raw")) < 1e-4

    pretraining = AutoModelForPreTraining.from_pretrained(output, trust_remote_code=True).eval()
    chunk = expected_features[:, :, :200]
    mask = pretraining.random_masking(1, chunk.device)
    with torch.no_grad():
        pred, _, loss = original(chunk, mask)
        out = pretraining(chunk, bool_masked_pos=mask)
    assert relative_error(out.reconstruction, pred) < 1e-4
    assert abs(out.loss.item() - loss.item()) < 1e-4 * loss.item()


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    checkpoint = tmp_path / "evil.ckpt"
    save_lightning_checkpoint(make_original("binaural-time"), checkpoint, extra={"callbacks": {"x": Payload(marker)}})
    torch.load(checkpoint, weights_only=False)  # the payload is live: a plain load runs it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError):  # ... torch's weights_only loader refuses the file outright ...
        torch.load(checkpoint, weights_only=True)
    output = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS]) == 0  # ... ours converts
    assert not marker.exists()
    assert output.is_dir()
    # A file that is nothing but a payload: refused, and still nothing ran.
    torch.save(Payload(marker), tmp_path / "only-payload.pt")
    assert main(["--checkpoint", str(tmp_path / "only-payload.pt"), "--output-dir", str(tmp_path / "o2")]) == 2
    assert not marker.exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("variant", ["binaural-frame", "ambisonics-time"])
def test_the_key_table_matches_an_independent_mapping(variant):
    """The converter's KEY_RULES (which every other test loads through) against the mapping written independently
    from the two modules' parameter lists in tests/reference_gram.py."""
    from reference_gram import original_decoder_to_package_state_dict

    original = make_original(variant).state_dict()
    mapped, derived = convert_checkpoint.map_original_keys(original)
    independent = original_decoder_to_package_state_dict(original, TINY["num_hidden_layers"], 2)
    assert set(mapped) == set(independent)
    assert all(mapped[key] is independent[key] for key in mapped)
    assert all(key.endswith(("relative_position_index", "mel_scale.fb", "spectrogram.window")) for key in derived)


def test_plain_state_dict_is_described_then_read_exactly(tmp_path):
    checkpoint = tmp_path / "plain.pt"
    state = make_original("mono-frame").state_dict()
    torch.save(state, checkpoint)
    specs, kind = convert_checkpoint.load_untrusted_checkpoint(str(checkpoint))
    assert kind == "torch.save zip archive" and set(specs) == set(state)
    for key, value in state.items():
        assert specs[key].shape == value.shape and specs[key].dtype == value.dtype
        assert torch.equal(specs[key].load(), value)


def _convert_modified(tmp_path, modify, extra_args=()):
    original = make_original("binaural-frame")
    state = {k: v.clone() for k, v in original.state_dict().items()}
    modify(state)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state}, checkpoint)
    return main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "out"), *HEADS, *extra_args])


@pytest.mark.parametrize(
    "modify, extra_args, message",
    [
        (lambda s: s.clear() or s.update({"foo.weight": torch.zeros(2)}), (), "Unknown checkpoint layout"),
        (lambda s: s.pop("decoder_blocks.1.mlp.fc2.bias"), (), "missing \\['decoder.layers.1.mlp.fc2.bias'\\]"),
        (
            lambda s: s.update({"decoder_blocks.0.extra.weight": torch.zeros(1)}),
            (),
            "Unexpected keys.*decoder_blocks.0.extra.weight",
        ),
        (
            lambda s: s.update({"encoder.pos_embedding": torch.zeros(1, 100, 64)}),
            (),
            "Shape mismatches.*position_embeddings",
        ),
        (lambda s: s.update({"patch_embed.proj.weight": torch.zeros(64, 3, 16, 8)}), (), "takes 3 channels"),
        (lambda s: s.update({"patch_embed.proj.weight": torch.zeros(64, 2, 32, 4)}), (), "Unsupported patching"),
        (lambda s: None, ("--format", "ambisonics"), "--format ambisonics contradicts the weights, which are binaural"),
        (lambda s: s.update({"melspec.mel_scale.fb": torch.zeros(513, 128)}), (), "mel filterbank differs"),
        (
            lambda s: s.update(
                {"decoder_blocks.0.wmha.attn_heads.1.relative_position_index": torch.zeros(5, 5, dtype=torch.long)}
            ),
            (),
            "relative-position index",
        ),
    ],
)
def test_bad_checkpoints_stop_with_a_clear_message_and_leave_nothing(modify, extra_args, message, tmp_path, capsys):
    assert _convert_modified(tmp_path, modify, extra_args) == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # no output, no staging directory


def test_failure_after_writing_leaves_nothing_and_existing_output_needs_overwrite(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"state_dict": make_original("mono-time").state_dict()}, checkpoint)
    output = tmp_path / "out"

    def broken_verify(directory, model):
        raise convert_checkpoint.ConversionError("simulated failure while verifying")

    monkeypatch.setattr(convert_checkpoint, "_verify_saved", broken_verify)
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS]) == 2
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
    monkeypatch.undo()

    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS]) == 0
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (output / "notes.txt").write_text("the user's own file")
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS, "--overwrite"]) == 2
    assert "did not write: notes.txt" in capsys.readouterr().err
    assert (output / "notes.txt").read_text() == "the user's own file"
    (output / "notes.txt").unlink()
    (output / "model.safetensors").write_bytes(b"replaced by the user, still a file the converter wrote")
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(output), *HEADS, "--overwrite"]) == 0
    assert (output / "model.safetensors").read_bytes()[:8] != b"replaced"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "out"]


def test_encoder_only_checkpoint(tmp_path, audio_clips_for, capsys):
    original = make_original("binaural-time")
    checkpoint = tmp_path / "model.safetensors"
    save_runtime_safetensors(original, checkpoint, with_decoder=False)
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "a"), *HEADS]) == 2
    assert "--encoder-only" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "b"), *HEADS, "--encoder-only"]) == 0
    model = AutoModel.from_pretrained(tmp_path / "b", trust_remote_code=True).eval()
    features = original_features([audio_clips_for(2, 2.2)], 2)
    with torch.no_grad():
        assert (
            relative_error(
                model(features, strategy="cls").pooler_output, original_scene_embedding(original, features, "cls")
            )
            < 1e-4
        )


def test_push_to_hub_and_dry_run(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"state_dict": make_original("ambisonics-time").state_dict()}, checkpoint)
    FakeHubApi.calls = []
    monkeypatch.setattr(convert_checkpoint, "HfApi", FakeHubApi)

    args = ["--checkpoint", str(checkpoint), *HEADS, "--push-to-hub", "me/gram-ambisonics-time"]
    assert main([*args, "--output-dir", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert FakeHubApi.calls == []
    printed = capsys.readouterr().out
    assert "nothing was written. Would write to me/gram-ambisonics-time" in printed and "model.safetensors" in printed
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # a dry run writes nothing, so the real run can follow

    assert main([*args, "--output-dir", str(tmp_path / "dry"), "--private"]) == 0
    files = sorted(set(os.listdir(tmp_path / "dry")) - {".gram-output.json"})
    assert FakeHubApi.calls == [
        ("create_repo", "me/gram-ambisonics-time", True, True, "model"),
        ("upload_folder", "me/gram-ambisonics-time", files, "model"),
    ]
    assert 'from_pretrained("me/gram-ambisonics-time"' in (tmp_path / "dry" / "README.md").read_text()


@pytest.mark.parametrize(
    "name, content", [("garbage.ckpt", b"not a checkpoint at all"), ("bad.safetensors", b"\x00" * 16)]
)
def test_unreadable_files_are_clear_errors(name, content, tmp_path, capsys):
    (tmp_path / name).write_bytes(content)
    assert main(["--checkpoint", str(tmp_path / name), "--output-dir", str(tmp_path / "out")]) == 2
    assert "Cannot read" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == [name]
