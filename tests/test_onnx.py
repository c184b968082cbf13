"""ONNX export: onnxruntime reproduces the PyTorch encoder and, with the shared chunking/pooling, the
embeddings of GramModel (relative error < 1e-4, float32)."""

import os

import pytest
import torch
from conftest import STRATEGIES, relative_error, tiny_config

pytest.importorskip("onnxruntime")  # part of requirements.txt; guards a partial manual install only

from export_onnx import ONNX_FILE, GramOnnxModel, export_onnx, main  # noqa: E402
from modeling_gram import GramModel  # noqa: E402


@pytest.fixture(scope="module", params=["binaural-frame", "ambisonics-time"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = GramModel(tiny_config(request.param)).eval()
    directory, _ = export_onnx(model, str(tmp_path_factory.mktemp("onnx") / request.param))
    return model, GramOnnxModel(directory)


@pytest.mark.parametrize("num_chunks", [1, 4])
def test_onnx_chunk_encoder_matches_pytorch(exported, num_chunks):
    model, runner = exported
    chunks = torch.randn(num_chunks, model.config.num_channels, 200, 128) * 2 - 1
    with torch.no_grad():
        expected = model.encode_chunks(chunks)[0]
    assert relative_error(torch.from_numpy(runner.encode_chunks(chunks)), expected) < 1e-4


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_onnx_runner_matches_gram_model_on_a_padded_batch(exported, strategy):
    model, runner = exported
    model.config.chunk_batch_size = runner.config.chunk_batch_size = 3  # sub-batches as well
    x = torch.randn(2, model.config.num_channels, 777, 128)
    mask = torch.ones(2, 777, dtype=torch.long)
    mask[1, 350:] = 0
    with torch.no_grad():
        expected = model(x, mask, strategy=strategy)
    got = runner(x.numpy(), mask, strategy=strategy)
    assert torch.equal(got.embedding_mask, expected.embedding_mask)
    assert relative_error(got.pooler_output, expected.pooler_output) < 1e-4
    assert relative_error(got.last_hidden_state, expected.last_hidden_state) < 1e-4


def test_export_command_and_errors(tmp_path, capsys):
    torch.manual_seed(0)
    GramModel(tiny_config("mono-time")).save_pretrained(tmp_path / "model")
    assert main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out")]) == 0
    assert "relative error" in capsys.readouterr().out  # the parity it checked is printed
    assert sorted(os.listdir(tmp_path / "out")) == [
        ".gram-output.json",
        "config.json",
        "configuration_gram.py",
        ONNX_FILE,
    ]
    assert main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"), "--overwrite"]) == 2
    assert "did not write: notes.txt" in capsys.readouterr().err and (tmp_path / "out" / "notes.txt").exists()
    (tmp_path / "out" / "notes.txt").unlink()
    assert main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"), "--overwrite"]) == 0
    assert main(["--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "model")]) == 2  # holds the input
    assert "contains the input" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="export_onnx.py"):
        GramOnnxModel(str(tmp_path / "model"))
    assert sorted(os.listdir(tmp_path)) == ["model", "out"]  # no staging directories left
