"""viz_runs: selection on validation vs test on hand-made histories, tables and figures."""
import dataclasses
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402


from fedmm_lite import viz_runs  # noqa: E402
from fedmm_lite.fed import FedConfig, backbones  # noqa: E402
from fedmm_lite.fed.rounds import RunResult  # noqa: E402
from fedmm_lite.fed.state import new_state  # noqa: E402


def _entry(t, valid, test, loss=None):
    return {"round": t, "valid": {"hr@50": valid, "ndcg@50": valid / 4},
            "test": {"hr@50": test, "ndcg@50": test / 4}, "train_loss": loss, "seconds": float(t)}


# valid peaks at round 2 (0.30); test peaks at round 3 (0.40); ties resolve to the earliest round
HISTORY = [_entry(0, 0.05, 0.05), _entry(1, 0.20, 0.18, 0.6), _entry(2, 0.30, 0.25, 0.5),
           _entry(3, 0.28, 0.40, 0.4), _entry(4, 0.30, 0.40, 0.3)]


def _result(history, rounds=4, updates=40):
    best = max(history, key=lambda h: (h["valid"]["hr@50"], -h["round"]))
    return RunResult(config=FedConfig(rounds=rounds), history=history, best_round=best["round"],
                     valid=best["valid"], test=best["test"], seconds=1.5, client_updates=updates)


def test_best_on_test_picks_the_test_maximum_earliest():
    assert viz_runs.best_on_test(HISTORY)["round"] == 3


def test_selection_table_honest_vs_optimistic():
    table = viz_runs.selection_table({"run": _result(HISTORY)})
    row = table.loc["run"]
    assert row["valid-selected round"] == 2
    assert row["test hr@50 (valid-selected)"] == pytest.approx(0.25)
    assert row["test-selected round"] == 3
    assert row["test hr@50 (test-selected)"] == pytest.approx(0.40)
    assert row["optimism"] == pytest.approx(0.15)


def test_comparison_table_reads_the_selected_round():
    table = viz_runs.comparison_table({"a": _result(HISTORY)})
    assert table.loc["a", "best round (valid)"] == 2
    assert table.loc["a", "test HR@50"] == pytest.approx(0.25)
    assert table.loc["a", "test NDCG@50"] == pytest.approx(0.0625)
    assert table.loc["a", "valid HR@50"] == pytest.approx(0.30)
    assert "diverged in round" not in table.columns       # only when a run diverged


def test_comparison_table_says_where_a_run_diverged():
    stopped = _result(HISTORY[:3], rounds=4)
    stopped.diverged = {"round": 3, "message": "round 3: the model diverged"}
    table = viz_runs.comparison_table({"healthy": _result(HISTORY), "stopped": stopped})
    assert table.loc["stopped", "diverged in round"] == 3
    assert table["diverged in round"].isna()["healthy"]
    assert table.loc["stopped", "best round (valid)"] == 2


def test_curve_and_learning_curves_lines():
    rounds, values = viz_runs.curve(HISTORY, "test")
    assert rounds.tolist() == [0, 1, 2, 3, 4]
    assert values.tolist() == [0.05, 0.18, 0.25, 0.40, 0.40]
    fig = viz_runs.learning_curves({"a": _result(HISTORY), "b": _result(HISTORY[:3], rounds=2)},
                                   splits=("valid", "test"), reference={"random": 0.06})
    ax = fig.axes[0]
    # 2 runs x 2 splits + 2 best-round dots + 1 reference line
    assert len(ax.lines) == 7
    # the dot of run "a" sits at its validation-selected round
    assert ax.lines[2].get_xdata().tolist() == [2]


def test_learning_curves_client_updates_axis():
    fig = viz_runs.learning_curves({"a": _result(HISTORY, rounds=4, updates=40)}, x="client_updates")
    assert fig.axes[0].lines[0].get_xdata().tolist() == [0, 10, 20, 30, 40]


def test_loss_curves_skip_round_zero():
    fig = viz_runs.loss_curves({"a": _result(HISTORY)})
    assert fig.axes[0].lines[0].get_xdata().tolist() == [1, 2, 3, 4]


def test_fedrap_schedule_matches_tanh_ramp():
    config = dataclasses.replace(FedConfig(backbone="fedrap"), fedrap_lambda=0.5, fedrap_mu=0.02)
    table = viz_runs.fedrap_schedule(config, 20)
    assert table["lambda_t"].iloc[0] == 0.0
    assert table["lambda_t"].iloc[10] == pytest.approx(0.5 * 0.7615941559557649)
    assert table["mu_t"].iloc[20] == pytest.approx(0.02 * 0.9640275800758169)
    assert table["lambda_t"].is_monotonic_increasing
    assert viz_runs.fedrap_schedule_figure(config, 20) is not None


@pytest.mark.parametrize("name", ["fedavg", "fedncf", "pfedrec", "fedrap"])
def test_sharing_table_never_marks_private_tensors_uploaded(name):
    config = FedConfig(backbone=name, dim=4)
    state = new_state(config, SimpleNamespace(n_users=3, n_items=5))
    table = viz_runs.sharing_table(state)
    spec = backbones.SPECS[name]
    private = set(spec.private_vectors) | set(spec.private_tables)
    assert set(table.index[table["uploaded"] == "never"]) == private
    assert set(table.index[table["uploaded"] != "never"]) == set(state.global_)
    for tensor in spec.private_tables:
        assert table.loc[tensor, "shape"] == (5, 4)      # per client: (n, d)


def test_timing_bars_heights():
    fig = viz_runs.timing_bars({"batched": 0.5, "loop": 4.0})
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [0.5, 4.0]
