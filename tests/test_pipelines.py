"""transformers pipelines through the config's `custom_pipelines` (pipeline_gram.py, remote code): from saved
directories, in a fresh process that has never imported this package; binaural and FOA arrays, files at other
rates, `{"raw", "sampling_rate"}` dicts and soundfile's (samples, channels) layout, checked against the model
called directly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_config

from feature_extraction_gram import GramFeatureExtractor, resample_audio
from modeling_gram import GramForAudioClassification, GramModel

SR = 32000
LABELS = {0: "speech", 1: "dog", 2: "siren"}

FRESH_PROCESS = r"""
import json, sys
import numpy as np, soundfile
from transformers import pipeline
assert "modeling_gram" not in sys.modules and "pipeline_gram" not in sys.modules
classifier_dir, encoder_dir, wav = sys.argv[1:4]
stereo = np.load(sys.argv[4]); foa = np.load(sys.argv[5])
classify = pipeline("audio-classification", model=classifier_dir, trust_remote_code=True)
embed = pipeline("feature-extraction", model=encoder_dir, trust_remote_code=True)
out = {
    "pipeline_classes": [type(classify).__name__, type(embed).__name__],
    "array": classify(stereo, top_k=None),
    "samples_by_channels": classify(np.ascontiguousarray(stereo.T), top_k=2),
    "file": classify(wav, top_k=None),
    "dict": classify({"raw": stereo, "sampling_rate": 32000}, top_k=None),
}
embedded = embed({"array": foa, "sampling_rate": 32000}, ambisonics_format="ambix", strategy="mean")
out["embedding"] = embedded["embedding"].tolist()
out["frames_shape"] = list(embedded["frames"].shape)
out["timestamps"] = embedded["timestamps"].tolist()
try:
    embed(foa)
except ValueError as error:
    out["no_format"] = str(error)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipelines")
    torch.manual_seed(0)
    config = tiny_config("binaural-time", num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    classifier = GramForAudioClassification(config).eval()
    classifier.save_pretrained(base / "classifier")
    GramFeatureExtractor.from_config(config).save_pretrained(base / "classifier")
    encoder = GramModel(tiny_config("ambisonics-frame")).eval()
    encoder.save_pretrained(base / "encoder")
    GramFeatureExtractor.from_config(encoder.config).save_pretrained(base / "encoder")
    return base, classifier, encoder


def test_pipelines_from_saved_directories_in_a_fresh_process(directories, tmp_path):
    base, classifier, encoder = directories
    rng = np.random.default_rng(1)
    stereo = (0.1 * rng.standard_normal((2, int(1.7 * SR)))).astype(np.float32)
    stereo[0] *= 3.0  # louder left
    foa = (0.1 * rng.standard_normal((4, int(2.3 * SR)))).astype(np.float32)
    np.save(tmp_path / "stereo.npy", stereo)
    np.save(tmp_path / "foa.npy", foa)
    wav = tmp_path / "scene.wav"
    stereo_48k = resample_audio(stereo, SR, 48000)
    soundfile.write(wav, stereo_48k.T, 48000, subtype="FLOAT")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    args = [str(base / "classifier"), str(base / "encoder"), str(wav), str(tmp_path / "stereo.npy")]
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, *args, str(tmp_path / "foa.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["pipeline_classes"] == ["GramAudioClassificationPipeline", "GramAudioEmbeddingPipeline"]

    # The reference: the model called directly on the extractor's features (softmax over its logits).
    extractor = GramFeatureExtractor.from_config(classifier.config)

    def expected(audio, rate=SR):
        with torch.no_grad():
            inputs = extractor(audio, sampling_rate=rate, resample=True, return_tensors="pt")
            probabilities = classifier(**inputs).logits[0].softmax(-1)
        order = probabilities.argsort(descending=True)
        return [(LABELS[int(i)], float(probabilities[i])) for i in order]

    def pairs(result):
        return [(item["label"], item["score"]) for item in result]

    for key, reference in (
        ("array", expected(stereo)),
        ("dict", expected(stereo)),
        ("file", expected(stereo_48k, 48000)),
    ):
        got = pairs(out[key])
        assert [label for label, _ in got] == [label for label, _ in reference], key
        np.testing.assert_allclose([s for _, s in got], [s for _, s in reference], rtol=1e-5, atol=1e-6)
    top2 = pairs(out["samples_by_channels"])
    assert [label for label, _ in top2] == [label for label, _ in pairs(out["array"])[:2]]
    np.testing.assert_allclose([s for _, s in top2], [s for _, s in pairs(out["array"])[:2]], rtol=1e-6)

    with torch.no_grad():
        inputs = GramFeatureExtractor.from_config(encoder.config)(
            foa, sampling_rate=SR, return_tensors="pt", ambisonics_format="ambix"
        )
        reference = encoder(**inputs, strategy="mean")
    np.testing.assert_allclose(out["embedding"], reference.pooler_output[0].numpy(), rtol=1e-5, atol=1e-6)
    steps = int(reference.embedding_mask[0].sum())
    assert out["frames_shape"] == [steps, encoder.config.frame_embedding_size]
    np.testing.assert_allclose(out["timestamps"], reference.timestamps[:steps].numpy() / 1000.0, rtol=1e-6)
    assert "ambisonics_format" in out["no_format"]


def test_pipeline_inputs_are_checked(directories):
    from transformers import pipeline

    base, _, _ = directories
    classify = pipeline("audio-classification", model=str(base / "classifier"), trust_remote_code=True)
    with pytest.raises(ValueError, match="local files only"):
        classify("https://example.org/a.wav")
    with pytest.raises(ValueError, match='under "raw"'):
        classify({"audio": np.zeros(SR, np.float32), "sampling_rate": SR})
    with pytest.raises(TypeError, match="Unexpected arguments: strategy"):
        classify(np.zeros((2, SR), np.float32), strategy="mean")
    with pytest.raises(ValueError, match="Cannot read the audio"):
        classify(b"not audio at all")
    with pytest.raises(ValueError, match="one clip per forward pass"):
        classify([np.zeros((2, SR), np.float32)] * 2, batch_size=2)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        classify(np.zeros((2, SR), np.float32), top_k=0)


def test_pipeline_reads_paths_and_audio_decoders(directories, tmp_path):
    """pathlib paths, and torchcodec AudioDecoder-like objects (what `datasets` >= 4 gives for Audio columns)."""
    import types

    from transformers import pipeline

    base, _, _ = directories
    classify = pipeline("audio-classification", model=str(base / "classifier"), trust_remote_code=True)
    audio = (0.1 * np.random.default_rng(5).standard_normal((2, SR))).astype(np.float32)
    soundfile.write(tmp_path / "clip.wav", audio.T, SR, subtype="FLOAT")
    decoder = types.SimpleNamespace(
        get_all_samples=lambda: types.SimpleNamespace(data=torch.from_numpy(audio), sample_rate=SR)
    )
    expected = classify(audio, top_k=None)
    for given in (tmp_path / "clip.wav", decoder):
        got = classify(given, top_k=None)
        assert [g["label"] for g in got] == [e["label"] for e in expected]
        np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], rtol=1e-5)
