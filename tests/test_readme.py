"""Every Python snippet of README.md runs, against a locally saved full-size model (the Hub is unreachable
here), and the shapes its comments state are the ones it produces."""

import os
import re

import pytest
import torch
from conftest import ROOT, FakeHubApi, original_pretraining_model, tiny_pretraining_config

from configuration_gram import GramConfig
from feature_extraction_gram import GramFeatureExtractor
from modeling_gram import GramModel

MODEL_DIR = "gram-binaural-time"  # the quick start's converted directory


def readme_snippets() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def local_default_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gramt-binaural-time")
    torch.manual_seed(0)
    GramModel(GramConfig.from_pretrained(ROOT)).save_pretrained(directory)
    GramFeatureExtractor.from_pretrained(ROOT).save_pretrained(directory)
    return str(directory)


def test_readme_snippets_run_and_their_comments_hold(local_default_model):
    snippets = readme_snippets()
    assert len(snippets) == 4
    namespace = {}
    exec(snippets[0].replace(f'"{MODEL_DIR}"', repr(local_default_model)), namespace)
    assert tuple(namespace["inputs"]["input_values"].shape) == (1, 2, 501, 128)
    assert tuple(namespace["output"].pooler_output.shape) == (1, 768)
    assert tuple(namespace["output"].last_hidden_state.shape) == (1, 251, 768)
    assert namespace["output"].timestamps[:3].tolist() == [0.0, 20.0, 40.0]
    exec(snippets[1], namespace)
    assert namespace["output"].embedding_mask.sum(dim=1).tolist() == [51, 151]
    exec(snippets[2], namespace)  # the classification head, from the same directory
    classifier = namespace["model"]
    assert type(classifier).__name__ == "GramForAudioClassification" and classifier.classifier.out_features == 50
    assert not any(p.requires_grad for p in classifier.gram.parameters())


def test_readme_states_the_two_setup_commands_that_ci_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_commands = [line for line in f.read().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    # The README opens (after the title) with exactly two commands: the demo, and the tests that CI runs.
    opening = readme.split("\n# GRAM", 1)[1].split("\n", 1)[1].lstrip()
    assert opening.startswith("```bash\n")
    first_block = re.match(r"```bash\n(.*?)```", opening, flags=re.DOTALL).group(1).strip().splitlines()
    commands = [line.split("#")[0].strip() for line in first_block]
    assert commands == ["make demo", "make test"] and ci_commands == ["make test"]
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert "gram-demo --output-dir demo-output" in makefile and "pytest -q" in makefile


def test_readme_conversion_commands_run(tmp_path, monkeypatch):
    """The conversion commands, verbatim, on original checkpoints built here (12 encoder heads as ViT-B,
    narrow layers), the Hub replaced by a stand-in."""
    import shlex

    from safetensors.torch import save_file

    import convert_checkpoint

    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"```bash\n(python convert_checkpoint.py.*?)```", f.read(), flags=re.DOTALL).group(1)
    commands = [shlex.split(line.split("#")[0]) for line in block.replace("\\\n", " ").strip().splitlines()]
    assert len(commands) == 2

    def original(variant):  # 12 heads as ViT-B (the commands use the default head count), narrow layers
        sizes = dict(hidden_size=96, num_hidden_layers=1, num_attention_heads=12, intermediate_size=96)
        return original_pretraining_model(tiny_pretraining_config(variant, decoder_num_hidden_layers=1, **sizes))

    torch.save({"state_dict": original("binaural-frame").state_dict()}, tmp_path / "step=500000.ckpt")
    runtime = original("ambisonics-time")
    save_file(
        {f"model.{k}": v.contiguous() for k, v in runtime.state_dict().items()}, str(tmp_path / "model.safetensors")
    )
    FakeHubApi.calls = []
    monkeypatch.setattr(convert_checkpoint, "HfApi", FakeHubApi)
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert argv[:2] == ["python", "convert_checkpoint.py"]
        assert convert_checkpoint.main(argv[2:]) == 0
    assert GramConfig.from_pretrained(tmp_path / "gram-binaural-frame").patching == "frame"
    assert GramConfig.from_pretrained(tmp_path / "gram-ambisonics-time").num_channels == 7
    assert [call[0] for call in FakeHubApi.calls] == ["create_repo", "upload_folder"]


