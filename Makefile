# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-slow bench clean overopt docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[export,dev,ray,serve,triton,docs,test,openvino,quantize]'
	$(BIN)/python -m pip install --quiet --no-deps 'openrlhf==0.11.2'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/ensrm demo

# The overoptimisation experiment: rewrites examples/overoptimisation/results/ (JSON + PNG).
overopt: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/overoptimisation/run.py --out examples/overoptimisation/results

# ruff's rules are in pyproject.toml ([tool.ruff]); the tests run only on a clean tree.
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link, anchor or API reference.
docs: $(STAMP)
	HF_HUB_OFFLINE=1 NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks -o artifacts/bench

clean:
	rm -rf $(VENV) artifacts .pytest_cache site
