"""fedmm_lite.cost: counts against hand-computed ones and the papers' published figures.

Oracles: FedMR's Table 5 (learnable parameters per client on KU: 560 items, d = 64), the parts of
its multimodal layout, GFMFR's Table 3 (millions of scalars on Beauty, 356 items, and
Office_Products, 4,461 items), and counts written out by hand for a small configuration."""
from __future__ import annotations

import pytest

from fedmm_lite.cost import (client_cost, cost_at_size, fedmr_paper_layout, gfmfr_paper_client,
                             measure_seconds, paper_millions, parts, rows_up)
from fedmm_lite.fed.state import new_state

from test_fed_equivalence import small_config, tiny_dataset
from test_fedmr import mm_dataset

KU_USERS, KU_ITEMS = 204, 560


def test_the_fedmr_paper_layout_gives_table_5s_455620_at_ku_size():
    parts = fedmr_paper_layout(KU_ITEMS)
    assert list(parts.values()) == [286_720, 98_496, 12_547, 32_960, 24_832, 65]
    assert sum(parts.values()) == 455_620
    # MMFedRAP: the same plus a second ID table of width 512 (D_u), Table 5's 742,340
    assert sum(parts.values()) + KU_ITEMS * 512 == 742_340


@pytest.mark.parametrize("backbone, published", [("fedavg", 35_905), ("fcf", 35_905),
                                                  ("pfedrec", 35_905), ("fedrap", 71_745)])
def test_our_id_backbones_count_table_5s_vanilla_figures(backbone, published):
    assert cost_at_size(backbone, "id", KU_USERS, KU_ITEMS).learnable == published


def test_gfmfr_table_3_from_its_client_layout():
    beauty, office = gfmfr_paper_client(356), gfmfr_paper_client(4_461)
    assert [paper_millions(beauty[k]) for k in ("model", "per-round traffic")] == [0.03, 0.03]
    assert [paper_millions(office[k]) for k in ("model", "per-round traffic")] == [0.29, 0.30]
    # FedMR's stored and downloaded features on Office_Products: image + text, 512 each
    assert paper_millions(4_461 * (512 + 512)) == 4.57


def test_counts_by_hand_for_a_small_configuration():
    data = tiny_dataset()                                     # 60 items; small_config: d = 8
    n, d = data.n_items, 8
    pfedrec = client_cost(new_state(small_config("pfedrec"), data))
    # E (n d) shared; w (d), b (1) private; E_u is the client's tuned copy of E, not counted again
    assert (pfedrec.shared, pfedrec.private, pfedrec.learnable) == (n * d, d + 1, n * d + d + 1)
    assert pfedrec.down_per_round == pfedrec.up_per_round == n * d and pfedrec.feature_download == 0
    fedrap = client_cost(new_state(small_config("fedrap"), data))
    assert (fedrap.shared, fedrap.private) == (n * d, n * d + d + 1)        # C shared; D_u, w, b private
    gfmfr = client_cost(new_state(small_config("pfedrec", method="gfmfr", groups=2), mm_dataset()))
    # GFMFR: the teacher's n values down, P_u = (w, b) up, one moving average kept on the client
    assert (gfmfr.method_down, gfmfr.reported, gfmfr.buffers) == (n, d + 1, 1)
    assert (gfmfr.down_per_round, gfmfr.up_per_round) == (n * d + n, n * d + d + 1)
    fedmr = client_cost(new_state(small_config("fedavg", method="fedmr", router_hidden=5), mm_dataset()))
    assert fedmr.feature_download == n * (12 + 7)                          # mm_dataset's widths
    by_category = {}
    for category, scalars in parts(new_state(small_config("fedavg", method="fedmr", router_hidden=5),
                                             mm_dataset())).values():
        by_category[category] = by_category.get(category, 0) + scalars
    assert by_category == {"shared": fedmr.shared, "private": fedmr.private, "features": n * 19}
    assert parts(new_state(small_config("pfedrec"), data))["E_u"] == ("tuned copy", n * d)
    assert fedmr.stored == fedmr.learnable + fedmr.feature_download
    in_bytes = fedmr.bytes("float32")
    assert in_bytes["up_per_round"] == 4 * fedmr.up_per_round


def test_rows_up_counts_the_trained_rows_only():
    data = tiny_dataset()
    state = new_state(small_config("fedavg"), data)
    sizes = data.train_sizes
    expected = sum(min(int(s) * 5, data.n_items) for s in sizes) / len(sizes) * 8
    assert rows_up(data, state, neg_ratio=4) == pytest.approx(expected)
    assert rows_up(data, state, neg_ratio=4) < client_cost(state).up_per_round


def test_measure_seconds_splits_a_round_into_client_and_server():
    out = measure_seconds(tiny_dataset(), small_config("pfedrec", sample_ratio=1.0), rounds=2)
    assert set(out) == {"client_seconds_per_epoch", "server_seconds_per_round", "round_seconds",
                        "evaluation_seconds", "rounds"}
    parts = out["client_seconds_per_epoch"] * 14 * 2 + out["server_seconds_per_round"]
    assert parts == pytest.approx(out["round_seconds"])      # 14 clients, 2 local epochs
    assert min(out["client_seconds_per_epoch"], out["server_seconds_per_round"]) > 0


@pytest.mark.parametrize("router_input", ["exact", "epoch"])
def test_fedmr_history_rows_are_what_the_engine_reads(router_input, monkeypatch):
    """``fedmr_rows_per_round`` against the batched engine itself: the rows of H_u that a round of
    FedMR Mix reads for the router input (exact: per local step; epoch: per local epoch), counted
    where the engine reads them, for every participant of one round."""
    import numpy as np

    from fedmm_lite.cost import fedmr_rows_per_round
    from fedmm_lite.fed import fedmr
    from fedmm_lite.fed.rounds import FederatedRun

    counted = {"rows": 0}
    read_slots, begin_batch = fedmr.FedMRChunk.read_slots, fedmr.FedMRChunk.begin_batch

    def counting_read(self, act, slots):
        if self.mode == "exact" and self.pos_mask is not None:
            counted["rows"] += int(self.pos_mask[act].sum())
        return read_slots(self, act, slots)

    def counting_begin(self, batch, view):
        if self.mode == "epoch" and self.pos_slots is not None and batch.epoch != self.epoch:
            counted["rows"] += int(self.pos_mask.sum())
        return begin_batch(self, batch, view)

    monkeypatch.setattr(fedmr.FedMRChunk, "read_slots", counting_read)
    monkeypatch.setattr(fedmr.FedMRChunk, "begin_batch", counting_begin)
    data = mm_dataset()
    config = small_config("fedavg", method="fedmr", router_hidden=5, router_input=router_input,
                          sample_ratio=1.0, local_epochs=3, batch_size=8)
    run = FederatedRun(data, config)
    run.train_round(1)
    rows = fedmr_rows_per_round(np.asarray(data.train_sizes), config.local_epochs, config.batch_size,
                                config.neg_ratio, router_input)
    assert counted["rows"] == int(rows["history"].sum()) > 0
    # by hand for one client: n_u = 13, 65 samples, batches of 64: 2 steps an epoch, 5 epochs
    one = fedmr_rows_per_round([13], 5, 64, 4, router_input)
    assert int(one["batch"][0]) == 325 and int(one["steps"][0]) == 10
    assert int(one["history"][0]) == (130 if router_input == "exact" else 65)
