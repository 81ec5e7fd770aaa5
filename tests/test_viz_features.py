"""viz_features: probes, retrieval ranks, the modality gap, imputation checks and costs, each
against hand-computed values or a planted answer (no encoder is run here)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from fedmm_lite import viz_features as vf  # noqa: E402


def fake_dataset(tmp_path: Path, image_sizes, titles, features=None):
    """The few Dataset fields viz_features reads; pictures are files of the given byte sizes
    (None = missing picture)."""
    paths = []
    for i, size in enumerate(image_sizes):
        if size is None:
            paths.append(None)
            continue
        path = tmp_path / f"img{i}.png"
        path.write_bytes(b"x" * size)
        paths.append(path)
    n = len(titles)
    return SimpleNamespace(name="fake", n_items=n, item_ids=np.array([f"i{k}" for k in range(n)]),
                           titles=list(titles), image_paths=paths, features=features or {})


def test_l2_normalise_rows_and_zero_row():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(vf.l2_normalise(x), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])


def test_observed_modalities(tmp_path):
    data = fake_dataset(tmp_path, [10, None, 10], ["a", "  ", ""])
    obs = vf.observed_modalities(data)
    assert obs["image"].tolist() == [True, False, True]
    assert obs["text"].tolist() == [True, False, False]


def test_majority_rate_by_hand():
    assert vf.majority_rate(np.array([0, 0, 0, 1, 2, 2])) == pytest.approx(0.5)


def test_linear_probe_recovers_planted_labels_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)  # 100 items, 4 balanced classes: chance 0.25
    planted = np.eye(4)[labels] + 0.05 * rng.normal(size=(100, 4))  # label written in the features
    noise = rng.normal(size=(100, 20))  # independent of the labels
    assert vf.linear_probe(planted, labels, seed=0) == pytest.approx(1.0)
    # A probe that peeked at its test folds would fit noise far above chance.
    assert vf.linear_probe(noise, labels, seed=0) < 0.45


def test_linear_probe_rejects_unusable_labels():
    x = np.zeros((6, 2))
    with pytest.raises(ValueError, match="single value"):
        vf.linear_probe(x, np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="rarest label has 1"):
        vf.linear_probe(x, np.array([0, 0, 0, 0, 0, 1]))


def test_probe_table_columns_mask_and_chance():
    rng = np.random.default_rng(1)
    colour = np.tile(np.arange(3), 20)  # 60 items
    feats = np.eye(3)[colour] + 0.01 * rng.normal(size=(60, 3))
    mask = np.ones(60, dtype=bool)
    mask[:6] = False  # drops two items of each colour
    table = vf.probe_table({"img": feats, "noise": rng.normal(size=(60, 5))}, {"colour": colour},
                           {"colour": "image"}, mask=mask)
    assert list(table.columns) == ["planted in", "values", "chance", "img", "noise"]
    assert table.loc["colour", "planted in"] == "image"
    assert table.loc["colour", "values"] == 3
    assert table.loc["colour", "chance"] == pytest.approx(18 / 54)
    assert table.loc["colour", "img"] == pytest.approx(1.0)


def test_retrieval_ranks_by_hand():
    # Query i should find gallery row i. Cosines, by hand:
    # q0=(1,0):  g0=(1,0) 1.0,  g1=(0,1) 0.0,  g2=(1,1)/sqrt2 0.707  -> rank 1
    # q1=(1,0):  own g1 0.0; g0 1.0 and g2 0.707 beat it                -> rank 3
    # q2=(0,1):  own g2 0.707; g1 1.0 beats it, g0 0.0 does not          -> rank 2
    queries = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    gallery = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    assert vf.retrieval_ranks(queries, gallery).tolist() == [1, 3, 2]
    out = vf.retrieval_at_k(queries, gallery, ks=(1, 2))
    assert out["top-1"] == pytest.approx(1 / 3)
    assert out["top-2"] == pytest.approx(2 / 3)
    assert out["chance top-1"] == pytest.approx(1 / 3)
    assert out["median rank"] == 2


def test_retrieval_ties_count_against_the_item():
    # A tower that maps every picture to one point retrieves nothing: every item ranks last.
    queries = np.random.default_rng(0).normal(size=(5, 3))
    gallery = np.ones((5, 3))
    assert vf.retrieval_ranks(queries, gallery).tolist() == [5] * 5


def test_retrieval_identity_and_mismatch():
    x = np.random.default_rng(2).normal(size=(30, 8))
    assert vf.retrieval_at_k(x, x, ks=(1,))["top-1"] == 1.0
    table = vf.retrieval_table({"same": (x, x), "shifted": (np.roll(x, 1, axis=0), x)})
    assert table.loc["same", "top-1"] == 1.0
    assert table.loc["shifted", "top-1"] == 0.0  # each title's own picture is another item's
    with pytest.raises(ValueError, match="one space"):
        vf.retrieval_ranks(x, x[:, :4])


def test_modality_gap_by_hand():
    image = np.array([[2.0, 0.0, 0.0], [0.5, 0.0, 0.0]])  # all along e1 after normalisation
    text = np.array([[0.0, 3.0, 0.0], [0.0, 1.0, 0.0], [0.0, 7.0, 0.0]])  # all along e2
    assert vf.modality_gap(image, text) == pytest.approx(np.sqrt(2.0))
    assert vf.modality_gap(image, image * 4.0) == pytest.approx(0.0)
    # centroids (1,0) and (0.5, 0.5): distance sqrt(0.5)
    assert vf.modality_gap(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])) == \
        pytest.approx(np.sqrt(0.5))
    with pytest.raises(ValueError, match="one space"):
        vf.modality_gap(image, text[:, :2])


def test_umap_embedding_refuses_different_widths():
    with pytest.raises(ValueError, match="do not share a space"):
        vf.umap_embedding(np.zeros((4, 3)), np.zeros((4, 2)))


def test_modality_gap_figure_draws_every_item_once_per_modality():
    rng = np.random.default_rng(3)
    image, text = rng.normal(size=(12, 4)), rng.normal(size=(12, 4)) + 3.0

    def first_two(img, txt, seed):  # a stand-in for UMAP: the first two coordinates
        return np.vstack([img, txt])[:, :2]

    fig = vf.modality_gap_figure({"A": (image, text), "B": (image, image)}, n_pairs=5, embed=first_two)
    left, right = fig.axes[0], fig.axes[1]
    sizes = [len(c.get_offsets()) for c in left.collections]
    assert sizes == [12, 12]
    np.testing.assert_allclose(left.collections[0].get_offsets(), image[:, :2])
    assert len(left.lines) == 5  # picture-title links
    assert f"{vf.modality_gap(image, text):.2f}" in left.get_title()
    assert "0.00" in right.get_title()


def test_imputation_table_checks_what_was_imputed(tmp_path):
    image = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    image[3] = image[:3].mean(axis=0)  # item 3 has no picture: the mean of the others, (2, 1)
    text = np.array([[1, 1], [5, 5], [9, 9], [5, 5]], dtype=np.float32)  # items 1, 3: no title
    data = fake_dataset(tmp_path, [5, 5, 5, None], ["a", "", "c", ""],
                        features={"image": image, "text": text})
    table = vf.imputation_table(data, "no title")
    assert table.loc["image", "missing"] == 1
    assert table.loc["text", "missing"] == 2
    assert table.loc["image", "max |row - expected|"] == 0.0
    assert table.loc["text", "max |row - expected|"] == 0.0
    assert table.loc["text", "example items"] == "i1, i3"
    data.features["text"][3] = [5, 6]  # the two placeholder rows no longer agree
    data.features["image"][3] = [2, 4]
    table = vf.imputation_table(data, "no title")
    assert table.loc["text", "max |row - expected|"] == pytest.approx(1.0)
    assert table.loc["image", "max |row - expected|"] == pytest.approx(3.0)


def test_encoding_costs_this_run_and_from_cache(tmp_path):
    features = {"image": np.zeros((3, 4), np.float32), "text": np.zeros((3, 2), np.float32)}
    data = fake_dataset(tmp_path, [100, 250, None], ["a", "b", "c"], features=features)
    assert vf.image_bytes_on_disk(data) == 350
    summary = SimpleNamespace(encoder="enc", seconds=1.5, device="cpu", cache_hit=False, cache_path=None,
                              image_dim=4, text_dim=2)
    costs = vf.encoding_costs(data, summary)
    assert costs["features, bytes per item"] == (4 + 2) * 4
    assert costs["features, MB"] == pytest.approx(72 / 1e6)
    assert costs["raw pictures on disk, MB"] == pytest.approx(350 / 1e6)
    assert costs["raw pictures / features"] == pytest.approx(350 / 72, rel=1e-2)
    assert costs["encoding seconds (this run)"] == 1.5
    assert costs["items per second"] == 2.0
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "meta.json").write_text(json.dumps({"seconds_to_encode": 6.0, "device": "cuda"}))
    hit = SimpleNamespace(**{**vars(summary), "cache_hit": True, "cache_path": str(cache), "seconds": 0.01})
    costs = vf.encoding_costs(data, hit)
    assert costs["encoding seconds (when cached)"] == 6.0
    assert costs["items per second"] == 0.5
    assert costs["device"] == "cuda"


def test_shared_label_ceiling_by_hand():
    # labels a,a,b,b,b,c: s = 2,2,3,3,3,1. top-1: mean(1/2,1/2,1/3,1/3,1/3,1) = 3/6
    labels = np.array(["a", "a", "b", "b", "b", "c"])
    out = vf.shared_label_ceiling(labels, ks=(1, 2))
    assert out["ceiling top-1"] == pytest.approx(0.5)
    assert out["ceiling top-2"] == pytest.approx((1 + 1 + 2 / 3 * 3 + 1) / 6)


def test_same_label_at_k_by_hand():
    # Pictures along two directions; titles point at the pictures of their own label (0: e1, 1: e2),
    # except title 3, which points at label 0's pictures.
    gallery = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    queries = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 0, 1, 1])
    out = vf.same_label_at_k(queries, gallery, labels, k=2)
    assert out["same label in top-2"] == pytest.approx(3 / 4)  # rows 0, 1, 2 perfect, row 3 none
    assert out["chance same label in top-2"] == pytest.approx(0.5)


def test_retrieval_table_with_shared_attribute_and_mask():
    x = np.random.default_rng(4).normal(size=(8, 3))
    style = np.array([0, 0, 0, 0, 1, 1, 1, 9])
    mask = np.array([True] * 7 + [False])
    table = vf.retrieval_table({"same": (x, x)}, mask=mask, ks=(1, 2), shared=style)
    assert table.loc["same", "items"] == 7
    assert table.loc["same", "ceiling top-1"] == pytest.approx((4 * 0.25 + 3 / 3) / 7)
    assert table.loc["same", "top-1"] == 1.0
    assert list(table.columns)[:4] == ["items", "top-1", "chance top-1", "ceiling top-1"]


def test_encoding_costs_counts_the_features_it_is_given(tmp_path):
    data = fake_dataset(tmp_path, [10], ["a"], features={"image": np.zeros((1, 4), np.float32),
                                                          "text": np.zeros((1, 4), np.float32)})
    summary = SimpleNamespace(encoder="other", seconds=1.0, device="cpu", cache_hit=False, cache_path=None,
                              image_dim=2, text_dim=2)
    own = {"image": np.zeros((1, 2), np.float32), "text": np.zeros((1, 2), np.float32)}
    costs = vf.encoding_costs(data, summary, features=own)
    assert costs.name == "other"
    assert costs["features, bytes per item"] == 16


def test_gap_table_by_hand():
    image = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    text = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 1.0], [0.0, 3.0]])
    table = vf.gap_table({"apart": (image, text)})
    row = table.loc["apart"]
    assert row["gap: pictures vs titles"] == pytest.approx(np.sqrt(2.0))
    assert row["gap: half vs half of the pictures"] == pytest.approx(0.0)
    assert row["mean cosine within pictures"] == pytest.approx(1.0)
    assert row["mean cosine within titles"] == pytest.approx(1.0)
    assert row["mean cosine picture-title"] == pytest.approx(0.0)
