"""The Flower bridge without Flower's runtime (fedmm_lite/flower: codec, node, server).

- What crosses a process boundary comes back bit for bit (codec through Flower's ``ArrayRecord``).
- A client's part of a chunk's plan, trained with the oracle's step, and the merged uploads of a
  chunk equal ``oracle.train_chunk`` on the whole chunk, to the bit.
- A node keeps its users' private state between rounds and nothing else crosses: the replies hold
  the upload's fields only.
- A federation over the loopback transport (nodes called in this process) equals the batched
  engine (the tolerance of test_fed_equivalence.py) for every method, and the per-client oracle
  to the bit; with the node-drawn plan or upload noise it does not (the draws differ).
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fedmm_lite.fed import oracle, run_federated
from fedmm_lite.fed.config import default_config
from fedmm_lite.fed.rounds import FederatedRun, plan_round
from fedmm_lite.flower import codec
from fedmm_lite.flower.node import Node, RunSpec, load_run_dataset, subset_users, users_of
from fedmm_lite.flower.server import Loopback, ServerSide, run_federation

from test_fed_equivalence import small_config, tiny_dataset

NODES = 4


def world_spec(backbone: str, method: str = "id", plan: str = "server", **kw) -> RunSpec:
    """world-quick, float64 (the equivalence tests' precision), a few rounds, 30% of the clients."""
    options = dict(method=method, rounds=3, sample_ratio=0.3, dtype="float64", private_dtype="float64",
                   dim=16, local_epochs=2, device="cpu", seed=5)
    options.update(kw)
    spec = RunSpec("world-quick", default_config(backbone, **options), NODES, plan=plan)
    dataset = load_run_dataset(spec)
    return dataclasses.replace(spec, encoder=dataset.feature_encoder)


def loopback_run(spec: RunSpec):
    nodes = {p: Node(spec, p, spec.nodes) for p in range(spec.nodes)}
    return run_federation(spec, load_run_dataset(spec), Loopback(nodes)), nodes


def assert_same_history(a: list, b: list, tol: float = 1e-10) -> None:
    assert [h["round"] for h in a] == [h["round"] for h in b]
    for ha, hb in zip(a, b):
        for split in ("valid", "test"):
            for key, value in hb[split].items():
                assert ha[split][key] == pytest.approx(value, abs=1e-12), (ha["round"], split, key)
        if hb["train_loss"] is not None:
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=tol)


# ------------------------------------------------------------------------------------ codec
def chunk_and_uploads(backbone: str, **kw):
    """A round's first chunk on the tiny data and the oracle's uploads for it (on a state copy)."""
    data = tiny_dataset()
    run = FederatedRun(data, small_config(backbone, engine="oracle", **kw))
    _, plans = plan_round(data, run.config, run.generator, run.sampler, run.sizes)
    plan = next(iter(plans))
    state = copy.deepcopy(run.state)
    batch, loss = oracle.train_chunk(state, plan, run.config, 1)
    return run, plan, batch, loss, state


