"""The world generator: determinism, the papers' data shape, the planted signal, ensure_world.

Folders are read back with pandas directly (not through the loader), so these tests check the
written files against the planted ground truth, an oracle independent of the loading code.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedmm_lite.data.world import (WORLD_PRESETS, WorldConfig, ensure_world, generate_world,
                                   load_ground_truth, simulate_world)
from fedmm_lite.errors import DatasetError, OptionError

QUICK = WORLD_PRESETS["quick"]


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_world(folder: Path):
    inter = pd.read_csv(folder / "interactions.csv", dtype={"user_id": str, "item_id": str})
    items = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    return inter, items, load_ground_truth(folder)


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory) -> Path:
    return generate_world(QUICK, 0, tmp_path_factory.mktemp("w") / "world-quick", preset="quick")


def test_same_seed_gives_identical_bytes(quick_world, tmp_path):
    again = generate_world(QUICK, 0, tmp_path / "again", preset="quick")
    first, second = folder_hashes(quick_world), folder_hashes(again)
    assert len(first) > QUICK.n_items // 2          # the images are in the comparison
    assert first == second


def test_different_seed_gives_different_world(quick_world, tmp_path):
    other = folder_hashes(generate_world(QUICK, 1, tmp_path / "other", preset="quick"))
    first = folder_hashes(quick_world)
    for name in ("interactions.csv", "items.csv", "ground_truth.json"):
        assert first[name] != other[name]
    shared_images = [k for k in first if k.startswith("images/") and k in other]
    assert sum(first[k] != other[k] for k in shared_images) > 0.9 * len(shared_images)


def test_quick_world_shape(quick_world):
    inter, items, truth = read_world(quick_world)
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"]
    assert list(items.columns) == ["item_id", "title", "image"]
    assert len(items) == QUICK.n_items and items["item_id"].is_unique
    per_user = inter.groupby("user_id").size()
    assert len(per_user) == QUICK.n_users
    assert per_user.min() >= 5
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert set(inter["item_id"]) <= set(items["item_id"])
    # quick is too small for the papers' sparsity (5 interactions of 140 items is already 3.6%)
    assert 0.90 <= 1 - len(inter) / (QUICK.n_users * QUICK.n_items) <= 0.97
    # timestamps strictly increase within each user, so leave-one-out has no ties
    assert (inter.groupby("user_id")["timestamp"].diff().dropna() > 0).all()


def test_titles_images_and_missing_ones(quick_world):
    _, items, truth = read_world(quick_world)
    no_title = sorted(items.loc[items["title"] == "", "item_id"])
    no_image = sorted(items.loc[items["image"] == "", "item_id"])
    assert no_title == sorted(truth["missing_titles"]) and len(no_title) >= 1
    assert no_image == sorted(truth["missing_images"]) and len(no_image) >= 1
    with_image = items[items["image"] != ""]
    assert truth["n_images"] == len(with_image) == len(list((quick_world / "images").glob("*.png")))
    for rel in with_image["image"].iloc[:5]:
        with Image.open(quick_world / rel) as img:
            assert img.format == "PNG" and img.size == (QUICK.image_size, QUICK.image_size)
    # the title shows the category and the brand, never a colour word (colour is image-only)
    values, attrs = truth["attribute_values"], truth["item_attributes"]
    for iid, title in zip(items["item_id"], items["title"]):
        if title:
            assert values["brand"][attrs["brand"][iid]] in title
            assert not any(colour in title.lower().split() for colour in values["colour"])


def test_ground_truth_keys_and_alignment(quick_world):
    inter, items, truth = read_world(quick_world)
    for key in ("preset", "seed", "generator_version", "group_names", "group_modality",
                "user_group", "attribute_modality", "attribute_values", "item_attributes",
                "user_preference", "description"):
        assert key in truth, key
    assert truth["preset"] == "quick" and truth["seed"] == 0
    assert isinstance(truth["description"], str) and "visual" in truth["description"]
    assert len(truth["group_names"]) == len(truth["group_modality"])
    assert set(truth["group_modality"]) == {"image", "text", "id"}
    assert set(truth["attribute_modality"].values()) == {"image", "text", "both", "id"}
    assert set(truth["user_group"]) == set(inter["user_id"])
    assert set(truth["user_group"].values()) <= set(range(len(truth["group_names"])))
    for attr, modality in truth["attribute_modality"].items():
        mapping = truth["item_attributes"][attr]
        assert set(mapping) == set(items["item_id"])
        assert 0 <= min(mapping.values()) and max(mapping.values()) < len(truth["attribute_values"][attr])
    assert set(truth["user_preference"]) == set(inter["user_id"])


def test_planted_taste_shows_in_interactions(quick_world):
    """Each group's interactions fall on its preferred values far above the catalogue base rate."""
    inter, items, truth = read_world(quick_world)
    group = inter["user_id"].map(truth["user_group"])
    for g, name in enumerate(truth["group_names"]):
        mine = inter.loc[group == g, "item_id"]
        for attr, liked in truth["group_preference"][name].items():
            liked_idx = {truth["attribute_values"][attr].index(v) for v in liked}
            values = truth["item_attributes"][attr]
            share = mine.map(values).isin(liked_idx).mean()
            base = np.mean([v in liked_idx for v in values.values()])
            # pattern and style carry half the weight of the others (TASTE_WEIGHTS): weaker
            margin = 0.0 if attr in ("pattern", "style") else 0.15
            assert share > base + margin, (name, attr, share, base)


