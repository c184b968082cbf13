"""GramForPreTraining: parity of reconstruction and loss with the original GRAMT (MW-MAE decoder with a Python
loop over heads and windows), masking, loss, loading."""

import pytest
import torch
from conftest import (
    TINY,
    VARIANTS,
    original_pretraining_model,
    package_state_from_original,
    relative_error,
    tiny_pretraining_config,
)
from transformers import AutoModel, AutoModelForPreTraining

from configuration_gram import GramConfig
from modeling_gram import GramForPreTraining, GramModel


def pretraining_pair(config, seed=0):
    original = original_pretraining_model(config, seed)
    model = GramForPreTraining(config).eval()
    model.load_state_dict(package_state_from_original(original.state_dict()), strict=True)
    return model, original


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_reconstruction_and_loss_match_the_original(variant, attn_implementation):
    config = tiny_pretraining_config(variant)
    config._attn_implementation = attn_implementation
    model, original = pretraining_pair(config)
    x = torch.randn(3, config.num_channels, 200, 128) * 3 + 1
    mask = model.random_masking(
        3, x.device, noise=torch.rand(3, config.num_patches, generator=torch.Generator().manual_seed(1))
    )
    with torch.no_grad():
        ours = model(x, bool_masked_pos=mask)
        pred, patches, loss = original(x, mask)
    assert relative_error(ours.target, patches) < 1e-5
    assert relative_error(ours.reconstruction, pred) < 1e-4
    assert abs(ours.loss.item() - loss.item()) / loss.item() < 1e-4


def test_full_size_decoder_matches_the_original():
    config = GramConfig.from_variant("binaural-frame", **TINY)  # full MW-MAE decoder: 512 wide, 8 layers
    model, original = pretraining_pair(config)
    x = torch.randn(2, 2, 200, 128)
    mask = model.random_masking(2, x.device)
    with torch.no_grad():
        ours = model(x, bool_masked_pos=mask)
        pred, _, loss = original(x, mask)
    assert relative_error(ours.reconstruction, pred) < 1e-4
    assert abs(ours.loss.item() - loss.item()) / loss.item() < 1e-4