def assert_same_upload(a, b) -> None:
    ta, tb = codec.upload_to_tensors(a), codec.upload_to_tensors(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize("backbone", ["fedavg", "pfedrec", "fedncf"])
def test_upload_survives_flower_records_bit_for_bit(backbone):
    pytest.importorskip("flwr")
    _, _, batch, _, _ = chunk_and_uploads(backbone)
    back = codec.tensors_to_upload(codec.from_record(codec.to_record(codec.upload_to_tensors(batch))))
    assert_same_upload(back, batch)
    assert (batch.sizes is None) == (backbone == "pfedrec")     # the uniform rule uploads no sizes


@pytest.mark.parametrize("backbone", ["fedavg", "pfedrec", "fedrap"])
def test_client_parts_train_to_the_chunk_uploads(backbone):
    """Each client of a chunk trained alone on its part (after encoding it) gives, merged, the
    oracle's upload of the whole chunk; the private tensors written back agree too."""
    run, plan, whole, loss, whole_state = chunk_and_uploads(backbone)
    state = copy.deepcopy(run.state)
    parts, losses = [], []
    for c in range(plan.n_clients):
        part = codec.client_part(plan, c)
        part = codec.tensors_to_plan(codec.plan_to_tensors(part))
        assert part.items.shape == (1, int(plan.lengths[c]))           # cut to the client's samples
        batch, part_loss = oracle.train_chunk(state, part, run.config, 1)
        parts.append(batch)
        losses.append(part_loss)
    assert_same_upload(codec.merge_uploads(parts), whole)
    assert torch.equal(torch.cat(losses), loss)
    for name in state.private:
        assert torch.equal(state.private[name][:], whole_state.private[name][:]), name


def test_client_downloads_cut_the_clients_axis():
    down = {"clients": torch.tensor([4, 7, 9]), "q": torch.arange(12.).view(3, 4), "shared": torch.ones(2)}
    mine = codec.client_downloads(down, 1, 3)
    assert mine["clients"].tolist() == [7] and mine["q"].tolist() == [[4., 5., 6., 7.]]
    assert torch.equal(mine["shared"], down["shared"])
    assert codec.client_downloads(None, 0, 3) is None


# ------------------------------------------------------------------------------------ nodes
def test_users_are_split_into_blocks_and_subsets_keep_their_data():
    data = tiny_dataset()
    blocks = [users_of(p, 3, data.n_users).tolist() for p in range(3)]
    assert sum(blocks, []) == list(range(data.n_users))
    sub = subset_users(data, [5, 2])
    assert sub.n_users == 2 and sub.n_items == data.n_items
    assert sub.train_items(0).tolist() == data.train_items(5).tolist()
    assert sub.train_items(1).tolist() == data.train_items(2).tolist()
    assert sub.test_items.tolist() == [data.test_items[5], data.test_items[2]]


def test_node_state_persists_between_rounds_and_only_uploads_leave():
    """Round 1 then round 2 on a node restored from its exported state equals round 2 on the node
    that kept it in memory; the replies hold only the UploadBatch's fields."""
    spec = world_spec("pfedrec", method="fedmr", rounds=2)
    side = ServerSide(spec, load_run_dataset(spec))
    _, requests = side.requests(1)
    p, request = next(iter(requests.items()))
    node = Node(spec, p, spec.nodes)
    batches, _ = node.train(request.global_, request.parts, request.downloads, 1)
    saved = {k: v.clone() for k, v in node.export_state().items()}
    assert any(k.startswith("tuned/E_u/") for k in saved) and "private/r_W1" in saved
    again = Node(spec, p, spec.nodes)
    fresh = {k: v.clone() for k, v in again.export_state().items()}
    assert not all(torch.equal(saved[k], fresh[k]) for k in saved)     # training changed it
    again.import_state(saved)
    users = [int(u) for u in node.users[:3]]
    parts = [node.draw_parts(torch.tensor([u]))[0] for u in users]      # any plan will do
    out_a, _ = node.train(request.global_, [copy.deepcopy(x) for x in parts], [None] * 3, 2)
    out_b, _ = again.train(request.global_, [copy.deepcopy(x) for x in parts], [None] * 3, 2)
    for a, b in zip(out_a, out_b):
        assert_same_upload(a, b)
    spec_ = node.state.spec
    allowed = ({"clients", "sizes"} | {f"values/{n}" for n in spec_.shared}
               | {f"{part}/{n}" for part in ("rows", "owners") for n in spec_.tables}
               | {f"reports/{n}" for n in spec_.reported})
    for batch in batches:
        assert set(codec.upload_to_tensors(batch)) <= allowed
        assert int(batch.clients[0]) in request.clients


# ------------------------------------------------------------------------------------ loopback
@pytest.mark.parametrize("backbone,method", [("fedavg", "id"), ("pfedrec", "id"), ("fedavg", "fedmr"),
                                             ("pfedrec", "fedmr"), ("fedavg", "gfmfr")])
def test_loopback_federation_equals_the_engines(backbone, method):
    spec = world_spec(backbone, method)
    federation, _ = loopback_run(spec)
    dataset = load_run_dataset(spec)
    batched = run_federated(dataset, spec.config, progress=False)
    loop = run_federated(dataset, dataclasses.replace(spec.config, engine="oracle"), progress=False)
    assert_same_history(federation.history, batched.history)
    assert federation.best_round == batched.best_round
    for name, value in federation.details["global"].items():
        assert float((value - batched.state.global_[name]).abs().max()) < 1e-10, name
        assert torch.equal(value, loop.state.global_[name].cpu()), name      # the oracle's step, exactly
    assert federation.client_updates == batched.client_updates
    assert federation.upload_scalars_per_client == batched.upload_scalars_per_client
    untouched = run_federated(dataset, dataclasses.replace(spec.config, rounds=0), progress=False)
    name = next(iter(batched.state.global_))
    assert float((federation.details["global"][name] - untouched.state.global_[name]).abs().max()) > 1e-4
    if method == "gfmfr":                  # the teacher was downloaded and the server step ran
        assert all("group_sizes" in h["server"] for h in federation.history[1:])


def test_node_plan_and_node_noise_are_other_draws():
    base = world_spec("fedavg", rounds=2)
    reference, _ = loopback_run(base)
    node_plan, _ = loopback_run(dataclasses.replace(base, plan="node"))
    assert node_plan.history[1]["train_loss"] != reference.history[1]["train_loss"]
    noisy_spec = dataclasses.replace(base, config=dataclasses.replace(base.config, noise="laplace:0.001"))
    noisy, _ = loopback_run(noisy_spec)
    again, _ = loopback_run(noisy_spec)
    q = noisy.details["global"]["Q"]
    assert float((q - reference.details["global"]["Q"]).abs().max()) > 1e-6    # the noise was added
    assert torch.equal(q, again.details["global"]["Q"])                       # from the nodes' seeded generators


# ------------------------------------------------------------------------------------ the extra
def test_the_flower_extra_is_pinned_once_everywhere():
    import re
    from pathlib import Path

    from fedmm_lite.flower import FLWR_PIN

    root = Path(__file__).resolve().parents[1]
    pyproject = re.search(r'^flower = \["flwr\[simulation\]==([^"]+)"\]', (root / "pyproject.toml").read_text(), re.M)
    makefile = re.search(r"^FLOWER := flwr\[simulation\]==(\S+)", (root / "Makefile").read_text(), re.M)
    assert pyproject and makefile
    assert pyproject.group(1) == makefile.group(1) == FLWR_PIN


def test_without_flwr_the_command_says_how_to_install(monkeypatch):
    import importlib.util

    from fedmm_lite.errors import OptionError
    from fedmm_lite.flower import require_flwr

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("flwr", "ray") else real(name, *a))
    with pytest.raises(OptionError, match=r"flwr and ray not installed; pip install 'fedmm_lite\[flower\]'"):
        require_flwr(simulation=True)
