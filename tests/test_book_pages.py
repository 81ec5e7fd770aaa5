"""The book's sources keep the build machine out of the reader's pages and cite only files that
exist: checks on the chapters (book/*.ipynb), the exercise notebooks, the book's pages
(book/**/*.md) and the repository's READMEs. (book/tools/check_pages.py checks the rendered pages.)"""
import ast
import fnmatch
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
NOTEBOOKS = CHAPTERS + sorted((ROOT / "book" / "exercises").glob("*.ipynb"))
PAGES = sorted(p for p in (ROOT / "book").rglob("*.md"))
READMES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "data_prep" / "README.md", ROOT / "bench" / "README.md",
           ROOT / "requirements.txt", ROOT / "_config.yml", ROOT / "_toc.yml", ROOT / "Makefile", ROOT / "pyproject.toml"]
# Developer documents that live outside the repository: nothing in it may cite them.
OUTSIDE = re.compile(r"algorithms\.md|paper_numbers\.md|\bbook\.md|\bdesign\.md|\bstyle\.md|shared/docs")
FILE_NAME = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:md|py|ipynb|yml|yaml|toml|sh|txt))\b")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
ARTIST_METHODS = {"set_title", "set_xlabel", "set_ylabel", "plot", "bar", "barh", "legend", "text", "annotate",
                  "suptitle", "axhline", "axvline", "scatter", "hist", "imshow", "boxplot", "set_xticks",
                  "set_yticks", "set_xticklabels", "fill_between", "errorbar"}
TABLE = re.compile(r"DataFrame\(|_table\(|\btable\b")
NO_FLOATS = re.compile(r"sharing_table\(|backbones\.SPECS|params_per_client")   # tables of names and counts


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _src(cell):
    return "".join(cell["source"])


def _markdown_texts():
    """(where, markdown text) of every chapter and exercise notebook cell and every book page."""
    for path in NOTEBOOKS:
        for cell in _cells(path):
            if cell["cell_type"] == "markdown":
                yield f"{path.relative_to(ROOT)} cell {cell['id']}", _src(cell)
    for path in PAGES:
        yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")


def _all_texts():
    """(where, text) of every cell (code too) and page."""
    for path in NOTEBOOKS:
        for cell in _cells(path):
            yield f"{path.relative_to(ROOT)} cell {cell['id']}", _src(cell)
    for path in PAGES:
        yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")


def _repository_files():
    skip = {".git", ".venv", "_build", "__pycache__", ".pytest_cache"}
    return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def _exists(name, files):
    """A cited file exists: from the root, from book/, or as the tail of a repository path. A
    placeholder (``book/exercises/<chapter>_exercises.ipynb``) must match at least one file."""
    if "PLACEHOLDER" in name:
        pattern = name.replace("PLACEHOLDER", "*")
        return any(fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f, "*/" + pattern) for f in files)
    if (ROOT / name).exists() or (ROOT / "book" / name).exists():
        return True
    return any(f == name or f.endswith("/" + name) for f in files)


def test_markdown_has_no_tab_characters():
    """A tab in a JSON string is "\\t": "$\\tanh$" saved unescaped renders as a tab and "anh"."""
    bad = [where for where, text in _markdown_texts() if "\t" in text]
    assert bad == []


def test_markdown_never_points_at_the_workplace_data():
    bad = [where for where, text in _markdown_texts() if "shared/data" in text or "../shared" in text]
    assert bad == []


def test_sources_show_no_machine_paths_or_core_counts():
    bad = [where for where, text in _all_texts() if "/root/" in text or re.search(r"\b2-core\b", text)]
    assert bad == []


def test_nothing_cites_the_documents_outside_the_repository():
    texts = list(_all_texts()) + [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in READMES]
    bad = [(where, m.group(0)) for where, text in texts for m in OUTSIDE.finditer(text)]
    assert bad == []


def test_file_names_in_prose_are_code_and_exist():
    """Outside code, a file name becomes a link to a web site (linkify: "http://algorithms.md"); inside
    backticks it must name a file of the repository."""
    files = _repository_files()
    bare, missing = [], []
    for where, text in _markdown_texts():
        text = FENCE.sub("", text)
        prose = LINK_TARGET.sub("]", INLINE_CODE.sub(" ", text))
        bare += [(where, m.group(1)) for m in FILE_NAME.finditer(prose)]
        for code in INLINE_CODE.findall(text):
            code = re.sub(r"<[\w -]+>", "PLACEHOLDER", code)
            missing += [(where, m.group(1)) for m in FILE_NAME.finditer(code) if not _exists(m.group(1), files)]
    assert bare == [], "write file names as `code`"
    assert missing == [], "cite files that exist in the repository"


def test_the_file_name_checks_can_fail():
    files = _repository_files()
    assert not _exists("algorithms.md", files) and not _exists("fedmm_lite/colab_old.py", files)
    assert _exists("fed/server.py", files) and _exists("bench/README.md", files)
    assert _exists("book/exercises/PLACEHOLDER_exercises.ipynb", files)
    assert not _exists("book/exercises/PLACEHOLDER_answers.ipynb", files)
    assert FILE_NAME.search("see algorithms.md, section 8").group(1) == "algorithms.md"
    assert OUTSIDE.search("(paper_numbers.md: FedAvg)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["id"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapters_ask_colab_for_a_gpu_and_report_their_environment(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"]["accelerator"] == "GPU"
    assert nb["metadata"]["colab"]["gpuType"] == "T4"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert 'if "google.colab" in sys.modules:' in _src(code[0])          # the guarded install cell
    assert "print(environment_report(" in _src(code[1])                 # then the environment report


def _last_statement(source):
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    return tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None


def _display_problem(source):
    """Why the cell's last value would show badly, or None."""
    last = _last_statement(source)
    if last is None or source.rstrip().endswith(";"):
        return None
    value = last.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in ("print", "display"):
        return None
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr in ARTIST_METHODS:
        return "a matplotlib call as the last line shows its repr (Text(...)): end it with ';'"
    text = ast.unparse(value)
    if TABLE.search(text) and not NO_FLOATS.search(text) and ".round(" not in text and ".style" not in text:
        return "a displayed table: round it (.round(3)) or style it"
    return None


def test_display_rules_can_fail():
    assert _display_problem("fig, ax = plt.subplots()\nax.set_title('x')") is not None
    assert _display_problem("ax.set_title('x');") is None
    assert _display_problem("viz_runs.comparison_table(runs)") is not None
    assert _display_problem("viz_runs.comparison_table(runs).round(4)") is None
    assert _display_problem("table") is not None and _display_problem("print(table)") is None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_display_no_reprs_and_rounded_tables(path):
    bad = [(c["id"], why) for c in _cells(path) if c["cell_type"] == "code"
           for why in [_display_problem(_src(c))] if why]
    assert bad == []