def test_random_masking_masks_the_configured_share():
    model = GramForPreTraining(tiny_pretraining_config("binaural-frame"))
    mask = model.random_masking(5, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (5, 200)
    assert mask.sum(dim=1).tolist() == [160] * 5  # mask ratio 0.8
    noise = torch.rand(2, 200)
    torch.testing.assert_close(
        model.random_masking(2, noise.device, noise), model.random_masking(2, noise.device, noise)
    )
    expected = noise < noise.sort(dim=1).values[:, 160:161]
    assert torch.equal(model.random_masking(2, noise.device, noise), expected)
    out = model(torch.randn(2, 2, 200, 128), noise=noise)
    assert torch.equal(out.mask, expected)


def test_loss_counts_masked_patches_only():
    model = GramForPreTraining(tiny_pretraining_config("mono-time"))
    target = torch.randn(2, 100, 256, dtype=torch.float64)
    reconstruction = torch.randn(2, 100, 256, dtype=torch.float64)
    mask = torch.zeros(2, 100, dtype=torch.bool)
    mask[:, :30] = True
    expected = ((reconstruction - target) ** 2).mean(-1)[mask].mean() * 1
    assert model.reconstruction_loss(reconstruction, target, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = reconstruction.clone()
    changed[:, 30:] += 100.0  # visible patches do not count
    assert model.reconstruction_loss(changed, target, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_patchify_is_the_original_patch_order_and_inverts():
    from reference_gram import original_generate_patches

    for variant in ("ambisonics-frame", "binaural-time"):
        model = GramForPreTraining(tiny_pretraining_config(variant))
        x = torch.randn(2, model.config.num_channels, 128, 200)
        fshape, tshape = model.config.patch_size
        assert torch.equal(model.patchify(x), original_generate_patches(x, fshape, tshape).flatten(2))
        assert torch.equal(model.unpatchify(model.patchify(x)), x)


def test_training_step_updates_the_right_parameters():
    model = GramForPreTraining(tiny_pretraining_config("binaural-frame")).train()
    out = model(torch.randn(2, 2, 200, 128))
    out.loss.backward()
    assert model.decoder.mask_token.grad.abs().sum() > 0
    assert model.decoder.layers[0].attention.relative_position_bias_tables["0"].grad.abs().sum() > 0
    assert model.gram.embeddings.cls_token.grad.abs().sum() > 0
    assert model.decoder.position_embeddings.grad is None and model.gram.embeddings.position_embeddings.grad is None


def test_save_and_load_through_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = GramForPreTraining(tiny_pretraining_config("ambisonics-time")).eval()
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 7, 200, 128)
    mask = model.random_masking(2, x.device)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(loaded).__name__ == "GramForPreTraining"
    with torch.no_grad():
        assert torch.equal(
            loaded(x, bool_masked_pos=mask).reconstruction, model(x, bool_masked_pos=mask).reconstruction
        )
        encoder = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
        direct = GramModel.from_pretrained(tmp_path).eval()
        for candidate in (encoder, direct):
            assert torch.equal(candidate(x).pooler_output, model.gram(x).pooler_output)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_values": torch.randn(2, 2, 201, 128)}, "Expected input_values of shape"),
        ({"bool_masked_pos": torch.zeros(2, 99, dtype=torch.bool)}, "bool_masked_pos"),
        ({"bool_masked_pos": torch.zeros(2, 100)}, "bool_masked_pos"),
        ({"bool_masked_pos": torch.tensor([[True] * 10 + [False] * 90, [True] * 20 + [False] * 80])}, "same number"),
    ],
)
def test_bad_pretraining_inputs(kwargs, message):
    model = GramForPreTraining(tiny_pretraining_config("binaural-time"))
    kwargs = {"input_values": torch.randn(2, 2, 200, 128), **kwargs}
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_decoder_windows_must_divide_the_patch_sequence():
    with pytest.raises(ValueError, match="divide the 100 patches"):
        GramForPreTraining(tiny_pretraining_config("binaural-time", decoder_window_sizes=[3, 0, 0, 0, 0, 0, 0, 0]))


def test_pretraining_model_can_be_copied_and_pickled():
    import copy
    import pickle

    model = GramForPreTraining(tiny_pretraining_config("binaural-frame")).eval()
    x = torch.randn(1, 2, 200, 128)
    mask = model.random_masking(1, x.device)
    with torch.no_grad():
        expected = model(x, bool_masked_pos=mask).reconstruction
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(clone(x, bool_masked_pos=mask).reconstruction, expected)


@pytest.mark.parametrize("variant", ["binaural-time", "ambisonics-frame"])
def test_pretraining_step_compiles_as_one_graph(variant):
    """torch.compile(fullgraph=True) fails on any graph break (a host sync such as a mask check, Python
    control flow on tensor values): random masking, encoder and decoder trace as one graph, forward and
    backward, give the eager results, and are not recompiled at the next step."""
    torch._dynamo.reset()
    model = GramForPreTraining(tiny_pretraining_config(variant))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    inputs = torch.randn(3, model.config.num_channels, 200, 128)
    torch.manual_seed(0)
    traced = compiled(inputs)  # first, while the model's caches are still empty
    torch.manual_seed(0)
    eager = model(inputs)
    assert torch.equal(traced.mask, eager.mask)
    assert relative_error(traced.reconstruction, eager.reconstruction) < 1e-6
    traced.loss.backward()
    assert model.decoder.mask_token.grad is not None and model.gram.embeddings.cls_token.grad is not None
    # The next steps reuse the graph: nothing traced (such as a filled cache) invalidates it.
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled(torch.randn(3, model.config.num_channels, 200, 128)).loss.backward()


def test_training_after_an_inference_mode_call():
    model = GramForPreTraining(tiny_pretraining_config("binaural-frame"))
    inputs = torch.randn(2, 2, 200, 128)
    with torch.inference_mode():
        model(inputs)
    model(inputs).loss.backward()
    assert model.decoder.mask_token.grad is not None
