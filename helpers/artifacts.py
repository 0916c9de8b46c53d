"""Saving what a notebook produced: the model folder, `metrics.json` and a model card.

Layout of a notebook's OUTPUT_DIR:
    metrics.json        one format for tests, the runner's summary and benchmarks (DESIGN.md section 4)
    model/              save_pretrained model + tokenizer, workbook.json (task, labels, settings), README.md,
                        score.py (needs only torch + transformers: Domino / OCI Data Science scoring)
    plots/*.png         figures the notebook saved
    checkpoints/        resumable training checkpoints
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from .data import PROJECT_ROOT

WORKBOOK_FILE = "workbook.json"
METRICS_FILE = "metrics.json"
RUNS_DIR = PROJECT_ROOT / "runs"


def default_output_dir(notebook: str) -> Path:
    """`runs/<notebook>/` at the project root, wherever the notebook runs from."""
    return RUNS_DIR / notebook


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "datasets", "accelerate", "peft", "tokenizers", "scikit-learn",
                    "finetune-workbook"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def _jsonable(value: Any) -> Any:
    """Plain JSON: numpy scalars to Python, NaN/inf to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def write_metrics(output_dir: str | Path, *, notebook: str, test: dict, baseline: dict | None = None,
                  validation: dict | None = None, model: dict | None = None, data: dict | None = None,
                  train: dict | None = None, params: dict | None = None, **extra: Any) -> Path:
    """Write `OUTPUT_DIR/metrics.json` in the one format everything reads."""
    record = {"notebook": notebook, "test": test, "baseline": baseline or {}, "validation": validation or {},
              "model": model or {}, "data": data or {}, "train": train or {}, "params": params or {},
              "versions": versions(), "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              **extra}
    return write_json(Path(output_dir) / METRICS_FILE, record)


def read_metrics(output_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / METRICS_FILE).read_text())


def save_model(output_dir: str | Path, model, tokenizer, *, task: str, info: dict[str, Any] | None = None,
               card: str | None = None, subdir: str = "model") -> Path:
    """`save_pretrained` model and tokenizer into OUTPUT_DIR/model, with `workbook.json` and a card.

    `task` ("text-classification", "summarization-causal", "summarization-seq2seq") tells
    `helpers.inference` how to load and use the folder later. A peft model saves its adapter
    only (`subdir="adapter"`, say); `info["base_model_path"]` names the base it goes on.
    """
    folder = Path(output_dir) / subdir
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / WORKBOOK_FILE, {"task": task, **(info or {}), "versions": versions()})
    shutil.copyfile(Path(__file__).with_name("score_template.py"), folder / "score.py")  # self-contained scoring
    if card:
        (folder / "README.md").write_text(card)
    return folder


def model_card(*, title: str, base_model: dict, data: dict, metrics: dict, baseline: dict | None = None,
               params: dict | None = None, notes: str = "") -> str:
    """A short model card: what was fine-tuned on what, how well, and whether a stand-in was used."""
    lines = [f"# {title}", ""]
    if base_model.get("standin") or data.get("standin"):
        lines += ["> **Built with offline stand-ins.** "
                  + (f"The model is a stand-in for {base_model.get('requested', '?')}. "
                     if base_model.get("standin") else "")
                  + ("The data is the project's generated sample, not the real dataset. "
                     if data.get("standin") else "")
                  + "The numbers below show the code works, not how good the requested model is.", ""]
    lines += [f"- Base model: `{base_model.get('used')}` (requested `{base_model.get('requested')}`)",
              f"- Data: `{data.get('used', data.get('source'))}` ({data.get('rows', {})} rows)", ""]
    lines += ["| metric | fine-tuned |" + (" before fine-tuning |" if baseline else ""),
              "|---|---|" + ("---|" if baseline else "")]
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            row = f"| {key} | {value:.4f} |"
            if baseline:
                b = baseline.get(key)
                row += f" {b:.4f} |" if isinstance(b, (int, float)) else " - |"
            lines.append(row)
    if params:
        lines += ["", "Training parameters: " + ", ".join(f"`{k}={v}`" for k, v in params.items())]
    if notes:
        lines += ["", notes]
    lines += ["", "Made with the Finetune Workbook (`helpers.inference.load(folder)` loads it back)."]
    return "\n".join(lines) + "\n"


def folder_size_mb(folder: str | Path) -> float:
    """Size of the files in a folder (recursively), in MB."""
    return round(sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20, 3)
