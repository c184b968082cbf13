"""GramModel: parity with the original GRAM, pooling, batching, attention paths, dtypes and errors."""

import math

import pytest
import torch
from conftest import STRATEGIES, VARIANTS, model_pair, relative_error, tiny_config
from reference_gram import original_features, original_runtime_encode, original_scene_embedding

from configuration_gram import AUDIO_CHANNELS, GramConfig
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel


def features_for(variant, audio_clips, seconds):
    fmt = variant.split("-")[0]
    audio = audio_clips(AUDIO_CHANNELS[fmt], seconds)
    return original_features([audio], tiny_config(variant).num_channels)


# ------------------------------------------------------------------------------------------------------
# Parity with the original (independent reference: torchvision Encoder + the runtime's chunk loop)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_original_for_every_variant_and_strategy(variant, strategy, audio_clips):
    model, original = model_pair(tiny_config(variant))
    features = features_for(variant, audio_clips, 4.37)  # 1399 frames: 7 chunks, the last one padded
    with torch.no_grad():
        ours = model(features, strategy=strategy)
    expected_scene = original_scene_embedding(original, features, strategy)
    assert relative_error(ours.pooler_output, expected_scene) < 1e-4
    raw = original_runtime_encode(original, features, "raw")
    assert ours.last_hidden_state.shape == raw.shape
    assert relative_error(ours.last_hidden_state, raw) < 1e-4


@pytest.fixture(scope="module", params=["binaural-frame", "ambisonics-time"])
def full_size_pair(request):
    return request.param, *model_pair(GramConfig.from_variant(request.param))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_full_size_vit_b_matches_original(full_size_pair, strategy, audio_clips):
    variant, model, original = full_size_pair
    features = features_for(variant, audio_clips, 2.5)
    with torch.no_grad():
        ours = model(features, strategy=strategy)
        expected_raw = original_runtime_encode(original, features, "raw")
        expected_scene = original_scene_embedding(original, features, strategy)
    assert relative_error(ours.last_hidden_state, expected_raw) < 1e-4
    assert relative_error(ours.pooler_output, expected_scene) < 1e-4


@pytest.mark.parametrize("strategy", ["mean", "cls"])
def test_no_fully_padded_extra_chunk_when_length_is_a_multiple_of_two_seconds(strategy, audio_clips):
    # The original pads a whole zero chunk onto 400 frames and averages it in; we don't.
    model, original = model_pair(tiny_config("binaural-time"))
    features = features_for("binaural-time", audio_clips, 3.99)[:, :, :400]
    with torch.no_grad():
        ours = model(features, strategy=strategy).pooler_output
    per_chunk = original_runtime_encode(original, features, strategy)  # (1, 3, D): 2 real + 1 padding
    assert per_chunk.shape[1] == 3
    assert relative_error(ours, per_chunk[:, :2].mean(dim=1)) < 1e-4
    assert relative_error(ours, per_chunk.mean(dim=1)) > 1e-3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shapes_and_finite_values(variant, strategy):
    config = tiny_config(variant)
    model = GramModel(config).eval()
    frames = 1001  # 10 s + 1 frame
    with torch.no_grad():
        out = model(torch.randn(2, config.num_channels, frames, 128), strategy=strategy)
    steps = math.ceil(frames / config.patch_size[1])
    assert out.last_hidden_state.shape == (2, steps, config.frame_embedding_size)
    expected_dim = config.frame_embedding_size if strategy == "raw" else config.hidden_size
    assert out.pooler_output.shape == (2, expected_dim)
    assert out.timestamps.shape == (steps,)
    assert out.timestamps[1].item() == pytest.approx(config.step_duration_ms)
    assert torch.isfinite(out.last_hidden_state).all() and torch.isfinite(out.pooler_output).all()


def test_steps_per_second():
    assert GramConfig.from_variant("binaural-time").step_duration_ms == 20.0  # 50 steps/s of 768
    assert GramConfig.from_variant("binaural-frame").step_duration_ms == 80.0  # 12.5 steps/s of 6144
    assert GramConfig.from_variant("binaural-frame").frame_embedding_size == 6144


# ------------------------------------------------------------------------------------------------------
# Batching
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("variant", ["binaural-frame", "ambisonics-time"])
def test_clip_embeds_the_same_alone_or_in_a_padded_batch(variant, strategy, audio_clips):
    model = GramModel(tiny_config(variant)).eval()
    extractor = GramFeatureExtractor(num_channels=model.config.num_channels, ambisonics_format="ambix")
    channels = AUDIO_CHANNELS[variant.split("-")[0]]
    clips = [audio_clips(channels, 1.3), audio_clips(channels, 5.1), audio_clips(channels, 2.0)]
    batch = extractor(clips, sampling_rate=32000, return_tensors="pt")
    batch["input_values"].masked_fill_(
        (batch["attention_mask"] == 0)[:, None, :, None], 7.0
    )  # padding must not matter, whatever its value
    with torch.no_grad():
        together = model(batch["input_values"], batch["attention_mask"], strategy=strategy)
        for i, clip in enumerate(clips):
            alone = model(extractor(clip, sampling_rate=32000, return_tensors="pt")["input_values"], strategy=strategy)
            steps = alone.last_hidden_state.shape[1]
            assert int(together.embedding_mask[i].sum()) == steps
            assert relative_error(together.pooler_output[i], alone.pooler_output[0]) < 1e-5
            assert relative_error(together.last_hidden_state[i, :steps], alone.last_hidden_state[0]) < 1e-5
            assert not together.last_hidden_state[i, steps:].any()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sub_batches_give_the_same_result(strategy):
    config = tiny_config("binaural-frame")
    model = GramModel(config).eval()
    x = torch.randn(3, 2, 1234, 128)
    mask = torch.ones(3, 1234, dtype=torch.long)
    mask[0, 333:] = 0
    mask[2, 801:] = 0
    with torch.no_grad():
        whole = model(x, mask, strategy=strategy, output_hidden_states=True)
        model.config.chunk_batch_size = 2
        pieces = model(x, mask.numpy(), strategy=strategy, output_hidden_states=True)  # numpy masks work too
    assert relative_error(pieces.pooler_output, whole.pooler_output) < 1e-6
    assert relative_error(pieces.last_hidden_state, whole.last_hidden_state) < 1e-6
    assert relative_error(pieces.hidden_states[-1], whole.hidden_states[-1]) < 1e-6


