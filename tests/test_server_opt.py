"""Server optimisers of the FedOpt family (fed/server_opt.py) and FedMR's use of them for its
fusion modules: hand-computed steps; a FedMR round with Adam equals the plain round's averaged
update put through Adam by hand, and the two trainers agree under it."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmm_lite.errors import OptionError
from fedmm_lite.fed import run_federated, server_opt
from fedmm_lite.fed.config import validate

from test_fed_equivalence import assert_same_run
from test_fedmr import mm_dataset, mr_config


def test_sgd_momentum_adam_by_hand():
    start = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    d1 = {"w": torch.tensor([0.2, -0.1, 0.0], dtype=torch.float64)}
    d2 = {"w": torch.tensor([-0.4, 0.3, 0.1], dtype=torch.float64)}
    assert torch.allclose(server_opt.step("sgd", start, d1, {}, 0.5)["w"], start["w"] - 0.5 * d1["w"])
    state = server_opt.init_state("momentum", start)
    one = server_opt.step("momentum", start, d1, state, 2.0, beta1=0.8)["w"]
    two = server_opt.step("momentum", {"w": one}, d2, state, 2.0, beta1=0.8)["w"]
    assert torch.allclose(one, start["w"] - 2.0 * d1["w"])
    assert torch.allclose(two, one - 2.0 * (0.8 * d1["w"] + d2["w"]))
    state = server_opt.init_state("adam", start)
    one = server_opt.step("adam", start, d1, state, 0.1, 0.9, 0.99, 1e-3)["w"]
    m, v = 0.1 * d1["w"], 0.01 * d1["w"] ** 2
    assert torch.allclose(one, start["w"] - 0.1 * m / (v.sqrt() + 1e-3))
    two = server_opt.step("adam", {"w": one}, d2, state, 0.1, 0.9, 0.99, 1e-3)["w"]
    m, v = 0.9 * m + 0.1 * d2["w"], 0.99 * v + 0.01 * d2["w"] ** 2
    assert torch.allclose(two, one - 0.1 * m / (v.sqrt() + 1e-3))
    with pytest.raises(ValueError, match="server optimiser"):
        server_opt.init_state("adagrad", start)


def test_fedmr_adam_steps_the_modules_with_the_plain_rounds_update():
    """Round 1 from the same start: the clients train identically; the server's plain result
    gives Delta_bar, and the Adam run's modules are start - eta m / (sqrt(v) + tau) of it. The
    item table and the private tensors do not see the optimiser."""
    data = mm_dataset(seed=5)
    plain_cfg = mr_config("fcf", rounds=1, server_lr=0.7)
    adam_cfg = dataclasses.replace(plain_cfg, fusion_server="adam", fusion_server_lr=0.05)
    start = run_federated(data, dataclasses.replace(plain_cfg, rounds=0), progress=False).state
    plain = run_federated(data, plain_cfg, progress=False).state
    adam = run_federated(data, adam_cfg, progress=False).state
    assert set(adam.server.only) == {f"{k}_{m}" for m in adam.method.modules for k in ("m", "v")}
    for name in adam.method.modules:
        delta = (start.global_[name] - plain.global_[name]) / 0.7
        m, v = 0.1 * delta, 0.01 * delta ** 2
        want = start.global_[name] - 0.05 * m / (v.sqrt() + 1e-8)
        assert torch.allclose(adam.global_[name], want, atol=1e-10), name
        assert (adam.global_[name] - plain.global_[name]).abs().max() > 1e-4, name
    assert torch.equal(adam.global_["Q"], plain.global_["Q"])
    for name in adam.private:
        assert torch.equal(adam.private[name], plain.private[name]), name


def test_fedmr_sgd_with_a_module_server_step_scales_only_the_modules():
    data = mm_dataset(seed=5)
    plain_cfg = mr_config("fedavg", rounds=1)
    start = run_federated(data, dataclasses.replace(plain_cfg, rounds=0), progress=False).state
    plain = run_federated(data, plain_cfg, progress=False).state
    scaled = run_federated(data, dataclasses.replace(plain_cfg, fusion_server_lr=7.0), progress=False).state
    for name in plain.method.modules:
        want = start.global_[name] - 7.0 * (start.global_[name] - plain.global_[name])
        assert torch.allclose(scaled.global_[name], want, atol=1e-10), name
    assert torch.equal(scaled.global_["Q"], plain.global_["Q"])


@pytest.mark.parametrize("optimiser", ["adam", "momentum"])
def test_fedmr_server_optimiser_batched_equals_loop(optimiser):
    data = mm_dataset(seed=6)
    config = mr_config("pfedrec", fusion_server=optimiser, fusion_server_lr=0.02, rounds=3)
    batched = run_federated(data, config, progress=False)
    loop = run_federated(data, dataclasses.replace(config, engine="oracle"), progress=False)
    assert_same_run(batched, loop)
    for entry in batched.history[1:]:                 # the step-size diagnostic of every round
        assert set(entry["server"]["relative_update"]) == set(batched.state.global_)


def test_server_optimiser_options_are_checked():
    with pytest.raises(OptionError, match="--fusion-server"):
        validate(mr_config("fedavg", fusion_server="adagrad"))
    with pytest.raises(OptionError, match="--fusion-server-lr"):
        validate(mr_config("fedavg", fusion_server="adam", fusion_server_lr=0.0))


def test_fedmr_server_optimiser_can_leave_a_id_to_plain_averaging():
    data = mm_dataset(seed=5)
    plain_cfg = mr_config("fedavg", rounds=1)
    plain = run_federated(data, plain_cfg, progress=False).state
    adam = run_federated(data, dataclasses.replace(plain_cfg, fusion_server="adam", fusion_server_lr=0.05,
                                                   fusion_server_id=False), progress=False).state
    assert torch.equal(adam.global_["A_id"], plain.global_["A_id"])
    assert (adam.global_["A_image"] - plain.global_["A_image"]).abs().max() > 1e-4
    assert "m_A_id" in adam.server.only          # the state exists; only the step is skipped
