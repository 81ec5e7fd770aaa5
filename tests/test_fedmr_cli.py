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


def test_fedmr_training_options_and_cold_items_reach_the_run(env):
    r = run_json(env, "--router-input", "epoch", "--fusion-server", "adam", "--fusion-server-lr",
                 "0.01", "--fusion-lr", "0.5", "--feature-map-lr", "2", "--cold-items", "0.2")
    c = r["config"]
    assert (c["router_input"], c["fusion_server"], c["fusion_server_lr"], c["fusion_lr"],
            c["feature_map_lr"]) == ("epoch", "adam", 0.01, 0.5, 2.0)
    assert r["dataset"]["cold_items"] == round(0.2 * r["dataset"]["items"])
    assert 0 < r["test"]["cold_users"] <= r["dataset"]["users"]
    for key in ("cold_hr@10", "cold_all_hr@50", "cold_random_hr@10"):
        assert 0.0 <= r["test"][key] <= 1.0, key
    assert "relative_update" in r["history"][-1]["server"]


@pytest.mark.parametrize("extra,option", [(["--fusion-lr", "0.5"], "--fusion-lr"),
                                          (["--feature-map-lr", "2"], "--feature-map-lr"),
                                          (["--fusion-server", "adam"], "--fusion-server"),
                                          (["--router-input", "batch"], "--router-input")])
def test_fedmr_training_options_refused_for_the_id_method(env, extra, option):
    proc = cli(env, "run", "--data", "world-quick", "--method", "id", "--rounds", "0", *extra)
    assert proc.returncode == 2 and option in one_error_line(proc)


def test_cold_items_out_of_range_is_one_line(env):
    proc = cli(env, "run", "--data", "world-quick", "--rounds", "0", "--cold-items", "1")
    assert proc.returncode == 2 and "--cold-items" in one_error_line(proc)
