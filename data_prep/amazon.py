"""Amazon review subsets used by GFMFR -> the dataset folder format.

Downloads a category's ratings and metadata from McAuley's public Amazon data, keeps ratings of
items that have metadata, applies a k-core filter (users and items, default 10, until stable),
downloads each kept item's image from its metadata URL, and writes the folder::

    python -m data_prep.amazon --category Beauty --out DIR [--raw DIR] [--no-images]
        [--version 2014|2018|2023] [--k-core 10]

Three releases are understood (``--version``):

- ``2014`` (default; He & McAuley 2016, McAuley et al. 2015): ``ratings_<Cat>.csv`` rows
  ``user,item,rating,unixtime`` (no header) and ``meta_<Cat>.json.gz``, one Python-literal dict
  per line (``ast.literal_eval``) with ``asin``, ``title``, ``imUrl``.
- ``2018`` (Ni et al. 2019): ``<Cat>.csv`` rows ``item,user,rating,unixtime`` (no header) and
  ``meta_<Cat>.json.gz``, JSON lines with ``asin``, ``title``, ``imageURLHighRes`` / ``imageURL``.
- ``2023`` (Hou et al. 2024): ``<Cat>.jsonl.gz`` reviews (``user_id``, ``parent_asin``,
  ``timestamp`` in ms) and ``meta_<Cat>.jsonl.gz`` (``parent_asin``, ``title``, ``images``).

The column order of a ratings CSV is checked against the metadata ids (whichever column matches
more asins is the item column), so a swapped file is read correctly and the choice is printed.
"""
from __future__ import annotations

import argparse
import ast
import csv
import gzip
import html
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from fedmm_lite.data.images import image_status
from fedmm_lite.errors import DatasetError, OptionError

from .common import DownloadError, deduplicate, download, print_stats, write_folder
from .common import k_core as k_core_filter

# Our dataset name (GFMFR's) -> the category's file name in each release.
CATEGORIES: dict[str, dict[str, str]] = {
    "Beauty": {"2014": "Beauty", "2018": "All_Beauty", "2023": "All_Beauty"},
    "Tools_and_Home": {v: "Tools_and_Home_Improvement" for v in ("2014", "2018", "2023")},
    "Toys_and_Games": {v: "Toys_and_Games" for v in ("2014", "2018", "2023")},
    "Digital_Music": {v: "Digital_Music" for v in ("2014", "2018", "2023")},
    "Office_Products": {v: "Office_Products" for v in ("2014", "2018", "2023")},
}

# Where each release lives; {cat} is the category's file name. No checksums are published.
SOURCES: dict[str, dict[str, str]] = {
    "2014": {
        "base": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/",
        "ratings": "ratings_{cat}.csv",
        "meta": "meta_{cat}.json.gz",
    },
    "2018": {
        "base": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/",
        "ratings": "categoryFilesSmall/{cat}.csv",
        "meta": "metaFiles2/meta_{cat}.json.gz",
    },
    "2023": {
        "base": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/",
        "ratings": "review_categories/{cat}.jsonl.gz",
        "meta": "meta_categories/meta_{cat}.jsonl.gz",
    },
}


def raw_files(category: str, version: str, base_url: str | None = None) -> dict[str, tuple]:
    """{'ratings' | 'meta': (url, local file name)} for one category and release."""
    if category not in CATEGORIES:
        raise OptionError(f"--category {category}: expected one of {', '.join(CATEGORIES)}")
    if version not in SOURCES:
        raise OptionError(f"--version {version}: expected one of {', '.join(SOURCES)}")
    cat = CATEGORIES[category][version]
    src = SOURCES[version]
    base = base_url if base_url is not None else src["base"]
    out = {}
    for kind in ("ratings", "meta"):
        rel = src[kind].format(cat=cat)
        out[kind] = (base.rstrip("/") + "/" + rel, Path(rel).name)
    return out


