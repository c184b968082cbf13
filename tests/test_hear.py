"""The HEAR module: the official validator's checks one by one (hearvalidator 2021.0.6 needs TensorFlow, so
it is not installed by default; README has the command), plus GRAM's own: multi-channel input, batch
independence, layer and strategy selection against the original."""

import numpy as np
import pytest
import torch
from conftest import relative_error, tiny_config
from reference_gram import original_features, original_runtime_encode

import gram_hear
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel

SR = 32000


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    base = tmp_path_factory.mktemp("hear")
    for variant in ("binaural-time", "ambisonics-frame"):
        torch.manual_seed(0)
        directory = base / variant
        config = tiny_config(variant)
        GramModel(config).save_pretrained(directory)
        GramFeatureExtractor(num_channels=config.num_channels).save_pretrained(directory)
        dirs[variant] = directory
    return dirs


def test_load_model_contract(model_dirs):
    model = gram_hear.load_model(str(model_dirs["binaural-time"]))
    assert isinstance(model, torch.nn.Module)
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        assert isinstance(getattr(model, name), int)
    assert model.sample_rate in (16000, 22050, 32000, 44100, 48000)


@pytest.mark.parametrize("variant", ["binaural-time", "ambisonics-frame"])
@pytest.mark.parametrize("seconds", [1.07, 1.98, 4.0])
def test_validator_checks_on_hear_lengths(variant, seconds, model_dirs):
    model = gram_hear.load_model(str(model_dirs[variant]))
    audio = torch.rand(2, int(seconds * SR)) * 2 - 1
    scene = gram_hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (2, model.scene_embedding_size)
    embeddings, timestamps = gram_hear.get_timestamp_embeddings(audio, model)
    assert embeddings.dtype == torch.float32
    assert embeddings.shape[0] == 2 and embeddings.shape[2] == model.timestamp_embedding_size
    assert timestamps.shape == embeddings.shape[:2]
    steps = np.diff(timestamps.numpy(), axis=1)
    assert np.all(np.abs(steps - steps.mean()) < 1.0)  # evenly spaced within 1 ms
    assert timestamps[:, 0].eq(0).all() and timestamps.max().item() <= seconds * 1000
    assert torch.equal(timestamps[0], timestamps[1])


def test_multichannel_input_and_batch_independence(model_dirs):
    model = gram_hear.load_model(str(model_dirs["ambisonics-frame"]), batch_size=2, ambisonics_format="ambix")
    foa = torch.rand(3, 4, int(1.5 * SR)) - 0.5
    together = gram_hear.get_scene_embeddings(foa, model)
    for i in range(3):
        alone = gram_hear.get_scene_embeddings(foa[i : i + 1], model)
        assert relative_error(together[i], alone[0]) < 1e-5
    binaural = gram_hear.load_model(str(model_dirs["binaural-time"]))
    stereo = torch.rand(2, 2, SR) - 0.5
    assert gram_hear.get_timestamp_embeddings(stereo, binaural)[0].shape[:2] == (2, 51)


@pytest.mark.parametrize("strategy", ["raw", "mean", "cls"])
@pytest.mark.parametrize("layer", [0, 1, "2"])
def test_strategy_and_layer_match_the_original(strategy, layer, model_dirs):
    from conftest import model_pair

    model, original = model_pair(tiny_config("binaural-time"))
    model.save_pretrained(model_dirs["binaural-time"].parent / "pair")
    GramFeatureExtractor().save_pretrained(model_dirs["binaural-time"].parent / "pair")
    hear_model = gram_hear.load_model(str(model_dirs["binaural-time"].parent / "pair"), strategy=strategy, layer=layer)
    audio = torch.rand(1, 2, int(2.3 * SR)) - 0.5
    expected = original_runtime_encode(original, original_features([audio[0]], 2), strategy, until_block=int(layer))
    assert relative_error(gram_hear.get_scene_embeddings(audio, hear_model)[0], expected.mean(dim=1)[0]) < 1e-4


def test_bad_arguments(model_dirs):
    with pytest.raises(ValueError, match="strategy must be one of"):
        gram_hear.load_model(str(model_dirs["binaural-time"]), strategy="max")
    with pytest.raises(ValueError, match="layer must be in"):
        gram_hear.load_model(str(model_dirs["binaural-time"]), layer=7)
    with pytest.raises(TypeError, match="Unknown load_model arguments"):
        gram_hear.load_model(str(model_dirs["binaural-time"]), starategy="raw")
    with pytest.raises(ValueError, match="not binaural-frame"):
        gram_hear.load_model(str(model_dirs["binaural-time"]), variant="binaural-frame")
    picked = gram_hear.load_model(str(model_dirs["binaural-time"].parent), variant="ambisonics-frame")
    assert picked.model.config.num_channels == 7


