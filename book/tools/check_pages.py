"""Check the rendered book for what a reader must not see; exit 1 naming each page and line.

    python book/tools/check_pages.py _build/quick/_build/html

``make test`` runs it on the strict quick-mode build. It reads every ``.html`` page under the folder
(not the copied sources) and looks for:

- paths of the machine that built the book: the home folder (``/root/...``), the repository's and
  the data folder's absolute paths, ``../shared/`` (the workplace's data), ``site-packages`` (a
  warning that names a file of the environment);
- links that the linkify extension made from file names (``http://algorithms.md``);
- the repr of a matplotlib object left as a cell's last value (``Text(0.5, 1.0, '...')``,
  ``[<matplotlib.lines.Line2D ...>]``);
- tqdm progress bars, as text (``45%|####``, ``12.3it/s]``) or as widgets (``FloatProgressModel``);
- "2-core" and "this machine's cores": the build machine is not the reader's.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FIXED_PATTERNS = {
    "a link made from a file name (linkify)": re.compile(r"""href=["']https?://[\w.-]+\.(?:md|py|ipynb|yml)/?["']"""),
    "the workplace's shared folder": re.compile(r"\.\./shared/|/work/shared"),
    "a path inside the Python environment": re.compile(r"site-packages"),
    "a matplotlib repr": re.compile(r"Text\(-?\d+(?:\.\d+)?, -?\d+(?:\.\d+)?, |&lt;matplotlib\.|<matplotlib\."),
    "a tqdm progress bar": re.compile(r"\d+%\|[^<]{0,80}\||\d(?:it/s|s/it)\]|FloatProgressModel"),
    "the build machine's cores": re.compile(r"\b2-core\b|this machine's cores"),
}


def machine_patterns() -> dict[str, re.Pattern]:
    """Absolute paths of this machine that would show where the book was built."""
    paths = {"the home folder": Path.home(), "the repository": ROOT}
    if os.environ.get("FEDMM_DATA_DIR"):
        paths["the data folder"] = Path(os.environ["FEDMM_DATA_DIR"])
    patterns = {}
    for name, path in paths.items():
        text = str(path.expanduser().resolve())
        if text not in ("/", ""):
            patterns[name] = re.compile(re.escape(text.rstrip("/") + "/"))
    return patterns


def check_page(path: Path, patterns: dict[str, re.Pattern]) -> list[str]:
    """Problems of one page, one line each: ``page:line: what: excerpt``."""
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        for what, pattern in patterns.items():
            for match in pattern.finditer(line):
                start = max(0, match.start() - 40)
                excerpt = html.unescape(line[start:match.end() + 40]).strip()
                problems.append(f"{path}:{number}: {what}: {excerpt}")
    return problems


def check_folder(folder: Path) -> list[str]:
    """Problems of every page under ``folder`` (``_sources`` and ``_static`` are not pages)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"check_pages: {folder} is not a folder of rendered pages")
    patterns = {**FIXED_PATTERNS, **machine_patterns()}
    pages = sorted(p for p in folder.rglob("*.html")
                   if not {"_sources", "_static", "_images"} & set(p.relative_to(folder).parts))
    if not pages:
        raise FileNotFoundError(f"check_pages: no .html page under {folder}")
    problems = []
    for page in pages:
        problems.extend(check_page(page, patterns))
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        problems = check_folder(args.folder)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    if problems:
        print(f"check_pages: {len(problems)} problem(s) in the rendered pages under {args.folder}",
              file=sys.stderr)
        return 1
    print(f"check_pages: no problem in the pages under {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
