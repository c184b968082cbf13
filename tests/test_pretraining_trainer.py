"""The pretraining entry point end to end on a tiny config: loss falls, checkpoints resume exactly, two
processes (torchrun, gloo) share the data, converted original checkpoints go on pretraining."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from gram_training import simulate
from gram_training.train import main


@pytest.fixture(scope="module")
def offline_data(tmp_path_factory):
    return simulate.write_pretraining_data(
        tmp_path_factory.mktemp("offline") / "binaural", "binaural", num_rirs=3, with_speech=False
    )


def _data_args(data):
    return simulate.data_arguments(data)


def _small_run(output_dir, steps, extra=()):
    return [
        "--output_dir",
        str(output_dir),
        "--model_size",
        "tiny",
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "2",
        "--crops_per_clip",
        "4",
        "--clip_seconds",
        "4",
        "--learning_rate",
        "1e-3",
        "--warmup_steps",
        "2",
        "--logging_steps",
        "1",
        "--seed",
        "0",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(max(steps // 2, 1)),
        *extra,
    ]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_readme_quick_start_pretrains_from_the_command_line_and_the_loss_falls(tmp_path):
    """The README's two pretraining commands, verbatim: offline material, then 50 tiny steps on CPU."""
    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"```bash\n(python -m gram_training.simulate.*?)```", f.read(), flags=re.DOTALL).group(1)
    commands = [shlex.split(line) for line in block.strip().splitlines()]
    assert [c[:3] for c in commands] == [
        ["python", "-m", "gram_training.simulate"],
        ["python", "-m", "gram_training.train"],
    ]
    for argv in commands:
        result = subprocess.run(
            [sys.executable, *argv[1:]], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]

    output = tmp_path / "runs" / "tiny"
    history = json.load(open(output / "checkpoint-50" / "trainer_state.json"))["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 5  # steps 1-10, ..., 41-50
    assert losses[-1] < 0.75 * losses[0], losses

    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

    encoder = AutoModel.from_pretrained(output, trust_remote_code=True)
    pretraining = AutoModelForPreTraining.from_pretrained(output, trust_remote_code=True)
    assert type(encoder).__name__ == "GramModel" and type(pretraining).__name__ == "GramForPreTraining"
    saved = load_file(output / "model.safetensors")
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, saved[f"gram.{name}"]), name
    extractor = AutoFeatureExtractor.from_pretrained(output, trust_remote_code=True)
    features = extractor(torch.randn(2, 48000).numpy(), sampling_rate=32000, return_tensors="pt")
    assert torch.isfinite(encoder(**features).pooler_output).all()


