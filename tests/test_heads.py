"""Task heads: losses by problem_type against torch's own functions, linear probing with a frozen encoder,
the localization head's unit vectors and angular error, Auto-class loading, training with HF Trainer."""

import math

import numpy as np
import pytest
import torch
from conftest import relative_error, tiny_config
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
    assert model.config.problem_type == expected_type
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
    expected = np.degrees(np.arccos(np.clip(
        (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1), -1, 1)))
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
    loaded_locator = AutoModel.from_pretrained(tmp_path / "loc", trust_remote_code=True).eval()
    assert type(loaded).__name__ == "GramForAudioClassification"
    assert type(loaded_locator).__name__ == "GramForSoundLocalization"
    x = features(2)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, classifier(x).logits)
        assert torch.equal(loaded_locator(x).directions, locator(x).directions)
        # the encoder of a fine-tuned directory still loads on its own
        assert torch.equal(GramModel.from_pretrained(tmp_path / "cls")(x).pooler_output, classifier.gram(x).pooler_output)


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
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=20, learning_rate=3e-3,
        logging_steps=4, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
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
