"""Run the HEAR benchmark's own runners (PyPI `heareval==2021.1.3`) on today's stack, unchanged.

    gram-heareval embeddings gram_hear --model gram-binaural-time --tasks-dir tasks --embeddings-dir embeddings \
        --model-options '{"strategy": "raw"}'
    gram-heareval predictions embeddings/gram_hear-strategy=raw/<task> --grid faster

Each command runs `python -m heareval.embeddings.runner ...` or `python -m heareval.predictions.runner ...` with
the same arguments, after four adjustments that leave heareval's code and results untouched:

1. heareval imports TensorFlow, but uses it only for TensorFlow models and for a GPU check that runs only when
   CUDA is present (`tf.test.is_gpu_available`). When TensorFlow is not installed a stand-in module answers
   these (`Module` nothing is an instance of; the GPU check defers to torch; `convert_to_tensor` refuses).
2. `heareval.score` imports sed_eval and dcase_util at load time, for event-detection scores only. When they
   are missing, stand-ins raise on use, naming the packages to install for event tasks; scene tasks never
   touch them.
3. torch >= 2.6 loads checkpoints with `weights_only=True`, which refuses the Lightning checkpoints heareval
   writes itself (their hyper-parameters hold classes). Exactly the files this process saved (recorded when
   Lightning writes them, matched by path, inode, size and modification time) are loaded with
   `weights_only=False`; every other `torch.load`, of any file already on disk, keeps torch's default.
4. For event tasks under pytorch-lightning 1.9, heareval looks up the post-processing of an epoch that was
   never validated (KeyError); it falls back to the latest validated epoch, as the authors' listen-eval-kit
   fork does.

Install: `pip install ".[heareval]"` then `pip install --no-deps heareval==2021.1.3` (its own pins, numpy 1.19
and TensorFlow, cannot install on Python 3.11; `make setup` does both).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import runpy
import sys
import types

RUNNERS = {"embeddings": "heareval.embeddings.runner", "predictions": "heareval.predictions.runner"}


def _stand_in_module(name: str) -> types.ModuleType:
    """A module with a spec (importlib.util.find_spec, which torch's import scans call, needs one)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    return module


def _tensorflow_stand_in() -> types.ModuleType:
    import torch

    module = _stand_in_module("tensorflow")
    module.__doc__ = "Stand-in installed by gram_heareval: heareval imports TensorFlow but GRAM is a torch model."

    class Module:  # `isinstance(model, tf.Module)` is False for every torch model
        pass

    def is_gpu_available(cuda_only=False, min_cuda_compute_capability=None):
        return torch.cuda.is_available()

    def convert_to_tensor(value):
        raise NotImplementedError("TensorFlow is not installed; only torch models can be evaluated.")

    module.Module = Module
    module.test = types.SimpleNamespace(is_gpu_available=is_gpu_available)
    module.convert_to_tensor = convert_to_tensor
    return module


class _EventScoresUnavailable:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "Event-detection scores need sed_eval and dcase_util: pip install sed_eval dcase_util."
        )


def _event_score_stand_ins() -> dict[str, types.ModuleType]:
    sed_eval = _stand_in_module("sed_eval")
    sed_eval.sound_event = types.SimpleNamespace(
        SegmentBasedMetrics=_EventScoresUnavailable,
        EventBasedMetrics=_EventScoresUnavailable,
        SoundEventMetrics=_EventScoresUnavailable,
    )
    dcase_util = _stand_in_module("dcase_util")
    containers = _stand_in_module("dcase_util.containers")
    containers.MetaDataContainer = _EventScoresUnavailable
    dcase_util.containers = containers
    return {"sed_eval": sed_eval, "dcase_util": dcase_util, "dcase_util.containers": containers}


def install_stand_ins() -> list[str]:
    """Puts stand-ins for the missing optional imports into `sys.modules`; returns their names."""
    installed = []
    if importlib.util.find_spec("tensorflow") is None:
        sys.modules["tensorflow"] = _tensorflow_stand_in()
        installed.append("tensorflow")
    if importlib.util.find_spec("sed_eval") is None or importlib.util.find_spec("dcase_util") is None:
        for name, module in _event_score_stand_ins().items():
            sys.modules[name] = module
            installed.append(name)
    return installed


def trust_own_checkpoints() -> None:
    """`torch.load` with `weights_only=False` for exactly the checkpoints this process saved (Lightning's
    `TorchCheckpointIO.save_checkpoint`, which heareval's trainer uses), recognised by resolved path, inode, size
    and modification time; every other file keeps torch's `weights_only=True`."""
    import torch
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    written: dict[str, tuple[int, int, int]] = {}

    def identity(path) -> tuple[str, tuple[int, int, int]] | None:
        try:
            real = os.path.realpath(path)
            status = os.stat(real)
        except (OSError, TypeError, ValueError):
            return None
        return real, (status.st_ino, status.st_size, status.st_mtime_ns)

    original_save = TorchCheckpointIO.save_checkpoint

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        result = original_save(self, checkpoint, path, storage_options)
        known = identity(path)
        if known is not None:
            written[known[0]] = known[1]
        return result

    original_load = torch.load

    def load(f, *args, **kwargs):
        name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "path", None) or getattr(f, "name", None)
        known = identity(name) if isinstance(name, (str, os.PathLike)) else None
        if "weights_only" not in kwargs and known is not None and written.get(known[0]) == known[1]:
            kwargs["weights_only"] = False
        return original_load(f, *args, **kwargs)

    TorchCheckpointIO.save_checkpoint = save_checkpoint
    torch.load = load


def patch_event_epochs() -> None:
    from heareval.predictions import task_predictions

    model_class = task_predictions.EventPredictionModel
    original = model_class.epoch_best_postprocessing_or_default

    def epoch_best_postprocessing_or_default(self, epoch):
        try:
            return original(self, epoch)
        except KeyError:  # pytorch-lightning 1.9 does not set the epoch heareval restores
            validated = [e for e in self.epoch_best_postprocessing if e <= epoch] or list(
                self.epoch_best_postprocessing
            )
            return self.epoch_best_postprocessing[max(validated)]

    model_class.epoch_best_postprocessing_or_default = epoch_best_postprocessing_or_default


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in RUNNERS:
        print(f"usage: gram-heareval {{{','.join(RUNNERS)}}} [heareval runner arguments]", file=sys.stderr)
        return 2
    if importlib.util.find_spec("heareval") is None:
        print("error: heareval is not installed: pip install --no-deps heareval==2021.1.3", file=sys.stderr)
        return 2
    install_stand_ins()
    trust_own_checkpoints()
    if argv[0] == "predictions":
        patch_event_epochs()
    module = RUNNERS[argv[0]]
    sys.argv = [module, *argv[1:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:  # click ends with SystemExit(0) on success
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
