"""Shared helpers of the converters: filters, the folder writer, downloads, the statistics table.

Every converter ends the same way: a list of ``(user_id, item_id, timestamp)`` interactions and a
list of ``(item_id, title, image)`` items go through :func:`write_folder` into the dataset folder
format (README.md, FIXED), and :func:`print_stats` prints our counts next to the paper's.

Downloads (:func:`download`) use only the standard library: a progress bar (tqdm), retries with
exponential backoff, resume of a partial ``.part`` file with an HTTP ``Range`` request, and a
sha256 check when one is published.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from fedmm_lite.errors import DatasetError, FedmmError

Interaction = tuple  # (user_id: str, item_id: str, timestamp: int)

# The papers' dataset statistics (users, items, interactions), for the table printed after each
# conversion. Sources: GFMFR, dataset statistics table (Amazon subsets after a 10-core filter);
# FedMR, dataset statistics table (NineRec downstream sets, users with >= 5 interactions).
# MovieLens-100K: the counts stated in GroupLens's README of ml-100k ("100,000 ratings (1-5) from
# 943 users on 1682 movies").
PAPER_STATS: dict[str, dict] = {
    # GFMFR (Amazon, 10-core)
    "Beauty": {"paper": "GFMFR", "users": 253, "items": 356, "interactions": 2_535},
    "Tools_and_Home": {"paper": "GFMFR", "users": 242, "items": 398, "interactions": 3_606},
    "Toys_and_Games": {"paper": "GFMFR", "users": 1_146, "items": 1_403, "interactions": 23_820},
    "Digital_Music": {"paper": "GFMFR", "users": 1_517, "items": 2_306, "interactions": 35_395},
    "Office_Products": {"paper": "GFMFR", "users": 6_338, "items": 4_461, "interactions": 97_227},
    # FedMR (NineRec downstream sets, users with >= 5 interactions)
    "KU": {"paper": "FedMR", "users": 204, "items": 560, "interactions": 3_488},
    "Bili_Dance": {"paper": "FedMR", "users": 10_231, "items": 1_676, "interactions": 80_086},
    "Bili_Food": {"paper": "FedMR", "users": 5_990, "items": 1_125, "interactions": 36_482},
    "Bili_Movie": {"paper": "FedMR", "users": 15_908, "items": 2_528, "interactions": 111_091},
    # GroupLens README (PFedRec and FedRAP use every rating of it)
    "ml-100k": {"paper": "GroupLens", "users": 943, "items": 1_682, "interactions": 100_000},
}

# HTTP statuses that another attempt will not fix.
_NO_RETRY = (400, 401, 403, 404, 410)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


class DownloadError(FedmmError):
    """A download failed after its retries, or its checksum did not match (names the URL)."""


# ----------------------------------------------------------------------------- filters
def deduplicate(interactions: Iterable[Interaction]) -> list[Interaction]:
    """Keep one row per (user, item): the earliest timestamp (the loader does the same)."""
    first: dict[tuple[str, str], int] = {}
    for user, item, ts in interactions:
        key = (user, item)
        if key not in first or ts < first[key]:
            first[key] = ts
    return [(u, i, t) for (u, i), t in first.items()]


def min_user_filter(interactions: list[Interaction], k: int) -> list[Interaction]:
    """Drop users with fewer than ``k`` interactions (one pass; items are not filtered)."""
    counts = Counter(u for u, _, _ in interactions)
    return [row for row in interactions if counts[row[0]] >= k]


def k_core(interactions: list[Interaction], k: int) -> list[Interaction]:
    """Keep the largest sub-set where every user and every item has >= ``k`` interactions.

    Alternately drops users and items below ``k`` until nothing changes (the k-core is unique, so
    the order of the passes does not matter)."""
    rows = list(interactions)
    while True:
        users = Counter(u for u, _, _ in rows)
        items = Counter(i for _, i, _ in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept


def stats(interactions: list[Interaction]) -> dict:
    """Users, items, interactions and sparsity = 1 - interactions / (users * items)."""
    users = len({u for u, _, _ in interactions})
    items = len({i for _, i, _ in interactions})
    n = len(interactions)
    sparsity = 1.0 - n / (users * items) if users and items else float("nan")
    return {"users": users, "items": items, "interactions": n, "sparsity": sparsity}


def stats_table(name: str, ours: dict) -> str:
    """A small text table: our statistics next to the paper's (when the paper reports them)."""
    header = f"{'':<22}{'users':>9}{'items':>9}{'interactions':>14}{'sparsity':>11}"
    lines = [f"statistics of {name}", header]

    def row(label: str, s: dict) -> str:
        return (f"{label:<22}{s['users']:>9,}{s['items']:>9,}{s['interactions']:>14,}"
                f"{100 * s['sparsity']:>10.2f}%")

    lines.append(row("ours", ours))
    paper = PAPER_STATS.get(name)
    if paper is None:
        lines.append(f"{'paper':<22}   (no published statistics for {name})")
    else:
        p = dict(paper)
        p["sparsity"] = 1.0 - p["interactions"] / (p["users"] * p["items"])
        lines.append(row(f"paper ({paper['paper']})", p))
    return "\n".join(lines)


