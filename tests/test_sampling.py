"""Negative sampling: never a training positive, redrawn every call, uniform over the complement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from fedmm_lite.data import Dataset, NegativeSampler, build_dataset, read_folder
from fedmm_lite.errors import DatasetError

N_ITEMS = 30
# per user: its training items. User 2 trains on 27 of 30 items (rejection needs many rounds and
# the inversion fallback is used); user 3 on one item; user 4 on every item but the last.
TRAIN = [[0, 1, 2, 3, 4], [5, 9, 17, 29], sorted(set(range(30)) - {3, 11, 29}), [14],
         list(range(29))]


def _dataset(train=TRAIN, n_items=N_ITEMS):
    sizes = [len(t) for t in train]
    return Dataset(name="hand", user_ids=np.array([f"u{u}" for u in range(len(train))]),
                   item_ids=np.array([f"i{i}" for i in range(n_items)]),
                   titles=[""] * n_items, image_paths=[None] * n_items,
                   train_indptr=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                   train_indices=np.concatenate([np.array(t, dtype=np.int64) for t in train]),
                   valid_items=np.zeros(len(train), dtype=np.int64),
                   test_items=np.zeros(len(train), dtype=np.int64))


def _complement(u, train=TRAIN, n_items=N_ITEMS):
    """Brute force: the items user u did not train on."""
    return sorted(set(range(n_items)) - set(train[u]))


@pytest.mark.parametrize("max_rounds", [0, 2, 8, 1000])
def test_never_a_training_positive_and_covers_the_complement(max_rounds):
    sampler = NegativeSampler(_dataset(), max_rounds=max_rounds)
    generator = torch.Generator().manual_seed(0)
    users = torch.arange(len(TRAIN)).repeat_interleave(400)  # (m,)
    drawn = {u: set() for u in range(len(TRAIN))}
    for _ in range(20):
        negatives = sampler.sample(users, generator)
        assert negatives.shape == users.shape and negatives.dtype == torch.int64
        for u, i in zip(users.tolist(), negatives.tolist()):
            assert i not in TRAIN[u], (u, i)
            drawn[u].add(i)
    for u in range(len(TRAIN)):
        assert sorted(drawn[u]) == _complement(u)


def test_redrawn_on_every_call():
    sampler = NegativeSampler(_dataset())
    generator = torch.Generator().manual_seed(1)
    users = torch.zeros(200, dtype=torch.int64)
    first, second = sampler.sample(users, generator), sampler.sample(users, generator)
    assert not torch.equal(first, second)
    # the same seed gives the same draws (repeatable runs)
    again = sampler.sample(users, torch.Generator().manual_seed(1))
    assert torch.equal(first, again)


@pytest.mark.parametrize("max_rounds", [0, 8, 1000])
@pytest.mark.parametrize("user", [0, 1, 2, 3])
def test_uniform_over_the_complement(user, max_rounds):
    sampler = NegativeSampler(_dataset(), max_rounds=max_rounds)
    generator = torch.Generator().manual_seed(1234 + user)
    negatives = sampler.sample(torch.full((30000,), user, dtype=torch.int64), generator)
    counts = np.bincount(negatives.numpy(), minlength=N_ITEMS)
    complement = _complement(user)
    assert counts.sum() == counts[complement].sum()  # nothing outside the complement
    assert chisquare(counts[complement]).pvalue > 1e-4


def test_mixed_batch_matches_per_user_complements_on_a_split(tiny_folder):
    dataset = build_dataset(read_folder(tiny_folder))
    sampler = NegativeSampler(dataset)
    generator = torch.Generator().manual_seed(7)
    users = torch.randint(0, dataset.n_users, (20000,), generator=torch.Generator().manual_seed(3))
    negatives = sampler.sample(users, generator).numpy()
    for u in range(dataset.n_users):
        train = set(dataset.train_items(u).tolist())
        got = set(negatives[users.numpy() == u].tolist())
        assert got == set(range(dataset.n_items)) - train
        # held-out items may be drawn: a client cannot know its future
        assert dataset.test_items[u] in got and dataset.valid_items[u] in got


def test_user_with_no_candidate_negative_is_a_clear_error():
    train = [[0, 1], [0, 1, 2, 3]]
    sampler = NegativeSampler(_dataset(train, n_items=4))
    generator = torch.Generator().manual_seed(0)
    assert set(sampler.sample(torch.zeros(50, dtype=torch.int64), generator).tolist()) == {2, 3}
    with pytest.raises(DatasetError, match=r"user 'u1' \(index 1\) trains on all 4 items: no negative"):
        sampler.sample(torch.tensor([0, 1]), generator)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_complement():
    sampler = NegativeSampler(_dataset(), device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    users = torch.arange(len(TRAIN)).repeat_interleave(2000)  # on the CPU: moved by the sampler
    negatives = sampler.sample(users, generator)
    assert negatives.device.type == "cuda"
    for u in range(len(TRAIN)):
        assert sorted(set(negatives.cpu()[users == u].tolist())) == _complement(u)