def test_resuming_a_checkpoint_reproduces_the_uninterrupted_run(offline_data, tmp_path):
    main([*_data_args(offline_data), *_small_run(tmp_path / "straight", 6)])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed / "checkpoint-3")
    main([*_data_args(offline_data), *_small_run(resumed, 6), "--resume_from_checkpoint", "latest"])
    straight, again = load_file(tmp_path / "straight" / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in straight:
        torch.testing.assert_close(again[name], straight[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no checkpoint"):
        main([*_data_args(offline_data), *_small_run(tmp_path / "empty", 2), "--resume_from_checkpoint", "latest"])


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_on_cpu(offline_data, tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "gram_training.train",
        *_data_args(offline_data),
        *_small_run(output, 3),
        "--ddp_backend",
        "gloo",
    ]
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reading source shard 0 of 2." in result.stderr and "Reading source shard 1 of 2." in result.stderr
    state = json.load(open(output / "checkpoint-3" / "trainer_state.json"))
    assert state["global_step"] == 3
    assert (output / "model.safetensors").is_file()


def test_converted_original_checkpoint_goes_on_pretraining(offline_data, tmp_path):
    from conftest import HEADS, make_original
    from test_convert_checkpoint import save_lightning_checkpoint

    from convert_checkpoint import main as convert

    checkpoint = tmp_path / "step=325000.ckpt"
    save_lightning_checkpoint(make_original("binaural-time"), checkpoint)
    converted = tmp_path / "converted"
    assert convert(["--checkpoint", str(checkpoint), "--output-dir", str(converted), *HEADS]) == 0
    start = load_file(converted / "model.safetensors")

    # Learning rate 0: the whole pipeline runs on the converted weights and leaves them untouched.
    frozen = tmp_path / "frozen"
    main([*_data_args(offline_data), *_small_run(frozen, 2), "--init_from", str(converted), "--learning_rate", "0"])
    for name, tensor in load_file(frozen / "model.safetensors").items():
        assert torch.equal(tensor, start[name]), name

    trained = tmp_path / "trained"
    trainer = main([*_data_args(offline_data), *_small_run(trained, 3), "--init_from", str(converted)])
    after = load_file(trained / "model.safetensors")
    assert not torch.equal(after["decoder.prediction.weight"], start["decoder.prediction.weight"])
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--hf_dataset", "parquet"], "exactly one audio source"),
        (["--model_size", "huge"], "model_size must be one of"),
        (["--variant", "surround-time"], "variant"),
        (["--snr_db_min", "30", "--snr_db_max", "10"], "snr_db_min"),
    ],
)
def test_bad_command_lines_stop_with_clear_errors(offline_data, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        main([*_data_args(offline_data), *_small_run(tmp_path / "bad", 1), *extra])
    assert not (tmp_path / "bad").exists()


class FakeHub:
    """Stands in for Trainer's `hf_api()`: records repo creation and uploads (with the files present)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, run_as_future=False, ignore_patterns=None, **kwargs):
        from concurrent.futures import Future

        self.calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))
        done = Future()
        done.set_result(None)
        return done if run_as_future else None


def test_push_to_hub_uploads_a_complete_model_directory(offline_data, tmp_path, monkeypatch):
    import transformers.trainer

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    output = tmp_path / "pushed"
    main([*_data_args(offline_data), *_small_run(output, 2), "--push_to_hub", "--hub_model_id", "me/gram-tiny"])
    assert hub.calls[0] == ("create_repo", "me/gram-tiny")
    final = hub.calls[-1]
    assert final[:2] == ("upload_folder", "me/gram-tiny")
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_gram.py",
        "configuration_gram.py",
        "feature_extraction_gram.py",
    } <= set(final[2])


def test_streamed_datasets_source_from_the_command_line(offline_data, tmp_path):
    import datasets
    import soundfile

    files = []
    for part, names in enumerate([["coin1.wav", "jump1.wav"], ["laser1.wav", "hit1.wav"]]):
        records = {"audio": [{"bytes": (offline_data / "sources" / n).read_bytes(), "path": None} for n in names]}
        table = datasets.Dataset.from_dict(records).cast_column("audio", datasets.Audio(decode=False))
        files.append(str(tmp_path / f"part{part}.parquet"))
        table.to_parquet(files[-1])
    assert soundfile.info(offline_data / "sources" / "coin1.wav").samplerate == 32000
    trainer = main(
        [
            "--hf_dataset",
            "parquet",
            "--hf_data_files",
            *files,
            "--rir_dir",
            str(offline_data / "rirs"),
            *_small_run(tmp_path / "streamed", 2),
        ]
    )
    assert trainer.state.global_step == 2 and (tmp_path / "streamed" / "model.safetensors").is_file()


def test_bf16_mixed_precision_run(offline_data, tmp_path):
    """The GPU default precision, on CPU autocast: scenes and features stay float32, the model runs bf16."""
    from feature_extraction_gram import GramFeatureExtractor
    from gram_training.data import SceneDataset, collate_scenes
    from gram_training.scenes import SceneBuilder, SceneConfig

    dataset = SceneDataset(
        offline_data / "sources",
        offline_data / "rirs",
        2,
        offline_data / "noise",
        offline_data / "noise_rirs",
        clip_seconds=3.0,
    )
    batch = collate_scenes([example for _, example in zip(range(2), dataset)])
    builder = SceneBuilder(GramFeatureExtractor(num_channels=2), SceneConfig(clip_seconds=3.0, crops_per_clip=2))
    plain = builder(batch, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = builder(batch, torch.Generator().manual_seed(0))
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)

    trainer = main(
        [*_data_args(offline_data), *_small_run(tmp_path / "bf16", 2), "--bf16", "true", "--use_cpu", "true"]
    )
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)


def test_gpu_defaults_and_seeded_initial_weights(offline_data, tmp_path):
    from gram_training.train import with_gpu_defaults

    assert with_gpu_defaults(["--x", "1"], cuda=True) == ["--x", "1", "--bf16", "true", "--torch_compile", "true"]
    assert with_gpu_defaults(["--bf16", "false"], cuda=True) == ["--bf16", "false", "--torch_compile", "true"]
    assert with_gpu_defaults(["--x", "1"], cuda=False) == ["--x", "1"]
    for name in ("a", "b"):  # same seed, learning rate 0: identical weights
        main([*_data_args(offline_data), *_small_run(tmp_path / name, 1), "--learning_rate", "0"])
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_poisoned_source_is_skipped_and_the_run_stays_finite(offline_data, tmp_path, caplog):
    """A float64 file whose 1e39 is finite until cast to float32 used to make every weight NaN (exit 0)."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for good in sorted((offline_data / "sources").iterdir())[:2]:
        shutil.copy(good, sources)
    np = pytest.importorskip("numpy")
    np.save(sources / "poison.npy", np.concatenate([np.zeros(32000), [1e39]]))
    args = [
        "--audio_dir",
        str(sources),
        "--rir_dir",
        str(offline_data / "rirs"),
        "--noise_dir",
        str(offline_data / "noise"),
        "--noise_rir_dir",
        str(offline_data / "noise_rirs"),
    ]
    with caplog.at_level("WARNING", logger="gram_training.data"):
        main([*args, *_small_run(tmp_path / "run", 4, ["--save_strategy", "no"])])
    assert "poison.npy: contains NaN or Inf (in float32)" in caplog.text
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "run" / "model.safetensors").values())


def test_a_diverging_run_stops_with_the_step_and_saves_nothing(offline_data, tmp_path):
    output = tmp_path / "run"
    argv = [*_data_args(offline_data), *_small_run(output, 6, ["--save_strategy", "no", "--max_grad_norm", "0"])]
    argv[argv.index("--learning_rate") + 1] = "1e30"  # the weights blow up after the first update
    result = subprocess.run(
        [sys.executable, "-m", "gram_training.train", *argv],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert re.search(r"error: Non-finite (loss|gradients).* at step \d", result.stderr)
    assert "Traceback" not in result.stderr
    assert not (output / "model.safetensors").exists()


def test_the_scene_builder_refuses_non_finite_scenes():
    from feature_extraction_gram import GramFeatureExtractor
    from gram_training.scenes import SceneBuilder, SceneConfig

    builder = SceneBuilder(GramFeatureExtractor(), SceneConfig(clip_seconds=2.5, crops_per_clip=1))
    rir = torch.zeros(1, 2, 8)
    rir[0, :, 0] = 1.0
    batch = {"source": torch.randn(1, 80000) * 0.1, "rir": rir}
    assert torch.isfinite(builder(batch)).all()
    batch["rir"] = rir * float("inf")
    with pytest.raises(ValueError, match="non-finite features"):
        builder(batch)
