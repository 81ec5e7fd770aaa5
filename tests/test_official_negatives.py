"""``FedConfig.negatives="official"``: the PFedRec/FedRAP codes' training negatives, drawn outside
every interaction of the user (its validation and test items too). Oracle: the sets themselves."""
from __future__ import annotations

import numpy as np
import torch

from fedmm_lite.data import NegativeSampler
from fedmm_lite.fed.pitfalls import HeldOutExcludedNegatives
from fedmm_lite.fed.rounds import FederatedRun

from test_fed_equivalence import small_config, tiny_dataset


def drawn(sampler, data, draws: int = 4000) -> list[set]:
    gen = torch.Generator().manual_seed(0)
    users = torch.arange(data.n_users).repeat_interleave(draws)
    items = sampler.sample(users, gen).view(data.n_users, draws)
    return [set(row.tolist()) for row in items]


def test_official_negatives_never_draw_a_held_out_item_and_cover_the_rest():
    data = tiny_dataset(n_users=6, n_items=25)
    official, fresh = drawn(HeldOutExcludedNegatives(data), data), drawn(NegativeSampler(data), data)
    for u in range(data.n_users):
        train = set(data.train_items(u).tolist())
        held = {int(data.valid_items[u]), int(data.test_items[u])}
        assert official[u] == set(range(25)) - train - held       # 4000 draws cover every item
        assert fresh[u] == set(range(25)) - train                 # the correct sampler may draw them


def test_a_run_asks_for_them_by_name():
    run = FederatedRun(tiny_dataset(), small_config("pfedrec", negatives="official"))
    assert type(run.sampler) is HeldOutExcludedNegatives
    assert type(FederatedRun(tiny_dataset(), small_config("pfedrec")).sampler) is NegativeSampler
