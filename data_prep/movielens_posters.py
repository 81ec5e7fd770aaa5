"""MovieLens posters -> the dataset folder format.

Raw layout (``../shared/data/movielens_posters``)::

    MovieImages/<movieId>.jpg          posters
    MovieData/movies.dat               movieId::Title (Year)::Genre|Genre   (latin-1)
    ml-latest-small/ratings.csv        userId,movieId,rating,timestamp
    ml-latest-small/movies.csv         movieId,title,genres  (fallback titles)

Every rating counts as an implicit interaction; only movies with a poster are kept. Titles come
from movies.dat, else ml-latest-small/movies.csv. Posters are hard-linked (or copied when on
another file system) to ``images/<movieId>.jpg`` so the folder is self-contained. No k-core here:
the loader (``load_dataset("movielens-posters")``) applies its 5-core.

    python -m data_prep.movielens_posters --raw ../shared/data/movielens_posters --out DIR
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tqdm import tqdm

from fedmm_lite.errors import DatasetError

from .common import deduplicate, place_file, print_stats, write_folder

NAME = "movielens-posters"


def _note_skip(skipped: list[str], where: str, why: str) -> None:
    skipped.append(f"{where}: {why}")


def read_posters(raw_dir: Path) -> dict[str, Path]:
    """movieId -> poster path, for every ``MovieImages/<int>.jpg``."""
    folder = raw_dir / "MovieImages"
    if not folder.is_dir():
        raise DatasetError(f"{folder}: poster folder not found")
    return {p.stem: p for p in folder.iterdir()
            if p.suffix.lower() == ".jpg" and p.stem.isdigit() and p.is_file()}


def read_movies_dat(path: Path, skipped: list[str]) -> dict[str, str]:
    """movieId -> title from ``movieId::Title (Year)::Genres`` lines (latin-1)."""
    titles: dict[str, str] = {}
    if not path.is_file():
        return titles
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("::")
            if len(parts) != 3 or not parts[0].strip().isdigit() or not parts[1].strip():
                _note_skip(skipped, f"{path.name} line {lineno}", f"malformed: {line[:60]!r}")
                continue
            titles[parts[0].strip()] = parts[1].strip()
    return titles


def read_movies_csv(path: Path, skipped: list[str]) -> dict[str, str]:
    """movieId -> title from ml-latest-small's movies.csv (UTF-8, quoted CSV)."""
    titles: dict[str, str] = {}
    if not path.is_file():
        return titles
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.DictReader(f), start=2):
            movie, title = (row.get("movieId") or "").strip(), (row.get("title") or "").strip()
            if not movie.isdigit() or not title:
                _note_skip(skipped, f"{path.name} row {lineno}", "malformed")
                continue
            titles[movie] = title
    return titles


def read_ratings(path: Path, skipped: list[str]) -> list[tuple[str, str, int]]:
    """(userId, movieId, timestamp) for every well-formed row of ratings.csv."""
    if not path.is_file():
        raise DatasetError(f"{path}: ratings file not found")
    rows: list[tuple[str, str, int]] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["userId", "movieId"]:
            raise DatasetError(f"{path} row 1: expected header userId,movieId,rating,timestamp, "
                               f"got {header}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 4:
                _note_skip(skipped, f"{path.name} row {lineno}", f"{len(row)} fields, expected 4")
                continue
            user, movie, _, ts = (x.strip() for x in row)
            if not user or not movie.isdigit() or not ts.lstrip("-").isdigit():
                _note_skip(skipped, f"{path.name} row {lineno}", f"malformed: {row}")
                continue
            rows.append((user, movie, int(ts)))
    return rows


def convert(raw_dir: Path, out_dir: Path) -> Path:
    """Convert the raw MovieLens posters data in ``raw_dir`` into a dataset folder ``out_dir``.

    Returns ``out_dir``. Malformed lines are skipped and reported (count and first few); a
    missing poster folder or ratings file raises :class:`DatasetError`."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir}: raw MovieLens posters folder not found")
    skipped: list[str] = []
    posters = read_posters(raw_dir)
    titles = read_movies_csv(raw_dir / "ml-latest-small" / "movies.csv", skipped)
    titles.update(read_movies_dat(raw_dir / "MovieData" / "movies.dat", skipped))  # .dat wins
    ratings = read_ratings(raw_dir / "ml-latest-small" / "ratings.csv", skipped)

    kept = deduplicate(r for r in ratings if r[1] in posters)
    if not kept:
        raise DatasetError(f"{raw_dir}: no rating refers to a movie with a poster")
    movies = sorted({m for _, m, _ in kept}, key=int)
    items = []
    for movie in tqdm(movies, desc="posters", unit="img", disable=len(movies) < 500):
        place_file(posters[movie], out_dir / "images" / f"{movie}.jpg")
        items.append((movie, titles.get(movie, ""), f"images/{movie}.jpg"))
    write_folder(out_dir, kept, items)

    print(f"{NAME}: {len(ratings):,} ratings read, {len(ratings) - len(kept):,} dropped "
          f"(movie without poster, or duplicate); {len(posters):,} posters on disk; "
          f"{sum(1 for _, t, _ in items if not t)} items without title")
    if skipped:
        print(f"{NAME}: skipped {len(skipped)} malformed lines, e.g. " + "; ".join(skipped[:3]))
    print_stats(NAME, kept)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.movielens_posters",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("../shared/data/movielens_posters"),
                        help="raw folder (MovieImages/, MovieData/, ml-latest-small/)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    args = parser.parse_args(argv)
    try:
        convert(args.raw, args.out)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
