"""data_prep.movielens_posters: a hand-made raw fixture (exact expected output) and, when present,
the real ../shared/data/movielens_posters (counts stated in its README)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from data_prep import movielens_posters
from data_prep.common import k_core, stats
from fedmm_lite.data import read_folder
from fedmm_lite.errors import DatasetError

REAL_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens_posters"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_raw(root: Path) -> Path:
    """Posters for movies 1, 2, 3; ratings also for movie 4 (no poster); movie 2's title is
    latin-1 in movies.dat; movie 3 is only in movies.csv; malformed lines in both files."""
    for movie, colour in ((1, (200, 0, 0)), (2, (0, 200, 0)), (3, (0, 0, 200))):
        path = root / "MovieImages" / f"{movie}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 9), colour).save(path, format="JPEG")
    (root / "MovieImages" / "notes.txt").write_text("not a poster")
    (root / "MovieData").mkdir()
    (root / "MovieData" / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Comedy\n"
        "this line is broken\n"
        "2::Caf\u00e9 au lait (1993)::Comedy\n"
        "4::Heat (1995)::Action\n".encode("latin-1"))
    small = root / "ml-latest-small"
    small.mkdir()
    (small / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, the CSV title (1995)",Comedy\n'
        '3,"Grumpier Old Men (1995)",Comedy\n', encoding="utf-8")
    (small / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,100\n"
        "1,2,3.5,90\n"
        "1,4,5.0,80\n"       # movie 4 has no poster: dropped
        "1,1,2.0,120\n"      # duplicate (user 1, movie 1): the first timestamp (100) stays
        "2,3,4.0,50\n"
        "2,x,4.0,51\n"       # malformed movie id
        "3,4,1.0,70\n"       # user 3 only rated movie 4: disappears
        "2,2,3.0\n",         # 3 fields: malformed
        encoding="utf-8")
    return root


def test_fixture_conversion_is_exact(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw")
    out = movielens_posters.convert(raw, tmp_path / "out")
    assert out == tmp_path / "out"

    inter = read_csv(out / "interactions.csv")
    assert [(r["user_id"], r["item_id"], r["timestamp"]) for r in inter] == [
        ("1", "2", "90"), ("1", "1", "100"), ("2", "3", "50")]
    items = read_csv(out / "items.csv")
    assert items == [
        {"item_id": "1", "title": "Toy Story (1995)", "image": "images/1.jpg"},  # .dat wins
        {"item_id": "2", "title": "Caf\u00e9 au lait (1993)", "image": "images/2.jpg"},
        {"item_id": "3", "title": "Grumpier Old Men (1995)", "image": "images/3.jpg"},
    ]
    for movie in ("1", "2", "3"):  # the very poster bytes, nothing else copied
        assert (out / "images" / f"{movie}.jpg").read_bytes() == \
            (raw / "MovieImages" / f"{movie}.jpg").read_bytes()
    assert sorted(p.name for p in (out / "images").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]

    printed = capsys.readouterr().out
    assert "skipped 3 malformed lines" in printed
    assert "movies.dat line 2" in printed
    # users 2, items 3, interactions 3, sparsity 1 - 3/6 = 50.00%
    assert "ours" in printed and "50.00%" in printed

    raw_data = read_folder(out)  # the package's own reader accepts the folder
    assert len(raw_data.interactions) == 3 and len(raw_data.items) == 3


def test_rerun_overwrites_cleanly(tmp_path):
    raw = write_raw(tmp_path / "raw")
    first = (movielens_posters.convert(raw, tmp_path / "out") / "interactions.csv").read_text()
    second = (movielens_posters.convert(raw, tmp_path / "out") / "interactions.csv").read_text()
    assert first == second
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_missing_raw_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DatasetError, match="raw MovieLens posters folder not found"):
        movielens_posters.convert(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "raw" / "MovieImages").mkdir(parents=True)
    with pytest.raises(DatasetError, match="ratings.csv: ratings file not found"):
        movielens_posters.convert(tmp_path / "raw", tmp_path / "out")
    assert movielens_posters.main(["--raw", str(tmp_path / "nowhere"), "--out",
                                   str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    if not (REAL_RAW / "ml-latest-small" / "ratings.csv").is_file():
        pytest.skip(f"real MovieLens posters data absent ({REAL_RAW}); fixture tests still run")
    return movielens_posters.convert(REAL_RAW, tmp_path_factory.mktemp("mlp") / "movielens")


def test_real_data_counts_match_the_readme(real_folder):
    rows = read_csv(real_folder / "interactions.csv")
    inter = [(r["user_id"], r["item_id"], int(r["timestamp"])) for r in rows]
    s = stats(inter)
    assert (s["users"], s["items"], s["interactions"]) == (610, 2_943, 58_498)
    core = stats(k_core(inter, 5))
    assert (core["users"], core["items"], core["interactions"]) == (597, 1_849, 56_166)
    items = read_csv(real_folder / "items.csv")
    assert len(items) == 2_943
    assert all(it["title"] and (real_folder / it["image"]).is_file() for it in items)
    toy = next(it for it in items if it["item_id"] == "1")
    assert toy["title"] == "Toy Story (1995)"
