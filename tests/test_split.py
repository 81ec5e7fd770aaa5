"""Filtering and the leave-one-out split, against hand-written examples and a brute-force k-core."""
from __future__ import annotations

import numpy as np
import pytest

from fedmm_lite.data import build_dataset, read_folder
from fedmm_lite.errors import DatasetError, OptionError


def _items(ids):
    return [(i, f"title {i}", "") for i in ids]


def _all_pairs(dataset):
    """Every (user id, item id) pair of the split: train, valid and test."""
    pairs = set()
    for u in range(dataset.n_users):
        for i in list(dataset.train_items(u)) + [dataset.valid_items[u], dataset.test_items[u]]:
            pairs.add((dataset.user_ids[u], dataset.item_ids[i]))
    return pairs


def test_leave_one_out_hand_written(make_folder):
    interactions = [
        # u1: c and d tie at the newest timestamp: the larger item id (d) counts as newer -> test
        ("u1", "a", 1), ("u1", "c", 3), ("u1", "b", 2), ("u1", "d", 3),
        # u2: rows out of order; by time e(1) a(5) b(7) c(10)
        ("u2", "c", 10), ("u2", "a", 5), ("u2", "b", 7), ("u2", "e", 1),
        # u3: (u3, a) twice: the earliest (1) is kept, so a is a train item, not the test item
        ("u3", "a", 4), ("u3", "b", 2), ("u3", "c", 3), ("u3", "a", 1),
        # u4: two interactions, too few for leave-one-out -> dropped; f is then unused
        ("u4", "a", 1), ("u4", "f", 2),
    ]
    dataset = build_dataset(read_folder(make_folder(interactions, _items("abcdefg"))), check_images=False)
    assert dataset.name == "data"
    assert dataset.user_ids.tolist() == ["u1", "u2", "u3"]
    assert dataset.item_ids.tolist() == ["a", "b", "c", "d", "e"]  # f (u4 only) and g (never) dropped
    a, b, c, d, e = range(5)
    assert dataset.test_items.tolist() == [d, c, c]
    assert dataset.valid_items.tolist() == [c, b, b]
    assert dataset.train_indptr.tolist() == [0, 2, 4, 5]
    assert dataset.train_indices.tolist() == [a, b, a, e, a]
    assert dataset.train_indices.dtype == np.int64 and dataset.test_items.dtype == np.int64
    assert dataset.titles == ["title a", "title b", "title c", "title d", "title e"]
    report = dataset.report
    assert report.interactions_read == 14
    assert report.duplicate_interactions_removed == 1
    assert report.users_dropped_too_few == 1
    assert report.items_without_interactions == 2
    assert (report.users_dropped_kcore, report.items_dropped_kcore) == (0, 0)
    stats = dataset.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 5, 11)
    assert stats["sparsity"] == pytest.approx(1 - 11 / 15)


def test_ties_follow_numeric_item_order(make_folder):
    # ids that are all integers sort numerically: 10 > 9, so 10 is the test item of the tie
    interactions = [("1", "9", 5), ("1", "10", 5), ("1", "2", 1), ("1", "100", 0)]
    dataset = build_dataset(read_folder(make_folder(interactions, _items(["2", "9", "10", "100"]))),
                            check_images=False)
    assert dataset.item_ids.tolist() == ["2", "9", "10", "100"]
    assert dataset.item_ids[dataset.test_items[0]] == "10"
    assert dataset.item_ids[dataset.valid_items[0]] == "9"


def test_user_and_item_order_is_sorted_id(make_folder):
    users = ["10", "9", "100", "07", "7"]  # all integers: numeric order, ties (07, 7) by text
    interactions = [(u, i, t) for u in users for t, i in enumerate(["x", "y", "z"])]
    dataset = build_dataset(read_folder(make_folder(interactions, _items(["z", "y", "x"]))),
                            check_images=False)
    assert dataset.user_ids.tolist() == ["07", "7", "9", "10", "100"]
    assert dataset.item_ids.tolist() == ["x", "y", "z"]  # text ids: plain text order