# ----------------------------------------------------------------------------- metadata
def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _parse_meta_line(line: str) -> dict | None:
    """A metadata line: JSON (2018, 2023) or a Python literal dict (2014). None if neither."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def _image_url(record: dict) -> str:
    """The item's main image URL in any of the three releases' metadata layouts ("" if none)."""
    if isinstance(record.get("imUrl"), str):  # 2014
        return record["imUrl"].strip()
    for key in ("imageURLHighRes", "imageURL"):  # 2018: lists of URLs
        urls = record.get(key)
        if isinstance(urls, list) and urls and isinstance(urls[0], str):
            return urls[0].strip()
    images = record.get("images")  # 2023: list of {thumb, large, hi_res, variant}
    if isinstance(images, list):
        main = [im for im in images if isinstance(im, dict) and im.get("variant") == "MAIN"]
        for im in main + [im for im in images if isinstance(im, dict)]:
            for key in ("large", "hi_res", "thumb"):
                if isinstance(im.get(key), str) and im[key].startswith("http"):
                    return im[key].strip()
    return ""


def read_meta(path: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """asin -> (title, image URL) from a metadata file, and the malformed lines skipped."""
    meta: dict[str, tuple[str, str]] = {}
    skipped: list[str] = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            record = _parse_meta_line(line)
            asin = record and (record.get("parent_asin") or record.get("asin"))
            if not record or not isinstance(asin, str) or not asin.strip():
                skipped.append(f"{path.name} line {lineno}")
                continue
            title = record.get("title")
            # titles carry HTML entities ("&amp;") and runs of spaces in the 2014 and 2018 files
            title = " ".join(html.unescape(title).split()) if isinstance(title, str) else ""
            meta[asin.strip()] = (title, _image_url(record))
    return meta, skipped


# ----------------------------------------------------------------------------- ratings
def _read_ratings_csv(path: Path, item_ids: set[str]) -> tuple[list, list[str], str]:
    rows, skipped = [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if len(row) != 4:
                skipped.append(f"{path.name} row {lineno}")
                continue
            a, b, _, ts = (x.strip() for x in row)
            try:
                rows.append((a, b, int(float(ts))))
            except ValueError:
                if lineno > 1:  # a header row is not an error
                    skipped.append(f"{path.name} row {lineno}")
    # Which column holds the items? The one whose values are metadata asins more often.
    sample = rows[:5000]
    hits_first = sum(a in item_ids for a, _, _ in sample)
    hits_second = sum(b in item_ids for _, b, _ in sample)
    if hits_first > hits_second:
        return [(b, a, t) for a, b, t in rows], skipped, "item,user,rating,timestamp"
    return rows, skipped, "user,item,rating,timestamp"


def _read_reviews_jsonl(path: Path) -> tuple[list, list[str], str]:
    rows, skipped = [], []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                user = str(r["user_id"]).strip()
                item = str(r.get("parent_asin") or r["asin"]).strip()
                ts = int(r["timestamp"]) // 1000  # milliseconds -> seconds
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped.append(f"{path.name} line {lineno}")
                continue
            if user and item:
                rows.append((user, item, ts))
            else:
                skipped.append(f"{path.name} line {lineno}")
    return rows, skipped, "json lines user_id,parent_asin,timestamp(ms)"


def read_ratings(path: Path, item_ids: set[str]) -> tuple[list, list[str], str]:
    """(user, item, timestamp) rows, the malformed rows skipped, and the layout detected."""
    if path.name.endswith((".jsonl.gz", ".jsonl", ".json.gz", ".json")):
        return _read_reviews_jsonl(path)
    return _read_ratings_csv(path, item_ids)


# ----------------------------------------------------------------------------- images
def _image_name(asin: str, url: str) -> str:
    suffix = Path(urlparse(url).path).suffix.lower()
    return asin + (suffix if suffix in (".jpg", ".jpeg", ".png", ".gif", ".webp") else ".jpg")


def fetch_images(urls: dict[str, str], folder: Path, *, workers: int = 8,
                    retries: int = 3, backoff: float = 1.0,
                    timeout: float = 30.0) -> tuple[dict[str, str], list[str]]:
    """Download ``{asin: url}`` into ``folder`` (existing files are kept), with a progress bar.

    Returns ``{asin: file name}`` for the images on disk and the failures as
    ``"asin: reason"``; a failed image is a missing image, never a crash."""
    folder.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    failed: list[str] = []

    def fetch(asin: str) -> tuple[str, str | None, str]:
        name = _image_name(asin, urls[asin])
        try:
            download(urls[asin], folder / name, retries=retries, backoff=backoff,
                     timeout=timeout, progress=False)
        except DownloadError as exc:
            return asin, None, str(exc)
        # a server may answer with an HTML page, a truncated file or a decompression bomb: the
        # loader's own test decides, so that a kept image is one the loader accepts
        status = image_status(folder / name)
        if status != "ok":
            (folder / name).unlink()
            return asin, None, f"{urls[asin]}: not a readable image ({status})"
        return asin, name, ""

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(fetch, sorted(urls))
        for asin, name, reason in tqdm(jobs, total=len(urls), desc="images", unit="img"):
            if name is None:
                failed.append(f"{asin}: {reason}")
            else:
                done[asin] = name
    return done, failed


# ----------------------------------------------------------------------------- convert
def convert(raw_dir: Path, out_dir: Path, category: str, download_images: bool = True,
            k_core: int = 10, *, version: str = "2014", base_url: str | None = None,
            workers: int = 8, retries: int = 4, backoff: float = 1.0) -> Path:
    """Download (when missing) and convert one Amazon category into the folder ``out_dir``.

    Raw files are kept in ``raw_dir`` (re-runs skip them). Ratings of items without metadata
    are dropped; the ``k_core`` filter (users and items, until stable; 0 = none) is applied here,
    and the counts are printed next to GFMFR's. Images go to ``out_dir/images/``; an item whose
    image is missing or fails to download keeps an empty ``image``. ``base_url`` replaces the
    release's server (mirrors, tests). Returns ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    files = raw_files(category, version, base_url)
    paths = {}
    for kind, (url, name) in files.items():
        paths[kind] = raw_dir / name
        if not paths[kind].exists():
            print(f"{category}: downloading {url}")
            download(url, paths[kind], retries=retries, backoff=backoff)

    meta, bad_meta = read_meta(paths["meta"])
    rows, bad_rows, layout = read_ratings(paths["ratings"], set(meta))
    print(f"{category}: {len(meta):,} items with metadata ({len(bad_meta)} malformed lines "
          f"skipped); {len(rows):,} ratings read as {layout} ({len(bad_rows)} malformed rows "
          "skipped)")
    for where in (bad_meta + bad_rows)[:3]:
        print(f"  skipped {where}")

    rows = deduplicate(rows)
    with_meta = [r for r in rows if r[1] in meta]
    print(f"{category}: dropped {len(rows) - len(with_meta):,} ratings of items without metadata")
    kept = k_core_filter(with_meta, k_core) if k_core > 0 else with_meta
    if not kept:
        raise DatasetError(f"{paths['ratings']}: nothing is left after the {k_core}-core filter")
    print(f"{category}: {k_core}-core filter kept {len(kept):,} of {len(with_meta):,} ratings")

    item_ids = sorted({i for _, i, _ in kept})
    images: dict[str, str] = {}
    if download_images:
        urls = {a: meta[a][1] for a in item_ids if meta[a][1]}
        print(f"{category}: {len(item_ids) - len(urls)} items have no image URL")
        images, failed = fetch_images(urls, out_dir / "images", workers=workers,
                                      retries=min(retries, 3), backoff=backoff)
        if failed:
            print(f"{category}: {len(failed)} images failed, e.g. " + "; ".join(failed[:3]))
    items = [(a, meta[a][0], f"images/{images[a]}" if a in images else "") for a in item_ids]
    write_folder(out_dir, kept, items)
    print(f"{category}: {sum(1 for _, t, _ in items if not t)} items without title, "
          f"{sum(1 for _, _, im in items if not im)} without image")
    print_stats(category, kept)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.amazon",
                                     description="Download and convert an Amazon review subset.")
    parser.add_argument("--category", required=True, choices=sorted(CATEGORIES))
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--raw", type=Path, default=None,
                        help="where raw downloads are kept "
                        "(default: OUT/../raw-amazon-CATEGORY-VERSION)")
    parser.add_argument("--version", default="2014", choices=sorted(SOURCES))
    parser.add_argument("--k-core", type=int, default=10,
                        help="k-core on users and items (0: none)")
    parser.add_argument("--no-images", action="store_true", help="skip image downloads")
    parser.add_argument("--workers", type=int, default=8, help="parallel image downloads")
    args = parser.parse_args(argv)
    raw = args.raw or args.out.parent / f"raw-amazon-{args.category}-{args.version}"
    try:
        convert(raw, args.out, args.category, download_images=not args.no_images,
                k_core=args.k_core, version=args.version, workers=args.workers)
    except (DatasetError, OptionError, DownloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
