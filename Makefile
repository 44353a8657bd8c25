# `make test` and `make demo` on a fresh machine: the first run creates .venv and
# installs lowbit (editable, pinned dependencies and test extras) plus the example
# plugin package; the stamp file keeps later runs from reinstalling until a
# pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test demo

test: $(STAMP)
	$(VENV)/bin/pytest -n 2 -q

demo: $(STAMP)
	$(VENV)/bin/lowbit demo

$(STAMP): pyproject.toml examples/lowbit-e3m2-sr/pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[test]'
	$(VENV)/bin/python -m pip install -e examples/lowbit-e3m2-sr
	touch $@
