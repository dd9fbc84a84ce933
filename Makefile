# Two entry points, both self-contained on a fresh machine with Python >= 3.10 and make:
#   make demo   - 4 local producer processes -> one Subscriber -> aggregate, Parquet, PNG
#   make test   - the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m zpandas demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/bench_pipeline.py

clean:
	rm -rf $(VENV) out .pytest_cache
