"""The FIXED command line ``python -m fedmm_lite run`` / ``bench`` (README.md), end to end.

Every test runs the real entry point (a subprocess, or ``cli.main`` in-process for the cheap
option checks) on the quick world in a temporary data folder. Oracles: the FIXED key list, the
ordering HR@10 <= HR@20 <= HR@50 and NDCG@K <= HR@K that any ranking obeys, the
random-ranker expectation of ``metrics.random_expectation`` for the untrained model, and the
one-line error contract of cli.py (exit status 2, one stderr line naming the option or file).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("fedavg", "fcf", "fedncf", "pfedrec", "fedrap", "popularity")
METRIC_KEYS = {f"{m}@{k}" for m in ("hr", "ndcg") for k in (10, 20, 50)}
FIXED_KEYS = {"config", "best_round", "test", "valid", "history", "seconds",
              "client_updates_per_second", "peak_memory_mb", "params_per_client",
              "upload_scalars_per_round"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Quick mode, a private data folder (the world is generated there once for the module)."""
    e = dict(os.environ)
    e["FEDMM_QUICK"] = "1"
    e["FEDMM_DATA_DIR"] = str(tmp_path_factory.mktemp("fedmm_data"))
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def cli(env, *argv, timeout=600):
    return subprocess.run([sys.executable, "-m", "fedmm_lite", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc) -> str:
    """The error contract: status 2, exactly one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def check_metrics(block: dict) -> None:
    assert set(block) >= METRIC_KEYS
    for key in METRIC_KEYS:
        assert 0.0 <= block[key] <= 1.0, (key, block[key])
    for m in ("hr", "ndcg"):
        assert block[f"{m}@10"] <= block[f"{m}@20"] <= block[f"{m}@50"]
    for k in (10, 20, 50):
        assert block[f"ndcg@{k}"] <= block[f"hr@{k}"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_run_one_round_every_backbone(env, tmp_path, backbone):
    out = tmp_path / "result.json"
    proc = cli(env, "run", "--data", "world-quick", "--backbone", backbone, "--rounds", "1",
               "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(out.read_text())
    assert len(proc.stdout.strip().splitlines()) == 1         # the JSON in the file, a summary here
    assert FIXED_KEYS <= set(printed)
    assert printed["config"]["backbone"] == backbone
    # popularity trains nothing: it records no rounds, whatever --rounds says
    assert printed["config"]["rounds"] == (0 if backbone == "popularity" else 1)
    check_metrics(printed["valid"])
    check_metrics(printed["test"])
    rounds = [h["round"] for h in printed["history"]]
    # round 0 = untrained, then the trained round; popularity is not trained (one evaluation)
    assert rounds == ([0] if backbone == "popularity" else [0, 1])
    for row in printed["history"]:
        check_metrics(row["valid"])
        check_metrics(row["test"])
    assert printed["best_round"] in rounds
    best = next(h for h in printed["history"] if h["round"] == printed["best_round"])
    assert best["test"] == pytest.approx(printed["test"])          # test reported at the best round
    assert best["valid"]["hr@50"] == max(h["valid"]["hr@50"] for h in printed["history"])
    assert printed["seconds"] > 0
    assert printed["peak_memory_mb"] > 0
    assert printed["dataset"]["users"] > 0 and printed["dataset"]["items"] > 0
    if backbone == "popularity":                    # not federated: nothing on the client
        assert printed["params_per_client"] == 0 and printed["upload_scalars_per_round"] == 0
    else:
        assert printed["params_per_client"] > 0 and printed["upload_scalars_per_round"] > 0
        assert printed["client_updates_per_second"] > 0


def test_rounds_zero_is_calibrated(env):
    """The untrained model ranks like a random one: test HR@50 within 5 standard errors of
    mean_u 50 / N_u (random_expectation), far from 0 (constant scores) and from 1 (ties won)."""
    proc = cli(env, "run", "--data", "world-quick", "--backbone", "fedavg", "--rounds", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["best_round"] == 0
    assert [h["round"] for h in result["history"]] == [0]
    check_metrics(result["test"])
    expected = result["random_expectation"]["hr@50"]
    users = result["dataset"]["users"]
    stderr = math.sqrt(expected * (1 - expected) / users)
    assert abs(result["test"]["hr@50"] - expected) < 5 * stderr + 1e-9, (result["test"], expected)


# Each bad value -> exit 2 with one line naming the option. Checked in-process through cli.main
# (the same code path as the command line, without a Python start-up per case).
BAD_OPTIONS = [
    (["--rounds", "-1"], "--rounds"),
    (["--local-epochs", "0"], "--local-epochs"),
    (["--sample-ratio", "0"], "--sample-ratio"),
    (["--sample-ratio", "1.5"], "--sample-ratio"),
    (["--noise", "gauss:1"], "--noise"),
    (["--noise", "gaussian:abc"], "--noise"),
    (["--noise", "laplace:-1"], "--noise"),
    (["--modalities", "id,smell"], "--modalities"),
    (["--strategy", "sum"], "--strategy"),
    (["--groups", "3"], "--groups"),
    (["--encoder", "clip"], "--encoder"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-0.1"], "--lr"),
    (["--item-lr", "-1"], "--item-lr"),
    (["--device", "tpu"], "--device"),
    (["--grouping", "spectral"], "--grouping"),
    (["--lambda-schedule", "cosine"], "--lambda-schedule"),
    (["--method", "gfmfr", "--groups", "0"], "--groups"),
    (["--method", "gfmfr", "--ratio-cap", "0"], "--ratio-cap"),
    (["--ratio-cap", "0.5"], "--ratio-cap"),
    (["--method", "gfmfr", "--strategy", "sum"], "--strategy"),
    (["--json", "/nonexistent-folder-fedmm/x.json"], "--json"),
]


@pytest.mark.parametrize("extra,option", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_one_line(env, monkeypatch, capsys, extra, option):
    from fedmm_lite.cli import main

    monkeypatch.setenv("FEDMM_QUICK", "1")
    monkeypatch.setenv("FEDMM_DATA_DIR", env["FEDMM_DATA_DIR"])
    status = main(["run", "--data", "world-quick", "--rounds", "1", *extra])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert option in lines[0]
    assert captured.out == ""                       # refused before anything ran


def test_item_lr_overrides_the_tuned_item_step(env, monkeypatch, capsys):
    from fedmm_lite.cli import main

    monkeypatch.setenv("FEDMM_QUICK", "1")
    monkeypatch.setenv("FEDMM_DATA_DIR", env["FEDMM_DATA_DIR"])
    assert main(["run", "--data", "world-quick", "--rounds", "0", "--item-lr", "300", "--json", "-"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step_sizes"]["item_lr"] == 300.0
    assert out["config"]["item_lr"] == 300.0


def test_bad_option_subprocess(env):
    line = one_error_line(cli(env, "run", "--data", "world-quick", "--sample-ratio", "2"))
    assert "--sample-ratio" in line


def test_malformed_folder_names_the_file(env, tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu1,a,3\n")
    (folder / "items.csv").write_text("item_id,title,image\na,Apple,\nb,Box,\na,Again,\n")
    line = one_error_line(cli(env, "run", "--data", str(folder), "--rounds", "0"))
    assert "items.csv" in line


def test_bench_prints_both_timings(env):
    proc = cli(env, "bench", "--data", "world-quick", "--backbone", "pfedrec", "--rounds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for engine in ("batched", "oracle"):
        assert result[engine]["engine"] == engine
        assert result[engine]["seconds_per_round"] > 0
        assert result[engine]["client_updates"] > 0
    assert result["batched"]["client_updates"] == result["oracle"]["client_updates"]
    assert result["speedup"] == pytest.approx(result["oracle"]["seconds_per_round"]
                                              / result["batched"]["seconds_per_round"])
    assert result["metrics_agree"] is True, result
