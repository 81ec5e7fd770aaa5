"""NineRec downstream sets used by FedMR (KU, Bili_Food, Bili_Dance, Bili_Movie) -> folder format.

NineRec (Zhang et al., TPAMI 2024) is downloaded by hand from the Google Drive link in its README
(https://github.com/westlake-repl/NineRec); see data_prep/README.md. Each downstream set is a
folder named after it, somewhere inside the archive, holding:

- an interaction file (``*pair*.csv`` or ``*.inter``): ``item_id,user_id,timestamp`` with a
  header, the order NineRec's own loaders read (Baseline/.../REC/data/data.py); a header naming
  the columns in another order is honoured;
- a title file (``*item*.csv``, ``*title*.csv`` or ``*text*.csv``): ``item_id,title,title_en``,
  no header (Baseline/BERT4Rec/BERT4Rec_txt/data_utils/preprocess.py); we keep the English title;
- a cover folder (``*cover*`` or ``*image*``): ``<item_id>.jpg``.

Users with at least 5 interactions are kept (one pass, as in FedMR); items are those they touch.

    python -m data_prep.ninerec --dataset KU --raw DIR [--archive NineRec.zip] --out DIR
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tqdm import tqdm

from fedmm_lite.errors import DatasetError, OptionError

from .common import (IMAGE_SUFFIXES, deduplicate, extract_zip, find_image, min_user_filter,
                     place_file, print_stats, write_folder)

DATASETS = ("KU", "Bili_Food", "Bili_Dance", "Bili_Movie")
_USER_NAMES = {"user_id", "user", "userid", "uid"}
_ITEM_NAMES = {"item_id", "item", "itemid", "iid", "video_id", "asin"}
_TIME_NAMES = {"timestamp", "time", "ts", "datetime"}


def find_dataset_dir(root: Path, dataset: str) -> Path:
    """The folder named ``dataset`` (case-insensitive) under ``root``, shallowest first."""
    if root.is_dir() and root.name.lower() == dataset.lower():
        return root
    hits = sorted((p for p in root.rglob("*") if p.is_dir() and p.name.lower() == dataset.lower()),
                  key=lambda p: (len(p.parts), str(p)))
    if not hits:
        found = sorted({p.name for p in root.rglob("*") if p.is_dir()})[:20]
        raise DatasetError(f"{root}: no folder named {dataset} (folders seen: {found})")
    return hits[0]


def _pick(folder: Path, words: tuple[str, ...], suffixes: tuple[str, ...],
          exclude: Path | None = None) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                   and p != exclude and any(w in p.name.lower() for w in words))
    return files[0] if files else None


def locate_files(folder: Path) -> tuple[Path, Path | None, Path | None]:
    """(interaction file, title file or None, cover folder or None) inside a dataset folder."""
    pairs = _pick(folder, ("pair", "inter", "behav"), (".csv", ".inter", ".tsv", ".txt"))
    if pairs is None:
        raise DatasetError(f"{folder}: no interaction file (*pair*.csv or *.inter) found")
    titles = _pick(folder, ("item", "title", "text"), (".csv", ".tsv", ".txt"), exclude=pairs)
    covers = [p for p in sorted(folder.iterdir()) if p.is_dir()
              and any(w in p.name.lower() for w in ("cover", "image", "img", "pic"))]
    if not covers:  # any sub-folder holding images
        covers = [p for p in sorted(folder.iterdir()) if p.is_dir() and any(
            c.suffix.lower() in IMAGE_SUFFIXES for c in p.iterdir())]
    return pairs, titles, covers[0] if covers else None


def _delimiter(path: Path) -> str:
    """Tab when the first line has a tab (RecBole ``.inter``, ``.tsv``), else comma."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return "\t" if "\t" in f.readline() else ","


