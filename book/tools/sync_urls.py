"""Write the repository URL of ``fedmm_lite.colab`` everywhere the book names it, or check it.

``fedmm_lite.colab.REPOSITORY_URL`` and ``BRANCH`` are the one place that names the repository.
This script rewrites, from them:

- the "Open in Colab" badge in the first cell of every chapter (``book/*.ipynb``) and exercise
  notebook (``book/exercises/*.ipynb``);
- the install cell of those notebooks (the first code cell: ``%pip install ...`` on Colab only);
- ``repository: url`` and ``branch`` in ``_config.yml`` (the launch buttons of the rendered book);
- the install command in README.md.

    python book/tools/sync_urls.py            # rewrite what differs, print the files changed
    python book/tools/sync_urls.py --check    # exit 1 listing what differs (the tests run this)

Change the repository by editing ``fedmm_lite/colab.py`` and running this script.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedmm_lite import colab  # noqa: E402

BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
INSTALL = re.compile(r'^(\s*)%pip install -q "fedmm_lite @ git\+[^"]*"[^\n]*$', re.MULTILINE)
README_INSTALL = re.compile(r'^pip install (?:-q )?"fedmm_lite @ git\+[^"]*"[^\n]*$', re.MULTILINE)
CONFIG_REPOSITORY = re.compile(r"^(repository:\n(?:[ \t]+#[^\n]*\n)*[ \t]+url:[ \t]*)(\S+)(\n[ \t]+branch:[ \t]*)(\S+)",
                               re.MULTILINE)


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every notebook with a badge and an install cell: the chapters and the exercise notebooks."""
    return sorted((root / "book").glob("*.ipynb")) + sorted((root / "book" / "exercises").glob("*.ipynb"))


def read_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def dump_notebook(nb: dict) -> str:
    """The JSON text nbformat writes (sorted keys, one-space indent, UTF-8, final newline)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _lines(text: str) -> list[str]:
    """A cell's source as nbformat stores it: lines that keep their newline, the last without."""
    return text.splitlines(keepends=True)


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def sync_notebook(path: Path, root: Path = ROOT) -> tuple[str, list[str]]:
    """(the notebook's synced text, problems: what is missing and cannot be written)."""
    nb = read_notebook(path)
    relative = path.relative_to(root).as_posix()
    problems = []
    cells = nb["cells"]
    first = cells[0] if cells else None
    if first is None or first["cell_type"] != "markdown" or not BADGE.search(_source(first)):
        problems.append(f"{relative}: the first cell has no 'Open in Colab' badge")
    else:
        first["source"] = _lines(BADGE.sub(lambda m: colab.colab_badge(relative), _source(first), count=1))
    code = [c for c in cells if c["cell_type"] == "code"]
    if not code or not INSTALL.search(_source(code[0])):
        problems.append(f"{relative}: the first code cell is not the install cell (%pip install ... fedmm_lite)")
    else:
        code[0]["source"] = _lines(INSTALL.sub(lambda m: m.group(1) + "%" + colab.install_command(),
                                               _source(code[0])))
    return dump_notebook(nb), problems


def sync_config(text: str) -> tuple[str, list[str]]:
    if not CONFIG_REPOSITORY.search(text):
        return text, ["_config.yml: no 'repository:' block with 'url:' and 'branch:'"]
    return CONFIG_REPOSITORY.sub(lambda m: m.group(1) + colab.REPOSITORY_URL + m.group(3) + colab.BRANCH, text), []


def sync_readme(text: str) -> tuple[str, list[str]]:
    if not README_INSTALL.search(text):
        return text, ["README.md: no 'pip install \"fedmm_lite @ git+...\"' line"]
    return README_INSTALL.sub(lambda m: colab.install_command(), text), []


def plan(root: Path = ROOT) -> tuple[dict[Path, str], list[str]]:
    """{file: synced text} for every file whose text differs, and the problems found."""
    changes, problems = {}, []
    targets = [(p, lambda p=p: sync_notebook(p, root)) for p in notebooks(root)]
    targets += [(root / "_config.yml", lambda: sync_config((root / "_config.yml").read_text(encoding="utf-8"))),
                (root / "README.md", lambda: sync_readme((root / "README.md").read_text(encoding="utf-8")))]
    for path, synced in targets:
        text, found = synced()
        problems.extend(found)
        if text != path.read_text(encoding="utf-8"):
            changes[path] = text
    return changes, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything differs")
    args = parser.parse_args(argv)
    changes, problems = plan()
    for problem in problems:
        print(problem)
    if args.check:
        for path in changes:
            print(f"{path.relative_to(ROOT)}: does not name {colab.REPOSITORY_URL} (branch {colab.BRANCH}) "
                  "everywhere: run python book/tools/sync_urls.py")
        return 1 if changes or problems else 0
    for path, text in changes.items():
        path.write_text(text, encoding="utf-8")
        print(f"synced {path.relative_to(ROOT)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
