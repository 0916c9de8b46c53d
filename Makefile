# Finetune Workbook. `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# JupyterLab settings installed by setup (jupyter/overrides.json): widget state (progress bars, the try-it
# box) is saved with the notebook, so a notebook opened again shows them instead of "Error displaying
# widget"; no news or update checks (they need the internet and ask the user at first start).
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
KERNEL := finetune-workbook
PYTEST_ARGS ?=

.PHONY: ui strip setup browser serve bench bench-scale bench-serve gpu-check run test test-fast lab lock samples lint clean help kernel

help:
	@echo "make run    - set up if needed, then execute every notebook headless into runs/"
	@echo "make test   - set up if needed, then run the whole test suite (every notebook via nbmake, then tests/)"
	@echo "make test-fast - the unit tier only (no notebooks, no browser): under a minute"
	@echo "make lab    - JupyterLab in notebooks/ [PORT=8888 IP=127.0.0.1 LAB_ARGS=...]; works as root"
	@echo "make strip  - clear outputs and widget state from notebooks/*.ipynb after working in them (before a commit)"
	@echo "make kernel - register this checkout's kernel for a JupyterLab outside .venv (OCI, Domino)"
	@echo "make setup  - virtual environment + pinned requirements + helpers + Jupyter kernel"
	@echo "make bench  - on real data: Trainer (seeds' way, tuned) vs the workbook loop vs the plain PyTorch floor; generation"
	@echo "make bench-scale - the data path at 10k/100k/1M rows (SCALE_ARGS=--full: 3.6M): time and memory"
	@echo "make bench-serve - workbook serve, micro-batching on vs off, 1/8/32 clients: requests/s, p50/p99"
	@echo "make gpu-check - on a GPU: every notebook in each precision, fp16 kill+resume, QLoRA, 2 GPUs, bench, serve (8 min)"
	@echo "make ui     - the MLflow UI over runs/mlflow.db (every tracked run) on 127.0.0.1 [UI_PORT=5000]"
	@echo "make serve DIR=runs/01_finbert_financial_sentiment [PORT=8000] - web page + JSON API for a saved model"

# The virtual environment is rebuilt when the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml jupyter/overrides.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (finetune-workbook)" >/dev/null
	mkdir -p $(dir $(LAB_SETTINGS)) && cp jupyter/overrides.json $(LAB_SETTINGS)
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/workbook run $(RUN_ARGS)

# One pytest run: every notebook through nbmake at smoke sizes (into a fresh runs folder, whose results
# tests/test_notebooks.py then checks instead of running those notebooks again), then tests/.
NBMAKE_RUNS := $(CURDIR)/.pytest_cache/nbmake-runs
test: setup browser
	rm -rf $(NBMAKE_RUNS)
	WORKBOOK_SMOKE=1 WORKBOOK_RUNS_DIR=$(NBMAKE_RUNS) $(PY) -m pytest --nbmake --nbmake-timeout=1800 --durations=12 notebooks tests $(PYTEST_ARGS)

# The unit tier: no notebook runs, SIGKILL / two-process tests or browser (under a minute on 2 cores).
test-fast: setup
	$(PY) -m pytest -m "not slow and not notebook" $(PYTEST_ARGS)

# The web app's browser test drives Debian's chromium headless; installed here when we are root
# (CI is). Elsewhere install `chromium chromium-driver` yourself, or the browser test is skipped.
browser:
	@if command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium + chromium-driver for the browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "WARNING: could not install chromium; the browser test will be skipped"; \
	else echo "note: chromium/chromedriver not installed and not root: the browser test will be skipped"; fi

# JupyterLab from .venv, opening in notebooks/. As root (containers, OCI, Domino images) it adds
# --allow-root. PORT, IP and LAB_ARGS pass through, e.g. make lab PORT=8890 IP=0.0.0.0 LAB_ARGS="--no-browser".
# WORKBOOK_SMOKE=1 make lab: every notebook runs at smoke sizes (a quick interactive try).
IP ?= 127.0.0.1
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(or $(PORT),8888) --ip=$(IP) \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Every notebook run is tracked in runs/mlflow.db (or MLFLOW_TRACKING_URI); this shows them.
ui: setup
	$(VENV)/bin/workbook ui --port $(or $(UI_PORT),5000)

# After working in the tracked notebooks in JupyterLab: drop outputs, counts and saved widget state
# before committing (tests/test_runner.py checks it); cell tags (parameters) stay.
strip: setup
	$(PY) -c "from helpers.runner import clear_outputs; print(*clear_outputs(), sep='\n')"

# For a JupyterLab that runs outside .venv (OCI Data Science, Domino): a user-level kernel for this
# checkout only, named after its folder, so two clones never share (or overwrite) one kernel.
CHECKOUT_ID := $(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)
kernel: setup
	$(PY) -m ipykernel install --user --name finetune-workbook-$(CHECKOUT_ID) \
	  --display-name "Python (finetune-workbook: $(notdir $(CURDIR)))"


# A benchmark, not a test: (a) seeds' Trainer vs (b) tuned Trainer vs (c) the workbook loop, and
# batched vs naive generation. Writes bench/results.json + bench/results.md (docs/benchmarks.md).
bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

# Notebook 02's data path and first steps at 10k, 100k and 1M rows (SCALE_ARGS=--full adds 3.6M):
# seconds per stage, peak RSS, the token store vs the Trainer. Writes bench/scale.{json,md,png}.
bench-scale: setup
	$(PY) -m bench.scale $(SCALE_ARGS)

# workbook serve with micro-batching on and off, at 1, 8 and 32 clients on 127.0.0.1 (bench/serve.{json,md}).
bench-serve: setup
	$(PY) -m bench.serve $(SERVE_BENCH_ARGS)

# The one-command GPU check (bench/gpu_check.py): writes bench/results/gpu-check.{json,md}. On a GPU machine
# with no package index, use its own Python: make gpu-check GPU_PY=python3 (docs/benchmarks.md says how to
# bring the missing packages as wheels). Without a GPU it runs the same plumbing at the smallest size.
gpu-check: $(if $(GPU_PY),,setup)
	$(or $(GPU_PY),$(PY)) -m bench.gpu_check $(GPU_CHECK_ARGS)

serve: setup
	$(VENV)/bin/workbook serve $(or $(DIR),runs/01_finbert_financial_sentiment) --port $(or $(PORT),8000) $(SERVE_ARGS)

samples: setup
	$(VENV)/bin/workbook samples

lock: setup
	{ echo "# The tested set: exact pins (Python 3.11, CPU build of torch). Regenerate with 'make lock'."; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//' | grep -v '^finetune-workbook'; } > requirements.txt.new
	mv requirements.txt.new requirements.txt

clean:
	rm -rf runs .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
