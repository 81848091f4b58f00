# Two commands matter: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vqgan-lc-installed
PYTEST_ARGS ?=

.PHONY: install test test-all demo bench lint freeze clean

install: $(STAMP)

# Reinstalls only when the dependency pins, the packaging or the C kernel change.
$(STAMP): constraints.txt setup.cfg setup.py pyproject.toml vqgan_lc/quantize/csrc/_search.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/vqgan-lc demo --out runs/demo

bench: install
	$(PY) benchmarks/quantize.py

# Ruff over the code, tests and benchmarks; mypy over the shipped (py.typed) package ([tool.mypy]).
lint: install
	$(VENV)/bin/ruff check vqgan_lc tests benchmarks
	$(PY) -m mypy vqgan_lc

freeze:
	$(PY) -m pip freeze --exclude-editable | grep -v '^vqgan' > constraints.tmp && \
	{ echo "# Exact versions CI and 'make install' use (pip install -c constraints.txt). Regenerate with 'make freeze'."; cat constraints.tmp; } > constraints.txt && rm constraints.tmp

clean:
	rm -rf $(VENV) build *.egg-info vqgan_lc/quantize/_search*.so .pytest_cache .mypy_cache .ruff_cache
