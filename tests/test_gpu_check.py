"""bench/gpu_check.sh: stops with one clear line without CUDA; its comparison of CPU and CUDA
metrics has a tolerance in users; every bench option it passes exists in that bench."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_cuda_the_script_stops_with_one_clear_line():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device:")
    assert result.stdout == ""


def _run(valid, test, last_round=3):
    metrics = lambda v: {m: v for m in gpu_check.METRICS}          # noqa: E731
    return {"history": [{"round": 0, "valid": metrics(0.0), "test": metrics(0.0)},
                        {"round": last_round, "valid": metrics(valid), "test": metrics(test)}],
            "dataset": {"users": 200}}


def test_compare_runs_counts_the_difference_in_users():
    same = gpu_check.compare_runs(_run(0.5, 0.4), _run(0.5, 0.4), users=200, tolerance_users=5)
    assert same["agree"] and same["in users"] == 0
    close = gpu_check.compare_runs(_run(0.5, 0.4), _run(0.5, 0.42), users=200, tolerance_users=5)
    assert close["in users"] == pytest.approx(4) and close["agree"]             # 4 targets moved
    far = gpu_check.compare_runs(_run(0.5, 0.4), _run(0.45, 0.4), users=200, tolerance_users=5)
    assert far["in users"] == pytest.approx(10) and not far["agree"]
    with pytest.raises(gpu_check.CheckFailed, match="different rounds"):
        gpu_check.compare_runs(_run(0.5, 0.4), _run(0.5, 0.4, last_round=2), users=200, tolerance_users=5)
    assert gpu_check.users_of(_run(0.5, 0.4)) == 200


def test_the_environment_report_names_the_device():
    report = "device:          cuda (NVIDIA H100)\nquick mode:      yes\n"
    assert gpu_check.reported_device(report) == "cuda"
    assert gpu_check.reported_device("device:          cpu (no GPU in use)") == "cpu"
    env = gpu_check.check_env("cuda", Path("/tmp/x"))
    assert env["FEDMM_DEVICE"] == "cuda" and env["FEDMM_QUICK"] == "1" and env["TQDM_DISABLE"] == "1"


def test_every_bench_option_exists_in_its_bench():
    for title, command in gpu_check.bench_commands("cuda", ROOT / "_build" / "gpu-check"):
        script = Path(command[0])
        assert script.exists(), title
        source = script.read_text()
        for option in (a for a in command[1:] if a.startswith("--")):
            assert re.search(rf"add_argument\(\s*[\"']{re.escape(option)}[\"']", source), (title, option)