def test_users_with_too_few_interactions_are_dropped_and_counted(make_folder):
    interactions = [(f"u{u}", f"i{j}", j) for u in range(6) for j in range(3 + u)]
    raw = read_folder(make_folder(interactions, _items([f"i{j}" for j in range(8)])))
    dataset = build_dataset(raw, min_user_interactions=5, check_images=False)
    assert dataset.user_ids.tolist() == ["u2", "u3", "u4", "u5"]
    assert dataset.report.users_dropped_too_few == 2
    assert np.array_equal(dataset.train_sizes, [3, 4, 5, 6])


def test_empty_after_filtering_says_what_dropped(make_folder):
    interactions = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "a", 3)]
    raw = read_folder(make_folder(interactions, _items("ab")))
    with pytest.raises(DatasetError) as err:
        build_dataset(raw)
    assert str(err.value) == ("data: empty after filtering: 4 interactions read (2 users, 2 items with "
                              "interactions); 1 duplicates removed; 2 users had fewer than 3 "
                              "interactions; leave-one-out needs at least 3 interactions per user "
                              "(train, validation, test): add interactions to interactions.csv")
    with pytest.raises(DatasetError) as err:
        build_dataset(raw, k_core=4, min_user_interactions=5, name="x")
    assert str(err.value).startswith("x: empty after filtering: 4 interactions read (2 users, 2 items "
                                     "with interactions); 1 duplicates removed; the 4-core filter "
                                     "dropped 2 users and 2 items; ")
    assert str(err.value).endswith("; or, in Python, load a weaker filter: load_dataset(..., k_core=0, "
                                   "min_user_interactions=3)")


def test_empty_dataset_hint_names_no_command_line_option(make_folder):
    """The command line has no option that changes the filters: the hint must not invent one."""
    raw = read_folder(make_folder([("u1", "a", 1), ("u1", "b", 2)], _items("ab")))
    for options in ({}, {"k_core": 2}, {"min_user_interactions": 4}):
        with pytest.raises(DatasetError) as err:
            build_dataset(raw, **options)
        message = str(err.value)
        assert "--" not in message and "\n" not in message
        if options:
            assert f"load_dataset(..., " in message


def test_integer_timestamps_near_1e18_stay_exact(make_folder):
    """Float64 spaces numbers near 1e18 by 128: a+3, a+2, a+1, a would tie and the largest item id
    (d, the oldest) would become the test item. Kept as int64, a is the newest."""
    t0 = 10**18
    interactions = [("u1", "a", t0 + 3), ("u1", "b", t0 + 2), ("u1", "c", t0 + 1), ("u1", "d", t0)]
    raw = read_folder(make_folder(interactions, _items("abcd")))
    assert raw.interactions["timestamp"].dtype == np.int64
    assert raw.interactions["timestamp"].tolist() == [t0 + 3, t0 + 2, t0 + 1, t0]
    dataset = build_dataset(raw)
    assert dataset.item_ids[dataset.test_items[0]] == "a"
    assert dataset.item_ids[dataset.valid_items[0]] == "b"
    assert dataset.item_ids[dataset.train_items(0)].tolist() == ["c", "d"]


def test_timestamps_with_fractions_are_floats(make_folder):
    interactions = [("u1", "a", "2.5"), ("u1", "b", "2"), ("u1", "c", "-1e3")]
    raw = read_folder(make_folder(interactions, _items("abc")))
    assert raw.interactions["timestamp"].dtype == np.float64
    assert raw.interactions["timestamp"].tolist() == [2.5, 2.0, -1000.0]
    dataset = build_dataset(raw)
    assert dataset.item_ids[dataset.test_items[0]] == "a"


def test_integer_timestamp_beyond_int64_is_named(make_folder):
    interactions = [("u1", "a", 1), ("u1", "b", 2**63), ("u1", "c", 3)]
    root = make_folder(interactions, _items("abc"))
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert str(err.value) == (f"{root / 'interactions.csv'} line 3: timestamp '{2**63}' does not fit a "
                              f"64-bit integer (at most {2**63 - 1})")


def test_min_user_interactions_below_three_is_an_option_error(tiny_folder):
    with pytest.raises(OptionError, match=r"min_user_interactions=2: leave-one-out needs at least 3"):
        build_dataset(read_folder(tiny_folder), min_user_interactions=2)


