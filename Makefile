# Two commands for a fresh machine (README): `make book` and `make test`.
# Both create the virtual environment from requirements.txt when it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tests never touch ~/.cache: generated worlds and converted data go under _build/.
# (No MPLBACKEND for notebooks: it overrides the inline backend and the book would have no figures.)
TEST_ENV := FEDMM_QUICK=1 TQDM_DISABLE=1 FEDMM_DATA_DIR=$(CURDIR)/_build/test-data
# Two workers on two cores: one thread each.
XDIST := -n 2
THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# The flower extra (pyproject.toml), installed for the tests and chapter 10; the same pin.
FLOWER := flwr[simulation]==1.42.0

.PHONY: venv book test unit notebooks book-strict bench clean

# The full book (`make book`) and the quick-mode strict build (`make test`) never share an output
# folder or an execution cache: each builds into _build/<mode>/ (pages in _build/<mode>/_build/html)
# with the configuration book/tools/book_config.py generates from _config.yml.
BOOK_FULL  := _build/full
BOOK_QUICK := _build/quick
# No progress bars in pages: tqdm's (the package's own bars follow fedmm_lite.colab.progress_bars)
# and the model hub's (transformers loading MiniLM).
BOOK_ENV   := TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip install -q "$(FLOWER)"
	touch $(STAMP)

venv: $(STAMP)

## The rendered book, every chapter executed on the embedded default data (full mode, never quick:
## FEDMM_QUICK is removed from the environment). Cached per notebook: a second `make book` re-executes
## only the chapters whose code changed (`make clean` empties the cache); myst-nb prints each chapter
## as it executes and its time.
book: venv
	$(BIN)/python book/tools/book_config.py full
	env -u FEDMM_QUICK $(BOOK_ENV) $(BIN)/jupyter-book build . --path-output $(BOOK_FULL) --config $(BOOK_FULL)/_config.yml --keep-going
	@echo "open $(BOOK_FULL)/_build/html/index.html"

## The whole suite in quick mode: unit tests, every chapter and every exercise solutions notebook
## through nbmake, the strict book build.
test: unit notebooks book-strict

unit: venv
	$(TEST_ENV) MPLBACKEND=Agg $(THREADS) $(BIN)/python -m pytest tests $(XDIST) -q

notebooks: venv
	$(TEST_ENV) $(BOOK_ENV) $(THREADS) $(BIN)/python -m pytest --nbmake book/*.ipynb book/exercises/*_solutions.ipynb $(XDIST) -q --nbmake-timeout=1200

## Quick mode, every page read and executed (--all with execute_notebooks: force), warnings are
## errors; then the rendered pages are checked for what readers must not see (book/tools/check_pages.py).
book-strict: venv
	$(BIN)/python book/tools/book_config.py quick
	$(TEST_ENV) $(BOOK_ENV) $(THREADS) $(BIN)/jupyter-book build . --path-output $(BOOK_QUICK) --config $(BOOK_QUICK)/_config.yml --all -W -n --keep-going
	$(TEST_ENV) $(BIN)/python book/tools/check_pages.py $(BOOK_QUICK)/_build/html

bench: venv
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf _build
