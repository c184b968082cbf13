"""Task heads: losses by problem_type against torch's own functions, linear probing with a frozen encoder,
the localization head's unit vectors and angular error, Auto-class loading, training with HF Trainer."""

import math
import os

import numpy as np
import pytest
import torch
from conftest import relative_error, tiny_config, tiny_pretraining_config
from transformers import AutoModel, AutoModelForAudioClassification, Trainer, TrainingArguments

from modeling_gram import GramForAudioClassification, GramForSoundLocalization, GramModel, angular_error_degrees


def features(batch, channels=2, frames=260, seed=0):
    return torch.randn(batch, channels, frames, 128, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "num_labels, labels, expected_type",
    [
        (4, torch.tensor([0, 3, 1]), "single_label_classification"),
        (4, torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]]), "multi_label_classification"),
        (1, torch.tensor([0.5, -1.0, 2.0]), "regression"),
    ],
)
def test_classification_losses_follow_problem_type(num_labels, labels, expected_type):
    model = GramForAudioClassification(tiny_config("binaural-time", num_labels=num_labels)).eval()
    with torch.no_grad():
        out = model(features(3), labels=labels)
    assert model.infer_problem_type(labels) == expected_type
    assert model.config.problem_type is None  # inferred per call, the config is not rewritten by a batch
    assert out.logits.shape == (3, num_labels)
    if expected_type == "single_label_classification":
        expected = torch.nn.functional.cross_entropy(out.logits, labels)
    elif expected_type == "multi_label_classification":
        expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
    else:
        expected = ((out.logits[:, 0] - labels) ** 2).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("strategy, size", [("raw", 8 * 64), ("mean", 64), ("cls", 64)])
def test_head_uses_the_configured_pooling(strategy, size):
    config = tiny_config("binaural-frame", num_labels=3, pooling_strategy=strategy)
    model = GramForAudioClassification(config).eval()
    assert model.classifier.in_features == size
    x = features(2)
    with torch.no_grad():
        pooled = model.gram(x, strategy=strategy).pooler_output
        expected = pooled @ model.classifier.weight.T + model.classifier.bias
        assert relative_error(model(x).logits, expected) < 1e-6


