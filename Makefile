# `make test` and `make demo` on a fresh machine: the first run creates .venv and
# installs lowbit (editable, pinned dependencies and test extras) plus the example
# plugin package; the stamp file keeps later runs from reinstalling until a
# pyproject.toml changes. `make test` also installs the HDL tools (Icarus Verilog,
# Yosys, Verilator, GHDL) with apt-get when one is missing and we are root;
# elsewhere the HDL tests are skipped with the reason.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
HDL_TOOLS := iverilog yosys verilator ghdl

.PHONY: test demo hdl-tools

test: $(STAMP) hdl-tools
	$(VENV)/bin/pytest -n 2 -q

demo: $(STAMP)
	$(VENV)/bin/lowbit demo

hdl-tools:
	@missing=""; for t in $(HDL_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing HDL tools:$$missing"; \
		(apt-get update && apt-get install -y $(HDL_TOOLS)) || echo "could not install$$missing: the HDL tests will be skipped"; \
	else \
		echo "HDL tools missing:$$missing (not root or no apt-get): the HDL tests will be skipped"; \
	fi

$(STAMP): pyproject.toml examples/lowbit-e3m2-sr/pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[test]'
	$(VENV)/bin/python -m pip install -e examples/lowbit-e3m2-sr
	touch $@
