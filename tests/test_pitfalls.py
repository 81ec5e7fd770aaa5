"""The published defects reproduced for the book's demonstrations behave exactly as described."""
from __future__ import annotations

import torch

from fedmm_lite.fed.pitfalls import FixedLowestNegatives
from test_sampling import TRAIN, _complement, _dataset


def test_fixed_negatives_are_the_lowest_non_training_items_every_call():
    sampler = FixedLowestNegatives(_dataset())
    # each user asks for 4 negatives, as one contiguous run (the plan's layout)
    users = torch.arange(len(TRAIN)).repeat_interleave(4)                 # (m,)
    first = sampler.sample(users, torch.Generator().manual_seed(0))
    second = sampler.sample(users, torch.Generator().manual_seed(123))
    assert torch.equal(first, second)                                    # the generator is ignored
    for u in range(len(TRAIN)):
        complement = _complement(u)
        expected = [complement[j % len(complement)] for j in range(4)]   # wraps when fewer exist
        assert first[users == u].tolist() == expected, u


def test_fixed_negatives_never_hit_a_training_item():
    sampler = FixedLowestNegatives(_dataset())
    users = torch.tensor([2] * 10 + [0] * 3 + [4] * 2)
    for u, i in zip(users.tolist(), sampler.sample(users, torch.Generator()).tolist()):
        assert i not in TRAIN[u]


def test_config_fixed_negatives_reach_the_plan_and_stay_fixed(tiny_folder, monkeypatch):
    """With negatives="fixed" every round trains on the same lowest-id negatives; "fresh" does not."""
    from fedmm_lite.data import build_dataset, read_folder
    from fedmm_lite.fed import rounds
    from fedmm_lite.fed.config import default_config

    dataset = build_dataset(read_folder(tiny_folder))
    plans = []
    original = rounds.make_plan
    monkeypatch.setattr(rounds, "make_plan", lambda *a, **k: plans.append(original(*a, **k)) or plans[-1])
    items = {}
    for negatives in ("fixed", "fresh"):
        plans.clear()
        config = default_config("fedavg", rounds=3, local_epochs=1, negatives=negatives, device="cpu")
        rounds.run_federated(dataset, config, progress=False)
        items[negatives] = [plan.items for plan in plans]
    assert len(items["fixed"]) == 3
    assert all(torch.equal(items["fixed"][0], p) for p in items["fixed"][1:])
    assert not all(torch.equal(items["fresh"][0], p) for p in items["fresh"][1:])
