# Two entry points: `make run` (the reconciler on specs/) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench clean

run: $(STAMP)
	$(BIN)/reconciler --specs specs --state .state run --stop-on-exit

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

$(STAMP): pyproject.toml setup.py drivers/_compiled_spawn.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# Byte-compile now: with PYTHONDONTWRITEBYTECODE set, every start would compile every module.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib reconciler drivers > /dev/null
	touch $(STAMP)

clean:
	rm -rf $(VENV) .state build drivers/*.so
