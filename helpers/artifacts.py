"""Saving what a notebook produced: the model folder, `metrics.json` and a model card.

Layout of a notebook's OUTPUT_DIR:
    metrics.json        one format for tests, the runner's summary and benchmarks (docs/architecture.md)
    model/              save_pretrained model + tokenizer, workbook.json (task, labels, settings), README.md,
                        score.py (needs only torch + transformers: Domino / OCI Data Science scoring)
    plots/*.png         figures the notebook saved
    checkpoints/        resumable training checkpoints
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ._paths import RUNS_DIR, SCORE_TEMPLATE
from .device import _is_main_process

__all__ = ["save_run", "write_metrics"]

_WORKBOOK_FILE = "workbook.json"
_METRICS_FILE = "metrics.json"
_RUN_FILE = "run.json"  # which notebook and parameters own an OUTPUT_DIR, and whether that run finished
_VOLATILE_PARAMS = {"OUTPUT_DIR", "RESUME", "OVERWRITE"}  # may change without making it another run


class _OutputDirInUseError(RuntimeError):
    """OUTPUT_DIR cannot take this run: it holds another (or an unfinished) one and neither OVERWRITE nor
    RESUME was asked for, or it cannot be written."""


def _default_output_dir(notebook: str) -> Path:
    """`runs/<notebook>/` at the project root, wherever the notebook runs from (`WORKBOOK_RUNS_DIR`
    moves the runs folder: nbmake, which cannot set parameters, runs the notebooks into a fresh one)."""
    import os

    return Path(os.environ.get("WORKBOOK_RUNS_DIR") or RUNS_DIR) / notebook


def _versions() -> dict[str, str]:
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


def _write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Written whole or not at all: into a temporary file, then renamed (a full disk leaves the old file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _save_failed(path, err) from err
    tmp.replace(path)
    return path


class _SaveError(RuntimeError):
    """A save that failed (a full disk, a folder that cannot be written): one line with the folder and the fix."""


_NOTEBOOK_FIX = ("what this run computed is still in memory: free some space (or set OUTPUT_DIR on a larger disk) and "
                 "run this cell again")


def _save_failed(target: Path, err: BaseException, needed_mb: float | None = None, *,
                 fix: str = _NOTEBOOK_FIX) -> _SaveError:
    import errno

    where = next((p for p in [target, *target.parents] if p.exists()), Path("."))
    free_mb = shutil.disk_usage(where).free / 2**20
    text = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    full = getattr(err, "errno", None) == errno.ENOSPC or "StorageFull" in text or "No space left" in text
    need = f", about {needed_mb:.0f} MB needed" if needed_mb else ""
    what = f"no space left on the disk ({free_mb:.0f} MB free{need})" if full else text
    return _SaveError(f"could not save {target}: {what}. Nothing half-written was left in its place, and {fix}.")


def _same_run_params(params: dict) -> dict:
    return {k: _jsonable(v) for k, v in params.items() if k not in _VOLATILE_PARAMS}


def _prepare_output_dir(output_dir: str | Path, *, notebook: str, params: dict, resume: bool = False,
                        overwrite: bool = False) -> Path:
    """Claim OUTPUT_DIR for this run, refusing to mix two runs or to lose unfinished work.

    - empty or new folder, or a *finished* run with the same notebook and parameters: go ahead
      (stale checkpoints of the finished run are removed so they cannot be resumed by mistake);
    - another notebook or other parameters: refused unless OVERWRITE=True (or RESUME=True with the same ones);
    - an *unfinished* run (checkpoints, no final metrics): refused unless RESUME=True or OVERWRITE=True.
    """
    folder = Path(output_dir)
    if not _is_main_process():  # rank 0 claims the folder for the whole multi-process run
        return folder
    if folder.exists() and not folder.is_dir():
        raise _OutputDirInUseError(f"OUTPUT_DIR {folder} is a file, not a folder; choose another OUTPUT_DIR.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise _OutputDirInUseError(f"OUTPUT_DIR {folder} cannot be written ({err.strerror or err}); choose a folder "
                                   "you can write to (OUTPUT_DIR=...).") from None
    run_file = folder / _RUN_FILE
    mine = {"notebook": notebook, "params": _same_run_params(params)}
    previous = _read_json_object(run_file)
    has_checkpoints = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir())
    holds_results = (folder / _METRICS_FILE).exists() or (folder / "model").exists() or has_checkpoints
    fix = "set OVERWRITE=True to replace it, or choose another OUTPUT_DIR"
    if previous is None and holds_results and not overwrite:
        raise _OutputDirInUseError(f"OUTPUT_DIR {folder} already holds results of an unknown run; {fix}.")
    # A run that failed before it saved anything (a bad parameter, a crash before the first checkpoint) holds no
    # work to protect: the next run, with whatever parameters, takes the folder.
    left_nothing = previous is not None and not previous.get("finished") and not holds_results
    if previous is not None and not overwrite and not left_nothing:
        if previous.get("notebook") != notebook:
            raise _OutputDirInUseError(f"OUTPUT_DIR {folder} holds a run of {previous.get('notebook')}; {fix}.")
        before, now = previous.get("params", {}), mine["params"]
        changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                   if before.get(k) != now.get(k)]
        if changed:
            raise _OutputDirInUseError(
                f"OUTPUT_DIR {folder} holds a run with other parameters ({'; '.join(changed[:4])}); {fix}"
                + (" (RESUME continues only a run with the same parameters)." if resume else "."))
        if not previous.get("finished") and has_checkpoints and not resume:
            raise _OutputDirInUseError(
                f"OUTPUT_DIR {folder} holds an unfinished run with checkpoints; set RESUME=True to continue it "
                "(nothing is lost), or OVERWRITE=True to start over.")
    if has_checkpoints and (overwrite or (previous or {}).get("finished")) and not resume:
        shutil.rmtree(folder / "checkpoints")
    if overwrite and (folder / _METRICS_FILE).exists():
        (folder / _METRICS_FILE).unlink()
    folder.mkdir(parents=True, exist_ok=True)
    # A resumed run that fails (a damaged checkpoint, Ctrl-C) leaves the folder as it was: a finished
    # run's results are still there, so it stays "finished" until this run writes new ones.
    finished = bool(resume and previous and previous.get("finished") and (folder / _METRICS_FILE).exists())
    _write_json(run_file, {**mine, "finished": finished,
                           "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return folder


def _read_json_object(path: Path) -> dict | None:
    """A JSON object from `path`; None when the file is missing, unreadable, not JSON or not an object (run.json
    then says of an unknown run; `workbook compare` shows a damaged metrics.json as a failed run)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_metrics(output_dir: str | Path, *, notebook: str, test: dict, baseline: dict | None = None,
                  validation: dict | None = None, model: dict | None = None, data: dict | None = None,
                  train: dict | None = None, params: dict | None = None, **extra: Any) -> Path:
    """Write `OUTPUT_DIR/metrics.json` in the one format everything reads (and mark run.json finished).

    Files only: the MLflow run is finished by the notebook (`run.finish_tracking(path)`). `extra` adds
    sections, e.g. `evaluations=history.evals` (the validation curve `workbook compare` draws); a run that a
    callback stopped (`train["pruned_at_step"]`, from `History.summary()`) is recorded as pruned.
    """
    if not _is_main_process():
        return Path(output_dir) / _METRICS_FILE
    validation = {k: v for k, v in (validation or {}).items() if k != "elapsed_s"}  # metrics only, no timings
    if (train or {}).get("pruned_at_step") is not None:
        extra.setdefault("pruned_at_step", train["pruned_at_step"])
    record = {"notebook": notebook, "test": test, "baseline": baseline or {}, "validation": validation,
              "model": model or {}, "data": data or {}, "train": train or {}, "params": params or {},
              "versions": _versions(), "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              **extra}
    path = _write_json(Path(output_dir) / _METRICS_FILE, record)
    run_file = Path(output_dir) / _RUN_FILE
    if run_file.exists():  # the run is complete: a same-parameter rerun may reuse the folder
        _write_json(run_file, {**json.loads(run_file.read_text()), "finished": True,
                               "finished_at": record["finished_at"]})
    return path


def _read_metrics(output_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(output_dir) / _METRICS_FILE).read_text())


