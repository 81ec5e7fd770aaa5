"""Write each chapter's exercise notebooks, to hand in, from the chapter's own exercise cells.

One source, two notebooks per chapter, so they never drift from the book (the approach of the
scikit-learn MOOC, whose exercise notebooks are generated from its solution notebooks):

    book/exercises/<chapter>_exercises.ipynb   the exercises and an empty answer cell each
    book/exercises/<chapter>_solutions.ipynb   the exercises and their solutions

    python book/tools/make_exercises.py            # (re)write every exercise notebook
    python book/tools/make_exercises.py --check    # exit 1 if a committed one differs (tests)

How a chapter marks its exercises (book/*.ipynb, rendered by sphinx-exercise):

- a markdown cell that is one ``{exercise}`` directive with a ``:label:``;
- its solution right after it: either a markdown cell that is one ``{solution} <label>``
  directive (prose only), or a ``{solution-start} <label>`` cell (prose may follow the directive),
  the solution's code cells, and a ``{solution-end}`` cell (sphinx-exercise's gated solution);
- the set-up the exercises need: the chapter's ``parameters`` cell and the code cells tagged
  ``exercise-setup`` (they load the data and import what the solutions use).

A generated notebook is self-contained: the chapter's install cell (Colab), a cell that sets quick
mode unless ``FEDMM_QUICK`` is already set, the chapter's environment report, parameters and set-up
cells, then the exercises. MyST roles ({term}, {ref}, ...) become plain text, since Jupyter and
Colab do not render them. Notebooks are written without outputs, with stable cell ids.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync_urls import dump_notebook, read_notebook  # noqa: E402

sys.path.insert(0, str(ROOT))
from fedmm_lite import colab  # noqa: E402

OUT = Path("book") / "exercises"
EXERCISE = re.compile(r"\A```\{exercise\}\n:label: (?P<label>[\w-]+)\n(?P<body>.*?)\n```\s*\Z", re.DOTALL)
SOLUTION = re.compile(r"\A```\{solution\} (?P<label>[\w-]+)\n(?::class: dropdown\n)?(?P<body>.*?)\n```\s*\Z",
                      re.DOTALL)
SOLUTION_START = re.compile(r"\A```\{solution-start\} (?P<label>[\w-]+)\n(?::class: dropdown\n)?```\n?(?P<body>.*)\Z",
                            re.DOTALL)
SOLUTION_END = re.compile(r"\A```\{solution-end\}\n```\s*\Z")
ROLE = re.compile(r"\{(?P<role>term|ref|doc|cite|numref)\}`(?P<text>[^`<]*?)\s*(?:<[^>`]*>)?`")
QUICK_CELL = """\
# Quick mode (small data, few rounds), unless FEDMM_QUICK is already set: set it to 0 for the
# chapter's full-size runs.
import os

os.environ.setdefault("FEDMM_QUICK", "1")
import fedmm_lite
"""


class ExerciseError(ValueError):
    """A chapter's exercise cells do not follow the markup this script reads."""


def _role(match: re.Match) -> str:
    if match["role"] == "ref" and match["text"].startswith("methods-"):
        return f"the book's methods page (`book/methods.md`, section `{match['text']}`)"
    return match["text"]


def plain(text: str) -> str:
    """MyST roles as plain text: {term}`clients <client>` -> clients; a {ref} to the methods page
    names the page and the section."""
    return ROLE.sub(_role, text)


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _markdown(cell_id: str, text: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": _lines(text)}


def _code(cell_id: str, text: str, metadata: dict | None = None) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": cell_id, "metadata": metadata or {},
            "outputs": [], "source": _lines(text)}


def _copy(cell: dict) -> dict:
    """A chapter's code cell as it is, without outputs."""
    out = copy.deepcopy(cell)
    out["outputs"], out["execution_count"] = [], None
    return out


