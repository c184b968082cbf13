"""Configuration and every load path: direct import, AutoClasses with trust_remote_code from the repository
root and from saved directories, and a clean offline process that only has the saved directory."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, VARIANTS, relative_error, tiny_config
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from configuration_gram import GRAM_VARIANTS, GramConfig
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel

CODE_FILES = ("configuration_gram.py", "modeling_gram.py", "feature_extraction_gram.py")


# ------------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "variant, channels, patch, windows, grid",
    [
        ("binaural-frame", 2, (16, 8), [2, 5, 10, 25, 50, 100, 0, 0], (8, 25)),
        ("binaural-time", 2, (128, 2), [2, 5, 10, 25, 50, 0, 0, 0], (1, 100)),
        ("ambisonics-frame", 7, (16, 8), [2, 5, 10, 25, 50, 100, 0, 0], (8, 25)),
        ("ambisonics-time", 7, (128, 2), [2, 5, 10, 25, 50, 0, 0, 0], (1, 100)),
        ("mono-frame", 1, (16, 8), [2, 5, 10, 25, 50, 100, 0, 0], (8, 25)),
        ("mono-time", 1, (128, 2), [2, 5, 10, 25, 50, 0, 0, 0], (1, 100)),
    ],
)
def test_published_variants(variant, channels, patch, windows, grid):
    config = GramConfig.from_variant(variant)
    assert (config.num_channels, config.patch_size, config.decoder_window_sizes, config.grid_size) == (
        channels,
        patch,
        windows,
        grid,
    )
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        768,
        12,
        12,
        3072,
    )
    assert (config.layer_norm_eps, config.qkv_bias, config.chunk_frames, config.num_mel_bins) == (1e-6, True, 200, 128)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        512,
        8,
        8,
    )
    assert (config.mask_ratio, config.sampling_rate, config.pooling_strategy) == (0.8, 32000, "raw")
    assert config.audio_format + "-" + config.patching == variant
    assert set(GRAM_VARIANTS) == set(VARIANTS)


def test_config_round_trip(tmp_path):
    config = GramConfig.from_variant("ambisonics-frame", pooling_strategy="cls")
    config.save_pretrained(tmp_path)
    loaded = GramConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.patch_size, tuple)
    assert json.load(open(tmp_path / "config.json"))["auto_map"]["AutoModel"] == "modeling_gram.GramModel"


@pytest.mark.parametrize("max_length", [200, 1024])
def test_original_hub_style_max_length_loads_and_saves(max_length, tmp_path):
    # The original Hub config carried `max_length`, which breaks transformers 5.x; GRAM chunks are 200 frames.
    config = GramConfig().to_dict()
    config.pop("chunk_frames")
    config["max_length"] = max_length
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = GramConfig.from_pretrained(tmp_path)
    assert loaded.chunk_frames == 200 and "max_length" not in loaded.to_dict()
    loaded.save_pretrained(tmp_path / "again")
    assert "max_length" not in json.loads((tmp_path / "again" / "config.json").read_text())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decoder_window_sizes": [2, 5]}, "one decoder window size per decoder head"),
        ({"pooling_strategy": "max"}, "pooling_strategy must be one of"),
        ({"patch_size": (16, 7)}, "tile"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"hidden_size": 100}, "divisible"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GramConfig(**kwargs)


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("num_hidden_layers", 100000, ValueError, "num_hidden_layers must be in \\[1, 128\\], got 100000"),
        ("num_attention_heads", 0, ValueError, "num_attention_heads must be in \\[1, 256\\], got 0"),
        ("hidden_size", "64", TypeError, "hidden_size must be an int, got str '64'"),
        ("layer_norm_eps", -1, ValueError, "layer_norm_eps must be in \\(0.0, 1.0\\), got -1"),
        ("hop_length", 0, ValueError, "hop_length must be in"),
        ("sampling_rate", 32000.5, TypeError, "sampling_rate must be an int"),
        ("chunk_batch_size", 0, ValueError, "chunk_batch_size must be in"),
        ("chunk_batch_size", None, TypeError, "chunk_batch_size must be an int"),
        ("hidden_dropout_prob", float("nan"), ValueError, "hidden_dropout_prob must be in"),
        ("qkv_bias", "yes", TypeError, "qkv_bias must be true or false"),
        ("hidden_act", "swish2", ValueError, "hidden_act must be one of"),
        ("decoder_num_attention_heads", 7, ValueError, "decoder_hidden_size \\(512\\) must be divisible"),
        ("decoder_window_sizes", [2, 5, 10, 25, 50, 0, 0, -1], ValueError, "decoder_window_sizes must be ints"),
    ],
)
def test_config_json_values_are_validated_with_the_field_named(field, value, error, message, tmp_path):
    """config.json is user input: a bad value is refused at construction (from_pretrained included), before any
    model is built, instead of hanging, dividing by zero or giving NaN later."""
    GramConfig.from_variant("binaural-time").save_pretrained(tmp_path)
    values = json.loads((tmp_path / "config.json").read_text())
    values[field] = value
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(error, match=message):
        GramConfig.from_pretrained(tmp_path)


def test_extractor_disagreeing_with_the_config_is_refused():
    config = GramConfig.from_variant("binaural-time")
    config.check_feature_extractor(GramFeatureExtractor())
    with pytest.raises(ValueError, match="hop_length: model 320, extractor 160"):
        config.check_feature_extractor(GramFeatureExtractor(hop_length=160))
    with pytest.raises(ValueError, match="num_channels: model 2, extractor 7"):
        config.check_feature_extractor(GramFeatureExtractor(num_channels=7))


def test_unknown_variant():
    with pytest.raises(ValueError, match="binaural-frame, binaural-time"):
        GramConfig.from_variant("stereo-frame")


# ------------------------------------------------------------------------------------------------------
# The repository root is a Hub model repo (default variant: binaural, time patching)
# ------------------------------------------------------------------------------------------------------
def test_repository_root_loads_through_auto_classes():
    config = AutoConfig.from_pretrained(ROOT, trust_remote_code=True)
    assert type(config).__name__ == "GramConfig"
    assert (config.num_channels, config.patching, config.hidden_size) == (2, "time", 768)
    extractor = AutoFeatureExtractor.from_pretrained(ROOT, trust_remote_code=True)
    assert type(extractor).__name__ == "GramFeatureExtractor" and extractor.num_channels == 2
    model = AutoModel.from_config(config, trust_remote_code=True)
    assert type(model).__name__ == "GramModel"
    with open(os.path.join(ROOT, "config.json")) as f:
        auto_map = json.load(f)["auto_map"]
    for target in auto_map.values():
        module, _, name = target.partition(".")
        assert os.path.isfile(os.path.join(ROOT, module + ".py")), target


def test_hub_layout_with_weights_loads_with_the_root_files(tmp_path):
    for name in CODE_FILES + ("preprocessor_config.json",):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    config = GramConfig.from_pretrained(ROOT)
    GramModel(config).save_pretrained(tmp_path)  # writes config.json + model.safetensors
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path, trust_remote_code=True)
    inputs = extractor(torch.randn(2, 32000) * 0.1, sampling_rate=32000, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.last_hidden_state.shape == (1, 51, 768)


# ------------------------------------------------------------------------------------------------------
# save_pretrained -> from_pretrained, every variant
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_reload_every_variant(variant, tmp_path):
    torch.manual_seed(0)
    model = GramModel(tiny_config(variant)).eval()
    model.save_pretrained(tmp_path)
    assert all((tmp_path / name).is_file() for name in CODE_FILES + ("config.json", "model.safetensors"))
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in tmp_path.iterdir())
    for loaded in (GramModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path, trust_remote_code=True)):
        loaded.eval()
        x = torch.randn(1, model.config.num_channels, 333, 128)
        with torch.no_grad():
            for strategy in ("raw", "mean", "cls"):
                assert torch.equal(
                    loaded(x, strategy=strategy).pooler_output, model(x, strategy=strategy).pooler_output
                )
        assert loaded.config.to_dict()["patch_size"] == list(model.config.patch_size)


@pytest.mark.parametrize("num_channels", [1, 2, 7])
def test_feature_extractor_round_trip(num_channels, tmp_path):
    extractor = GramFeatureExtractor(num_channels=num_channels)
    extractor.save_pretrained(tmp_path)
    assert (tmp_path / "feature_extraction_gram.py").is_file()
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "GramFeatureExtractor"
    assert loaded.to_dict() == extractor.to_dict()
    audio = torch.randn(extractor.audio_channels, 16000) * 0.1
    torch.testing.assert_close(
        loaded(audio, sampling_rate=32000, return_tensors="pt", ambisonics_format="fuma")["input_values"],
        extractor(audio, sampling_rate=32000, return_tensors="pt", ambisonics_format="fuma")["input_values"],
    )


CLEAN_PROCESS = """
import json, sys, torch
from transformers import AutoFeatureExtractor, AutoModel
assert "modeling_gram" not in sys.modules
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained(sys.argv[1], trust_remote_code=True)
audio = torch.load(sys.argv[2])
inputs = extractor(audio, sampling_rate=32000, return_tensors="pt", ambisonics_format="ambix")
with torch.no_grad():
    out = {s: model(**inputs, strategy=s).pooler_output.tolist() for s in ("raw", "mean", "cls")}
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "pooled": out}))
"""


def test_saved_directory_loads_offline_in_a_clean_process(tmp_path):
    torch.manual_seed(0)
    model = GramModel(tiny_config("ambisonics-frame")).eval()
    extractor = GramFeatureExtractor(num_channels=7)
    saved = tmp_path / "gram-ambisonics-frame"
    model.save_pretrained(saved)
    extractor.save_pretrained(saved)
    audio = torch.randn(4, 70000) * 0.1
    torch.save(audio, tmp_path / "audio.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_PROCESS, str(saved), str(tmp_path / "audio.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"].startswith("transformers_modules.")
    inputs = extractor(audio, sampling_rate=32000, return_tensors="pt", ambisonics_format="ambix")
    with torch.no_grad():
        for strategy, values in report["pooled"].items():
            expected = model(**inputs, strategy=strategy).pooler_output
            assert relative_error(torch.tensor(values), expected) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_pretrained_in_half_precision_keeps_the_weights(dtype, tmp_path):
    torch.manual_seed(0)
    model = GramModel(tiny_config("binaural-frame")).eval()
    model.save_pretrained(tmp_path)
    half = AutoModel.from_pretrained(tmp_path, trust_remote_code=True, dtype=dtype).eval()
    assert half.embeddings.patch_embeddings.projection.weight.dtype == dtype
    buffers = {name for name, _ in model.named_buffers()}
    assert buffers == {"embeddings.position_embeddings"}
    for name, value in model.state_dict().items():
        # weights in the asked dtype; the fixed sin-cos table (a buffer) stays exactly float32
        expected = value if name in buffers else value.to(dtype).float()
        torch.testing.assert_close(half.state_dict()[name].float(), expected, rtol=0, atol=0)
    x = torch.randn(1, 2, 260, 128)
    with torch.no_grad():
        out, reference = half(x, strategy="mean"), model(x, strategy="mean")
    assert out.pooler_output.dtype == torch.float32
    assert relative_error(out.pooler_output, reference.pooler_output) < 2e-2


def test_attn_implementation_chosen_at_loading_is_used(tmp_path, monkeypatch):
    torch.manual_seed(0)
    GramModel(tiny_config("mono-time")).save_pretrained(tmp_path)
    calls = []
    original_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    x = torch.randn(1, 1, 200, 128)
    sdpa = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    eager = AutoModel.from_pretrained(tmp_path, trust_remote_code=True, attn_implementation="eager").eval()
    assert (sdpa.config._attn_implementation, eager.config._attn_implementation) == ("sdpa", "eager")
    with torch.no_grad():
        expected = eager(x).last_hidden_state
        assert calls == []  # eager never calls SDPA
        got = sdpa(x).last_hidden_state
    assert len(calls) == sdpa.config.num_hidden_layers
    assert relative_error(got, expected) < 1e-5
