"""viz_gfmfr and viz_runs.json_results_table on hand-made results: the planted taste by a plain loop
over the world's preferences, the group/planted table by counting, the teacher table by hand, the
explorer trains only on click."""
from __future__ import annotations

import json
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fedmm_lite import viz_gfmfr, viz_runs  # noqa: E402
from fedmm_lite.data.world import TASTE_WEIGHTS  # noqa: E402


def tiny_world():
    """Two planted groups, 6 items with a colour and a brand, 6 users."""
    truth = {"group_names": ["visual", "textual"], "group_modality": ["image", "text"],
             "user_group": np.array([0, 0, 0, 1, 1, 1]),
             "attribute_values": {"colour": ["red", "blue"], "shape": ["o", "x"], "pattern": ["p"],
                                  "style": ["s"], "category": ["a", "b"], "brand": ["k", "m"]},
             "item_attributes": {"colour": np.array([0, 1, 0, 1, 0, 1]), "shape": np.array([0, 0, 1, 1, 0, 0]),
                                 "pattern": np.zeros(6, int), "style": np.zeros(6, int),
                                 "category": np.array([0, 0, 0, 1, 1, 1]), "brand": np.array([1, 0, 1, 0, 1, 0])},
             "group_preference": {"visual": {"colour": ["red"], "shape": ["x"], "pattern": [], "style": []},
                                  "textual": {"category": ["b"], "brand": ["m"], "style": []}}}
    return SimpleNamespace(ground_truth=truth, n_items=6, n_users=6)


def test_planted_taste_equals_a_loop_over_the_preferences():
    world = tiny_world()
    taste = viz_gfmfr.planted_taste(world)
    truth = world.ground_truth
    for g, name in enumerate(truth["group_names"]):
        modality = truth["group_modality"][g]
        for i in range(6):
            expected = 0.0
            for attr, weight in TASTE_WEIGHTS[modality].items():
                value = truth["attribute_values"][attr][truth["item_attributes"][attr][i]]
                expected += weight * (value in truth["group_preference"][name][attr])
            assert taste[g, i] == pytest.approx(expected)
    assert taste[0].tolist() == [1.0, 0.0, 2.0, 1.0, 1.0, 0.0]        # red (+1), shape x (+1)


def test_group_match_and_teacher_tables_by_hand():
    world = tiny_world()
    assignments = np.array([[-1, 0, 0, 1, 1, -1], [0, 0, 1, 1, 1, 1]])
    teacher = np.array([[0.9, 0.1, 0.8, 0.3, 0.6, 0.2], [0.1, 0.2, 0.1, 0.9, 0.3, 0.8]])
    result = SimpleNamespace(details={"assignments": assignments, "teacher": teacher, "groups": 2})
    table = viz_gfmfr.group_match_table(result, world)
    assert table.loc["visual", 0] == 2 and table.loc["visual", 1] == 1 and table.loc["textual", 1] == 3
    teach = viz_gfmfr.teacher_taste_table(result, world)
    assert teach.loc[0, "matches planted"] == "visual" and teach.loc[1, "matches planted"] == "textual"
    liked = viz_gfmfr.planted_taste(world)[0] > 0
    assert teach.loc[0, "teacher on liked items"] == pytest.approx(teacher[0][liked].mean())
    assert teach.loc[0, "teacher on other items"] == pytest.approx(teacher[0][~liked].mean())
    fig = viz_gfmfr.cluster_dynamics_figure(result, world, users=6)
    assert len(fig.axes) == 2


def test_json_results_table_reads_saved_runs(tmp_path):
    run = {"test": {"hr@50": 0.36, "ndcg@50": 0.1}, "dataset": {"users": 100}, "best_round": 4,
           "train_seconds": 12.0, "planted": {"adjusted_rand_index": [0.1, 0.7]}}
    (tmp_path / "a.json").write_text(json.dumps(run))
    table = viz_runs.json_results_table({"a": tmp_path / "a.json", "missing": tmp_path / "b.json"})
    assert list(table.index) == ["a"]
    assert table.loc["a", "± se"] == pytest.approx(np.sqrt(0.36 * 0.64 / 100))
    assert table.loc["a", "ARI (last round)"] == 0.7


def test_explorer_trains_only_on_click():
    calls = []

    def train(groups, schedule, ablation):
        calls.append((groups, schedule, ablation))
        history = [{"round": r, "valid": {"hr@50": 0.1 * r}, "test": {"hr@50": 0.1 * r}} for r in range(3)]
        return SimpleNamespace(history=history, best_round=2, details={"assignments": np.zeros((2, 4), int),
                                                                       "groups": 2})

    panel = viz_gfmfr.explorer(train)
    assert calls == []
    panel.controls["groups"].value = 2
    panel.controls["button"].click()
    assert calls == [(2, "ours", "none")]
