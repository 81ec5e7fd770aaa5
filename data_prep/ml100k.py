"""MovieLens-100K (GroupLens) -> the dataset folder format (no images: ml-100k has none).

Two raw forms are read:

- the public GroupLens archive ``ml-100k.zip`` (downloaded when missing, sha256 checked), or the
  folder it extracts to::

      ml-100k/u.data     user <TAB> item <TAB> rating <TAB> timestamp      (100,000 ratings)
      ml-100k/u.item     item|title|release date|video release date|IMDb URL|19 genre flags
                         ('|' separated, latin-1)

- a plain ``ratings.dat``: ``user,item,rating,timestamp`` comma separated, no header, no titles
  (the layout the PFedRec and FedRAP codes read; titles are then empty).

Every rating is an implicit interaction (the rating value is not used). No k-core by default: the
PFedRec and FedRAP codes use all 943 users and 1,682 items. ``items.csv`` has an empty ``image``.
Ratings of one user with the same timestamp are written in the raw file's order, so that the
loader's ``ties="file"`` holds out the items the PFedRec and FedRAP codes hold out (they break
timestamp ties by file order). Their ``ratings.dat`` is sorted by user, u.data is not: the two
raw forms may order a user's tied ratings differently.

    python -m data_prep.ml100k --out DIR [--raw PATH] [--k-core K]
"""
from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path
from typing import Iterable

from fedmm_lite.errors import DatasetError

from .common import DownloadError, deduplicate, download, k_core, print_stats, write_folder

NAME = "ml-100k"
URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# sha256 of the GroupLens archive as published in other projects' download code (GroupLens itself
# publishes only an md5, 0e33842e24a9c977be4e0107933c0723, in ml-100k.zip.md5).
SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
ARCHIVE_NAME = "ml-100k.zip"


def _note_skip(skipped: list[str], where: str, why: str) -> None:
    skipped.append(f"{where}: {why}")


def parse_ratings(lines: Iterable[str], sep: str, source: str,
                  skipped: list[str]) -> list[tuple[str, str, int]]:
    """(user, item, timestamp) of every well-formed ``user SEP item SEP rating SEP timestamp``
    line; malformed lines are noted in ``skipped`` (``source line N: why``)."""
    rows: list[tuple[str, str, int]] = []
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(sep)]
        if len(fields) != 4:
            _note_skip(skipped, f"{source} line {lineno}", f"{len(fields)} fields, expected 4")
            continue
        user, item, _, ts = fields
        if not user.isdigit() or not item.isdigit() or not ts.lstrip("-").isdigit():
            _note_skip(skipped, f"{source} line {lineno}", f"malformed: {line[:60]!r}")
            continue
        rows.append((user, item, int(ts)))
    return rows


def parse_titles(lines: Iterable[str], source: str, skipped: list[str]) -> dict[str, str]:
    """item -> title from u.item lines (``item|title|...``)."""
    titles: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            _note_skip(skipped, f"{source} line {lineno}", f"malformed: {line[:60]!r}")
            continue
        titles[fields[0].strip()] = " ".join(fields[1].split())
    return titles


def _member(zf: zipfile.ZipFile, name: str) -> str | None:
    """The archive member ``ml-100k/<name>`` (or ``<name>`` in any folder), or None."""
    names = zf.namelist()
    if f"ml-100k/{name}" in names:
        return f"ml-100k/{name}"
    hits = sorted(n for n in names if n == name or n.endswith(f"/{name}"))
    return hits[0] if hits else None


