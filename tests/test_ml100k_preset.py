"""The ml-100k preset and the split's tie rule.

The oracle of ``ties="file"`` is what the PFedRec and FedRAP codes run: pandas
``groupby(user).timestamp.rank(method="first", ascending=False)`` on the ratings in file order,
rank 1 = test, rank 2 = validation. Tests use written fixtures and, when present, a slice of the
real ../shared/data/ml-100k (skipped when absent)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import ml100k
from fedmm_lite.data import build_dataset, converters, load_dataset, read_folder, register_converter
from fedmm_lite.errors import DatasetError, OptionError

REAL_RATINGS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k" / "ratings.dat"


def official_split(ratings: pd.DataFrame) -> tuple[dict, dict]:
    """(user -> test item, user -> validation item) as the official codes hold them out."""
    ranked = ratings.assign(rank=ratings.groupby("user")["timestamp"].rank(method="first",
                                                                          ascending=False))
    test = dict(zip(ranked[ranked["rank"] == 1]["user"], ranked[ranked["rank"] == 1]["item"]))
    valid = dict(zip(ranked[ranked["rank"] == 2]["user"], ranked[ranked["rank"] == 2]["item"]))
    return test, valid


def held_out(dataset) -> tuple[dict, dict]:
    """(user id -> test item id, user id -> validation item id) of a loaded dataset."""
    users, items = dataset.user_ids, dataset.item_ids
    return ({int(u): int(items[i]) for u, i in zip(users, dataset.test_items)},
            {int(u): int(items[i]) for u, i in zip(users, dataset.valid_items)})


# file order: user 1's newest second holds items 5, 7, 3 (in this order); user 2's second newest
# second holds items 2 and 4
ROWS = [("1", "10", "100"), ("1", "11", "50"), ("1", "5", "300"), ("1", "7", "300"),
        ("1", "3", "300"), ("2", "1", "10"), ("2", "2", "20"), ("2", "4", "20"), ("2", "6", "30")]
ITEMS = [(i, f"t{i}", "") for i in ("1", "2", "3", "4", "5", "6", "7", "10", "11")]


def test_ties_by_file_order_and_by_item_id(make_folder):
    raw = read_folder(make_folder(ROWS, ITEMS))
    by_file = build_dataset(raw, ties="file", check_images=False)
    by_item = build_dataset(raw, ties="item", check_images=False)
    # file: the earliest row among ties is the newest (the official codes' rank(method='first'))
    assert held_out(by_file) == ({1: 5, 2: 6}, {1: 7, 2: 2})
    # item: the larger item id is the newest
    assert held_out(by_item) == ({1: 7, 2: 6}, {1: 5, 2: 4})
    frame = pd.DataFrame(ROWS, columns=["user", "item", "timestamp"]).astype(int)
    assert held_out(by_file) == official_split(frame)
    train = lambda d, u: sorted(int(d.item_ids[i]) for i in d.train_items(u))  # noqa: E731
    assert train(by_file, 0) == [3, 10, 11] and train(by_item, 0) == [3, 10, 11]
    with pytest.raises(OptionError, match="ties='newest'"):
        build_dataset(raw, ties="newest")


def write_ratings_dat(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def tied_ratings(n_users: int = 30, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """user,item,rating,timestamp rows in a shuffled file order, half of them in shared seconds."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(np.arange(1, 80), size=int(rng.integers(4, 12)), replace=False)
        stamps = rng.integers(1000, 1004, size=len(items))          # few distinct seconds: ties
        rows += [(u, int(i), int(rng.integers(1, 6)), int(t)) for i, t in zip(items, stamps)]
    order = rng.permutation(len(rows))
    return [rows[k] for k in order]


@pytest.fixture
def ml100k_preset(monkeypatch, tmp_path):
    """The preset with the converter registered in Python (the installed entry point may predate
    it) and a fresh data home; returns (raw folder, list of conversion calls)."""
    monkeypatch.setattr(converters, "_registered", {})
    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path / "home"))
    raw = tmp_path / "raw"
    monkeypatch.setenv("FEDMM_ML100K", str(raw))
    calls = []

    def convert(raw_dir, out_dir):
        calls.append(Path(raw_dir))
        return ml100k.convert(raw_dir, out_dir)

    register_converter("ml-100k", convert)
    return raw, calls


def test_the_preset_converts_once_and_splits_like_the_official_codes(ml100k_preset):
    raw, calls = ml100k_preset
    rows = tied_ratings()
    write_ratings_dat(raw / "ratings.dat", rows)
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    by_file = load_dataset("ml-100k", ties="file")
    by_item = load_dataset("ml-100k")
    assert calls == [raw]                                  # converted once, then read from the home
    assert by_file.name == "ml-100k" and by_file.n_users == 30
    assert by_file.n_train + 2 * by_file.n_users == len(rows)   # every rating kept, no k-core
    assert held_out(by_file) == official_split(frame)
    assert held_out(by_item) != held_out(by_file)          # the fixture's ties do matter


def test_the_converter_keeps_the_file_order_of_tied_ratings(tmp_path):
    rows = [(1, 9, 5, 100), (1, 2, 5, 100), (1, 5, 5, 100), (1, 1, 3, 50)]
    folder = ml100k.convert(write_ratings_dat(tmp_path / "ratings.dat", rows), tmp_path / "out")
    with open(folder / "interactions.csv", newline="") as f:
        written = [(r["item_id"], r["timestamp"]) for r in csv.DictReader(f)]
    assert written == [("1", "50"), ("9", "100"), ("2", "100"), ("5", "100")]


def test_a_missing_raw_folder_is_one_line(ml100k_preset, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDMM_ML100K", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError) as err:
        load_dataset("ml-100k")
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"ml-100k: raw data not found ($FEDMM_ML100K={tmp_path / 'nowhere'} is not a folder)")


@pytest.mark.skipif(not REAL_RATINGS.is_file(), reason="../shared/data/ml-100k absent")
def test_a_slice_of_the_real_ml100k_splits_like_the_official_codes(ml100k_preset):
    raw, _ = ml100k_preset
    frame = pd.read_csv(REAL_RATINGS, header=None, names=["user", "item", "rating", "timestamp"])
    frame = frame[frame["user"] <= 120]                    # a slice: the first 120 users, file order
    write_ratings_dat(raw / "ratings.dat", frame.itertuples(index=False))
    dataset = load_dataset("ml-100k", ties="file")
    assert dataset.n_users == 120
    assert held_out(dataset) == official_split(frame)