def test_pcm_numpy_empty_and_bad_batch_sizes(model_dirs):
    model = gram_hear.load_model(str(model_dirs["binaural-time"]), batch_size="2")
    rng = np.random.default_rng(0)
    pcm = rng.integers(-20000, 20000, (3, 2, SR), dtype=np.int16)
    scaled = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    expected = gram_hear.get_scene_embeddings(scaled, model)
    # int16 tensors are PCM: scaled like the feature extractor scales them, not cast to +-20000.0
    assert relative_error(gram_hear.get_scene_embeddings(torch.from_numpy(pcm), model), expected) < 1e-5
    assert relative_error(gram_hear.get_scene_embeddings(pcm, model), expected) < 1e-5  # numpy works too
    empty = gram_hear.get_scene_embeddings(torch.zeros(0, SR), model)
    assert empty.shape == (0, model.scene_embedding_size)
    steps, times = gram_hear.get_timestamp_embeddings(torch.zeros(0, SR), model)
    assert steps.shape == (0, 0, model.timestamp_embedding_size) and times.shape == (0, 0)
    for size in (0, -1, "x"):
        with pytest.raises(ValueError, match="batch_size must be"):
            gram_hear.load_model(str(model_dirs["binaural-time"]), batch_size=size)
    with pytest.raises(TypeError, match="torch tensor"):
        gram_hear.get_scene_embeddings([[0.0] * SR], model)


def test_the_evaluation_kits_layout_is_read_as_samples_by_channels(model_dirs):
    """heareval and listen-eval-kit read wavs with soundfile: a batch arrives as (n_sounds, n_samples, channels)."""
    binaural = gram_hear.load_model(str(model_dirs["binaural-time"]))
    ours = torch.rand(3, 2, int(1.2 * SR)) - 0.5
    kits = ours.transpose(1, 2).contiguous()
    torch.testing.assert_close(gram_hear.get_scene_embeddings(kits, binaural), binaural.embed(ours).pooler_output)
    steps, _ = gram_hear.get_timestamp_embeddings(kits.numpy(), binaural)
    torch.testing.assert_close(steps, gram_hear.get_timestamp_embeddings(ours, binaural)[0])

    foa = (torch.rand(2, int(1.2 * SR), 4) - 0.5).numpy()
    ambisonic = gram_hear.load_model(str(model_dirs["ambisonics-frame"]))
    with pytest.raises(ValueError, match="load the model with ambisonics_format="):
        gram_hear.get_scene_embeddings(foa, ambisonic)
    ambix = gram_hear.load_model(str(model_dirs["ambisonics-frame"]), ambisonics_format="ambix")
    expected = ambix.extractor(list(torch.from_numpy(foa).transpose(1, 2)), sampling_rate=SR, return_tensors="pt",
                               ambisonics_format="ambix")  # fmt: skip
    with torch.no_grad():
        reference = ambix.model(**expected, strategy="raw").pooler_output
    torch.testing.assert_close(gram_hear.get_scene_embeddings(foa, ambix), reference)
    with pytest.raises(ValueError, match="ambisonics_format must be one of"):
        gram_hear.load_model(str(model_dirs["ambisonics-frame"]), ambisonics_format="acn")


def test_original_hub_repo_is_converted_in_memory(tmp_path, monkeypatch):
    """load_model("labhamlet/gramt-binaural-time") (the default): the original repo's weights, converted."""
    from conftest import TINY, make_original
    from huggingface_hub import constants
    from test_convert_checkpoint import save_runtime_safetensors
    from test_hub_source import add_to_fake_hub

    from convert_checkpoint import load_original_encoder

    weights = tmp_path / "model.safetensors"
    save_runtime_safetensors(make_original("binaural-time"), weights)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    add_to_fake_hub(tmp_path / "cache", gram_hear.DEFAULT_MODEL, weights)
    monkeypatch.delenv("GRAM_HEAR_MODEL", raising=False)
    model = gram_hear.load_model(num_attention_heads=TINY["num_attention_heads"])
    reference = load_original_encoder(str(weights), num_attention_heads=TINY["num_attention_heads"])
    audio = torch.rand(2, int(1.5 * SR)) - 0.5
    with torch.no_grad():
        features = model.extractor(list(audio), sampling_rate=SR, return_tensors="pt")
        expected = reference(**features).pooler_output
    torch.testing.assert_close(gram_hear.get_scene_embeddings(audio, model), expected)
