"""viz_fedmr: tables on hand-made results, mapped representations against a hand-written Eq. (1),
group means of router weights against a plain loop, and an explorer that trains only on click."""
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fedmm_lite import viz_fedmr  # noqa: E402
from fedmm_lite.fed import FedConfig, run_federated  # noqa: E402
from fedmm_lite.fed.rounds import RunResult  # noqa: E402
from fedmm_lite.viz_features import modality_gap  # noqa: E402

from test_fed_equivalence import small_config, tiny_dataset  # noqa: E402


def _metrics(hr, ndcg):
    return {"hr@50": hr, "ndcg@50": ndcg}


def _result(hr, ndcg, best_round=2, history=(), **kw):
    return RunResult(config=FedConfig(rounds=3), history=list(history), best_round=best_round,
                     valid=_metrics(hr + 0.01, ndcg), test=_metrics(hr, ndcg), seconds=1.0, **kw)


def test_vanilla_vs_fedmr_table_reads_each_run_at_its_own_round():
    vanilla = {"fedavg": _result(0.30, 0.10, best_round=3), "fedrap": _result(0.40, 0.12)}
    fedmr = {"fedavg": _result(0.35, 0.11, best_round=1), "fedrap": _result(0.38, 0.13)}
    table = viz_fedmr.vanilla_vs_fedmr_table(vanilla, fedmr)
    assert list(table.index) == ["fedavg", "fedrap"]
    assert table.loc["fedavg", "round (valid) alone"] == 3
    assert table.loc["fedavg", "round (valid) FedMR"] == 1
    assert table.loc["fedavg", "change HR@50"] == pytest.approx(0.05)
    assert table.loc["fedrap", "change HR@50"] == pytest.approx(-0.02)
    assert table.loc["fedrap", "NDCG@50 FedMR"] == pytest.approx(0.13)
    fig = viz_fedmr.vanilla_vs_fedmr_figure(table, reference={"chance": 0.3})
    assert len(fig.axes) == 2


def test_ablation_table_change_against_the_reference():
    runs = {"all": _result(0.5, 0.2), "no image": _result(0.45, 0.18), "no id": _result(0.2, 0.05)}
    table = viz_fedmr.ablation_table(runs, reference="all")
    assert table.loc["all", "change test HR@50"] == 0.0
    assert table.loc["no image", "change test HR@50"] == pytest.approx(-0.05)
    assert table.loc["no id", "change test HR@50"] == pytest.approx(-0.3)


def test_router_group_table_equals_a_loop_over_members():
    rng = np.random.default_rng(0)
    pi = rng.dirichlet(np.ones(3), size=10)                                     # (U, K)
    groups = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    truth = {"user_group": groups, "group_names": ["looks", "words", "habits"],
             "group_modality": ["image", "text", "id"]}
    data = SimpleNamespace(ground_truth=truth)
    result = _result(0.3, 0.1, details={"router_weights": torch.tensor(pi),
                                        "strategies": ("sum", "mlp", "gate")})
    table = viz_fedmr.router_group_table(result, data)
    for g, name in enumerate(truth["group_names"]):
        members = [u for u in range(10) if groups[u] == g]
        for k, strategy in enumerate(("sum", "mlp", "gate")):
            expected = sum(pi[u, k] for u in members) / len(members)
            assert table.loc[name, strategy] == pytest.approx(expected)
        assert table.loc[name, "users"] == len(members)
    assert table.loc["looks", "modality"] == "image"
    fig = viz_fedmr.router_group_figure(result, data)
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="router"):
        viz_fedmr.router_group_table(_result(0.3, 0.1), data)


def _fedmr_run(backbone):
    data = tiny_dataset(seed=1)
    rng = np.random.default_rng(7)
    data.features = {"image": rng.normal(size=(data.n_items, 12)).astype(np.float32),
                     "text": rng.normal(size=(data.n_items, 5)).astype(np.float32)}
    torch.set_num_threads(1)
    config = small_config(backbone, method="fedmr", router_hidden=4, fusion_lr=0.2, rounds=2)
    return data, run_federated(data, config, progress=False)


