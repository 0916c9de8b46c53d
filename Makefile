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

.PHONY: ui strip setup browser serve bench bench-scale bench-serve gpu-check run test test-fast lab lock samples lint clean help kernel \
        docker docker-run docker-deps docker-base

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
	@echo "make gpu-check - on a GPU: fp16 kill+resume, speed (loop/floor/Trainer MFU), serving, 2 GPUs, QLoRA, notebooks (8 min)"
	@echo "make ui     - the MLflow UI over runs/mlflow.db (every tracked run) on 127.0.0.1 [UI_PORT=5000]"
	@echo "make serve DIR=runs/01_finbert_financial_sentiment [PORT=8000] - web page + JSON API for a saved model"
	@echo "make docker DIR=runs/<notebook> [TAG=... GPU=1 BASE_IMAGE=... RUNTIME=onnx] - a serving image of one model (docker or podman)"
	@echo "make docker-run DIR=runs/<notebook> [PORT=8000] - run it; MODEL=folder mounts a folder into an image built without DIR"
	@echo "make lint   - ruff (pinned) over the tree, with pyproject.toml's settings"

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
test: setup browser lint
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
	$(PY) -c "from workbook.runner import clear_outputs; print(*clear_outputs(), sep='\n')"

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

# The one-command GPU check (bench/gpu_check.py): writes gpu-check.{json,md} into $OUT (the device tool) or bench/results. On a GPU machine
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

# ------------------------------------------------------------------------------------------------------ lint
# ruff, pinned, kept beside .venv (not in it: `make lock` must not pin a linter into the lab's requirements).
RUFF_VERSION := 0.17.6
RUFF := $(VENV)/tools/ruff-$(RUFF_VERSION)/bin/ruff
$(RUFF): | $(STAMP)
	$(PY) -m pip install --quiet --target $(VENV)/tools/ruff-$(RUFF_VERSION) ruff==$(RUFF_VERSION)

lint: $(RUFF)
	$(RUFF) check .

# ------------------------------------------------------------------------------- the serving image (Dockerfile)
# make docker DIR=runs/01_finbert_financial_sentiment [TAG=...]: one saved model folder + `workbook serve` on
# 0.0.0.0:8000 (docs/container.md), built with docker (when its daemon answers) or podman; ENGINE=... chooses.
# The packages come from a wheel folder made first (docker-deps: pip download of requirements-serve.txt), so the
# build itself needs no package index; with no registry either, make docker-base makes a Debian base image.
# Without DIR the image holds no model: make docker-run MODEL=some/folder mounts one at /model.
ENGINE_FOUND = $(shell if docker info >/dev/null 2>&1; then echo docker; \
  elif command -v podman >/dev/null 2>&1; then echo podman; elif command -v docker >/dev/null 2>&1; then echo docker; fi)
ENGINE ?= $(eval ENGINE := $(ENGINE_FOUND))$(ENGINE)
GPU ?=
BASE_IMAGE ?= python:3.11-slim-bookworm
PYTHON_VERSION ?= 3.11
WHEEL_ARCH ?= $(if $(filter arm64 aarch64,$(shell uname -m)),aarch64,x86_64)
# pip takes one platform tag literally: list every manylinux up to glibc 2.35 (bookworm has 2.36, Ubuntu 22.04 2.35)
WHEEL_PLATFORMS = $(foreach v,$(shell seq 35 -1 17),--platform manylinux_2_$(v)_$(WHEEL_ARCH)) \
  --platform manylinux2014_$(WHEEL_ARCH) --platform manylinux_2_12_$(WHEEL_ARCH) --platform manylinux2010_$(WHEEL_ARCH) \
  --platform manylinux_2_5_$(WHEEL_ARCH) --platform manylinux1_$(WHEEL_ARCH)