def read_archive(path: Path, skipped: list[str]) -> tuple[list, dict[str, str]]:
    """Ratings (from u.data) and titles (from u.item) read straight from the zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = _member(zf, "u.data")
            if data is None:
                raise DatasetError(f"{path}: no ml-100k/u.data inside the archive")
            with zf.open(data) as f:
                rows = parse_ratings(io.TextIOWrapper(f, encoding="latin-1"), "\t", "u.data",
                                     skipped)
            titles: dict[str, str] = {}
            item = _member(zf, "u.item")
            if item is not None:
                with zf.open(item) as f:
                    titles = parse_titles(io.TextIOWrapper(f, encoding="latin-1"), "u.item",
                                          skipped)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{path}: not a readable zip archive ({exc})") from exc
    return rows, titles


def read_extracted(folder: Path, skipped: list[str]) -> tuple[list, dict[str, str]]:
    """Ratings and titles from an extracted archive folder holding u.data (and u.item)."""
    with open(folder / "u.data", encoding="latin-1") as f:
        rows = parse_ratings(f, "\t", "u.data", skipped)
    titles: dict[str, str] = {}
    if (folder / "u.item").is_file():
        with open(folder / "u.item", encoding="latin-1") as f:
            titles = parse_titles(f, "u.item", skipped)
    return rows, titles


def read_ratings_dat(path: Path, skipped: list[str]) -> tuple[list, dict[str, str]]:
    """Ratings from a plain comma-separated ratings.dat; no titles."""
    with open(path, encoding="latin-1") as f:
        return parse_ratings(f, ",", path.name, skipped), {}


def locate_raw(raw: Path, *, url: str = URL, sha256: str | None = SHA256, retries: int = 4,
               backoff: float = 1.0) -> tuple[str, Path]:
    """What ``raw`` holds, as (kind, path) with kind ``archive``, ``extracted`` or ``ratings.dat``.

    ``raw`` may be the zip, a ratings.dat file, or a folder holding (in this order of preference)
    ``u.data`` or ``ml-100k/u.data``, ``ml-100k.zip``, or ``ratings.dat``. A folder holding none
    of them (or a path that does not exist yet) receives ``ml-100k.zip`` downloaded from ``url``;
    so does a missing path ending in ``.zip``."""
    raw = Path(raw)
    if raw.is_file():
        return ("archive" if raw.suffix.lower() == ".zip" else "ratings.dat"), raw
    if raw.is_dir():
        for folder in (raw, raw / "ml-100k"):
            if (folder / "u.data").is_file():
                return "extracted", folder
        if (raw / ARCHIVE_NAME).is_file():
            return "archive", raw / ARCHIVE_NAME
        if (raw / "ratings.dat").is_file():
            return "ratings.dat", raw / "ratings.dat"
    if raw.suffix.lower() == ".dat":  # a mistyped ratings.dat is an error, not a download
        raise DatasetError(f"{raw}: ratings file not found")
    target = raw if raw.suffix.lower() == ".zip" else raw / ARCHIVE_NAME
    print(f"{NAME}: downloading {url}")
    download(url, target, sha256=sha256, retries=retries, backoff=backoff)
    return "archive", target


def convert(raw: Path, out_dir: Path, *, k_core_min: int = 0, url: str = URL,
            sha256: str | None = SHA256, retries: int = 4, backoff: float = 1.0) -> Path:
    """Convert MovieLens-100K at ``raw`` (see :func:`locate_raw`) into the folder ``out_dir``.

    Every rating becomes an interaction; duplicated (user, item) pairs keep the first timestamp
    (the GroupLens file has none); ``k_core_min > 0`` applies a k-core on users and items (0, the
    default, keeps everything). Malformed lines are skipped and reported. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    kind, path = locate_raw(Path(raw), url=url, sha256=sha256, retries=retries, backoff=backoff)
    skipped: list[str] = []
    readers = {"archive": read_archive, "extracted": read_extracted,
               "ratings.dat": read_ratings_dat}
    ratings, titles = readers[kind](path, skipped)
    print(f"{NAME}: {len(ratings):,} ratings read from {path} ({kind}); "
          f"{len(titles):,} titles")
    if skipped:
        print(f"{NAME}: skipped {len(skipped)} malformed lines, e.g. " + "; ".join(skipped[:3]))
    if not ratings:
        raise DatasetError(f"{path}: no well-formed rating line")

    rows = deduplicate(ratings)
    if len(rows) < len(ratings):
        print(f"{NAME}: dropped {len(ratings) - len(rows):,} duplicated (user, item) ratings")
    kept = rows
    if k_core_min > 0:
        kept = k_core(rows, k_core_min)
        if not kept:
            raise DatasetError(f"{path}: nothing is left after the {k_core_min}-core filter")
        print(f"{NAME}: {k_core_min}-core filter kept {len(kept):,} of {len(rows):,} ratings")

    item_ids = sorted({i for _, i, _ in kept}, key=int)
    items = [(item, titles.get(item, ""), "") for item in item_ids]
    write_folder(out_dir, kept, items, keep_tie_order=True)
    print(f"{NAME}: {sum(1 for _, t, _ in items if not t)} items without title; "
          "no images (ml-100k has none)")
    print_stats(NAME, kept)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.ml100k",
                                     description="Convert MovieLens-100K (GroupLens).")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--raw", type=Path, default=None,
                        help="ml-100k.zip, its extracted folder, a ratings.dat, or a folder to "
                        f"download {ARCHIVE_NAME} into (default: OUT/../raw-ml-100k)")
    parser.add_argument("--k-core", type=int, default=0,
                        help="k-core on users and items (default 0: none, every rating kept)")
    args = parser.parse_args(argv)
    raw = args.raw or args.out.parent / "raw-ml-100k"
    try:
        convert(raw, args.out, k_core_min=args.k_core)
    except (DatasetError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