def _standardised(F):
    c = F - F.mean(0, keepdims=True)
    return c / np.linalg.norm(c, axis=1).mean()


@pytest.mark.parametrize("backbone", ["fedavg", "fedrap"])
def test_mapped_representations_follow_eq1(backbone):
    data, result = _fedmr_run(backbone)
    g = {k: v.numpy() for k, v in result.state.global_.items()}
    h = viz_fedmr.mapped_representations(result.state)
    table = g["Q"] if backbone == "fedavg" else g["C"]
    # h_m[i] = A_m x_m[i], written row by row
    for i in (0, 17, data.n_items - 1):
        assert np.allclose(h["id"][i], g["A_id"] @ table[i])
        assert np.allclose(h["image"][i], g["A_image"] @ _standardised(data.features["image"].astype(np.float64))[i],
                           atol=1e-5)
        assert np.allclose(h["text"][i], g["A_text"] @ _standardised(data.features["text"].astype(np.float64))[i],
                           atol=1e-5)
    if backbone == "fedrap":
        D = result.state.private["D"].numpy()
        mine = viz_fedmr.mapped_representations(result.state, user=2)
        assert np.allclose(mine["id"][5], g["A_id"] @ (D[2, 5] + g["C"][5]))
        assert np.allclose(mine["image"], h["image"])                           # features are shared
    else:
        with pytest.raises(ValueError, match="per-user"):
            viz_fedmr.mapped_representations(result.state, user=0)


def test_representation_gaps_and_umap_figure():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 4))
    panel = {"a": a, "a shifted": a + 5.0, "a copy": a.copy()}
    gaps = viz_fedmr.representation_gaps(panel)
    assert gaps.loc["a", "a copy"] == pytest.approx(0.0)
    assert gaps.loc["a", "a shifted"] == pytest.approx(modality_gap(a, a + 5.0))
    assert gaps.loc["a shifted", "a"] == gaps.loc["a", "a shifted"] > 0.5
    b = np.vstack([a[:15], -a[15:]])                                           # half flipped
    cos = viz_fedmr.matched_cosines({"a": a, "b": b, "-a": -a})
    assert cos.loc["a", "-a"] == pytest.approx(-1.0)
    assert cos.loc["a", "b"] == pytest.approx(0.0)                              # (15 - 15) / 30
    assert cos.loc["b", "a"] == cos.loc["a", "b"] and cos.loc["b", "b"] == 1.0
    calls = []

    def fake_embed(arrays, seed):
        calls.append([len(x) for x in arrays])
        return np.vstack(arrays)[:, :2]

    fig = viz_fedmr.representation_umap_figure({"one": panel, "two": {"a": a}}, embed=fake_embed)
    assert calls == [[30, 30, 30], [30]]
    assert len(fig.axes[0].collections) == 3


def test_explorer_trains_only_when_clicked():
    calls = []

    def train(backbone, strategy, modalities):
        calls.append((backbone, strategy, modalities))
        history = [{"round": t, "valid": _metrics(0.1 * t, 0.01 * t), "test": _metrics(0.1 * t, 0.01 * t),
                    "train_loss": None, "seconds": 0.0} for t in range(3)]
        return _result(0.2, 0.02, history=history)

    plt.close("all")
    figures_before = len(plt.get_fignums())
    panel = viz_fedmr.explorer(train)
    assert calls == []
    controls = panel.controls
    controls["backbone"].value = "fedrap"
    controls["strategy"].value = "gate"
    controls["modalities"].value = ("image", "id")
    controls["button"].click()
    assert calls == [("fedrap", "gate", ("id", "image"))]
    assert plt.get_fignums() == [figures_before + 1]      # the callback plotted, without an error
