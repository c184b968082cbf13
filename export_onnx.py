"""ONNX export of GRAM's encoder for deployment, and the runner around it.

The graph is the encoder over 2-second chunks: `input_values` `(num_chunks, channels, 200, 128)` log-mels
(unnormalised, as the feature extractor gives them) -> `last_hidden_state` `(num_chunks, 1 + patches,
hidden)` after the final LayerNorm, CLS first; the number of chunks is dynamic. `GramOnnxModel` does the
chunking of any-length input and the raw/mean/cls pooling around it with the very functions `GramModel`
uses, so both give the same embeddings.

    python export_onnx.py --model path/to/gram --output-dir gram-onnx
    python -c "from export_onnx import GramOnnxModel; m = GramOnnxModel('gram-onnx')"
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from torch import nn

from configuration_gram import GramConfig
from gram_io import OutputDirectoryError, check_output_dir, staged_directory
from modeling_gram import GramModel, GramModelOutput, pool_chunk_tokens, split_into_chunks

ONNX_FILE = "encoder.onnx"
INPUT_NAME, OUTPUT_NAME = "input_values", "last_hidden_state"


class GramChunkEncoder(nn.Module):
    """The exported computation: `GramModel.encode_chunks` without the optional outputs."""

    def __init__(self, model: GramModel):
        super().__init__()
        self.model = model

    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        return self.model.encode_chunks(chunks)[0]


def export_onnx(
    model: GramModel, output_dir: str, opset: int = 18, check: bool = True, overwrite: bool = False
) -> tuple[str, float | None]:
    """Writes `encoder.onnx` and `config.json` into `output_dir` (atomically, via gram_io.staged_directory);
    returns the directory and the relative error of the graph against PyTorch (None without `check`)."""
    model = model.float().eval()
    config = model.config
    example = torch.randn(2, config.num_channels, config.chunk_frames, config.num_mel_bins)
    num_chunks = torch.export.Dim("num_chunks", min=1, max=1 << 16)
    error = None
    with staged_directory(output_dir, "export_onnx", overwrite=overwrite) as staging:
        torch.onnx.export(
            GramChunkEncoder(model).eval(),
            (example,),
            str(staging / ONNX_FILE),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"chunks": {0: num_chunks}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        config.save_pretrained(staging)
        if check:
            error = max_relative_error(model, str(staging))
            if error > 1e-4:
                raise RuntimeError(f"The exported graph differs from PyTorch: relative error {error:.2e}.")
    return os.path.abspath(output_dir), error


def max_relative_error(model: GramModel, onnx_dir: str, sizes=(1, 3)) -> float:
    """Largest relative error of the ONNX graph against PyTorch over random batches of chunks."""
    runner = GramOnnxModel(onnx_dir)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for size in sizes:
        chunks = torch.randn(
            size, model.config.num_channels, model.config.chunk_frames, model.config.num_mel_bins, generator=generator
        )
        with torch.no_grad():
            expected = model.encode_chunks(chunks)[0].double()
        got = torch.from_numpy(runner.encode_chunks(chunks)).double()
        worst = max(worst, float((got - expected).norm() / expected.norm()))
    return worst


class GramOnnxModel:
    """Runs an exported encoder with onnxruntime and pools like `GramModel` (same inputs, same outputs)."""

    def __init__(self, directory: str, providers: list[str] | None = None, session_options=None):
        import onnxruntime

        path = os.path.join(directory, ONNX_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No {ONNX_FILE} in {directory}; create it with export_onnx.py.")
        self.config = GramConfig.from_pretrained(directory)
        self.session = onnxruntime.InferenceSession(
            path, sess_options=session_options, providers=providers or ["CPUExecutionProvider"]
        )

    def encode_chunks(self, chunks: torch.Tensor | np.ndarray) -> np.ndarray:
        chunks = chunks.numpy() if isinstance(chunks, torch.Tensor) else chunks
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chunks, dtype=np.float32)})[0]

    def __call__(
        self,
        input_values: torch.Tensor | np.ndarray,
        attention_mask: torch.Tensor | np.ndarray | None = None,
        strategy: str | None = None,
    ) -> GramModelOutput:
        """Same arguments and outputs as `GramModel.forward` (no hidden states or attentions)."""
        if isinstance(input_values, np.ndarray):
            input_values = torch.from_numpy(input_values)
        strategy = strategy or self.config.pooling_strategy
        layout = split_into_chunks(self.config, input_values.float(), attention_mask)
        size = max(1, int(self.config.chunk_batch_size))
        parts = [
            self.encode_chunks(layout.gather(start, start + size)) for start in range(0, layout.num_real_chunks, size)
        ]
        tokens = torch.from_numpy(np.concatenate(parts, axis=0))
        last_hidden_state, pooled, embedding_mask, timestamps = pool_chunk_tokens(self.config, tokens, layout, strategy)
        return GramModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            embedding_mask=embedding_mask,
            timestamps=timestamps,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a GRAM directory (or Hub id) loadable by GramModel")
    parser.add_argument("--output-dir", required=True, help="new directory for encoder.onnx + config.json")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous output of this command")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.output_dir, [args.model], args.overwrite)  # before the (slow) export
        model = GramModel.from_pretrained(args.model)
        directory, error = export_onnx(
            model, args.output_dir, opset=args.opset, check=not args.no_check, overwrite=args.overwrite
        )
    except OutputDirectoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {error.strerror or error}: {error.filename or args.output_dir}", file=sys.stderr)
        return 2
    print(f"Exported {args.model} -> {os.path.join(directory, ONNX_FILE)}")
    if error is not None:
        print(f"Checked against PyTorch on random chunks: relative error {error:.2e} (limit 1e-4).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
