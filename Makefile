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

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip install -q "$(FLOWER)"
	touch $(STAMP)

venv: $(STAMP)

## The rendered book, every chapter executed on the embedded default data (full mode).
book: venv
	TQDM_DISABLE=1 $(BIN)/jupyter-book build . --keep-going
	@echo "open _build/html/index.html"

## The whole suite in quick mode: unit tests, every chapter through nbmake, the strict book build.
test: unit notebooks book-strict

unit: venv
	$(TEST_ENV) MPLBACKEND=Agg $(THREADS) $(BIN)/python -m pytest tests $(XDIST) -q

notebooks: venv
	$(TEST_ENV) $(THREADS) $(BIN)/python -m pytest --nbmake book/*.ipynb $(XDIST) -q --nbmake-timeout=1200

book-strict: venv
	$(TEST_ENV) $(BIN)/jupyter-book build . -W -n --keep-going

bench: venv
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf _build
