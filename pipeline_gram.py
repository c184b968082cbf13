"""`transformers` pipelines for GRAM, shipped as remote code through the config's `custom_pipelines`:

    from transformers import pipeline
    classify = pipeline("audio-classification", model="path/to/gram-classifier", trust_remote_code=True)
    classify("scene.wav")                                    # [{"label": ..., "score": ...}, ...]
    embed = pipeline("feature-extraction", model="path/to/gram", trust_remote_code=True)
    embed({"raw": foa, "sampling_rate": 48000}, ambisonics_format="ambix")  # {"embedding", "frames", "timestamps"}

Both take multi-channel audio (binaural left/right, first-order ambisonics), unlike transformers' own audio
pipelines, which accept mono only: a file path or its bytes (read with soundfile, any rate, resampled with the
package's resampler), a `{"raw" or "array": ..., "sampling_rate": ...}` dict (the `datasets` Audio layout), or an
array at the model's rate, `(samples,)`, `(channels, samples)` or `(samples, channels)` (soundfile's layout).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

try:  # loaded by transformers as remote code (a package)
    from .feature_extraction_gram import ACCEPTED_AUDIO_CHANNELS
except ImportError:  # imported directly from the repository root
    from feature_extraction_gram import ACCEPTED_AUDIO_CHANNELS


def read_audio_input(inputs: Any, sampling_rate: int) -> tuple[np.ndarray, int]:
    """`(audio, rate)` of a pipeline input; audio `(samples,)` or `(channels, samples)` float32 or PCM."""
    if isinstance(inputs, os.PathLike):
        inputs = os.fspath(inputs)
    if hasattr(inputs, "get_all_samples"):  # a torchcodec AudioDecoder, as `datasets` >= 4 gives audio columns
        samples = inputs.get_all_samples()
        return _as_channels_first(samples.data), int(samples.sample_rate)
    if isinstance(inputs, str):
        if inputs.startswith(("http://", "https://")):
            raise ValueError("GRAM pipelines read local files only: download the audio first.")
        with open(inputs, "rb") as f:
            inputs = f.read()
    if isinstance(inputs, (bytes, bytearray)):
        import soundfile

        try:
            audio, rate = soundfile.read(io.BytesIO(inputs), dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError) as error:
            raise ValueError(f"Cannot read the audio: {error}") from None
        return np.ascontiguousarray(audio.T), int(rate)
    if isinstance(inputs, dict):
        array = inputs.get("raw", inputs.get("array"))
        if array is None or "sampling_rate" not in inputs:
            raise ValueError(
                'A dict input needs the audio under "raw" (or "array", as `datasets` gives it) and its "sampling_rate".'
            )
        return _as_channels_first(array), int(inputs["sampling_rate"])
    return _as_channels_first(inputs), sampling_rate


def _as_channels_first(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"Expected audio as a file path, bytes, a dict, or a numpy/torch array; got {type(array).__name__}."
        )
    if array.ndim == 2 and array.shape[0] not in ACCEPTED_AUDIO_CHANNELS and array.shape[1] in ACCEPTED_AUDIO_CHANNELS:
        return np.ascontiguousarray(array.T)  # (samples, channels), as soundfile and `datasets` give it
    return array


class _GramAudioPipeline(Pipeline):
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __call__(self, inputs, **kwargs):
        # transformers' padding collate cannot pad (channels, frames, mels) features: one clip per forward pass.
        if int(kwargs.get("batch_size") or getattr(self, "_batch_size", None) or 1) > 1:
            raise ValueError(
                "GRAM pipelines embed one clip per forward pass (batch_size=1); for batches call the model on the "
                "feature extractor's padded output, or use embed_audio.py."
            )
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs, ambisonics_format: str | None = None):
        audio, rate = read_audio_input(inputs, self.feature_extractor.sampling_rate)
        return self.feature_extractor(
            audio, sampling_rate=rate, resample=True, return_tensors="pt", ambisonics_format=ambisonics_format
        )


class GramAudioClassificationPipeline(_GramAudioPipeline):
    """Labels of one clip from a `GramForAudioClassification`: `[{"label": str, "score": float}, ...]`, best first.

    Call arguments: `top_k` (default 5; None: all labels), `function_to_apply` ("softmax", "sigmoid" or "none";
    default by `config.problem_type`: sigmoid for multi-label, none for regression, softmax otherwise),
    `ambisonics_format` (the convention of 4-channel input: "ambix", "fuma" or "soundspaces").
    """

    def _sanitize_parameters(self, top_k=5, function_to_apply=None, ambisonics_format=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments: {', '.join(sorted(kwargs))}.")
        if function_to_apply not in (None, "softmax", "sigmoid", "none"):
            raise ValueError(f"function_to_apply must be softmax, sigmoid or none, got {function_to_apply!r}.")
        num_labels = self.model.config.num_labels
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None (all labels), got {top_k!r}.")
        top_k = num_labels if top_k is None else min(top_k, num_labels)
        return {"ambisonics_format": ambisonics_format}, {}, {"top_k": top_k, "function_to_apply": function_to_apply}

    def _forward(self, model_inputs):
        return self.model(**model_inputs)

    def postprocess(self, model_outputs, top_k=5, function_to_apply=None):
        logits = model_outputs.logits[0].float()
        if function_to_apply is None:
            problem_type = self.model.config.problem_type
            function_to_apply = {"multi_label_classification": "sigmoid", "regression": "none"}.get(
                problem_type, "softmax"
            )
        if function_to_apply == "softmax":
            scores = logits.softmax(-1)
        elif function_to_apply == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits
        values, indices = scores.topk(top_k)
        labels = self.model.config.id2label
        return [{"label": labels[int(i)], "score": float(v)} for v, i in zip(values, indices)]


class GramAudioEmbeddingPipeline(_GramAudioPipeline):
    """Embeddings of one clip from any GRAM model (the encoder of a task or pretraining model is used):

    `{"embedding": (D,) pooled by `strategy`, "frames": (steps, frame_dim) time-resolved embedding,
    "timestamps": (steps,) start of each step in seconds}`, numpy float32.

    Call arguments: `strategy` ("raw", "mean" or "cls"; default the config's `pooling_strategy`), `layer`
    (embed from this encoder layer), `ambisonics_format` (the convention of 4-channel input).
    """

    def _sanitize_parameters(self, strategy=None, layer=None, ambisonics_format=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments: {', '.join(sorted(kwargs))}.")
        return {"ambisonics_format": ambisonics_format}, {"strategy": strategy, "layer": layer}, {}

    def _forward(self, model_inputs, strategy=None, layer=None):
        encoder = getattr(self.model, "gram", self.model)  # GramModel, or the encoder of a head model
        return encoder(**model_inputs, strategy=strategy, layer=layer)

    def postprocess(self, model_outputs):
        steps = int(model_outputs.embedding_mask[0].sum())
        return {
            "embedding": model_outputs.pooler_output[0].float().cpu().numpy(),
            "frames": model_outputs.last_hidden_state[0, :steps].float().cpu().numpy(),
            "timestamps": (model_outputs.timestamps[:steps].float() / 1000.0).cpu().numpy(),
        }
