"""PFedRec's E_u store (fed/tuned_tables.py) reads back exactly what a dense (U, n, d) table would hold."""
from __future__ import annotations

import pytest
import torch

from fedmm_lite.fed.tuned_tables import TunedTables


def test_snapshot_plus_tuned_rows_equals_a_dense_table():
    U, n, d = 6, 9, 3
    g = torch.Generator().manual_seed(0)
    capacity = torch.tensor([2, 4, 9, 3, 5, 1])
    store = TunedTables(capacity, n, d, torch.float64)
    dense = torch.zeros(U, n, d, dtype=torch.float64)                 # the reference
    for t in range(1, 6):
        E = torch.randn(n, d, generator=g, dtype=torch.float64)       # the round's global table
        clients = torch.sort(torch.randperm(U, generator=g)[:3]).values
        owners, items = [], []
        for c, u in enumerate(clients.tolist()):
            k = int(torch.randint(1, int(capacity[u]) + 1, (1,), generator=g))
            rows = torch.sort(torch.randperm(n, generator=g)[:k]).values
            owners.append(torch.full((k,), c))
            items.append(rows)
        owners, items = torch.cat(owners), torch.cat(items)
        values = torch.randn(items.shape[0], d, generator=g, dtype=torch.float64)
        store.write(t, E, clients, owners, items, values)
        for u in clients.tolist():                                   # E_u = E, tuned rows replaced
            dense[u] = E
        dense[clients[owners], items] = values
        assert torch.equal(store[:], dense)
        assert torch.equal(store[torch.tensor([4, 1])], dense[[4, 1]])
        assert torch.equal(store[2], dense[2])
        # only the snapshots some client still starts from are kept (plus at most this round's)
        assert len(store.rounds) <= len(set(store.snapshot_of[store.snapshot_of >= 0].tolist())) + 1


def test_write_one_equals_write():
    E = torch.arange(12.0).view(4, 3)
    a = TunedTables(torch.tensor([2, 2]), 4, 3, torch.float32)
    b = a.clone()
    rows, values = torch.tensor([1, 3]), torch.ones(2, 3)
    a.write(1, E, torch.tensor([1]), torch.zeros(2, dtype=torch.long), rows, values)
    b.write_one(1, E, 1, rows, values)
    assert torch.equal(a[:], b[:])
    assert torch.equal(a[0], torch.zeros(4, 3))                      # never trained: no E_u yet


def test_more_rows_than_capacity_is_a_clear_error():
    store = TunedTables(torch.tensor([1]), 4, 2, torch.float32)
    with pytest.raises(ValueError, match="capacity"):
        store.write(1, torch.zeros(4, 2), torch.tensor([0]), torch.zeros(2, dtype=torch.long),
                    torch.tensor([0, 1]), torch.ones(2, 2))


def test_stores_far_less_than_the_dense_tables():
    store = TunedTables(torch.full((100,), 10), 1000, 8, torch.float32)
    assert store.numel() == 100 * 1000 * 8
    assert store.stored_scalars() == 100 * 10 * 8
