"""``python -m fedmm_lite run --method fedmr`` end to end on the quick world (the FIXED command line).

Oracles: the FIXED keys, the planted groups of the world's ground truth (every group reported, its
user count summing to U, router weights a probability vector), the hand-derivable parameter
counts (a dropped modality removes its mapping layer; a single strategy has no router), and the
one-line error contract for bad FedMR options.
"""
from __future__ import annotations

import json

import pytest

from test_cli_run import FIXED_KEYS, check_metrics, cli, env, one_error_line  # noqa: F401


def run_json(env, *extra):
    proc = cli(env, "run", "--data", "world-quick", "--backbone", "fedavg", "--method", "fedmr",
               "--rounds", "2", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_fedmr_run_reports_planted_router_weights(env):
    r = run_json(env, "--noise", "gaussian:0.001")
    assert set(r) >= FIXED_KEYS | {"planted", "strategies", "router_weights_mean", "encoder"}
    check_metrics(r["test"])
    assert r["config"]["method"] == "fedmr" and r["config"]["noise"] == "gaussian:0.001"
    assert r["strategies"] == ["sum", "mlp", "gate"]
    planted = r["planted"]
    assert sum(g["users"] for g in planted.values()) == r["dataset"]["users"]
    for group in planted.values():
        assert group["modality"] in ("image", "text", "id")
        assert sum(group[k] for k in r["strategies"]) == pytest.approx(1.0, abs=1e-6)
    # the router is private: held but never uploaded
    users = r["dataset"]["users"]
    assert r["params_per_client"] > r["upload_scalars_per_round"] / users
    assert r["feature_download_scalars"] > 0


def test_fedmr_strategy_and_modalities_options(env):
    full = run_json(env, "--rounds", "0")
    single = run_json(env, "--rounds", "0", "--strategy", "sum", "--modalities", "id,text")
    assert single["strategies"] == ["sum"]
    assert single["config"]["modalities"] == ["id", "text"]
    assert "router_weights_mean" not in single
    assert all(g["sum"] == 1.0 for g in single["planted"].values())
    # the image mapping layer, the MLP, the gates and the router are gone
    assert single["params_per_client"] < full["params_per_client"]
    users = full["dataset"]["users"]
    assert single["upload_scalars_per_round"] < full["upload_scalars_per_round"]
    assert single["upload_scalars_per_round"] % users == 0


@pytest.mark.parametrize("extra,option", [(["--strategy", "attention"], "--strategy"),
                                          (["--modalities", "id,id"], "--modalities"),
                                          (["--encoder", "no-such-encoder"], "encoder")])
def test_fedmr_bad_options_one_line(env, extra, option):
    proc = cli(env, "run", "--data", "world-quick", "--method", "fedmr", "--rounds", "0", *extra)
    if proc.returncode == 2:
        assert option in one_error_line(proc)
    else:    # argparse refuses --strategy choices itself (status 2 too, its own usage line)
        pytest.fail(proc.stderr[-2000:])
