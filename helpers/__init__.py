"""The teaching kit every notebook imports: `import helpers as hp`.

Modules (imported on first use, so `import helpers` is instant and has no side effects):
    hp.data       one loading entry point per recipe shape, clean, split, cap, label ids, tokenize
    hp.models     resolve a model name (local, Hub, cache, stand-in), classifiers, generators, LoRA
    hp.training   the training loop (`hp.train`, `hp.TrainConfig`, `hp.History`) and `hp.evaluate`
    hp.textgen    summarization: prompt + target rows with masked labels, seq2seq rows, batched generation
    hp.metrics    scikit-learn metrics, calibration, error slices, ROUGE
    hp.plots      plots that take an `ax` and return it
    hp.inference  load a saved folder and predict or summarize
    hp.artifacts  run bookkeeping: the saved model folder, metrics.json, the model card
    hp.device     device and precision choices
    hp.planning   before training: will it fit, how long (`hp.plan`), which learning rate (`hp.find_lr`)
    hp.notebook   the notebook's run: its parameters checked, its output folder, its tracked MLflow run

Every public name is in its module's `__all__` and in docs/kit.md. Modules whose names start with an
underscore are the kit's internals: the file readers (`_readers`), the batches (`_batching`), the CPU fast
paths (`_fastpaths`), offline stand-ins and Hub probing (`_offline/`), one run's MLflow logging
(`_mlflow`), paths (`_paths`), progress bars (`_progress`), what several processes share (`_ranks`), and a
classifier's answers whatever runs it, torch or ONNX Runtime (`_classify`, torch-free). The tool around the
notebooks (`workbook run`, sweeps, serving) is the separate `workbook` package: it imports the kit; the kit
never imports it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_MODULES = {"data", "models", "training", "textgen", "metrics", "plots", "inference", "artifacts", "device",
            "planning", "notebook"}
_SHORTCUTS = {"train": "training", "evaluate": "training", "History": "training",
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
