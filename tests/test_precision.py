"""Reduced-precision inference: bfloat16 weights (from_pretrained(dtype=...)) and CPU autocast keep the
features and the per-chunk normalisation in float32, feed bf16 from the patch embedding on, and return
float32 embeddings close to float32 inference, for every variant and strategy."""

import pytest
import torch
from conftest import STRATEGIES, VARIANTS, relative_error, tiny_config
from transformers import AutoModel

from feature_extraction_gram import AUDIO_CHANNELS_FOR_FEATURES, GramFeatureExtractor
from modeling_gram import GramModel


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    directories = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        directory = tmp_path_factory.mktemp(variant)
        GramModel(tiny_config(variant)).save_pretrained(directory)
        directories[variant] = directory
    return directories


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_weights_track_fp32_for_every_strategy(variant, saved_models, audio_clips):
    fp32 = AutoModel.from_pretrained(saved_models[variant], trust_remote_code=True).eval()
    bf16 = AutoModel.from_pretrained(saved_models[variant], trust_remote_code=True, dtype=torch.bfloat16).eval()
    channels = fp32.config.num_channels
    audio = audio_clips(AUDIO_CHANNELS_FOR_FEATURES[channels], 3.3)
    extractor = GramFeatureExtractor(num_channels=channels, ambisonics_format="ambix")
    inputs = extractor(audio, sampling_rate=32000, return_tensors="pt")
    seen = {}
    conv = bf16.embeddings.patch_embeddings.projection

    def record_input_dtype(module, args):
        seen["conv_input"] = args[0].dtype

    handle = conv.register_forward_pre_hook(record_input_dtype)
    with torch.no_grad():
        for strategy in STRATEGIES:
            reference = fp32(**inputs, strategy=strategy)
            half = bf16(**inputs, strategy=strategy)
            assert half.pooler_output.dtype == half.last_hidden_state.dtype == torch.float32
            assert relative_error(half.pooler_output, reference.pooler_output) < 1e-2
            cosine = torch.nn.functional.cosine_similarity(half.last_hidden_state[0], reference.last_hidden_state[0])
            assert cosine.min() > 0.99
    handle.remove()
    assert seen["conv_input"] == torch.bfloat16


def test_normalisation_runs_in_float32_under_bf16(saved_models):
    bf16 = AutoModel.from_pretrained(saved_models["binaural-time"], trust_remote_code=True, dtype=torch.bfloat16).eval()
    x = torch.randn(1, 2, 200, 128) * 5 + 3
    normalized = bf16.embeddings.normalize(x)
    assert normalized.dtype == torch.float32
    reference = torch.nn.functional.layer_norm(x.double().transpose(2, 3), (2, 128, 200), eps=1e-5)
    assert relative_error(normalized, reference) < 1e-6


def test_cpu_autocast_bf16(saved_models):
    model = AutoModel.from_pretrained(saved_models["ambisonics-frame"], trust_remote_code=True).eval()
    x = torch.randn(2, 7, 300, 128)
    with torch.no_grad():
        reference = model(x, strategy="raw")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x, strategy="raw")
    assert mixed.pooler_output.dtype == torch.float32
    assert relative_error(mixed.pooler_output, reference.pooler_output) < 1e-2