def held_out_hit_rate(world, attrs: list[str], k: int = 50) -> np.ndarray:
    """HR@k of each user's newest item under a naive predictor: log(1 + training popularity)
    plus the log-frequency of the item's values of ``attrs`` in the user's training items."""
    order = np.lexsort((world.timestamps, world.users))
    users, items = world.users[order], world.items[order]
    n = world.config.n_items
    bounds = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(users)]
    is_train = np.ones(len(users), dtype=bool)
    is_train[bounds[1:] - 1] = False
    popularity = np.log1p(np.bincount(items[is_train], minlength=n))
    hits = np.zeros(len(bounds) - 1, dtype=bool)
    for u, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        train, target = items[a:b - 1], items[b - 1]
        score = popularity.copy()
        for attr in attrs:
            value = world.item_attributes[attr]
            freq = np.bincount(value[train], minlength=value.max() + 1) + 1.0
            score += np.log(freq / freq.sum())[value]
        score[train] = -np.inf
        rank = 1 + np.sum(np.delete(score >= score[target], target))
        hits[u] = rank <= k
    return hits


def test_content_predicts_the_held_out_item_of_its_own_group_only():
    """On the full preset: image attributes help the visual group, title attributes the textual
    group, co-consumption clusters the ID group; the other content does not help beyond popularity."""
    world = simulate_world(WORLD_PRESETS["full"], np.random.default_rng(0))
    predictors = {"image": ["colour", "shape", "pattern"], "text": ["category", "brand"],
                  "id": ["cluster"]}
    hr = {m: held_out_hit_rate(world, attrs) for m, attrs in predictors.items()}
    hr["popularity"] = held_out_hit_rate(world, [])
    for g, modality in enumerate(world.config.group_modalities):
        mine = world.user_group == g
        base = hr["popularity"][mine].mean()
        assert hr[modality][mine].mean() >= base + 0.08, (modality, hr[modality][mine].mean(), base)
        for other in predictors:
            if other != modality:
                assert hr[other][mine].mean() <= base + 0.03, (modality, other)


@pytest.mark.parametrize("preset", ["full", "large"])
def test_full_and_large_look_like_the_papers_data(preset):
    config = WORLD_PRESETS[preset]
    world = simulate_world(config, np.random.default_rng(0))
    nnz = len(world.items)
    assert 0.97 <= 1 - nnz / (config.n_users * config.n_items) <= 0.997
    per_user = np.bincount(world.users, minlength=config.n_users)
    assert per_user.min() >= 5 and per_user.max() >= 100          # 5 to a few hundred
    per_item = np.bincount(world.items, minlength=config.n_items)
    top = np.sort(per_item)[::-1][: config.n_items // 10].sum()
    assert top / nnz >= 0.35                                        # long tail of popularity
    assert np.mean((per_item >= 1) & (per_item <= 5)) >= 0.25       # many rarely seen items


def test_invalid_configs_raise_named_errors(tmp_path):
    with pytest.raises(OptionError, match="group_modalities"):
        simulate_world(WorldConfig(group_modalities=("smell",)), np.random.default_rng(0))
    with pytest.raises(OptionError, match="preset"):
        ensure_world("huge")


def test_ensure_world_reuses_and_repairs(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path))
    folder = ensure_world("quick", seed=0)
    assert folder == tmp_path / "world-quick-seed0"
    assert load_ground_truth(folder)["generator_version"]
    marker = folder / "features" / "marker.txt"   # stands for an encoder's cache
    marker.parent.mkdir()
    marker.write_text("kept")
    assert ensure_world("quick", seed=0) == folder and marker.exists()   # reused

    next(iter(sorted((folder / "images").glob("*.png")))).unlink()       # incomplete
    assert ensure_world("quick", seed=0) == folder and not marker.exists()
    assert folder_hashes(folder) == folder_hashes(generate_world(QUICK, 0, tmp_path / "ref",
                                                                 preset="quick"))

    truth = json.loads((folder / "ground_truth.json").read_text())
    truth["generator_version"] = "0"                                     # another version
    (folder / "ground_truth.json").write_text(json.dumps(truth))
    marker.parent.mkdir()
    marker.write_text("stale")
    ensure_world("quick", seed=0)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "world-quick-seed0"]  # no temp left


def test_manifest_lists_the_sha256_of_every_file_written(quick_world):
    manifest = json.loads((quick_world / "manifest.json").read_text())
    written = folder_hashes(quick_world)
    del written["manifest.json"]
    assert manifest["files"] == written
    assert len(written) == 3 + len(list((quick_world / "images").glob("*.png")))