# ------------------------------------------------------------------------------------------------------
# Attention implementations, hidden states, dtypes
# ------------------------------------------------------------------------------------------------------
def test_sdpa_is_default_and_equals_eager():
    config = tiny_config("ambisonics-frame")
    model = GramModel(config).eval()
    assert model.config._attn_implementation == "sdpa"
    config_eager = tiny_config("ambisonics-frame")
    config_eager._attn_implementation = "eager"
    eager_model = GramModel(config_eager).eval()
    eager_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 7, 450, 128)
    with torch.no_grad():
        assert relative_error(model(x).last_hidden_state, eager_model(x).last_hidden_state) < 1e-5


def test_hidden_states_and_attentions():
    config = tiny_config("binaural-frame")
    model = GramModel(config).eval()
    x = torch.randn(2, 2, 250, 128)
    mask = torch.ones(2, 250, dtype=torch.long)
    mask[1, 150:] = 0
    with torch.no_grad():
        out = model(x, mask, strategy="cls", output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert out.hidden_states[0].shape == (2, 2, 1 + config.num_patches, config.hidden_size)
    assert out.hidden_states[-1][1, 1].abs().max() == 0  # clip 1 has one chunk only
    # The last hidden state, normalised, gives the CLS embedding.
    cls = model.layernorm(out.hidden_states[-1][0, :, 0]).mean(dim=0)
    assert relative_error(cls, out.pooler_output[0]) < 1e-5
    assert len(out.attentions) == config.num_hidden_layers
    attn = out.attentions[0]
    assert attn.shape == (2, 2, config.num_attention_heads, 1 + config.num_patches, 1 + config.num_patches)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones_like(attn[0].sum(-1)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_stays_close(dtype):
    config = tiny_config("binaural-time")
    model = GramModel(config).eval()
    x = torch.randn(1, 2, 300, 128)
    with torch.no_grad():
        reference = model(x, strategy="mean").pooler_output
        half = model.to(dtype)(x, strategy="mean")
    assert half.pooler_output.dtype == torch.float32 and half.last_hidden_state.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(half.pooler_output, reference).item() > 0.99


def test_return_dict_false_and_gradient_checkpointing():
    model = GramModel(tiny_config("mono-frame"))
    x = torch.randn(1, 1, 210, 128)
    tuple_out = model.eval()(x, return_dict=False)
    assert isinstance(tuple_out, tuple) and tuple_out[0].shape[-1] == model.config.frame_embedding_size
    model.train()
    model.activation_checkpointing_enable()
    assert model.encoder.gradient_checkpointing
    model(x, strategy="cls").pooler_output.sum().backward()
    assert model.embeddings.patch_embeddings.projection.weight.grad is not None
    assert model.embeddings.position_embeddings.grad is None  # fixed table


def test_position_table_is_the_original_sincos():
    from reference_gram import original_sincos_table

    config = tiny_config("ambisonics-frame")
    model = GramModel(config)
    expected = torch.from_numpy(original_sincos_table(config.hidden_size, config.grid_size, 1)).float()
    torch.testing.assert_close(model.embeddings.position_embeddings[0], expected)


# ------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_input, kwargs, error, message",
    [
        (lambda: torch.randn(1, 3, 100, 128), {}, ValueError, "Expected input_values of shape"),
        (lambda: torch.randn(2, 100, 128), {}, ValueError, "Expected input_values of shape"),
        (lambda: torch.randn(1, 2, 100, 64), {}, ValueError, "binaural"),
        (lambda: torch.zeros(1, 2, 100, 128, dtype=torch.long), {}, TypeError, "floating point"),
        (lambda: torch.randn(1, 2, 100, 128), {"strategy": "max"}, ValueError, "strategy must be one of"),
        (
            lambda: torch.randn(1, 2, 100, 128),
            {"attention_mask": torch.ones(1, 99)},
            ValueError,
            "attention_mask of shape",
        ),
        (lambda: torch.randn(1, 2, 4, 128), {"attention_mask": torch.tensor([[1, 0, 1, 0]])}, ValueError, "prefix"),
        (lambda: torch.randn(1, 2, 4, 128), {"attention_mask": torch.zeros(1, 4)}, ValueError, "all-zero row"),
        (
            lambda: torch.randn(1, 2, 4, 128),
            {"pixel_values": 1},
            TypeError,
            "unexpected keyword argument .pixel_values.",
        ),
        (lambda: torch.randn(1, 2, 4, 128).numpy(), {}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(make_input, kwargs, error, message):
    model = GramModel(tiny_config("binaural-time")).eval()
    with pytest.raises(error, match=message):
        model(make_input(), **kwargs)
