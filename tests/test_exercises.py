"""Exercise notebooks are generated from the chapters (book/tools/make_exercises.py): committed
copies equal a fresh generation, exercises carry no solution, and the solutions notebooks run in
quick mode under `make test` (nbmake)."""
import copy
import importlib.util
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_exercises", ROOT / "book" / "tools" / "make_exercises.py")
make_exercises = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_exercises)

CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _nb(path):
    return json.loads(Path(path).read_text())


def _src(cell):
    return "".join(cell["source"])


def test_committed_exercise_notebooks_equal_a_fresh_generation():
    wanted = make_exercises.generate()
    assert {p.name for p in wanted} == {p.name for p in (ROOT / "book" / "exercises").glob("*.ipynb")}
    for path, text in wanted.items():
        assert path.read_text() == text, f"{path.name} drifted from its chapter: run book/tools/make_exercises.py"


def test_every_chapter_has_exercises_and_both_notebooks():
    assert [p.stem for p in make_exercises.chapters()] == [p.stem for p in CHAPTERS]
    for chapter in CHAPTERS:
        for kind in ("exercises", "solutions"):
            assert (ROOT / "book" / "exercises" / f"{chapter.stem}_{kind}.ipynb").exists()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_exercises_hide_the_solutions_and_solutions_show_them(chapter):
    parts = make_exercises.parse_chapter(_nb(chapter), chapter.stem)
    exercises = _nb(ROOT / "book" / "exercises" / f"{chapter.stem}_exercises.ipynb")["cells"]
    solutions = _nb(ROOT / "book" / "exercises" / f"{chapter.stem}_solutions.ipynb")["cells"]
    for ex in parts["exercises"]:
        solution_sources = [_src(c) for c in ex["code"]]
        assert not [c for c in exercises if _src(c) in solution_sources], ex["label"]
        assert any(c["id"] == f"answer-{ex['label']}" for c in exercises)
        assert [_src(c) for c in solutions if _src(c) in solution_sources] == solution_sources
        assert any(c["id"] == f"solution-{ex['label']}" for c in solutions)
    for cells in (exercises, solutions):
        ids = [c["id"] for c in cells]
        assert len(ids) == len(set(ids))
        assert all(c.get("outputs", []) == [] for c in cells if c["cell_type"] == "code")
        text = "".join(_src(c) for c in cells)
        assert "{term}" not in text and "{ref}" not in text and "{solution" not in text and "{exercise" not in text
        # self-contained: install, quick mode, report, parameters, set-up come first
        code = [c for c in cells if c["cell_type"] == "code"]
        assert "%pip install" in _src(code[0])
        assert 'os.environ.setdefault("FEDMM_QUICK", "1")' in _src(code[1])
        assert "environment_report" in _src(code[2])
        assert "parameters" in code[3]["metadata"].get("tags", [])
        assert "exercise-setup" in code[4]["metadata"].get("tags", [])


def test_roles_become_plain_text():
    assert make_exercises.plain("a {term}`client` and {term}`rounds <round>`") == "a client and rounds"
    assert "book/methods.md" in make_exercises.plain("see {ref}`methods-privacy`")


def test_an_exercise_without_its_solution_is_an_error():
    nb = _nb(CHAPTERS[0])
    broken = copy.deepcopy(nb)
    first = next(i for i, c in enumerate(broken["cells"]) if make_exercises.EXERCISE.match(_src(c)))
    del broken["cells"][first + 1]
    with pytest.raises(make_exercises.ExerciseError, match="not followed by its solution"):
        make_exercises.parse_chapter(broken, "broken")
    no_setup = copy.deepcopy(nb)
    for c in no_setup["cells"]:
        c.get("metadata", {}).pop("tags", None)
    with pytest.raises(make_exercises.ExerciseError, match="exercise-setup"):
        make_exercises.parse_chapter(no_setup, "no_setup")


def test_make_test_runs_every_solutions_notebook_in_quick_mode():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-B", "notebooks"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(shlex.split(l) for l in out.splitlines() if "--nbmake" in l)
    assert "FEDMM_QUICK=1" in line
    assert "book/exercises/*_solutions.ipynb" in line and "book/*.ipynb" in line