def print_stats(name: str, interactions: list[Interaction], file=None) -> dict:
    """Print :func:`stats_table` and return our statistics."""
    ours = stats(interactions)
    print(stats_table(name, ours), file=file or sys.stdout)
    return ours


# ----------------------------------------------------------------------------- writing
def _write_csv_atomic(path: Path, header: list[str], rows: Iterable[tuple]) -> None:
    """Write a CSV next to its final name, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_folder(out_dir: Path, interactions: list[Interaction],
                 items: list[tuple[str, str, str]], keep_tie_order: bool = False) -> Path:
    """Write ``interactions.csv`` (user_id,item_id,timestamp) and ``items.csv``
    (item_id,title,image) into ``out_dir`` (the dataset folder format). Interactions are sorted by
    user, timestamp, item; with ``keep_tie_order`` by user and timestamp only, so that rows of one
    user with the same timestamp keep their input order (the loader's ``ties="file"`` reads it);
    items by id. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if keep_tie_order:
        rows = sorted(interactions, key=lambda r: (r[0], r[2]))     # stable: ties keep input order
    else:
        rows = sorted(interactions, key=lambda r: (r[0], r[2], r[1]))
    _write_csv_atomic(out_dir / "items.csv", ["item_id", "title", "image"], sorted(items))
    _write_csv_atomic(out_dir / "interactions.csv", ["user_id", "item_id", "timestamp"], rows)
    return out_dir


def place_file(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst``: a hard link when both sit on one file system, else a copy.
    An existing ``dst`` of the same size is kept (re-runs are cheap)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if dst.stat().st_size == src.stat().st_size:
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # other file system, or links not allowed: copy instead
        shutil.copyfile(src, dst)


def find_image(folder: Path, stem: str) -> Path | None:
    """The image file ``folder/<stem>.<ext>`` for any usual image extension, or None."""
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def extract_zip(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` (refusing members that would land outside ``dest``).
    Skipped when ``dest/.extracted-<archive name>`` says this archive was extracted already."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DatasetError(f"{archive}: archive not found")
    marker = dest / f".extracted-{archive.name}"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                target = (dest / member.filename).resolve()
                if root != target and root not in target.parents:
                    raise DatasetError(f"{archive}: member {member.filename!r} would be "
                                       "extracted outside the target folder")
            for member in tqdm(members, desc=f"extract {archive.name}", unit="file",
                               disable=len(members) < 200):
                zf.extract(member, dest)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{archive}: not a readable zip archive ({exc})") from exc
    marker.write_text("ok\n")
    return dest


# ----------------------------------------------------------------------------- downloads
def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: continue ``part`` with a Range request when it has bytes, else start over."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fedmm_lite-data_prep"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            return
        raise
    with response:
        if have and response.status != 206:  # server ignored the Range header: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         desc=part.name[:-5], disable=not progress,
                                         leave=False) as bar:
            while True:
                block = response.read(1 << 16)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise urllib.error.ContentTooShortError(
                f"got {part.stat().st_size} of {total} bytes", None)


def download(url: str, dest: Path, *, sha256: str | None = None, retries: int = 4,
             backoff: float = 1.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` exists (and matches ``sha256`` when given).

    Bytes go to ``dest.part`` first; an interrupted transfer is resumed with an HTTP Range
    request on the next attempt (or the next run). Attempts are retried ``retries`` times with
    waits of ``backoff * 2**attempt`` seconds. A 404 is not retried. Raises
    :class:`DownloadError` naming the URL when every attempt failed or the checksum differs."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
        except urllib.error.HTTPError as exc:
            if exc.code in _NO_RETRY:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            last_error: Exception = exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, reset, timeout, short read
            last_error = exc
        else:
            break
        if attempt < retries:
            time.sleep(backoff * 2 ** attempt)
    else:
        raise DownloadError(f"{url}: download failed after {retries + 1} attempts "
                            f"({type(last_error).__name__}: {last_error})")
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise DownloadError(f"{url}: sha256 mismatch (expected {sha256}, got {got})")
    os.replace(part, dest)
    return dest
