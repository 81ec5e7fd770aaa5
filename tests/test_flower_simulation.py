"""The Flower app in Flower's simulation engine (Ray) equals the batched engine (issue: "Beyond one
process"): world-quick, a fixed seed, the same client sampling (the server draws each round's plan
with the run's generator), FedAvg and PFedRec with the ID method and FedMR; the tolerance of
test_fed_equivalence.py. The four runs share one start of the engine (``simulate_many``).
Also: the command line's ``flower-sim`` (one line on bad input, before Ray starts) and its JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedmm_lite.fed import run_federated                      # noqa: E402
from fedmm_lite.flower.node import load_run_dataset           # noqa: E402
from fedmm_lite.flower.simulation import simulate_many        # noqa: E402

from test_flower import assert_same_history, world_spec       # noqa: E402

CASES = [("fedavg", "id"), ("pfedrec", "id"), ("fedavg", "fedmr"), ("pfedrec", "fedmr")]


@pytest.fixture(scope="module")
def simulated():
    specs = [world_spec(backbone, method) for backbone, method in CASES]
    runs = simulate_many(specs, cpus=2)
    return dict(zip(CASES, runs))


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_flower_simulation_equals_the_batched_engine(simulated, case):
    result, stats, spec, dataset = simulated[case]
    batched = run_federated(load_run_dataset(spec), spec.config, progress=False)
    assert_same_history(result.history, batched.history)
    assert (result.best_round, result.valid, result.test) == (batched.best_round, batched.valid, batched.test)
    for name, value in result.details["global"].items():
        assert float((value - batched.state.global_[name]).abs().max()) < 1e-10, name
    untouched = run_federated(dataset, dataclasses.replace(spec.config, rounds=0), progress=False)
    name = next(iter(batched.state.global_))
    assert float((result.details["global"][name] - untouched.state.global_[name]).abs().max()) > 1e-4
    # message sizes: each client's upload payload is the efficiency accounting's upload
    assert set(stats["upload_payload_scalars"]) == {batched.upload_scalars_per_client}
    assert set(stats["download_model_scalars"]) == {sum(int(v.numel()) for v in batched.state.global_.values())}
    assert len(stats["upload_client_bytes"]) == batched.client_updates
    assert min(stats["upload_client_bytes"]) > 8 * batched.upload_scalars_per_client   # float64 payload + indices


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "fedmm_lite", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_flower_sim_refuses_bad_input_in_one_line():
    out = _cli("flower-sim", "--data", "world-quick", "--clients", "100000")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--clients 100000" in out.stderr
    out = _cli("flower-sim", "--data", "world-quick", "--clients", "0")
    assert out.returncode == 2 and "--clients 0" in out.stderr


def test_flower_sim_command_writes_the_run_json(tmp_path):
    path = tmp_path / "sim.json"
    out = _cli("flower-sim", "--data", "world-quick", "--backbone", "fedavg", "--rounds", "1",
               "--clients", "2", "--sample-ratio", "0.1", "--json", str(path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Flower's simulation, 2 nodes" in out.stdout
    result = json.loads(path.read_text())
    for key in ("config", "best_round", "valid", "test", "history", "upload_scalars_per_client", "flower"):
        assert key in result
    assert [h["round"] for h in result["history"]] == [0, 1]
    flower = result["flower"]
    assert flower["nodes"] == 2 and flower["seconds_per_round"] > 0
    assert flower["upload_payload_scalars_per_client"] == result["upload_scalars_per_client"]
    assert torch.isfinite(torch.tensor(result["test"]["hr@50"]))