def test_frozen_encoder_trains_the_head_only():
    model = GramForAudioClassification(tiny_config("mono-time", num_labels=2, freeze_encoder=True)).train()
    before = {k: v.clone() for k, v in model.gram.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    head_before = model.classifier.weight.clone()
    model(features(4, 1), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.gram.state_dict().items())
    assert not torch.equal(model.classifier.weight, head_before)
    assert all(p.grad is None for p in model.gram.parameters())


def test_angular_error_against_a_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    expected = np.degrees(
        np.arccos(np.clip((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1), -1, 1))
    )
    np.testing.assert_allclose(angular_error_degrees(torch.tensor(a), torch.tensor(b)).numpy(), expected, atol=1e-4)
    assert angular_error_degrees(torch.tensor([1.0, 0, 0]), torch.tensor([0, 2.0, 0])).item() == pytest.approx(90.0)


def test_localization_head_outputs_unit_vectors_and_errors():
    model = GramForSoundLocalization(tiny_config("ambisonics-time", pooling_strategy="mean")).eval()
    labels = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    with torch.no_grad():
        out = model(features(2, 7), labels=labels)
    torch.testing.assert_close(out.directions.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out.angular_error, angular_error_degrees(out.directions, labels))
    target = torch.nn.functional.normalize(labels, dim=-1)
    assert out.loss.item() == pytest.approx(((out.directions - target) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(batch_size, 3\)"):
        model(features(2, 7), labels=torch.zeros(2, 2))


def test_heads_load_through_auto_classes(tmp_path):
    torch.manual_seed(0)
    classifier = GramForAudioClassification(tiny_config("binaural-frame", num_labels=3)).eval()
    classifier.save_pretrained(tmp_path / "cls")
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path / "cls", trust_remote_code=True).eval()
    locator = GramForSoundLocalization(tiny_config("binaural-frame")).eval()
    locator.save_pretrained(tmp_path / "loc")
    # The head has no Auto class in transformers: it loads by name from the directory's remote code ...
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    locator_class = get_class_from_dynamic_module("modeling_gram.GramForSoundLocalization", str(tmp_path / "loc"))
    loaded_locator = locator_class.from_pretrained(tmp_path / "loc").eval()
    # ... while AutoModel keeps the base-model convention: the encoder, for every directory.
    encoder = AutoModel.from_pretrained(tmp_path / "loc", trust_remote_code=True).eval()
    assert type(loaded).__name__ == "GramForAudioClassification"
    assert type(loaded_locator).__name__ == "GramForSoundLocalization" and type(encoder).__name__ == "GramModel"
    x = features(2)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, classifier(x).logits)
        assert torch.equal(loaded_locator(x).directions, locator(x).directions)
        assert torch.equal(encoder(x).pooler_output, locator.gram(x).pooler_output)
        # the encoder of a fine-tuned directory still loads on its own
        assert torch.equal(
            GramModel.from_pretrained(tmp_path / "cls")(x).pooler_output, classifier.gram(x).pooler_output
        )


class ToyDataset(torch.utils.data.Dataset):
    """Log-mel-like inputs whose class / direction shows in the spectrum: learnable by a head."""

    def __init__(self, size, task, channels=2):
        generator = torch.Generator().manual_seed(1)
        self.items = []
        for i in range(size):
            x = 0.3 * torch.randn(channels, 200, 128, generator=generator)
            if task == "classification":
                label = i % 2
                x[:, :, 20 + 60 * label : 40 + 60 * label] += 3.0
                self.items.append({"input_values": x, "labels": torch.tensor(label)})
            else:
                azimuth = 2 * math.pi * i / size  # band levels against a constant reference band
                x[:, :, 10:30] += 2.0 + math.cos(azimuth)
                x[:, :, 50:70] += 2.0 + math.sin(azimuth)
                x[:, :, 90:110] += 2.0
                direction = torch.tensor([math.cos(azimuth), math.sin(azimuth), 0.0])
                self.items.append({"input_values": x, "labels": direction})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


@pytest.mark.parametrize("task", ["classification", "localization"])
def test_heads_train_with_hf_trainer(task, tmp_path):
    torch.manual_seed(0)
    config = tiny_config("binaural-time", num_labels=2, pooling_strategy="mean")
    model = (GramForAudioClassification if task == "classification" else GramForSoundLocalization)(config)
    data = ToyDataset(32, task)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=20,
        learning_rate=3e-3,
        logging_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    batch = torch.stack([item["input_values"] for item in data.items])
    labels = torch.stack([item["labels"] for item in data.items])
    with torch.no_grad():
        out = model(batch, labels=labels)
    if task == "classification":
        assert (out.logits.argmax(-1) == labels).float().mean() > 0.9
    else:
        assert out.angular_error.mean() < 30.0


def test_fixed_tables_and_frozen_encoder_stay_untrainable_after_loading(tmp_path):
    from modeling_gram import GramForPreTraining

    GramForPreTraining(tiny_config("binaural-time")).save_pretrained(tmp_path)
    pretraining = GramForPreTraining.from_pretrained(tmp_path)
    encoder = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    probe = GramForAudioClassification.from_pretrained(tmp_path, num_labels=2, freeze_encoder=True)
    assert not pretraining.decoder.position_embeddings.requires_grad
    assert not pretraining.gram.embeddings.position_embeddings.requires_grad
    assert not encoder.embeddings.position_embeddings.requires_grad
    assert not any(p.requires_grad for p in probe.gram.parameters())
    assert all(p.requires_grad for p in probe.classifier.parameters())
    trainable = {n for n, p in pretraining.named_parameters() if p.requires_grad}
    assert "decoder.mask_token" in trainable and not any("position_embeddings" in n for n in trainable)


def test_save_pretrained_push_to_hub_uploads_complete_directories_for_every_class(tmp_path, monkeypatch):
    """`save_pretrained(push_to_hub=True)` (faked Hub) uploads the weights *and* the three code files, for every
    model class; what was uploaded loads back through the remote code."""
    import shutil

    import transformers.utils.hub as hub
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from modeling_gram import GramForPreTraining

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

    class FakeCard:
        def save(self, path):
            open(path, "w").write("card")

    def upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        shutil.copytree(working_dir, tmp_path / "hub" / repo_id, dirs_exist_ok=True)

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *args, **kwargs: FakeCard())
    monkeypatch.setattr(hub.PushToHubMixin, "_upload_modified_files", upload)
    config = tiny_pretraining_config("binaural-time", num_labels=3)
    for cls in (GramModel, GramForPreTraining, GramForAudioClassification, GramForSoundLocalization):
        torch.manual_seed(0)
        model = cls(config).eval()
        model.save_pretrained(tmp_path / "local" / cls.__name__, push_to_hub=True, repo_id=f"me/{cls.__name__}")
        pushed = tmp_path / "hub" / "me" / cls.__name__
        assert {
            "config.json",
            "model.safetensors",
            "configuration_gram.py",
            "modeling_gram.py",
            "feature_extraction_gram.py",
        } <= set(os.listdir(pushed)), cls
        loaded = get_class_from_dynamic_module(f"modeling_gram.{cls.__name__}", str(pushed)).from_pretrained(pushed)
        for name, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), (cls, name)


