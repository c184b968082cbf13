"""benchmarks/gpu_check.py --dry-run: every code path of the one-shot GPU check (embedding sweep with and without
log-mels and compilation, bf16 accuracy, profile, pretraining with bf16 + compile, tables, JSON) on CPU with a
tiny model, so the command is ready when a GPU is lent."""

import json

import gpu_check


def test_gpu_check_dry_run_covers_every_measurement(tmp_path, capsys):
    report = gpu_check.main(["--dry-run", "--json", str(tmp_path / "check.json")])
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["dry_run"] and saved["model"] == report["model"] == "GRAM binaural-time, tiny"
    kinds = {(r["dtype"], r["features"], r["compiled"]) for r in saved["embedding"]}
    assert kinds == {
        (d, f, c) for d in ("float32", "bfloat16") for f in ("excluded", "included") for c in (False, True)
    }
    assert all(r["clips_per_s"] > 0 and abs(r["real_time_factor"] - 10 * r["clips_per_s"]) < 1e-6 * r["real_time_factor"]
               for r in saved["embedding"])  # fmt: skip
    assert saved["bf16_accuracy"]["within_1e-2"] and set(saved["bf16_accuracy"]["relative_error"]) == {
        "raw",
        "mean",
        "cls",
    }
    assert saved["embedding_profile"] and saved["pretraining"]["mode"] == "bf16-compile"
    assert saved["pretraining"]["profile"] and saved["embedding"][0]["dtype"] == "bfloat16"  # the target dtype first
    assert saved["pretraining"]["steps_per_s"] > 0
    printed = capsys.readouterr().out
    assert "| dtype | compiled | log-mels | batch | clips/s |" in printed and "target pretraining_mfu" in printed


def test_peak_rates_come_from_the_gpu_name_or_the_flag(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert gpu_check.peak_tflops(torch.device("cuda"), None)[0] == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert gpu_check.peak_tflops(torch.device("cuda"), None)[0] == 989.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert gpu_check.peak_tflops(torch.device("cuda"), None)[0] is None
    assert gpu_check.peak_tflops(torch.device("cuda"), 123.0)[0] == 123.0