def parse_chapter(nb: dict, name: str) -> dict:
    """What the generator needs from a chapter: title, set-up cells, exercises with their solutions.

    Returns {"title", "install", "report", "parameters", "setup": [cells], "exercises": [
    {"label", "body", "solution": prose, "code": [cells]}]}.
    """
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    if len(code) < 2:
        raise ExerciseError(f"{name}: needs an install cell and an environment report cell")
    title = _source(cells[0]).splitlines()[0].lstrip("# ").strip()
    parameters = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    setup = [c for c in code if "exercise-setup" in c.get("metadata", {}).get("tags", [])]
    if len(parameters) != 1 or not setup:
        raise ExerciseError(f"{name}: needs one 'parameters' cell and at least one 'exercise-setup' cell")
    exercises, i = [], 0
    while i < len(cells):
        cell = cells[i]
        match = EXERCISE.match(_source(cell)) if cell["cell_type"] == "markdown" else None
        if not match:
            i += 1
            continue
        label = match["label"]
        entry = {"label": label, "body": match["body"], "solution": "", "code": []}
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        text = _source(nxt) if nxt is not None and nxt["cell_type"] == "markdown" else ""
        prose, gated = SOLUTION.match(text), SOLUTION_START.match(text)
        if prose and prose["label"] == label:
            entry["solution"] = prose["body"]
            i += 2
        elif gated and gated["label"] == label:
            entry["solution"] = gated["body"].strip("\n")
            j = i + 2
            while j < len(cells) and not (cells[j]["cell_type"] == "markdown" and SOLUTION_END.match(_source(cells[j]))):
                if cells[j]["cell_type"] != "code":
                    raise ExerciseError(f"{name}: only code cells may sit between the solution-start and "
                                        f"solution-end of {label} (cell {cells[j].get('id')})")
                entry["code"].append(cells[j])
                j += 1
            if j == len(cells):
                raise ExerciseError(f"{name}: the solution of {label} has no solution-end cell")
            i = j + 1
        else:
            raise ExerciseError(f"{name}: exercise {label} is not followed by its solution")
        exercises.append(entry)
    if not exercises:
        raise ExerciseError(f"{name}: no exercise found")
    return {"title": title, "install": code[0], "report": code[1], "parameters": parameters[0],
            "setup": setup, "exercises": exercises}


def build_notebook(nb: dict, name: str, with_solutions: bool) -> dict:
    """The exercise (or solution) notebook of chapter ``name`` (e.g. ``01_data``)."""
    parts = parse_chapter(nb, name)
    kind = "solutions" if with_solutions else "exercises"
    path = (OUT / f"{name}_{kind}.ipynb").as_posix()
    intro = (f"# {'Solutions' if with_solutions else 'Exercises'}: {parts['title']}\n\n"
             f"{colab.colab_badge(path)}\n\n"
             f"The exercises of the chapter *{parts['title']}* (`book/{name}.ipynb`), on their own"
             + (", with their solutions." if with_solutions else
                ": write your answer in the cell under each exercise and hand in this notebook.")
             + " It runs in quick mode (small data, few rounds) unless you set `FEDMM_QUICK` yourself."
             f"\n\nGenerated by `book/tools/make_exercises.py` from the chapter: edit the chapter, not"
             " this notebook.")
    cells = [_markdown(f"{kind}-title", intro), _copy(parts["install"]),
             _code("quick-mode", QUICK_CELL), _copy(parts["report"]), _copy(parts["parameters"])]
    cells += [_copy(c) for c in parts["setup"]]
    for number, ex in enumerate(parts["exercises"], 1):
        label = ex["label"]
        cells.append(_markdown(f"exercise-{label}", f"## Exercise {number}\n\n{plain(ex['body'])}"))
        if with_solutions:
            cells.append(_markdown(f"solution-{label}", f"**Solution.** {plain(ex['solution'])}".rstrip()))
            cells += [_copy(c) for c in ex["code"]]
        elif ex["code"]:
            cells.append(_code(f"answer-{label}", "# Your answer:\n"))
        else:
            cells.append(_markdown(f"answer-{label}", "*Your answer:*"))
    return {"cells": cells, "metadata": copy.deepcopy(nb["metadata"]),
            "nbformat": nb["nbformat"], "nbformat_minor": nb["nbformat_minor"]}


def chapters(root: Path = ROOT) -> list[Path]:
    """The chapters with exercises: every book/*.ipynb with an ``{exercise}`` cell."""
    return [p for p in sorted((root / "book").glob("*.ipynb"))
            if any(c["cell_type"] == "markdown" and EXERCISE.match(_source(c)) for c in read_notebook(p)["cells"])]


def generate(root: Path = ROOT) -> dict[Path, str]:
    """{path of each exercise notebook: its text}."""
    out = {}
    for chapter in chapters(root):
        nb = read_notebook(chapter)
        for with_solutions in (False, True):
            kind = "solutions" if with_solutions else "exercises"
            out[root / OUT / f"{chapter.stem}_{kind}.ipynb"] = dump_notebook(build_notebook(nb, chapter.stem, with_solutions))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook differs")
    args = parser.parse_args(argv)
    wanted = generate()
    present = set((ROOT / OUT).glob("*.ipynb"))
    stale = sorted(present - set(wanted))
    differ = sorted(p for p, text in wanted.items() if not p.exists() or p.read_text(encoding="utf-8") != text)
    if args.check:
        for path in differ:
            print(f"{path.relative_to(ROOT)}: differs from its chapter: run python book/tools/make_exercises.py")
        for path in stale:
            print(f"{path.relative_to(ROOT)}: no chapter generates it: delete it")
        return 1 if differ or stale else 0
    (ROOT / OUT).mkdir(parents=True, exist_ok=True)
    for path in differ:
        path.write_text(wanted[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        path.unlink()
        print(f"deleted {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