def test_readme_embedding_command_runs(tmp_path, monkeypatch, local_default_model):
    """The embedding command, verbatim, in a folder with the paths it names."""
    import shlex
    import shutil

    import numpy as np
    import soundfile as sf

    import embed_audio

    with open(os.path.join(ROOT, "README.md")) as f:
        line = re.search(r"```bash\n(python embed_audio.py [^\n]*)\n```", f.read()).group(1)
    argv = shlex.split(line)
    assert argv[:2] == ["python", "embed_audio.py"]
    monkeypatch.chdir(tmp_path)
    os.makedirs("recordings/day1")
    os.makedirs("path/to")
    shutil.copytree(local_default_model, "path/to/gram")
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (40000, 2)).astype(np.float32)
    sf.write("recordings/day1/a.flac", noise, 32000)
    sf.write("extra.wav", noise[:20000], 32000)
    assert embed_audio.main(argv[2:] + ["--quiet"]) == 0
    assert os.path.isfile("embeddings/recordings/day1/a.flac.npy") and os.path.isfile(
        "embeddings/extra.wav.timestamps.npy"
    )


def test_readme_quick_start_commands_run(tmp_path, monkeypatch):
    """The quick start's two gram-convert commands, verbatim: the Hub id from a fake Hub (huggingface_hub's
    offline cache, holding an original wrapper's model.safetensors with ViT-B's 12 heads, narrow layers), and
    the random-weights model (full size)."""
    import shlex

    from huggingface_hub import constants
    from test_convert_checkpoint import save_runtime_safetensors
    from test_hub_source import add_to_fake_hub

    import convert_checkpoint

    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"```bash\n(gram-convert --checkpoint labhamlet.*?)```", f.read(), flags=re.DOTALL).group(1)
    commands = [shlex.split(line.split("#")[0]) for line in block.strip().splitlines()]
    assert [argv[:2] for argv in commands] == [["gram-convert", "--checkpoint"], ["gram-convert", "--random-weights"]]
    sizes = dict(hidden_size=96, num_hidden_layers=1, num_attention_heads=12, intermediate_size=96)
    original = original_pretraining_model(
        tiny_pretraining_config("binaural-time", decoder_num_hidden_layers=1, **sizes)
    )
    save_runtime_safetensors(original, tmp_path / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    add_to_fake_hub(tmp_path / "cache", commands[0][2], tmp_path / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        assert convert_checkpoint.main([*argv[1:], "--quiet"]) == 0
    assert GramConfig.from_pretrained(tmp_path / "gram-binaural-time").hidden_size == 96
    untrained = GramConfig.from_pretrained(tmp_path / "gram-untrained")
    assert (untrained.hidden_size, untrained.patching) == (768, "time")
    assert "UNTRAINED" in (tmp_path / "gram-untrained" / "README.md").read_text()


def test_readme_pipeline_snippet_runs(tmp_path, monkeypatch, local_default_model):
    """The pipelines snippet, verbatim, with the directories and audio it names made here."""
    import shutil

    import numpy as np
    import soundfile as sf
    from conftest import tiny_config

    from modeling_gram import GramForAudioClassification

    snippet = readme_snippets()[3]
    monkeypatch.chdir(tmp_path)
    labels = {0: "dog", 1: "siren"}
    config = tiny_config("binaural-time", num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    GramForAudioClassification(config).save_pretrained("path/to/gram-classifier")
    GramFeatureExtractor.from_config(config).save_pretrained("path/to/gram-classifier")
    shutil.copytree(local_default_model, "gram-binaural-time")
    rng = np.random.default_rng(0)
    sf.write("scene.wav", (0.1 * rng.standard_normal((48000, 2))).astype(np.float32), 48000)
    namespace = {"stereo_48k": (0.1 * rng.standard_normal((2, 3 * 48000))).astype(np.float32)}
    exec(snippet, namespace)
    result = namespace["classify"]("scene.wav")
    assert {item["label"] for item in result} == {"dog", "siren"}
    out = namespace["out"]
    assert out["embedding"].shape == (768,) and out["frames"].shape == (151, 768)
    assert out["timestamps"].shape == (151,) and out["timestamps"][1] == np.float32(0.02)
