# A serving image for ONE saved model folder: `workbook serve` on 0.0.0.0:8000, as a non-root user, with a
# HEALTHCHECK on /health. Only what serving needs (requirements-serve.txt: torch, transformers, flask, pandas, peft),
# none of the lab (JupyterLab, MLflow, Optuna, papermill, pytest). docs/container.md has the whole story;
# `make docker DIR=runs/<notebook>` builds it with docker or podman, `make docker-run` runs it.
#
#   docker build --build-arg MODEL_DIR=runs/01_finbert_financial_sentiment -t finetune-workbook-serve:01 .
#   docker run --rm -p 8000:8000 finetune-workbook-serve:01
#   curl -s localhost:8000/health
#
# Built without MODEL_DIR, the image serves whatever folder is mounted at /model:
#   docker run --rm -p 8000:8000 -v "$PWD/runs/02_distilbert_amazon_polarity:/model:ro" finetune-workbook-serve
#
# Build arguments
#   BASE_IMAGE   a Debian/Ubuntu image; python3 and python3-venv are installed with apt-get when it has no python3.
#                Default python:3.11-slim-bookworm (CPU). GPUs: see docs/container.md (GPU=1, --gpus all).
#   MODEL_DIR    the model folder to copy in, relative to the build context (a notebook's OUTPUT_DIR, whose
#                model/ is taken, or any folder `workbook serve` accepts). Empty: mount one at /model.
#   WHEELS       a folder of wheels in the build context (`make docker-deps` fills .whl/serve-cpu with pip download):
#                every package comes from it, no index is asked (air-gapped builds). Empty: from the index.
#   TORCH_INDEX  with WHEELS empty, where torch comes from: PyTorch's CPU index by default (the CPU build, much
#                smaller); empty for PyPI's CUDA build.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
# The same first stage for building and running: python3 (from apt where the base has none) and the user.
RUN set -eu; \
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates && rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --uid 10001 --user-group --create-home --home-dir /home/workbook --shell /usr/sbin/nologin workbook

FROM python AS build
ARG WHEELS=
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# The packages, in /opt/venv: one layer, reused until requirements-serve.txt or the wheels change. Less what serving
# never uses (torch's C++ headers, C++ test binaries, protoc: about 190 MB) and without bytecode for every module
# (pip's would add 280 MB): only what `workbook serve` imports is compiled.
COPY requirements-serve.txt /src/
COPY ${WHEELS:-requirements-serve.txt} /wheels/
RUN set -eu; \
    python3 -m venv /opt/venv; \
    if [ -n "${WHEELS}" ]; then \
        ls /wheels/*.whl >/dev/null 2>&1 || { echo "no wheels in ${WHEELS}: run make docker-deps" >&2; exit 1; }; \
        /opt/venv/bin/pip install --quiet --no-compile --no-index --find-links /wheels -r /src/requirements-serve.txt; \
    else \
        /opt/venv/bin/pip install --quiet --no-compile ${TORCH_INDEX:+--extra-index-url "${TORCH_INDEX}"} \
            -r /src/requirements-serve.txt; \
    fi; \
    /opt/venv/bin/pip check; \
    torch=$(/opt/venv/bin/python -c "import os, importlib.util as u; print(os.path.dirname(u.find_spec('torch').origin))"); \
    rm -rf "$torch/include" "$torch/test" "$torch"/bin/test_* "$torch"/bin/*Test "$torch"/bin/protoc*; \
    /opt/venv/bin/python -c "import torch, transformers, flask, pandas, peft, transformers.generation, \
transformers.models.bert.modeling_bert, transformers.models.distilbert.modeling_distilbert, \
transformers.models.gpt_neox.modeling_gpt_neox, transformers.models.t5.modeling_t5"
# The workbook itself (the helpers kit and the `workbook` tool) in /app, without its lab dependencies: a change to it
# leaves the packages' layers as they are.
COPY pyproject.toml README.md /src/
COPY helpers /src/helpers
COPY workbook /src/workbook
RUN /opt/venv/bin/pip install --quiet --no-index --no-deps --no-build-isolation --target /app /src \
    && PYTHONPATH=/app /opt/venv/bin/python -c "import workbook.cli, workbook.serve, helpers.inference, helpers.textgen"
# The model folder last. A notebook's OUTPUT_DIR gives its model/ only (no checkpoints, plots or notebook).
ARG MODEL_DIR=
COPY ${MODEL_DIR:-requirements-serve.txt} /model-src/
RUN set -eu; \
    mkdir /model; \
    if [ -n "${MODEL_DIR}" ]; then \
        src=/model-src; \
        if [ -f "$src/model/config.json" ] || [ -f "$src/model/adapter_config.json" ]; then src="$src/model"; fi; \
        if [ ! -f "$src/config.json" ] && [ ! -f "$src/adapter_config.json" ]; then \
            echo "MODEL_DIR=${MODEL_DIR} holds no saved model (no config.json or adapter_config.json, nor in model/)" >&2; \
            exit 1; \
        fi; \
        tar -C "$src" --exclude=./checkpoints -cf - . | tar -C /model -xf -; \
    fi; \
    chmod -R a+rX /model

FROM python
LABEL org.opencontainers.image.title="finetune-workbook serve" \
      org.opencontainers.image.description="workbook serve for one fine-tuned model folder (/model) on port 8000"
ENV PATH=/app/bin:/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    WORKBOOK_CACHE=/tmp/finetune-workbook \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build /model /model
USER workbook
WORKDIR /home/workbook
EXPOSE 8000
# workbook serve stops cleanly on Ctrl+C; as PID 1 it would ignore docker stop's default SIGTERM (killed after 10 s)
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
ENTRYPOINT ["workbook", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
CMD []