def _save_model(output_dir: str | Path, model, tokenizer, *, task: str, info: dict[str, Any] | None = None,
                card: str | None = None, subdir: str = "model") -> Path:
    """`save_pretrained` model and tokenizer into OUTPUT_DIR/model, with `workbook.json` and a card.

    `task` ("text-classification", "summarization-causal", "summarization-seq2seq") tells
    `helpers.inference` how to load and use the folder later. A peft model saves its adapter
    only (`subdir="adapter"`, say); `info["base_model_path"]` names the base it goes on.
    """
    folder = Path(output_dir) / subdir
    if not _is_main_process():
        return folder
    # Written into a temporary folder, then renamed: a full disk or a kill never leaves a half-written model/
    # that looks complete, and an earlier complete one stays until the new one is whole.
    partial, old = folder.with_name(f".{subdir}.partial"), folder.with_name(f".{subdir}.old")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        _write_json(partial / _WORKBOOK_FILE, {"task": task, **(info or {}), "versions": _versions()})
        shutil.copyfile(SCORE_TEMPLATE, partial / "score.py")  # self-contained scoring
        if card:
            (partial / "README.md").write_text(card)
    except Exception as err:  # noqa: BLE001 - any failed write: nothing half-written is left, one line says why
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, _SaveError):
            raise
        needed = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
        raise _save_failed(folder, err, needed) from err
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _model_card(*, title: str, base_model: dict, data: dict, metrics: dict, baseline: dict | None = None,
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


def _calibration_note(info: dict[str, Any]) -> str:
    """The model card's line on calibration: the temperature `workbook.json` holds, and who applies it."""
    temperature = info.get("temperature")
    if not isinstance(temperature, (int, float)):
        return ""
    return (f"Probabilities are calibrated by temperature scaling: softmax(logits / {temperature:.4g}), the "
            "temperature fitted on the validation split and kept in `workbook.json`. `helpers.inference`, "
            "`workbook predict`, `workbook serve` and `score.py` apply it; plain `transformers` gives the raw "
            "softmax (divide the logits by the temperature yourself).")


def _folder_size_mb(folder: str | Path) -> float:
    """Size of the files in a folder (recursively), in MB."""
    return round(sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20, 3)


@dataclass
class _SavedRun:
    """What `save_run` wrote: the model folder, metrics.json, and the records it put in both."""

    folder: Path
    metrics_path: Path
    model_info: dict[str, Any]
    data_info: dict[str, Any]
    card: str
    adapter_folder: Path | None = None  # the adapter alone, when save_run(adapter=...) saved one

    def sizes_mb(self) -> dict[str, float]:
        """MB on disk of the saved model folder (and of the adapter alone, when there is one)."""
        sizes = {"model_mb": _folder_size_mb(self.folder)}
        if self.adapter_folder is not None:
            sizes["adapter_mb"] = _folder_size_mb(self.adapter_folder)
        return sizes

    def add_to_metrics(self, **sections: Any) -> Path:
        """Add sections to metrics.json after saving (checks that need the saved folder), on the main process."""
        if _is_main_process():
            _write_json(self.metrics_path, {**json.loads(self.metrics_path.read_text()), **sections})
        return self.metrics_path


def _run_record(source, loaded, splits, *, model_extra: dict | None = None,
                data_extra: dict | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, data) records for workbook.json, the model card and metrics.json: what was asked for and
    used (stand-ins included), rows per split, what cleaning dropped, and a fingerprint of the data."""
    from .data import _fingerprint as fingerprint

    model_info = {**source.to_dict(), **(model_extra or {})}
    data_info = {**loaded.source.to_dict(), "rows": {k: len(v) for k, v in splits.items()},
                 "dropped": loaded.report.to_dict()["dropped"], "fingerprint": fingerprint(splits),
                 **(data_extra or {})}
    return model_info, data_info


def save_run(output_dir: str | Path, *, notebook: str, model, tokenizer, task: str, info: dict[str, Any], title: str,
             source, loaded, splits, history, test: dict, baseline: dict, params: dict,
             model_extra: dict | None = None, data_extra: dict | None = None, adapter=None, **extra: Any) -> _SavedRun:
    """The end of every notebook in one call: the model folder (`_save_model`, with `info` and the base
    model recorded), a model card, and `metrics.json` (`write_metrics`, with the history's evaluations;
    `extra` adds sections). Files only: `run.finish_tracking(saved.metrics_path)` then logs the scores to MLflow.
    `adapter`: a peft model whose adapter alone also goes to OUTPUT_DIR/adapter, with the same workbook.json
    (`info["base_model_path"]` names its base) and card; `model` is then the merged model (notebook 05)."""
    model_info, data_info = _run_record(source, loaded, splits, model_extra=model_extra, data_extra=data_extra)
    card = _model_card(title=title, base_model=model_info, data=data_info, metrics=test, baseline=baseline,
                       params=params, notes=_calibration_note(info))
    folder = _save_model(output_dir, model, tokenizer, task=task, info={**info, "base_model": model_info}, card=card)
    adapter_folder = None if adapter is None else _save_model(
        output_dir, adapter, tokenizer, task=task, info={**info, "base_model": model_info}, card=card, subdir="adapter")
    path = write_metrics(output_dir, notebook=notebook, test=test, baseline=baseline,
                         validation=history.evals[-1] if history.evals else {}, model=model_info, data=data_info,
                         train=history.summary(), params=params, **{"evaluations": history.evals, **extra})
    return _SavedRun(folder, path, model_info, data_info, card, adapter_folder)