def read_pairs(path: Path, skipped: list[str]) -> list[tuple[str, str, int]]:
    """(user, item, timestamp) rows. Without a timestamp column the row order stands in."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.reader(f, delimiter=_delimiter(path)))
    if not rows:
        raise DatasetError(f"{path}: empty interaction file")
    head = [h.strip().lower().split(":")[0] for h in rows[0]]  # RecBole style "user_id:token"
    if set(head) & (_USER_NAMES | _ITEM_NAMES):
        try:
            col_u = next(i for i, h in enumerate(head) if h in _USER_NAMES)
            col_i = next(i for i, h in enumerate(head) if h in _ITEM_NAMES)
        except StopIteration:
            raise DatasetError(f"{path} row 1: header {rows[0]} lacks a user or item column")
        col_t = next((i for i, h in enumerate(head) if h in _TIME_NAMES), None)
        body, first = rows[1:], 2
    else:  # NineRec's order: item_id, user_id, timestamp
        col_i, col_u, col_t = 0, 1, (2 if len(rows[0]) > 2 else None)
        body, first = rows, 1
    width = max(col_u, col_i, col_t if col_t is not None else 0) + 1
    out: list[tuple[str, str, int]] = []
    for lineno, row in enumerate(body, start=first):
        if not row or not any(x.strip() for x in row):
            continue
        if len(row) < width:
            skipped.append(f"{path.name} row {lineno}: {len(row)} fields")
            continue
        user, item = row[col_u].strip(), row[col_i].strip()
        if not user or not item:
            skipped.append(f"{path.name} row {lineno}: empty id")
            continue
        if col_t is None:
            ts = lineno
        else:
            try:
                ts = int(float(row[col_t]))
            except ValueError:
                skipped.append(f"{path.name} row {lineno}: timestamp {row[col_t]!r}")
                continue
        out.append((user, item, ts))
    return out


def read_titles(path: Path | None, skipped: list[str]) -> dict[str, str]:
    """item id -> English title (third column, or a column named title_en / en)."""
    if path is None:
        return {}
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.reader(f, delimiter=_delimiter(path)))
    if not rows:
        return {}
    head = [h.strip().lower() for h in rows[0]]
    col_id, col_en, body, first = 0, 2, rows, 1
    if set(head) & (_ITEM_NAMES | {"title", "title_en"}):
        col_id = next((i for i, h in enumerate(head) if h in _ITEM_NAMES), 0)
        col_en = next((i for i, h in enumerate(head) if h in ("title_en", "en", "english")),
                      next((i for i, h in enumerate(head) if h == "title"), 1))
        body, first = rows[1:], 2
    titles: dict[str, str] = {}
    for lineno, row in enumerate(body, start=first):
        if not row:
            continue
        item = row[0 if col_id >= len(row) else col_id].strip()
        if not item or len(row) <= col_en:
            skipped.append(f"{path.name} row {lineno}: {len(row)} fields")
            continue
        titles[item] = " ".join(row[col_en].split())
    return titles


def convert(raw_dir: Path, out_dir: Path, dataset: str, *, archive: Path | None = None,
            min_user_interactions: int = 5) -> Path:
    """Convert one NineRec downstream set into the folder ``out_dir``; returns ``out_dir``.

    ``raw_dir`` is the extracted archive (or where to extract ``archive``, a zip; ``raw_dir``
    may itself be the zip). Duplicated (user, item) pairs keep the first timestamp; users with
    fewer than ``min_user_interactions`` are dropped (counts printed next to FedMR's)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if dataset not in DATASETS:
        raise OptionError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
    if raw_dir.suffix.lower() == ".zip" and raw_dir.is_file():
        archive, raw_dir = raw_dir, raw_dir.with_suffix("")
    if archive is not None:
        extract_zip(Path(archive), raw_dir)
    if not raw_dir.is_dir():
        raise DatasetError(f"{raw_dir}: NineRec folder not found (see data_prep/README.md)")

    folder = find_dataset_dir(raw_dir, dataset)
    pairs_file, titles_file, cover_dir = locate_files(folder)
    skipped: list[str] = []
    rows = read_pairs(pairs_file, skipped)
    titles = read_titles(titles_file, skipped)
    print(f"{dataset}: {len(rows):,} interactions from {pairs_file.name}, "
          f"{len(titles):,} titles from {titles_file.name if titles_file else '(none)'}, "
          f"covers in {cover_dir.name if cover_dir else '(none)'}")
    if skipped:
        print(f"{dataset}: skipped {len(skipped)} malformed rows, e.g. " + "; ".join(skipped[:3]))

    rows = deduplicate(rows)
    kept = min_user_filter(rows, min_user_interactions)
    if not kept:
        raise DatasetError(f"{pairs_file}: no user has {min_user_interactions} interactions")
    print(f"{dataset}: users with >= {min_user_interactions} interactions keep "
          f"{len(kept):,} of {len(rows):,} interactions")

    items = []
    item_ids = sorted({i for _, i, _ in kept})
    for item in tqdm(item_ids, desc="covers", unit="img", disable=len(item_ids) < 500):
        cover = find_image(cover_dir, item) if cover_dir else None
        image = ""
        if cover is not None:
            image = f"images/{item}{cover.suffix.lower()}"
            place_file(cover, out_dir / image)
        items.append((item, titles.get(item, ""), image))
    write_folder(out_dir, kept, items)
    print(f"{dataset}: {sum(1 for _, t, _ in items if not t)} items without title, "
          f"{sum(1 for _, _, im in items if not im)} without cover")
    print_stats(dataset, kept)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.ninerec",
                                     description="Convert a NineRec downstream set.")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--raw", type=Path, required=True,
                        help="the extracted NineRec archive, or the .zip itself")
    parser.add_argument("--archive", type=Path, default=None,
                        help="zip to extract into --raw first (skipped once extracted)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--min-user-interactions", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        convert(args.raw, args.out, args.dataset, archive=args.archive,
                min_user_interactions=args.min_user_interactions)
    except (DatasetError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
