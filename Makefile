# Two entry points, both self-contained on a fresh machine with Python >= 3.10 and make:
#   make demo   - 4 local producer processes -> one Subscriber -> aggregate, Parquet, PNG
#   make test   - the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench multicast browser node lab docs dist clean

$(STAMP): pyproject.toml
	@echo "make: first run: creating $(VENV) and installing zpandas with pyzmq, pyarrow, pandas,"
	@echo "      polars, matplotlib, ipywidgets, watchdog and the test tools (about 300 MB;"
	@echo "      1-3 minutes with a fast link). Later runs start at once."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m zpandas demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Multicast (epgm/pgm) needs a libzmq built with OpenPGM, which PyPI's pyzmq wheels lack:
# install Debian's libzmq and rebuild pyzmq against it (root, Debian/Ubuntu).
multicast: $(VENV)/.multicast
$(VENV)/.multicast: $(STAMP)
	@command -v apt-get >/dev/null || { echo "make multicast: needs apt-get (Debian/Ubuntu)"; exit 1; }
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q libzmq3-dev
	PYZMQ_NO_BUNDLE=1 $(PY) -m pip install --quiet --force-reinstall --no-deps --no-binary pyzmq --no-cache-dir pyzmq
	$(PY) -c "import zmq, sys; sys.exit(0 if zmq.has('pgm') else 'pyzmq still has no pgm')"
	touch $@

# The real-browser test (tests/test_browser.py): Debian's chromium and JupyterLab +
# Playwright in the venv. Without apt-get or root, says so: that test then skips.
browser: $(VENV)/.browser
$(VENV)/.browser: $(STAMP)
	@echo "make browser: installing chromium (apt) and jupyterlab + playwright (pip; about 1-2 minutes)"
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -q chromium; } || \
	  { echo "make browser: no chromium and no apt-get: tests/test_browser.py will skip"; exit 0; }
	$(PY) -m pip install --progress-bar off -e '.[test,browser]'
	touch $@

# A reader in another language (tests/test_node_reader.py): apache-arrow and codecs for
# Node.js, from npm. Without node or npm, says so: that test then skips.
node:
	@command -v npm >/dev/null || { echo "make node: no npm: tests/test_node_reader.py will skip"; exit 0; }
	cd tests/node && npm ci --no-audit --no-fund --silent

# JupyterLab in .venv, opened on the notebooks
lab: $(STAMP)
	$(PY) -m pip install --progress-bar off -e '.[lab]'
	$(PY) -m jupyter lab notebooks/

# The documentation site, warnings as errors: out/site/index.html
docs: $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# What a release needs: a wheel and an sdist that build cleanly and pass twine's checks
dist: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dist]'
	rm -rf out/dist
	$(PY) -m build --outdir out/dist
	$(VENV)/bin/twine check --strict out/dist/*

bench: $(STAMP)
	$(PY) bench/bench_pipeline.py

clean:
	rm -rf $(VENV) out .pytest_cache
