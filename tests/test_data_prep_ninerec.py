"""data_prep.ninerec on a NineRec-like archive written at run time: KU_pair.csv
(item_id,user_id,timestamp), KU_item.csv (id, Chinese title, English title; no header) and
KU_cover/<id>.jpg, zipped the way the hand-downloaded archive is."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from data_prep import ninerec
from data_prep.common import extract_zip
from fedmm_lite.errors import DatasetError

# user -> items, in time order. u1 (6 items) and u2 (5) stay; u3 (4) is dropped.
HISTORY = {"u1": ["101", "102", "103", "104", "105", "106"],
           "u2": ["102", "103", "104", "105", "107"],
           "u3": ["101", "108", "109", "110"]}
TITLES = {"101": ("\u7f8e\u98df", "Spicy hotpot at home"), "102": ("\u821e\u8e48", "Dance cover"),
          "103": ("a", "Street food tour"), "104": ("b", "Noodles, the long way"),
          "105": ("c", "Cake in 5 minutes"), "106": ("d", "Dumplings"),
          "107": ("e", ""),  # no English title
          "108": ("f", "x"), "109": ("g", "y"), "110": ("h", "z")}
NO_COVER = "105"


def write_ku(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [(item, user, 1_600_000_000 + 60 * k) for user, items in HISTORY.items()
            for k, item in enumerate(items)]
    rows.append(("101", "u1", 1_700_000_000))  # duplicate (u1, 101): the first time stays
    with open(folder / "KU_pair.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "user_id", "timestamp"])
        w.writerows(rows)
        f.write("999,u9\n")                    # broken row: 2 fields
        f.write("998,u9,yesterday\n")          # broken row: bad timestamp
    with open(folder / "KU_item.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for item, (zh, en) in TITLES.items():
            w.writerow([item, zh, en])
    for item in TITLES:
        if item != NO_COVER:
            path = folder / "KU_cover" / f"{item}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (int(item) % 256, 0, 0)).save(path, format="JPEG")
    return folder


def make_archive(tmp_path: Path) -> Path:
    src = write_ku(tmp_path / "src" / "NineRec" / "Downstream_datasets" / "KU")
    archive = tmp_path / "NineRec.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "src"))
    return archive


def read_out(folder: Path):
    with open(folder / "interactions.csv", newline="", encoding="utf-8") as f:
        inter = [(r["user_id"], r["item_id"], int(r["timestamp"])) for r in csv.DictReader(f)]
    with open(folder / "items.csv", newline="", encoding="utf-8") as f:
        items = {r["item_id"]: (r["title"], r["image"]) for r in csv.DictReader(f)}
    return inter, items


def test_convert_from_the_zip_archive(tmp_path, capsys):
    archive = make_archive(tmp_path)
    out = ninerec.convert(tmp_path / "raw", tmp_path / "out", "KU", archive=archive)
    inter, items = read_out(out)
    expected = sorted((u, item, 1_600_000_000 + 60 * k) for u in ("u1", "u2")
                      for k, item in enumerate(HISTORY[u]))
    assert sorted(inter) == expected
    kept_items = sorted({i for _, i, _ in expected})
    assert sorted(items) == kept_items
    for item in kept_items:
        title, image = items[item]
        assert title == TITLES[item][1]  # the English title
        if item == NO_COVER:
            assert image == ""
        else:
            assert image == f"images/{item}.jpg"
            cover = tmp_path / "raw/NineRec/Downstream_datasets/KU/KU_cover" / f"{item}.jpg"
            assert (out / image).read_bytes() == cover.read_bytes()
    printed = capsys.readouterr().out
    assert "skipped 2 malformed rows" in printed
    assert "keep 11 of 15 interactions" in printed
    assert "paper (FedMR)" in printed and "3,488" in printed
    # 2 users x 7 items, 11 interactions: sparsity 1 - 11/14 = 21.43%
    assert "21.43%" in printed
    # a second run with the archive finds it extracted already (the marker file) and agrees
    assert (tmp_path / "raw" / ".extracted-NineRec.zip").exists()
    again = ninerec.convert(tmp_path / "raw", tmp_path / "out2", "KU", archive=archive)
    assert read_out(again) == (inter, items)


def test_the_zip_itself_can_be_given_as_raw(tmp_path):
    archive = make_archive(tmp_path)
    assert ninerec.main(["--dataset", "KU", "--raw", str(archive), "--out",
                         str(tmp_path / "out")]) == 0
    inter, _ = read_out(tmp_path / "out")
    assert len(inter) == 11


def test_headers_in_other_orders_and_no_timestamp(tmp_path):
    folder = tmp_path / "raw" / "KU"
    folder.mkdir(parents=True)
    (folder / "ku.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                     "a\t1\t5\na\t2\t3\n", encoding="utf-8")
    skipped: list[str] = []
    assert ninerec.read_pairs(folder / "ku.inter", skipped) == [("a", "1", 5), ("a", "2", 3)]
    (folder / "pairs.csv").write_text("7,a\n8,a\n", encoding="utf-8")  # item,user; no time
    assert ninerec.read_pairs(folder / "pairs.csv", skipped) == [("a", "7", 1), ("a", "8", 2)]
    assert skipped == []


def test_missing_dataset_or_files_are_clear_errors(tmp_path, capsys):
    archive = make_archive(tmp_path)
    with pytest.raises(DatasetError, match="no folder named Bili_Food"):
        ninerec.convert(tmp_path / "raw", tmp_path / "out", "Bili_Food", archive=archive)
    empty = tmp_path / "empty" / "KU"
    empty.mkdir(parents=True)
    with pytest.raises(DatasetError, match="no interaction file"):
        ninerec.convert(tmp_path / "empty", tmp_path / "out", "KU")
    assert ninerec.main(["--dataset", "KU", "--raw", str(tmp_path / "nowhere"), "--out",
                         str(tmp_path / "o")]) == 2
    assert "NineRec folder not found" in capsys.readouterr().err


def test_extract_refuses_members_outside_the_target(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "no")
    with pytest.raises(DatasetError, match="outside the target folder"):
        extract_zip(evil, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable zip"):
        extract_zip(tmp_path / "bad.zip", tmp_path / "dest2")