# RUNTIME=onnx: the image without torch for a folder exported with `workbook export` (Dockerfile.onnx)
RUNTIME ?= torch
ONNX_IMAGE = $(filter onnx,$(RUNTIME))
SERVE_REQS = $(if $(ONNX_IMAGE),requirements-serve-onnx.txt,requirements-serve.txt)
DOCKERFILE = $(if $(ONNX_IMAGE),Dockerfile.onnx,Dockerfile)
WHEELS ?= .whl/serve-$(if $(ONNX_IMAGE),onnx,$(if $(GPU),cuda,cpu))
TORCH_INDEX ?= $(if $(GPU),,https://download.pytorch.org/whl/cpu)
DOCKER_DIR = $(patsubst %/,%,$(DIR))
DOCKER_NAME = $(if $(DOCKER_DIR),$(shell printf '%s' "$(notdir $(DOCKER_DIR))" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9_.-' '-'),latest)
TAG ?= finetune-workbook-serve:$(DOCKER_NAME)$(if $(GPU),-gpu)$(if $(ONNX_IMAGE),-onnx)
DOCKER_PIP = $(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m pip
DOCKER_BUILD_ARGS ?=
DOCKER_RUN_ARGS ?=
LOCAL_BASE := localhost/finetune-workbook-base:bookworm
BASE_CACHE ?= $(HOME)/.cache/finetune-workbook/docker

# A folder with symbolic links (weights kept elsewhere, a Hub cache's snapshots) is copied with the files they point
# to: a link copied as a link points nowhere inside the image. A broken link is refused before the build. Messages
# name DIR, never the staging folder.
docker: docker-deps
	@test -n "$(ENGINE)" || { echo "make docker needs docker or podman (make docker-deps installs podman as root)"; exit 2; }
	@set -o pipefail; model=""; staged=""; base="$(BASE_IMAGE)"; if [ -n "$(DOCKER_DIR)" ]; then \
	  test -d "$(DOCKER_DIR)" || { echo "DIR=$(DOCKER_DIR) is not a folder"; exit 2; }; \
	  broken=$$(find -L "$(DOCKER_DIR)" -path '*/checkpoints' -prune -o -type l -print | head -1); \
	  test -z "$$broken" || { echo "DIR=$(DOCKER_DIR): $$broken is a link to $$(readlink "$$broken"), which does not exist;" \
	    "put the file itself there (or fix the link), then make docker again"; exit 2; }; \
	  links=$$(find "$(DOCKER_DIR)" -path '*/checkpoints' -prune -o -type l -print | head -1); \
	  rel=$$(realpath --relative-to="$(CURDIR)" "$(DOCKER_DIR)"); \
	  if [ -n "$(ONNX_IMAGE)" ] && [ ! -f "$(DOCKER_DIR)/onnx/model.onnx" ] && [ ! -f "$(DOCKER_DIR)/model/onnx/model.onnx" ]; then \
	    echo "DIR=$(DOCKER_DIR) has no ONNX export: run .venv/bin/workbook export $(DOCKER_DIR) [--quantize int8] first"; \
	    exit 2; fi; \
	  case "$$rel" in runs/*) [ -n "$$links" ] || model="$$rel";; esac; \
	  if [ -z "$$model" ]; then model=.cache/docker-model/$(DOCKER_NAME)-$$$$; staged="$$model"; \
	     echo "copying $(DOCKER_DIR) into the build context$${links:+ (the files its links point to, not the links)}"; \
	     mkdir -p "$$model" && tar -C "$(DOCKER_DIR)" -h --exclude=./checkpoints -cf - . | tar -C "$$model" -xf - \
	     || { rm -rf "$$model"; echo "could not copy DIR=$(DOCKER_DIR) into the build context"; exit 2; }; fi; fi; \
	if ! $(ENGINE) image inspect "$$base" >/dev/null 2>&1 && ! $(ENGINE) pull -q "$$base" >/dev/null 2>&1; then \
	  if $(ENGINE) image inspect $(LOCAL_BASE) >/dev/null 2>&1; then \
	    echo "note: $$base cannot be pulled (no registry reachable); using the local base $(LOCAL_BASE) (make docker-base)"; \
	    base=$(LOCAL_BASE); \
	  else [ -n "$$staged" ] && rm -rf "$$staged"; \
	    echo "$$base cannot be pulled (no registry reachable) and there is no local base: run make docker-base (a Debian" \
	      "base from Debian's packages), then make docker again; or BASE_IMAGE=an image you have"; exit 2; fi; fi; \
	shown=$${model:-none, mount one at /model}; [ -z "$$staged" ] || shown="$(DOCKER_DIR)"; \
	echo "$(ENGINE) build -t $(TAG) (model: $$shown; base: $$base)"; \
	$(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker) -t $(TAG) --build-arg BASE_IMAGE="$$base" \
	  --build-arg WHEELS=$(WHEELS) --build-arg MODEL_DIR="$$model" $(DOCKER_BUILD_ARGS) -f $(DOCKERFILE) . 2>&1 \
	  | if [ -n "$$staged" ]; then sed -u "s|$$staged|$(DOCKER_DIR)|g"; else cat; fi; \
	status=$$?; if [ -n "$$staged" ]; then rm -rf "$$staged"; rmdir .cache/docker-model 2>/dev/null; fi; \
	[ $$status = 0 ] && $(ENGINE) image inspect --format 'built $(TAG): {{.Size}} bytes' $(TAG)
docker: SHELL := /bin/bash

# MODEL=folder: mounted at /model and read as you (--user): save_pretrained writes weights readable by their owner only.
docker-run:
	$(ENGINE) run --rm -p $(or $(PORT),8000):8000 $(if $(GPU),--gpus all) \
	  $(if $(MODEL),--user "$$(id -u):$$(id -g)" -v "$(abspath $(MODEL))":/model:ro) $(DOCKER_RUN_ARGS) $(TAG)

# What a build needs on this machine: a container engine (as root on Debian, with neither docker nor podman
# working, podman and runc are installed, as `browser` installs chromium) and the wheel folder.
docker-deps: $(WHEELS)/.complete
	@if docker info >/dev/null 2>&1 || command -v podman >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing podman + runc for the container build"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null; } \
	  || echo "WARNING: could not install podman; the container test will be skipped"; \
	else echo "note: neither docker nor podman found and not root: install one to build the image"; fi
	@# podman inside a container (CI runners, this lab): crun fails on cgroups and rlimits; runc, no default ulimits
	@if [ "$$(id -u)" = 0 ] && command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 \
	  && [ ! -e /etc/containers/containers.conf ]; then \
	  mkdir -p /etc/containers && printf '%s\n' \
	    '# written by make docker-deps (finetune-workbook): runc, and no default ulimits (crun fails on cgroups and' \
	    '# rlimits where podman itself runs in a container)' '[containers]' 'default_ulimits = []' '' \
	    '[engine]' 'runtime = "runc"' > /etc/containers/containers.conf; fi

# The wheels of requirements-serve.txt for the image's Python and platform: torch from TORCH_INDEX (the CPU build
# unless GPU=1), the rest with --no-deps (the file pins the whole set; pip check in the build confirms it).
$(WHEELS)/.complete: $(SERVE_REQS)
	@echo "downloading the wheels of $(SERVE_REQS) into $(WHEELS) (Python $(PYTHON_VERSION), $(WHEEL_ARCH))"
	@rm -rf $(WHEELS).tmp && mkdir -p $(WHEELS).tmp
	@grep -E '^[A-Za-z0-9]' $(SERVE_REQS) | grep -v '^torch==' > $(WHEELS).tmp/requirements.txt
	@if grep -q '^torch==' $(SERVE_REQS); then \
	  $(DOCKER_PIP) download --quiet --only-binary=:all: $(WHEEL_PLATFORMS) \
	  --python-version $(PYTHON_VERSION) --implementation cp -d $(WHEELS).tmp $(if $(GPU),-c $(SERVE_REQS),--no-deps) \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $$(grep -E '^torch==' $(SERVE_REQS)) || exit 1; \
	  if [ -z "$(GPU)" ] && ! ls $(WHEELS).tmp/torch-*+cpu-*.whl >/dev/null 2>&1; then \
	    echo "the torch wheel downloaded is not the CPU build ($$(ls $(WHEELS).tmp | grep '^torch-')); set TORCH_INDEX" \
	         "to an index with it (default https://download.pytorch.org/whl/cpu), or GPU=1 for a CUDA image"; exit 1; fi; fi
	@$(DOCKER_PIP) download --quiet --only-binary=:all: $(WHEEL_PLATFORMS) \
	  --python-version $(PYTHON_VERSION) --implementation cp --no-deps -d $(WHEELS).tmp -r $(WHEELS).tmp/requirements.txt
	@rm $(WHEELS).tmp/requirements.txt && rm -rf $(WHEELS) && mv $(WHEELS).tmp $(WHEELS) && touch $(WHEELS)/.complete
	@du -sh $(WHEELS)

# A base image without a registry: Debian bookworm (python3 3.11, venv) from Debian's packages with mmdebstrap,
# imported as $(LOCAL_BASE); then make docker BASE_IMAGE=$(LOCAL_BASE). The root file system is kept in BASE_CACHE.
docker-base:
	@test -n "$(ENGINE)" || { echo "docker-base needs docker or podman (make docker-deps)"; exit 2; }
	@if $(ENGINE) image inspect $(LOCAL_BASE) >/dev/null 2>&1; then echo "$(LOCAL_BASE) is there"; exit 0; fi; \
	tar=$(BASE_CACHE)/bookworm-python3-v1.tar; mkdir -p $(BASE_CACHE); \
	if [ ! -s $$tar ]; then \
	  command -v mmdebstrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }; }; } \
	  || { echo "docker-base needs mmdebstrap (apt-get install mmdebstrap, as root)"; exit 2; }; \
	  echo "building a Debian bookworm root file system with python3 (mmdebstrap, about 30 s)"; \
	  mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,ca-certificates \
	    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	    --customize-hook='rm -rf "$$1"/var/lib/apt/lists/* "$$1"/var/cache/apt/*.bin' \
	    bookworm $$tar.tmp && mv $$tar.tmp $$tar; fi; \
	$(ENGINE) import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	  --change 'CMD ["python3"]' $$tar $(LOCAL_BASE)