def test_fixed_tables_are_buffers_and_outputs_can_be_tuples(tmp_path):
    from modeling_gram import GramForPreTraining

    config = tiny_pretraining_config("binaural-frame")
    model = GramForPreTraining(config)
    model.save_pretrained(tmp_path)
    loaded = GramForPreTraining.from_pretrained(tmp_path)
    parameters = {name for name, _ in loaded.named_parameters()}
    assert not any("position_embeddings" in name for name in parameters)
    assert all(p.requires_grad for p in loaded.parameters())  # nothing trainable is frozen, nothing fixed trains
    for name in ("gram.embeddings.position_embeddings", "decoder.position_embeddings"):
        assert torch.equal(loaded.state_dict()[name], model.state_dict()[name])
    # The decoder's config is a plain copy with the decoder's sizes (no proxy to the model's config).
    layer_config = loaded.decoder.layers[0].attention.config
    assert type(layer_config).__name__ == "GramConfig" and layer_config is not loaded.config
    assert (layer_config.hidden_size, layer_config.num_attention_heads) == (32, 8)
    x = torch.randn(2, 2, 200, 128)
    noise = torch.rand(2, config.num_patches)
    with torch.no_grad():
        as_tuple = loaded(x, noise=noise, return_dict=False)
        as_output = loaded(x, noise=noise)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_output.loss)


def test_windowed_decoder_attention_never_hands_its_bias_to_flash_attention(monkeypatch):
    """Flash attention reads an additive (H, L, L) bias as a padding mask: under flash_attention_2 the decoder's
    windowed heads run SDPA instead, and give what eager attention gives."""
    import modeling_gram
    from modeling_gram import GramWindowedSelfAttention, decoder_config

    config = decoder_config(tiny_pretraining_config("binaural-time"))
    torch.manual_seed(0)
    eager = GramWindowedSelfAttention(config).eval()
    for table in eager.relative_position_bias_tables.values():
        torch.nn.init.normal_(table)
    requested = []
    original = modeling_gram.ALL_ATTENTION_FUNCTIONS.get_interface

    def spy(name, default):
        requested.append(name)
        return original(name, default)

    monkeypatch.setattr(modeling_gram.ALL_ATTENTION_FUNCTIONS, "get_interface", spy)
    x = torch.randn(2, config.num_patches, 32)
    with torch.no_grad():
        config._attn_implementation = "eager"
        expected, _ = eager(x)
        config._attn_implementation = "flash_attention_2"
        got, _ = eager(x)
    assert "flash_attention_2" not in requested and "sdpa" in requested
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_switching_the_attention_implementation_reaches_the_decoder():
    from modeling_gram import GramForPreTraining

    model = GramForPreTraining(tiny_pretraining_config("binaural-time"))
    model.set_attn_implementation("eager")
    implementations = {layer.attention.config._attn_implementation for layer in model.decoder.layers}
    assert model.config._attn_implementation == "eager" and implementations == {"eager"}
    model.set_attn_implementation("sdpa")
    assert {layer.attention.config._attn_implementation for layer in model.decoder.layers} == {"sdpa"}
