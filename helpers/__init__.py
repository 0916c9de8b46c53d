"""The thin package every notebook imports: `import helpers as hp`.

Modules (imported on first use, so `import helpers` is instant and has no side effects):
    hp.data       load files / Hub datasets / generated samples, clean, split, cap
    hp.models     resolve a model name (local, Hub, cache, stand-in), build classifiers and generators
    hp.textgen    summarization: prompt + target rows with masked labels, seq2seq rows, batched generation
    hp.training   the one training loop (`hp.train`) and `hp.evaluate`
    hp.planning   before training: will it fit, how long (`hp.plan`), which learning rate (`hp.find_lr`)
    hp.speedups   the loop's CPU fast paths (integer dropout masks, bf16 attention, row-sparse embedding)
    hp.metrics    scikit-learn metrics, ROUGE and repetition
    hp.plots      plots that take an `ax` and return it
    hp.artifacts  saving models, metrics.json, model cards
    hp.inference  load a saved folder and predict or summarize
    hp.device     device and precision choices
    hp.runner     run notebooks headless with papermill
    hp.tracking   every notebook run logged to MLflow (runs/mlflow.db or MLFLOW_TRACKING_URI)
    hp.sweep      grid and Optuna sweeps over a notebook's parameters (`workbook sweep`)
    hp.compare    the comparison report of runs: table, metric vs parameter, validation curves
    hp.serve      a web page + JSON API for a saved model (`workbook serve`)
    hp.standins   tiny offline GPT-NeoX / T5 stand-ins (same classes as Pythia / T5)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_MODULES = {"data", "models", "training", "textgen", "metrics", "plots", "inference", "artifacts", "device",
            "planning", "notebook"}
_SHORTCUTS = {"train": "training", "evaluate": "training", "History": "training", "EvalResult": "training",
              "TrainConfig": "training", "plan": "planning", "find_lr": "planning"}

__all__ = sorted(_MODULES | set(_SHORTCUTS))


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _SHORTCUTS:
        return getattr(importlib.import_module(f".{_SHORTCUTS[name]}", __name__), name)
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")


def __dir__():
    return __all__
