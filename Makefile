# sympformer — two set-up commands: `make demo` and `make test`.
# Every target creates .venv when it is missing and installs what it needs (idempotent; a second run
# only checks a stamp). Override the torch requirement with e.g. `make test TORCH="torch==2.14.1"`.

PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(subst $() ,_,$(subst =,_,$(subst <,_,$(subst >,_,$(TORCH)))))
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: help install demo test test-slow lint bench clean

help:
	@echo "make demo       run the main job (sympformer demo) on the embedded corpus"
	@echo "make test       fast test suite (excludes tests marked slow)"
	@echo "make test-slow  the whole suite, slow tests included"
	@echo "make lint       ruff"
	@echo "make bench      benchmarks (results in benchmarks/RESULTS.md)"
	@echo "variables: TORCH='$(TORCH)'  PY=$(PY)  VENV=$(VENV)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" numpy
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sympformer demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
