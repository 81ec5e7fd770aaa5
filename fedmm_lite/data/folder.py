"""Read and validate a dataset folder (the FIXED "bring your own data" format, README.md).

```
NAME/interactions.csv   user_id,item_id,timestamp   (ids are strings or ints; timestamp a number:
                                                      int64 when all are integers, else float64)
NAME/items.csv          item_id,title,image         (image: path relative to NAME/, inside it; may be empty)
NAME/images/...         the image files
```

This module only reads and checks the two tables; filtering and the split live in ``split.py``.
Every problem raises ``DatasetError`` with one line naming the file, the line and the problem.

Line convention: ``line N`` is the line of the CSV file as an editor or a spreadsheet shows it,
the header being line 1, so the first data row is line 2. (A title that contains a quoted line
break shifts the lines after it; the data row number is then ``N - 1`` all the same.)

Ids are read as text (``dtype=str``) so that ``007`` stays ``007`` and an empty title or image stays
``""``; surrounding spaces are stripped from every field.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DatasetError
from .images import path_inside

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "image")


@dataclass
class RawData:
    """The two tables of a dataset folder, validated but not yet filtered or split."""

    interactions: pd.DataFrame  # columns user_id (str), item_id (str), timestamp (int64 or float64)
    items: pd.DataFrame         # columns item_id (str), title (str), image (str, "" = none)
    root: Path                  # the dataset folder (absolute); image paths are relative to it


def _line(row_position: int) -> int:
    """File line of the data row at 0-based position ``row_position`` (header = line 1)."""
    return int(row_position) + 2


def _not_utf8_message(path: Path) -> str:
    """Where the first byte that is not UTF-8 lies: file line and byte offset from the file's start.

    (pandas decodes in blocks and reports an offset inside its block.) Reading line by line is exact:
    a line break is one byte that never occurs inside a UTF-8 multi-byte character.
    """
    offset = 0
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return (f"{path} line {line_number}: not UTF-8 text (byte 0x{line[err.start]:02x} at byte "
                        f"offset {offset + err.start}); save the file as UTF-8")
            offset += len(line)
    return f"{path}: not UTF-8 text; save the file as UTF-8"  # pandas saw what no line shows


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read one CSV as text, check that it exists, parses, has the columns and has data rows."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected a CSV with columns {','.join(columns)})")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty file (expected a header line {','.join(columns)} "
                           f"and data rows)") from None
    except pd.errors.ParserError as err:
        # pandas says e.g. "Expected 3 fields in line 5, saw 4"; one line is all we keep.
        detail = " ".join(str(err).split())
        raise DatasetError(f"{path}: cannot parse the CSV: {detail}") from None
    except UnicodeDecodeError:
        raise DatasetError(_not_utf8_message(path)) from None

    table.columns = [str(c).strip() for c in table.columns]
    found = list(table.columns)
    for column in columns:
        if column not in found:
            raise DatasetError(f"{path} line 1 (header): missing column '{column}' "
                               f"(found {','.join(found)}; expected {','.join(columns)})")
    if len(table) == 0:
        raise DatasetError(f"{path}: empty file (a header line but no data rows)")
    table = table[list(columns)].copy()
    for column in columns:
        table[column] = table[column].str.strip()
    return table


def _check_not_empty(table: pd.DataFrame, column: str, path: Path) -> None:
    empty = np.flatnonzero((table[column] == "").to_numpy())
    if len(empty):
        raise DatasetError(f"{path} line {_line(empty[0])}: empty {column} "
                           f"({len(empty)} row(s) with an empty {column})")


def _read_items(path: Path) -> pd.DataFrame:
    items = _read_table(path, ITEM_COLUMNS)
    _check_not_empty(items, "item_id", path)
    duplicated = items["item_id"].duplicated(keep="first").to_numpy()
    if duplicated.any():
        pos = int(np.flatnonzero(duplicated)[0])
        item = items["item_id"].iat[pos]
        first = int(np.flatnonzero((items["item_id"] == item).to_numpy())[0])
        raise DatasetError(f"{path} line {_line(pos)}: duplicate item_id '{item}' "
                           f"(first listed at line {_line(first)})")
    return items.reset_index(drop=True)


def _check_image_paths(items: pd.DataFrame, root: Path, path: Path) -> None:
    """Every image field names a place inside the dataset folder (links resolved), or is empty."""
    for pos, image in enumerate(items["image"]):
        if image and path_inside(root, image) is None:
            raise DatasetError(f"{path} line {_line(pos)}: image '{image}' leads outside the dataset folder "
                               f"{root} (through '..', an absolute path or a link); image paths must "
                               f"stay inside it")


def _timestamps(column: pd.Series, path: Path) -> np.ndarray:
    """The timestamp column as int64 when every value is an integer, else as float64.

    Integers stay exact: float64 rounds integers above 2**53 (near 1e18 to multiples of 128), which
    would tie distinct timestamps and change which item is held out.
    """
    integer = column.str.fullmatch(r"[+-]?\d+").to_numpy()
    if integer.all():
        digits = column.str.lstrip("+-").str.lstrip("0").str.len().to_numpy()
        for pos in np.flatnonzero(digits >= 19):  # only these can leave the int64 range
            value = int(column.iat[int(pos)])
            if not -2**63 <= value < 2**63:
                raise DatasetError(f"{path} line {_line(pos)}: timestamp '{column.iat[int(pos)]}' does not "
                                   f"fit a 64-bit integer (at most {2**63 - 1})")
        return column.astype(np.int64).to_numpy()
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise DatasetError(f"{path} line {_line(bad[0])}: timestamp '{column.iat[int(bad[0])]}' is not a "
                           f"number (expected e.g. seconds since 1970; {len(bad)} bad row(s))")
    return values


def _read_interactions(path: Path, known_items: pd.Series) -> pd.DataFrame:
    inter = _read_table(path, INTERACTION_COLUMNS)
    _check_not_empty(inter, "user_id", path)
    _check_not_empty(inter, "item_id", path)

    inter["timestamp"] = _timestamps(inter["timestamp"], path)

    unknown = np.flatnonzero(~inter["item_id"].isin(known_items).to_numpy())
    if len(unknown):
        item = inter["item_id"].iat[int(unknown[0])]
        raise DatasetError(f"{path} line {_line(unknown[0])}: unknown item_id '{item}' (not listed in "
                           f"items.csv; {len(unknown)} interaction(s) with unknown items)")
    return inter.reset_index(drop=True)


def read_folder(path: str | Path) -> RawData:
    """Read ``interactions.csv`` and ``items.csv`` of a dataset folder and validate them.

    Raises ``DatasetError`` (one line: file, line, problem) for a missing folder or file, an empty
    file, a missing column, an empty or duplicate item id, an empty user id, a non-numeric timestamp
    an interaction with an item that ``items.csv`` does not list, or an image path that leads outside
    the folder. Images are not opened here (``build_dataset`` checks them: a bad image is counted,
    not an error).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (a dataset folder holds interactions.csv and items.csv)")
    # items first: interactions are checked against its ids
    items = _read_items(root / "items.csv")
    _check_image_paths(items, root, root / "items.csv")
    interactions = _read_interactions(root / "interactions.csv", items["item_id"])
    return RawData(interactions=interactions, items=items, root=root.absolute())
