# Two entry points for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo

.PHONY: demo test venv venv-test clean protos bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes; torch/torchvision come from the machine's disk.
# The search side is the `search` extra (the core dependencies are the device agent's alone).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[search]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[search,test]'
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

## demo: install, run the default search (digits, one local agent), then report and export it.
demo: venv
	rm -rf $(OUT)
	$(BIN)/hwnas search --out $(OUT)
	$(BIN)/hwnas report $(OUT)
	$(BIN)/hwnas export $(OUT)
	@echo "report: $(OUT)/report/index.html   export: $(OUT)/export/"

## test: install with test extras and run the whole suite.
test: venv-test
	$(BIN)/python -m pytest -q -rs tests

protos: venv-test
	$(BIN)/python -m protos.generate

clean:
	rm -rf $(VENV) runs .pytest_cache
