"""``run --protocol --sampled-pool --dim --eval-every --ties``, in-process (``cli.main``), on a small
dataset folder written by the test (130 items: every user keeps 99 never-interacted items)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fedmm_lite import cli
from fedmm_lite.metrics import random_expectation


@pytest.fixture
def folder(make_folder):
    rng = np.random.default_rng(0)
    rows = []
    for u, items in enumerate(np.array_split(rng.permutation(130), 12)):   # every item is used
        rows += [(f"u{u}", f"i{i}", 100 + k // 2) for k, i in enumerate(items)]   # pairs share a second
    return make_folder(rows, [(f"i{i}", f"t{i}", "") for i in range(130)])


def run_json(capsys, *argv) -> dict:
    assert cli.main(["run", *argv, "--json", "-"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_sampled_protocol_dim_and_eval_every_from_the_command_line(folder, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = run_json(capsys, "--data", str(folder), "--backbone", "fedavg", "--rounds", "3",
                   "--eval-every", "2", "--dim", "8", "--protocol", "sampled", "--sampled-pool",
                   "official", "--ties", "file", "--negatives", "official", "--device", "cpu")
    config = out["config"]
    assert (config["dim"], config["protocol"], config["sampled_pool"], config["eval_every"]) == \
        (8, "sampled", "official", 2)
    assert out["ties"] == "file" and config["negatives"] == "official"
    assert [h["round"] for h in out["history"]] == [0, 2, 3]
    assert {"hr@10_sampled", "ndcg@10_sampled", "hr@50"} <= set(out["valid"])
    best = max(out["history"], key=lambda h: (h["valid"]["hr@10_sampled"], -h["round"]))
    assert out["best_round"] == best["round"]
    assert out["random_expectation"]["hr@10_sampled"] == random_expectation(100, 10) == 0.1
    assert out["params_per_client"] == 130 * 8 + 8 + 1         # Q (n, d) + p_u (d,) + b_u


def test_the_full_protocol_is_the_default(folder, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = run_json(capsys, "--data", str(folder), "--backbone", "popularity", "--device", "cpu")
    assert out["config"]["protocol"] == "full" and out["ties"] == "item"
    assert out["config"]["rounds"] == 0 and "hr@10_sampled" not in out["valid"]


@pytest.mark.parametrize("argv, message", [
    (["--dim", "0"], "error: --dim 0: must be >= 1"),
    (["--sampled-pool", "official"], "error: --sampled-pool official: applies to --protocol sampled only"),
])
def test_bad_values_are_one_line(folder, capsys, argv, message):
    assert cli.main(["run", "--data", str(folder), *argv]) == 2
    assert capsys.readouterr().err.strip() == message


def test_an_unknown_protocol_is_refused_by_the_parser(folder, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "--data", str(folder), "--protocol", "sampled99"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--protocol" in err[0] and "sampled99" in err[0]
