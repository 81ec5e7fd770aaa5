"""viz_repro: tables of published and measured figures, on JSON files written by the test, with
values computed by hand."""
from __future__ import annotations

import json
import math

import matplotlib
import pytest

matplotlib.use("Agg")

from fedmm_lite import viz_repro  # noqa: E402


def write_run(folder, name, hr50, users=100, rounds=10):
    path = folder / name
    path.write_text(json.dumps({"test": {"hr@50": hr50}, "dataset": {"users": users},
                                "config": {"rounds": rounds}}))
    return path


def test_paper_gain_table_reads_vanilla_to_method():
    table = viz_repro.paper_gain_table(viz_repro.FEDMR_PAPER)
    assert table.loc["fedavg", "KU"] == "0.1127 -> 0.5147 (4.57x)"
    assert list(table.columns) == ["KU", "Dance", "Food", "Movie"]


def test_measured_gain_table_pairs_vanilla_and_method_runs(tmp_path):
    write_run(tmp_path, "fedavg-id-r10.json", 0.40)
    write_run(tmp_path, "fedavg-fedmr-mix-r10.json", 0.20)
    write_run(tmp_path, "fedavg-fedmr-sum-r10.json", 0.90)        # a variant, not the main run
    write_run(tmp_path, "fcf-id-r10.json", 0.30)                   # no FedMR run: left out
    write_run(tmp_path, "pfedrec-id-r10.json", 0.10)
    write_run(tmp_path, "pfedrec-gfmfr-r20.json", 0.50, rounds=20)
    fedmr = viz_repro.measured_gain_table(tmp_path, "fedmr")
    assert list(fedmr.index) == ["fedavg"]
    row = fedmr.loc["fedavg"]
    assert (row.iloc[0], row.iloc[2], row["ratio"]) == (0.40, 0.20, 0.5)
    assert row.iloc[1] == pytest.approx(math.sqrt(0.4 * 0.6 / 100))
    gfmfr = viz_repro.measured_gain_table(tmp_path, "gfmfr")
    assert list(gfmfr.index) == ["pfedrec"] and gfmfr.loc["pfedrec", "rounds"] == 20


def test_direction_table_calls_gains_beyond_two_standard_errors(tmp_path):
    write_run(tmp_path, "fedavg-id-r10.json", 0.40, users=10_000)
    write_run(tmp_path, "fedavg-fedmr-r10.json", 0.30, users=10_000)   # 0.1 below, se ~ 0.0065
    write_run(tmp_path, "fcf-id-r10.json", 0.40, users=100)
    write_run(tmp_path, "fcf-fedmr-r10.json", 0.45, users=100)         # 0.05 above, se ~ 0.07
    measured = {"ours": viz_repro.measured_gain_table(tmp_path, "fedmr")}
    table = viz_repro.direction_table(viz_repro.FEDMR_PAPER, measured)
    assert table.loc["fedavg", "papers"] == "gain on 4 of 4"
    assert table.loc["fedavg", "ours"] == "loss (0.75x)"
    assert table.loc["fcf", "ours"] == "within noise (1.12x)"
    assert table.loc["pfedrec", "ours"] == "-"


def ml100k_record(label, best, values, losses=None):
    history = [{"round": t, "train_loss": None if t == 0 else (losses or [0.5] * len(values))[t],
                "valid_hr@10_sampled": v, "test_hr@10_sampled": v - 0.01} for t, v in enumerate(values)]
    return {"label": label, "settings": {"lr": 0.1, "item_lr": 10.0, "local_epochs": 1,
                                         "negatives": "official", "sampled_pool": "official"},
            "best_round": best, "valid": {"hr@10_sampled": values[best]},
            "test": {"hr@10_sampled": values[best] - 0.01, "ndcg@10_sampled": 0.3}, "seconds": 1.0,
            "history": history}


def test_ml100k_runs_tables_and_figures(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ml100k_record("a", 2, [0.1, 0.5, 0.7])))
    (tmp_path / "official_curves.json").write_text(json.dumps({"pfedrec": {"rounds": []}}))
    runs = viz_repro.load_ml100k_runs(tmp_path)
    assert list(runs) == ["a"]                                   # other JSON files are not runs
    table = viz_repro.selection_table(runs)
    assert table.loc["a", "round (valid)"] == 2 and table.loc["a", "test HR@10"] == pytest.approx(0.69)
    official = [{"round": 1, "valid_hr@10": 0.2, "test_hr@10": 0.3, "train_loss": -1.0},
                {"round": 2, "valid_hr@10": 0.4, "test_hr@10": 0.1, "train_loss": -50.0}]
    fig = viz_repro.curves_figure(runs, {"PFedRec": official})
    assert len(fig.axes[0].lines) == 2
    fig = viz_repro.fedrap_collapse_figure(official, runs)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]


def test_side_by_side_table_ratios_and_the_official_selection():
    result = {"rounds": 4, "official": {
        "rounds_run": 2, "wall_seconds": 20.0, "cpu_seconds": 10.0, "peak_rss_mb": 1500.0,
        "rounds": [{"round": 1, "round_seconds": 9.0, "valid_hr@10": 0.5, "test_hr@10": 0.4, "test_ndcg@10": 0.2},
                   {"round": 2, "round_seconds": 11.0, "valid_hr@10": 0.5, "test_hr@10": 0.6, "test_ndcg@10": 0.3}]},
        "ours": {"round_seconds": [0.5, 0.5, 0.5, 0.5], "wall_seconds": 4.0, "cpu_seconds": 2.0,
                 "peak_rss_mb": 500.0, "test": {"hr@10_sampled": 0.3, "ndcg@10_sampled": 0.15}}}
    table = viz_repro.side_by_side_table(result)
    ratio = table["official / ours"]
    assert ratio.iloc[0] == pytest.approx(20.0)                  # median 10 s against 0.5 s
    assert ratio.iloc[1] == pytest.approx(20.0 * 2 / 4.0)        # 2 of 4 rounds run: scaled by 2
    assert ratio.iloc[2] == pytest.approx(10.0)
    # the official rule: the LAST round among equal validation HR@10 (round 2: test 0.6)
    assert table.loc["test HR@10 at the validation-selected round", "official"] == 0.6
