"""The pretraining benchmark's FLOP count against torch's own FLOP counter, and a smoke run (no timings are
asserted: speed is reported by the benchmark, not tested)."""

import benchmark_pretraining  # benchmarks/ is on the test path (pyproject.toml)
import torch
from conftest import tiny_pretraining_config
from torch.utils.flop_counter import FlopCounterMode

from modeling_gram import GramForPreTraining


def test_analytic_flops_match_torch_flop_counter():
    for variant in ("binaural-time", "ambisonics-frame"):
        config = tiny_pretraining_config(variant)
        config._attn_implementation = "eager"  # the counter sees eager attention's matmuls, not SDPA kernels
        model = GramForPreTraining(config).eval()
        inputs = torch.randn(3, config.num_channels, 200, 128)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(inputs)
        expected = benchmark_pretraining.pretraining_flops_per_sample(config) / 3  # forward only, per sample
        assert abs(counter.get_total_flops() / 3 - expected) / expected < 0.02


def test_benchmark_runs_and_reports(tmp_path):
    report = benchmark_pretraining.main(
        [
            "--sizes",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--scenes",
            "1",
            "--crops",
            "2",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    (run,) = report["runs"]
    assert run["samples_per_step"] == 2 and run["steps_per_s"] > 0 and "share_of_fp32_matmul_rate" in run
    assert (tmp_path / "out.json").is_file()


def test_gpu_commands_without_a_gpu_say_so(capsys):
    import pytest

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        benchmark_pretraining.main(["--device", "cuda", "--sizes", "tiny"])
    assert exit_info.value.code == 2
    assert "no CUDA GPU is available on this machine" in capsys.readouterr().err
