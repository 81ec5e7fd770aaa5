"""Reading a dataset folder: every bad input names the file, the line and the problem; presets."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from conftest import write_png
from fedmm_lite.data import converters, load_dataset, read_folder, register_converter
from fedmm_lite.data.sources import PRESETS
from fedmm_lite.errors import DatasetError

ITEMS = [("a", "Apple", ""), ("b", "Banana", ""), ("c", "Cherry", "")]
INTER = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3)]


def test_reads_ids_as_text_and_keeps_empty_fields(make_folder):
    root = make_folder([("007", "01", "5"), ("7", "01", "6.5")], [("01", "", ""), ("1", "NA", "x.png")])
    raw = read_folder(root)
    assert raw.root == root
    assert raw.interactions["user_id"].tolist() == ["007", "7"]
    assert raw.interactions["item_id"].tolist() == ["01", "01"]
    assert raw.interactions["timestamp"].tolist() == [5.0, 6.5]
    assert raw.interactions["timestamp"].dtype == np.float64
    assert raw.items["item_id"].tolist() == ["01", "1"]
    assert raw.items["title"].tolist() == ["", "NA"]  # "NA" is a title, not a missing value
    assert raw.items["image"].tolist() == ["", "x.png"]


def test_extra_columns_are_ignored(make_folder):
    root = make_folder([{"user_id": "u", "item_id": "a", "timestamp": 1, "rating": 5}],
                       [{"item_id": "a", "title": "A", "image": "", "genre": "x"}])
    raw = read_folder(root)
    assert list(raw.interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert list(raw.items.columns) == ["item_id", "title", "image"]


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: dataset folder not found"):
        read_folder(tmp_path / "nowhere")


@pytest.mark.parametrize("absent", ["interactions.csv", "items.csv"])
def test_missing_file(make_folder, absent):
    root = make_folder(None if absent == "interactions.csv" else INTER,
                       None if absent == "items.csv" else ITEMS)
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert str(err.value) == (f"{root / absent}: file not found (expected a CSV with columns "
                              + ("user_id,item_id,timestamp" if absent == "interactions.csv"
                                 else "item_id,title,image") + ")")


def test_missing_column(make_folder):
    root = make_folder(INTER, [{"item_id": "a", "image": ""}])
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert str(err.value) == (f"{root / 'items.csv'} line 1 (header): missing column 'title' "
                              f"(found item_id,image; expected item_id,title,image)")


def test_missing_column_in_interactions(make_folder):
    root = make_folder([{"user": "u1", "item_id": "a", "timestamp": 1}], ITEMS)
    with pytest.raises(DatasetError, match=r"interactions\.csv line 1 \(header\): missing column 'user_id'"):
        read_folder(root)


def test_duplicate_item_id(make_folder):
    items = ITEMS + [("d", "Date", ""), ("b", "Blueberry", "")]
    root = make_folder(INTER, items)
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    # header = line 1, so the 5th data row is line 6 and the first 'b' (2nd data row) is line 3
    assert str(err.value) == f"{root / 'items.csv'} line 6: duplicate item_id 'b' (first listed at line 3)"


def test_unknown_item_id(make_folder):
    root = make_folder(INTER + [("u2", "zz", 4), ("u2", "yy", 5)], ITEMS)
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert str(err.value) == (f"{root / 'interactions.csv'} line 5: unknown item_id 'zz' (not listed in "
                              f"items.csv; 2 interaction(s) with unknown items)")


@pytest.mark.parametrize("bad", ["yesterday", "", "nan", "inf"])
def test_non_numeric_timestamp(make_folder, bad):
    root = make_folder([("u1", "a", 1), ("u1", "b", bad), ("u1", "c", 3)], ITEMS)
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert str(err.value) == (f"{root / 'interactions.csv'} line 3: timestamp '{bad}' is not a number "
                              f"(expected e.g. seconds since 1970; 1 bad row(s))")


@pytest.mark.parametrize("name", ["interactions.csv", "items.csv"])
def test_empty_file(make_folder, name):
    root = make_folder(INTER, ITEMS)
    (root / name).write_text("")
    with pytest.raises(DatasetError, match=rf"{name}: empty file \(expected a header line"):
        read_folder(root)


def test_header_only_file(make_folder):
    root = make_folder([], ITEMS)
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert str(err.value) == f"{root / 'interactions.csv'}: empty file (a header line but no data rows)"


def test_empty_user_id(make_folder):
    root = make_folder([("u1", "a", 1), ("", "b", 2)], ITEMS)
    with pytest.raises(DatasetError, match=r"interactions\.csv line 3: empty user_id \(1 row\(s\)"):
        read_folder(root)


def test_ragged_row_is_a_parse_error(make_folder):
    root = make_folder(INTER, ITEMS)
    with open(root / "interactions.csv", "a") as f:
        f.write("u1,a,1,extra\n")
    with pytest.raises(DatasetError, match=r"interactions\.csv: cannot parse the CSV: .*line 5"):
        read_folder(root)


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"f\.txt: not a folder"):
        read_folder(tmp_path / "f.txt")


def test_non_utf8_file_names_the_line_and_the_byte(make_folder):
    root = make_folder(INTER, ITEMS)
    lines = (root / "items.csv").read_bytes().splitlines(keepends=True)
    lines.append(b"d,Caf\xe9 au lait,\n")  # latin-1, not UTF-8: the file's line 5
    (root / "items.csv").write_bytes(b"".join(lines))
    offset = sum(len(line) for line in lines[:4]) + len(b"d,Caf")  # 0-based offset of the bad byte
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert str(err.value) == (f"{root / 'items.csv'} line 5: not UTF-8 text (byte 0xe9 at byte offset "
                              f"{offset}); save the file as UTF-8")


def test_non_utf8_far_into_a_large_file(make_folder):
    """pandas decodes in blocks: the offset must still count from the start of the file."""
    rows = [(f"u{k}", "abc"[k % 3], k) for k in range(20000)]
    root = make_folder(rows, ITEMS)
    with open(root / "interactions.csv", "ab") as f:
        f.write(b"u\xff,a,5\n")
    offset = (root / "interactions.csv").read_bytes().index(b"\xff")
    with pytest.raises(DatasetError) as err:
        read_folder(root)
    assert f"line {len(rows) + 2}: not UTF-8 text (byte 0xff at byte offset {offset})" in str(err.value)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link_out"])
def test_image_path_outside_the_folder_is_refused(make_folder, tmp_path, how):
    secret = tmp_path / "secret.png"  # a real picture outside the dataset folder
    write_png(secret, (1, 2, 3))
    image = {"dotdot": "../secret.png", "absolute": str(secret), "link_out": "images/link.png"}[how]
    items = [("a", "Apple", "images/a.png"), ("b", "Banana", image), ("c", "Cherry", "")]
    root = make_folder(INTER, items, {"images/a.png": (9, 9, 9)})
    if how == "link_out":
        (root / "images" / "link.png").symlink_to(secret)
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    assert str(err.value) == (f"{root / 'items.csv'} line 3: image '{image}' leads outside the dataset "
                              f"folder {root} (through '..', an absolute path or a link); image paths "
                              f"must stay inside it")


def test_image_paths_inside_the_folder_are_accepted(make_folder):
    items = [("a", "Apple", "images/a.png"), ("b", "Banana", "images/../images/b.png"),
             ("c", "Cherry", "images/link.png")]
    root = make_folder(INTER, items, {"images/a.png": (9, 9, 9), "images/b.png": (8, 8, 8)})
    (root / "images" / "link.png").symlink_to(root / "images" / "a.png")
    dataset = load_dataset(root)
    assert dataset.report.missing_images == [] and dataset.report.unreadable_images == []


# ---- load_dataset ---------------------------------------------------------------------------

def test_load_folder_path(tiny_folder):
    dataset = load_dataset(tiny_folder)
    assert dataset.name == "tiny"
    assert (dataset.n_users, dataset.n_items, dataset.n_train) == (12, 20, 48)
    dataset_from_str = load_dataset(str(tiny_folder))
    assert np.array_equal(dataset_from_str.train_indices, dataset.train_indices)


def test_load_folder_options_are_passed(tiny_folder):
    with pytest.raises(DatasetError, match="empty after filtering"):
        load_dataset(tiny_folder, min_user_interactions=7)


def test_unknown_source_lists_presets(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("no-such-dataset")
    message = str(err.value)
    assert message.startswith("unknown dataset 'no-such-dataset': not a preset (")
    assert "\n" not in message
    for preset in PRESETS:
        assert preset in message


def test_movielens_absent_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDMM_MOVIELENS_POSTERS", str(tmp_path / "absent"))
    with pytest.raises(DatasetError) as err:
        load_dataset("movielens-posters")
    assert "movielens-posters: raw data not found" in str(err.value)
    assert "FEDMM_MOVIELENS_POSTERS" in str(err.value)


@pytest.fixture
def fake_world(monkeypatch, tiny_folder):
    """Stand-in for data/world.py: serves ``tiny_folder`` plus a ground_truth.json keyed by ids."""
    truth = {
        "group_names": ["visual", "textual"],
        "group_modality": ["image", "text"],
        # deliberately listed in reverse id order: alignment must follow the dataset's indices
        "user_group": {f"u{u:02d}": u % 2 for u in reversed(range(12))},
        "attribute_modality": {"colour": "image"},
        "attribute_values": {"colour": ["red", "green", "blue", "yellow"]},
        "item_attributes": {"colour": {f"i{i:02d}": i % 4 for i in reversed(range(20))}},
        "note": "passed through",
    }
    (tiny_folder / "ground_truth.json").write_text(json.dumps(truth))
    calls = []

    def ensure_world(preset, seed=0):
        calls.append((preset, seed))
        return tiny_folder

    def load_ground_truth(folder):
        return json.loads((folder / "ground_truth.json").read_text())

    module = types.ModuleType("fedmm_lite.data.world")
    module.ensure_world, module.load_ground_truth = ensure_world, load_ground_truth
    monkeypatch.setitem(sys.modules, "fedmm_lite.data.world", module)
    return calls


def test_world_ground_truth_is_aligned_to_indices(fake_world):
    dataset = load_dataset("world-large", seed=3)
    assert fake_world == [("large", 3)]
    assert dataset.name == "world-large"
    truth = dataset.ground_truth
    expected_groups = np.array([int(u[1:]) % 2 for u in dataset.user_ids])
    assert np.array_equal(truth["user_group"], expected_groups)
    assert truth["user_group"].shape == (dataset.n_users,)
    expected_colour = np.array([int(i[1:]) % 4 for i in dataset.item_ids])
    assert np.array_equal(truth["item_attributes"]["colour"], expected_colour)
    assert truth["group_names"] == ["visual", "textual"]
    assert truth["group_modality"] == ["image", "text"]
    assert truth["attribute_modality"] == {"colour": "image"}
    assert truth["attribute_values"]["colour"][0] == "red"
    assert truth["note"] == "passed through"


def test_world_follows_quick_mode(fake_world, monkeypatch):
    monkeypatch.setenv("FEDMM_QUICK", "1")
    assert load_dataset("world").name == "world-quick"
    monkeypatch.setenv("FEDMM_QUICK", "0")
    assert load_dataset("world").name == "world-full"
    assert fake_world == [("quick", 0), ("full", 0)]


def test_world_ground_truth_missing_user(fake_world, tiny_folder):
    truth = json.loads((tiny_folder / "ground_truth.json").read_text())
    del truth["user_group"]["u05"]
    (tiny_folder / "ground_truth.json").write_text(json.dumps(truth))
    with pytest.raises(DatasetError, match=r"ground_truth\.json: user_group has no entry for user 'u05'"):
        load_dataset("world-quick")


def test_movielens_conversion_is_atomic_and_cached(monkeypatch, tmp_path, tiny_folder, capsys):
    """A failed conversion leaves nothing behind; a finished one is reused, not redone."""
    import shutil

    monkeypatch.setenv("FEDMM_DATA_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("FEDMM_MOVIELENS_POSTERS", str(tmp_path))  # exists; the fake ignores it
    calls = []

    def convert(raw_dir, out_dir):
        calls.append(out_dir)
        shutil.copytree(tiny_folder, out_dir)
        print("converter chatter")  # must not reach stdout (info prints JSON there)
        if len(calls) == 1:
            raise KeyboardInterrupt  # interrupted half-way
        return out_dir

    monkeypatch.setattr(converters, "_registered", {})
    register_converter("movielens-posters", convert)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("movielens-posters")
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == []
    dataset = load_dataset("movielens-posters", k_core=0)  # the tiny folder has no 5-core
    assert dataset.name == "movielens-posters"
    assert dataset.root == tmp_path / "home" / "movielens-posters"
    assert (dataset.n_users, dataset.n_items) == (12, 20)
    again = load_dataset("movielens-posters", k_core=0)
    assert len(calls) == 2
    captured = capsys.readouterr()
    assert "converter chatter" not in captured.out and "converter chatter" in captured.err
    assert np.array_equal(again.train_indices, dataset.train_indices)


def test_movielens_posters_real_data(monkeypatch):
    from data_prep.movielens_posters import convert
    from fedmm_lite.data.sources import movielens_raw_dir

    monkeypatch.delenv("FEDMM_MOVIELENS_POSTERS", raising=False)
    if movielens_raw_dir() is None:
        pytest.skip("../shared/data/movielens_posters is absent")
    # the converter pyproject.toml registers (an installed checkout finds it through its entry point)
    monkeypatch.setattr(converters, "_registered", {})
    register_converter("movielens-posters", convert)
    dataset = load_dataset("movielens-posters")
    # ../shared/data/README.md: with a 5-core filter 597 users, 1,849 items, 56,166 interactions
    stats = dataset.stats()
    assert (stats["users"], stats["items"], stats["interactions"]) == (597, 1849, 56166)
    assert dataset.report.missing_images == [] and dataset.report.unreadable_images == []


def test_relative_path_gives_an_absolute_root(make_folder, tmp_path, monkeypatch):
    make_folder(INTER, ITEMS, name="rel")
    monkeypatch.chdir(tmp_path)
    raw = read_folder("rel")
    assert raw.root.is_absolute() and raw.root == tmp_path / "rel"