def test_a_truncated_world_is_regenerated_and_said_so(tmp_path, monkeypatch, capsys):
    from fedmm_lite.data import load_dataset

    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path))
    folder = ensure_world("quick", seed=0)
    inter = pd.read_csv(folder / "interactions.csv", dtype=str)
    kept = inter[inter["user_id"].isin(sorted(inter["user_id"].unique())[:98])]
    kept.to_csv(folder / "interactions.csv", index=False)  # a well-formed CSV of 98 users
    capsys.readouterr()

    dataset = load_dataset("world-quick")
    assert dataset.n_users == QUICK.n_users == 180
    assert capsys.readouterr().err == (f"{folder}: interactions.csv does not match its sha256 in "
                                       f"manifest.json; regenerating the world from seed 0\n")
    assert folder_hashes(folder) == folder_hashes(generate_world(QUICK, 0, tmp_path / "ref",
                                                                 preset="quick"))
    load_dataset("world-quick")
    assert capsys.readouterr().err == ""  # intact now: reused silently


def test_load_dataset_attaches_aligned_ground_truth(tmp_path, monkeypatch):
    from fedmm_lite.data import load_dataset

    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path))
    dataset = load_dataset("world-quick")
    truth = load_ground_truth(tmp_path / "world-quick-seed0")
    assert len(dataset.user_ids) == QUICK.n_users
    assert list(dataset.ground_truth["user_group"]) == [truth["user_group"][u] for u in dataset.user_ids]
    colour = truth["item_attributes"]["colour"]
    assert list(dataset.ground_truth["item_attributes"]["colour"]) == [colour[i] for i in dataset.item_ids]


def test_true_logits_come_from_the_worlds_own_taste(quick_world):
    """The exposed logits re-draw the taste from the seed: its item attributes and groups are the
    ground truth's; each logit is gamma log pop_i + beta sum_a w pref (a hand sum over attributes);
    and the held-out items' logits exceed those of the items nobody chose (the data was drawn
    from them)."""
    from fedmm_lite.data import world as w

    inter, items, truth = read_world(quick_world)
    config = w.config_of(truth)
    assert config == QUICK
    sim_seq, _ = np.random.SeedSequence(0).spawn(2)
    taste = w._taste(config, np.random.default_rng(sim_seq))
    for attr, mapping in truth["item_attributes"].items():
        assert [mapping[i] for i in w._ids("i", QUICK.n_items)] == list(taste.item_attributes[attr])
    assert [truth["user_group"][u] for u in w._ids("u", QUICK.n_users)] == list(taste.user_group)
    logits = w.true_logits(config, 0)                                        # (U, n)
    assert logits.shape == (QUICK.n_users, QUICK.n_items)
    u, i = 7, 11
    by_hand = -QUICK.popularity_exponent * np.log1p(taste.popularity_rank[i]) + QUICK.beta * sum(
        taste.weighted_pref[a][u, taste.item_attributes[a][i]] for a in taste.values)
    assert logits[u, i] == pytest.approx(by_hand, rel=1e-5)
    content = w.true_logits(config, 0, w.visible_attributes())
    cluster = w.true_logits(config, 0, ("cluster",))
    pop = w.true_logits(config, 0, ())
    assert np.allclose(logits, content + cluster - pop, atol=1e-4)   # the affinity splits by attribute
    chosen = np.zeros_like(logits, dtype=bool)
    chosen[inter["user_id"].str[1:].astype(int), inter["item_id"].str[1:].astype(int)] = True
    assert logits[chosen].mean() > logits[~chosen].mean() + 1.0


def test_dataset_logits_follow_the_datasets_order_and_rank_best(tmp_path, monkeypatch):
    """Aligned to the loaded dataset's users and items; ranking by them beats ranking by the
    content-visible part alone, which beats the popularity term alone (HR@10, test)."""
    from fedmm_lite import metrics
    from fedmm_lite.data import load_dataset
    from fedmm_lite.data import world as w
    import torch

    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path))
    dataset = load_dataset("world-quick")
    full = w.true_logits(QUICK, 0)
    aligned = w.dataset_logits(dataset)
    rows = [int(u[1:]) for u in dataset.user_ids]
    cols = [int(i[1:]) for i in dataset.item_ids]
    assert np.array_equal(aligned, full[np.ix_(rows, cols)])

    def hr10(scores):
        table = torch.as_tensor(scores)
        return metrics.evaluate(lambda users: table[users], dataset, "test", ks=(10,))["hr@10"]

    bayes, content = hr10(aligned), hr10(w.dataset_logits(dataset, w.visible_attributes()))
    assert bayes > content > hr10(w.dataset_logits(dataset, ()))
    dataset.ground_truth = None
    with pytest.raises(DatasetError, match="no world ground truth"):
        w.dataset_logits(dataset)
