"""Server rules on hand-made arrays (book/methods.md, "Backbones"; "Defects", item 7)."""
from __future__ import annotations

import pytest
import torch

from fedmm_lite.fed import backbones
from fedmm_lite.fed.server import (Aggregator, UploadBatch, aggregation_weights, apply_update,
                                   weighted_update)


def test_data_size_weights_are_normalised():
    a = aggregation_weights("data_size", torch.tensor([3, 1, 4]))
    assert a.tolist() == pytest.approx([3 / 8, 1 / 8, 4 / 8])
    assert float(a.sum()) == pytest.approx(1.0)


def test_uniform_weights_are_normalised():
    a = aggregation_weights("uniform", torch.tensor([10, 1, 7, 2]))
    assert a.tolist() == pytest.approx([0.25] * 4)


def test_weights_reject_an_empty_round_and_unknown_rule():
    with pytest.raises(ValueError):
        aggregation_weights("data_size", torch.tensor([0, 0]))
    with pytest.raises(ValueError):
        aggregation_weights("median", torch.tensor([1]))


def test_fedavg_rule_is_the_weighted_average_of_client_tables():
    # global Q and two clients' end-of-round tables, by hand
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    q1 = torch.tensor([[0.0, 2.0], [3.0, 4.0]])        # client 1 (n_1 = 1) moved row 0
    q2 = torch.tensor([[1.0, 2.0], [3.0, 0.0]])        # client 2 (n_2 = 3) moved row 1
    deltas = torch.stack([q - q1, q - q2])
    new = apply_update({"Q": q}, {"Q": weighted_update("data_size", torch.tensor([1, 3]), deltas)}, 1.0)
    # 1/4 * q1 + 3/4 * q2
    assert torch.allclose(new["Q"], torch.tensor([[0.75, 2.0], [3.0, 1.0]]))


def test_identical_updates_are_not_rescaled():
    """Defect 7: unnormalised weights rescale the table by the number of clients."""
    deltas = torch.ones(5, 3, 2)
    for rule in ("data_size", "uniform"):
        avg = weighted_update(rule, torch.tensor([1, 2, 3, 4, 5]), deltas)
        assert torch.allclose(avg, torch.ones(3, 2))


def test_server_step_size_scales_the_mean_update():
    new = apply_update({"Q": torch.zeros(2)}, {"Q": torch.tensor([1.0, -2.0])}, 0.5)
    assert new["Q"].tolist() == [-0.5, 1.0]


def _sparse_batch(sizes, rows, masks, values, towers):
    """The flat row upload of the clients: their real rows (mask True), client after client."""
    owners = torch.cat([torch.full((int(m.sum()),), c) for c, m in enumerate(masks)])
    return UploadBatch(n_clients=len(sizes), sizes=torch.tensor(sizes),
                       values={"Q": torch.cat([v[m] for v, m in zip(values, masks)]),
                               "W": torch.stack(towers)},
                       rows={"Q": torch.cat([r[m] for r, m in zip(rows, masks)])},
                       owners={"Q": owners})


@pytest.mark.parametrize("rule", ["data_size", "uniform"])
def test_streamed_row_uploads_equal_the_dense_weighted_sum(rule):
    """Two chunks of row-sparse uploads (with padding and an item repeated across clients) equal
    sum_u a_u Delta_u over full tables with weights normalised over ALL participants."""
    n, d = 5, 2
    g = torch.Generator().manual_seed(0)
    sizes = [2, 5, 1]
    rows = [torch.tensor([0, 3, 0]), torch.tensor([3, 4, 1]), torch.tensor([2, 0, 0])]
    masks = [torch.tensor([True, True, False]), torch.tensor([True, True, True]),
             torch.tensor([True, False, False])]
    vals = [torch.randn(3, d, generator=g) for _ in range(3)]
    towers = [torch.randn(4, generator=g) for _ in range(3)]
    dense = torch.zeros(3, n, d)
    for u in range(3):
        for r, m, v in zip(rows[u], masks[u], vals[u]):
            if m:
                dense[u, r] = v
    agg = Aggregator(rule, {"Q": (n, d), "W": (4,)}, torch.float32, "cpu")
    agg.add(_sparse_batch(sizes[:2], rows[:2], masks[:2], vals[:2], towers[:2]))
    agg.add(_sparse_batch(sizes[2:], rows[2:], masks[2:], vals[2:], towers[2:]))
    mean = agg.mean_update()
    assert torch.allclose(mean["Q"], weighted_update(rule, torch.tensor(sizes), dense), atol=1e-6)
    assert torch.allclose(mean["W"], weighted_update(rule, torch.tensor(sizes), torch.stack(towers)),
                          atol=1e-6)


def test_each_backbone_uses_the_rule_of_the_table():
    rules = {name: spec.rule for name, spec in backbones.SPECS.items()}
    assert rules == {"fedavg": "data_size", "fcf": "uniform", "fedncf": "data_size",
                     "pfedrec": "uniform", "fedrap": "uniform"}