def _brute_force_k_core(pairs, k):
    pairs = set(pairs)
    while True:
        user_count, item_count = {}, {}
        for u, i in pairs:
            user_count[u] = user_count.get(u, 0) + 1
            item_count[i] = item_count.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if user_count[u] >= k and item_count[i] >= k}
        if kept == pairs:
            return pairs
        pairs = kept


@pytest.mark.parametrize("k,seed", [(3, 0), (4, 1), (5, 2), (6, 3)])
def test_k_core_matches_brute_force(make_folder, k, seed):
    rng = np.random.default_rng(seed)
    # skewed popularity so that the filter needs several passes
    users = rng.integers(0, 40, size=400)
    items = np.minimum(rng.geometric(0.08, size=400), 60)
    pairs = sorted({(f"u{u}", f"i{i}") for u, i in zip(users, items)})
    interactions = [(u, i, t) for t, (u, i) in enumerate(pairs)]
    catalogue = _items([f"i{i}" for i in range(61)])
    raw = read_folder(make_folder(interactions, catalogue))
    expected = _brute_force_k_core(pairs, k)
    assert expected, "the example must keep something"
    dataset = build_dataset(raw, k_core=k, check_images=False)
    assert _all_pairs(dataset) == expected
    users_before = {u for u, _ in pairs}
    items_before = {i for _, i in pairs}
    assert dataset.report.users_dropped_kcore == len(users_before) - len({u for u, _ in expected})
    assert dataset.report.items_dropped_kcore == len(items_before) - len({i for _, i in expected})
    assert dataset.report.items_without_interactions == 61 - len(items_before)
    assert dataset.report.users_dropped_too_few == 0
    # the result really is a k-core
    assert min(dataset.train_sizes) + 2 >= k
    assert min(np.bincount([dataset.item_ids.tolist().index(i) for _, i in expected])) >= k


def test_tiny_folder_loads_as_documented(tiny_folder):
    dataset = build_dataset(read_folder(tiny_folder))
    assert dataset.user_ids.tolist() == [f"u{u:02d}" for u in range(12)]
    assert dataset.item_ids.tolist() == [f"i{i:02d}" for i in range(20)]
    users = np.arange(12)
    assert np.array_equal(dataset.test_items, (3 * users + 5) % 20)
    assert np.array_equal(dataset.valid_items, (3 * users + 4) % 20)
    for u in range(12):
        assert dataset.train_items(u).tolist() == sorted((3 * u + j) % 20 for j in range(4))
    assert dataset.report.missing_images == [] and dataset.report.unreadable_images == []
    assert all(p is not None and p.is_file() for p in dataset.image_paths)


def test_missing_and_corrupt_images_are_counted_not_fatal(make_folder):
    items = [("ok1", "fine", "images/ok1.png"),
             ("none", "no image given", ""),
             ("gone", "file absent", "images/gone.png"),
             ("junk", "", "images/junk.png"),          # garbage bytes named .png; empty title
             ("text", "a text file", "images/text.jpg"),
             ("ok2", "fine too", "images/sub/ok2.png")]
    images = {"images/ok1.png": (255, 0, 0), "images/sub/ok2.png": (0, 0, 255),
              "images/junk.png": b"\x89PNG not really an image at all",
              "images/text.jpg": b"hello world\n"}
    interactions = [("u1", i, t) for t, (i, _, _) in enumerate(items)]
    root = make_folder(interactions, items, images)
    dataset = build_dataset(read_folder(root))
    assert dataset.item_ids.tolist() == ["gone", "junk", "none", "ok1", "ok2", "text"]
    assert dataset.report.missing_images == ["gone", "none"]
    assert dataset.report.unreadable_images == ["junk", "text"]
    assert dataset.report.missing_titles == ["junk"]
    assert dataset.image_paths == [None, None, None, root / "images/ok1.png",
                                   root / "images/sub/ok2.png", None]
    stats = dataset.stats()
    assert (stats["missing_images"], stats["missing_titles"]) == (4, 1)
    assert stats["report"]["unreadable_images"] == 2

    unchecked = build_dataset(read_folder(root), check_images=False)
    assert unchecked.report.missing_images == ["gone", "none"]  # absent files still count
    assert unchecked.report.unreadable_images == []
    assert unchecked.image_paths[1] == root / "images/junk.png"
