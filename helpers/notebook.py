"""The notebook's run object (`check_parameters` -> `Run`: parameters, smoke sizes, OUTPUT_DIR, its tracked
run) and small things every notebook does the same way: the stand-in note, the "Try it" box, Ctrl-C."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ParameterError", "Run", "check_parameters", "standin_note"]

_SMOKE_ENV = "WORKBOOK_SMOKE"
_SMOKE_FOLDER = "smoke"  # smoke runs' own part of the runs folder: runs/smoke/<notebook>/


def _smoke_from_env(smoke: bool | None) -> bool:
    """SMOKE=None means "ask the environment": nbmake cannot inject parameters, CI sets WORKBOOK_SMOKE=1."""
    if smoke is not None:
        return bool(smoke)
    return os.environ.get(_SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _runs_home(smoke: bool, runs_dir: str | Path | None = None) -> Path:
    """The folder a run's results go to when OUTPUT_DIR is not given: the runs folder (`runs_dir`, else
    `WORKBOOK_RUNS_DIR`, else `runs/` at the project root), and its `smoke/` subfolder for smoke runs."""
    from . import artifacts

    base = Path(runs_dir) if runs_dir is not None else Path(os.environ.get("WORKBOOK_RUNS_DIR") or artifacts.RUNS_DIR)
    return base / _SMOKE_FOLDER if smoke else base


def _default_output_dir(notebook: str, smoke: bool = False, runs_dir: str | Path | None = None) -> Path:
    """OUTPUT_DIR when the notebook leaves it None: `runs/<notebook>/`, a smoke run `runs/smoke/<notebook>/`.

    A smoke run (CI, nbmake, `--smoke`) and a full run therefore never share a folder, so the smoke run is
    neither refused by the full run's other parameters nor mixed into it, unless the user points both at
    one OUTPUT_DIR.
    """
    return _runs_home(smoke, runs_dir) / notebook


class _UnknownParameterError(NameError):
    """A parameter was injected (papermill -p NAME ...) that the notebook does not have."""


def _params_snapshot(namespace: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The parameters as run (for metrics.json): the UPPER_CASE names of the parameters cell.

    Any other UPPER_CASE name in the namespace was injected by papermill (`-p LRR 3e-5`), which
    itself accepts any name: a misspelt parameter would otherwise be ignored silently.
    """
    import difflib

    own = {"NOTEBOOK", "PARAMS"}  # set by the notebook itself
    unknown = sorted(k for k in namespace if k.isupper() and not k.startswith("_") and k not in names and k not in own)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, names, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise _UnknownParameterError(
            f"Unknown parameter {', '.join(hints)}: this notebook has no such parameter and would ignore it; "
            f"fix the name (papermill -p / workbook run -p). Known: {', '.join(names)}.")
    return {name: namespace[name] for name in names if name in namespace}


def standin_note(*sources) -> str:
    """'' when real models and data were used; else the reminder printed under every try-it answer."""
    used = [s for s in sources if getattr(s, "standin", False)]
    if not used:
        return ""
    what = " and ".join(f"the offline stand-in for {getattr(s, 'requested', None) or 'the data'}" for s in used)
    return f"(answered by a model fine-tuned from {what}: it shows the code works, not how good the real model is)"


# --------------------------------------------------------------------------- starting a run

class ParameterError(ValueError):
    """A parameter value the notebook cannot use. One line: which, what it got, what it needs."""


_POSITIVE_INT = ("TRAIN_BATCH_SIZE", "EVAL_BATCH_SIZE", "GRAD_ACCUM_STEPS", "GEN_BATCH_SIZE", "NUM_TEST_EXAMPLES",
                 "MAX_NEW_TOKENS", "LORA_R", "LORA_ALPHA", "NUM_BEAMS")
_POSITIVE_INT_OR_NONE = ("MAX_TRAIN_SAMPLES", "MAX_EVAL_SAMPLES", "MAX_STEPS", "EVAL_EVERY_STEPS",
                         "EARLY_STOPPING_PATIENCE")
_LENGTHS = ("MAX_LENGTH", "MAX_SOURCE_LENGTH", "MAX_TARGET_LENGTH")
_MAX_EPOCHS = 10_000  # more is a typo (1e9), and walking its steps would keep the plan from answering
_MAX_STEPS = 100_000_000
_BOOLS = ("TRACKING", "RESUME", "OVERWRITE", "AUTO_BATCH_BACKOFF", "ALLOW_STANDIN", "RUN_TRAINER", "USE_LORA",
          "GRADIENT_CHECKPOINTING", "QUANTIZE_4BIT", "CLEAN_CHARS")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_parameter(name: str, value: Any, default: Any = None) -> None:
    """Refuse a value the run cannot use, before anything is loaded (`ParameterError`, one line)."""
    def fail(need: str) -> None:
        raise ParameterError(f"{name}={value!r} cannot be used: {name} must be {need}.")

    if name in _POSITIVE_INT and not (_is_int(value) and value >= 1):
        fail("a whole number of at least 1")
    if name in _POSITIVE_INT_OR_NONE and value is not None and not (_is_int(value) and value >= 1):
        fail("a whole number of at least 1, or None (no limit)")
    if name in _LENGTHS and not (_is_int(value) and value >= 8):
        fail("a whole number of tokens, at least 8")
    if name == "NUM_EPOCHS" and not (_is_number(value) and 0 < value <= _MAX_EPOCHS):
        fail(f"a positive number of passes over the data, at most {_MAX_EPOCHS:,} (e.g. 1, 3, or 0.5 for half an "
             "epoch)")
    if name == "MAX_STEPS" and _is_int(value) and value > _MAX_STEPS:
        fail(f"at most {_MAX_STEPS:,} optimizer steps, or None (use NUM_EPOCHS)")
    if name == "LR" and not (value is None and default is None) and not (_is_number(value) and 0 < value < 1):
        fail("a positive learning rate below 1, e.g. 5e-5")
    if name == "WARMUP_RATIO" and not (_is_number(value) and 0 <= value < 1):
        fail("a share of the steps from 0 to below 1, e.g. 0.1")
    if name in ("WEIGHT_DECAY", "LORA_DROPOUT") and not (_is_number(value) and 0 <= value < 1):
        fail("a number from 0 to below 1")
    if name in ("REPETITION_PENALTY",) and not (_is_number(value) and value >= 1):
        fail("at least 1.0 (1.0: off)")
    if name == "NO_REPEAT_NGRAM_SIZE" and not (_is_int(value) and value >= 0):
        fail("a whole number, 0 for off")
    if name == "SEED" and not (_is_int(value) and 0 <= value < 2**32):
        fail("a whole number from 0 to 4,294,967,295 (numpy's seeds are 32-bit)")
    if name == "PRECISION" and value not in ("auto", "bf16", "fp16", "fp32"):
        fail('one of "auto", "bf16", "fp16", "fp32"')
    if name in _BOOLS and not isinstance(value, bool):
        fail("True or False")
    if name.endswith(("_COL", "_SOURCE")) and name != "ID_COL" and value is not None and not isinstance(value, str):
        fail("a string")


@dataclass
class Run:
    """What `check_parameters` read and decided, and the run's own steps, each called where it happens:
    `claim_output_dir()`, `start_tracking()`, `on_evaluation` (an `hp.train` callback), `finish_tracking(...)`.

    `params`: every parameter as this run uses it (smoke sizes applied, SMOKE a bool, OUTPUT_DIR a Path);
    a notebook takes them with `globals().update(run.params)`.
    """

    notebook: str
    params: dict[str, Any]
    smoke: bool
    output_dir: Path
    set_by_user: list[str] = field(default_factory=list)
    smoke_changed: dict[str, Any] = field(default_factory=dict)
    injected: list[str] = field(default_factory=list)  # set by papermill (`workbook run -p`, a sweep)
    read: list[str] = field(default_factory=list)  # where the values came from, for print(run)
    sweep_trial: dict[str, Any] | None = None  # WORKBOOK_TRIAL: the Optuna trial this run is
    run_group: dict[str, Any] | None = None  # WORKBOOK_RUN_GROUP: the seed group this run belongs to
    experiment: str | None = None  # MLFLOW_EXPERIMENT_NAME (a sweep sets it); None: the notebook's name
    _tracker: Any = field(default=None, init=False, repr=False)
    _said_untracked: bool = field(default=False, init=False, repr=False)

    def __str__(self) -> str:
        parts = [f"SMOKE={self.smoke}", f"OUTPUT_DIR={self.output_dir}"]
        papermill = [k for k in self.injected if k in self.params and k not in ("SMOKE", "OUTPUT_DIR")]
        changed = [k for k in self.set_by_user if k not in papermill and k not in ("SMOKE", "OUTPUT_DIR")]
        if papermill:
            parts.append("papermill set: " + ", ".join(f"{k}={self.params[k]!r}" for k in papermill))
        if changed:
            parts.append("changed in the cell: " + ", ".join(f"{k}={self.params[k]!r}" for k in changed))
        if self.smoke_changed:
            parts.append("smoke sizes: " + ", ".join(f"{k}={v!r}" for k, v in self.smoke_changed.items()))
        if self.sweep_trial:
            parts.append(f"sweep trial: {self.sweep_trial.get('trial')} of study {self.sweep_trial.get('study')!r}, "
                         f"reported {self.sweep_trial.get('metric')} (WORKBOOK_TRIAL)")
        if self.run_group:
            parts.append(f"seed group: {self.run_group.get('group')} (WORKBOOK_RUN_GROUP)")
        if self.experiment:
            parts.append(f"MLflow experiment: {self.experiment} (MLFLOW_EXPERIMENT_NAME)")
        return "; ".join(parts) + ("\nread: " + "; ".join(self.read) if self.read else "")

    def claim_output_dir(self) -> Path:
        """Make OUTPUT_DIR this run's (`artifacts._prepare_output_dir`): created if needed, refused when it holds
        another run or unfinished work (RESUME=True continues it, OVERWRITE=True replaces it); writes run.json.
        Several processes (torchrun / accelerate launch): rank 0 claims the folder and makes the one report; the
        other processes print nothing from here on and end when `hp.train` is done (helpers/_ranks.py)."""
        from . import _ranks, artifacts

        line = _ranks.one_report()
        if line:
            print(line)
        return artifacts._prepare_output_dir(self.output_dir, notebook=self.notebook, params=self.params,
                                             resume=bool(self.params.get("RESUME")),
                                             overwrite=bool(self.params.get("OVERWRITE")))

    def start_tracking(self) -> None:
        """Open this run's MLflow run (in `MLFLOW_TRACKING_URI`, else runs/mlflow.db) and log the parameters.
        TRACKING=False: nothing is logged (one line says so); a sweep trial is still reported to its study.
        Calling it again closes the earlier MLflow run of this notebook (as "KILLED") and opens a new one."""
        from ._mlflow import Tracker
        from .device import _is_main_process

        enabled = bool(self.params.get("TRACKING", True)) and _is_main_process()
        if self._tracker is not None:
            self._tracker.abandon("KILLED")
        if not self.params.get("TRACKING", True):
            print("tracking: off (TRACKING=False); nothing is logged to MLflow")
        self._tracker = Tracker(self.notebook, self.params, self.output_dir, enabled=enabled,
                                experiment=self.experiment, trial=self.sweep_trial, group=self.run_group)

    def on_evaluation(self, step: int, record: dict[str, Any], last: bool = False) -> bool:
        """An `hp.train(callbacks=[run.on_evaluation])` callback: log the evaluation `record` to MLflow as step
        `step` and, in a sweep trial, report it to the Optuna study; True when its pruner says stop (never at
        the `last` evaluation, where stopping would save nothing)."""
        if self._tracker is None:
            if not self._said_untracked:
                print("tracking: run.start_tracking() was not called; evaluations are not logged")
                self._said_untracked = True
            return False
        return self._tracker.evaluation(step, record, last=last)

    def finish_tracking(self, metrics: str | Path | dict[str, Any]) -> None:
        """Log the final scores (`metrics`: the metrics.json path `save_run` / `write_metrics` returned, or
        its dict) as metrics and tags, the plots (OUTPUT_DIR/plots/*.png) and metrics.json as artifacts, and
        close the MLflow run (marked pruned when a sweep's pruner stopped training)."""
        import json

        if self._tracker is None:
            print("tracking: run.start_tracking() was not called; nothing to finish")
            return
        record = metrics if isinstance(metrics, dict) else json.loads(Path(metrics).read_text())
        self._tracker.finish(record)

    def abandon_tracking(self, status: str = "FAILED") -> None:
        """Close the MLflow run without final scores (`status`: "FAILED" or "KILLED"); a run the kernel leaves
        open is closed as FAILED when it exits."""
        if self._tracker is not None:
            self._tracker.abandon(status)

    def tracked_runs(self):
        """This notebook's runs in the MLflow store (`MLFLOW_TRACKING_URI`, else runs/mlflow.db) as a pandas
        DataFrame, newest first: one row per run, `params.*`, `metrics.*` and `tags.*` columns."""
        from ._mlflow import runs_frame

        return runs_frame(self.experiment or self.notebook)


def _notebook_defaults(notebook: str) -> dict[str, Any] | None:
    """The parameters cell of notebooks/<notebook>.ipynb as {name: default}, read the way papermill reads it
    (None when the file is not there, e.g. a copy opened elsewhere)."""
    import ast

    from ._paths import PROJECT_ROOT

    path = PROJECT_ROOT / "notebooks" / f"{notebook}.ipynb"
    if not path.exists():
        return None
    import papermill

    out = {}
    for name, info in papermill.inspect_notebook(str(path)).items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            out[name] = info["default"]
    return out


def _injected_names(namespace: dict[str, Any]) -> list[str]:
    """Names papermill injected (its `# Parameters` cell, found in IPython's input history)."""
    import ast

    for source in reversed(namespace.get("In") or []):
        if isinstance(source, str) and source.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                return []
            return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)]
    return []


def _env_json(name: str, read: list[str]) -> dict[str, Any] | None:
    """A JSON object from environment variable `name` (set by `workbook sweep`), or None."""
    import json

    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        read.append(f"{name} is not a JSON object: ignored")
        return None
    return value


def check_parameters(notebook: str, namespace: dict[str, Any], *, smoke: dict[str, Any] | None = None) -> Run:
    """Check the parameters and decide this run's values; a pure reading: nothing is written into `namespace`,
    no folder is made, nothing is tracked (the returned `Run` does those, each when called).

    What it reads:
    - the notebook's own parameters cell in notebooks/<notebook>.ipynb (as papermill reads it): the names and
      their defaults; without the file, the UPPER_CASE names in `namespace`;
    - `namespace` (the notebook's globals): the values, and the names papermill injected (its "# Parameters"
      cell in IPython's input history `In`); an injected name the cell lacks is refused (`-p LRR 3e-5`);
    - WORKBOOK_SMOKE when SMOKE is None (nbmake cannot set parameters; CI sets WORKBOOK_SMOKE=1);
    - WORKBOOK_RUNS_DIR for the default OUTPUT_DIR (`runs/<notebook>/`, a smoke run's `runs/smoke/<notebook>/`);
    - WORKBOOK_TRIAL (the sweep's Optuna trial) and WORKBOOK_RUN_GROUP (a seed group), set by `workbook sweep`,
      and MLFLOW_EXPERIMENT_NAME: kept on the Run for `start_tracking`; nothing reads them later.

    It checks every value (`ParameterError`: one line naming the value and what it needs), and in smoke mode
    applies the `smoke` sizes to the parameters the user did not set (injected, or changed from the cell's
    default). `run.params` holds the values this run uses, SMOKE and OUTPUT_DIR (a Path) included;
    `print(run)` says what was set where.
    """
    from ._mlflow import GROUP_ENV, TRIAL_ENV

    defaults = _notebook_defaults(notebook)
    read = [f"parameters cell of notebooks/{notebook}.ipynb" if defaults is not None
            else "parameters: the UPPER_CASE names of this notebook (its .ipynb was not found)"]
    injected = _injected_names(namespace)
    if injected:
        read.append("papermill's injected cell")
    names = list(defaults) if defaults is not None else sorted(
        k for k in namespace if k.isupper() and not k.startswith("_") and k not in ("NOTEBOOK", "PARAMS"))
    unknown = [n for n in injected if n not in names]
    if unknown:
        _params_snapshot({n: namespace.get(n) for n in [*names, *unknown]}, names)  # raises, with a suggestion
    for name in names:
        _check_parameter(name, namespace.get(name), (defaults or {}).get(name))
    user_set = [n for n in names if n in injected or (defaults is not None and namespace.get(n) != defaults[n])]
    params = {name: namespace.get(name) for name in names}
    if params.get("SMOKE") is None and os.environ.get(_SMOKE_ENV):
        read.append(f"{_SMOKE_ENV}={os.environ[_SMOKE_ENV]}")
    is_smoke = _smoke_from_env(params.get("SMOKE"))
    changed = {}
    if is_smoke:
        changed = {k: v for k, v in (smoke or {}).items() if k not in user_set and params.get(k) != v}
        params.update(changed)
    folder = params.get("OUTPUT_DIR")
    if not folder and os.environ.get("WORKBOOK_RUNS_DIR"):
        read.append(f"WORKBOOK_RUNS_DIR={os.environ['WORKBOOK_RUNS_DIR']}")
    output_dir = Path(folder).expanduser() if folder else _default_output_dir(notebook, is_smoke)
    params.update(SMOKE=is_smoke, OUTPUT_DIR=output_dir)
    trial, group = _env_json(TRIAL_ENV, read), _env_json(GROUP_ENV, read)
    return Run(notebook, params, is_smoke, output_dir, [n for n in user_set if n != "SMOKE"], changed,
               injected=injected, read=read, sweep_trial=trial, run_group=group,
               experiment=os.environ.get("MLFLOW_EXPERIMENT_NAME") or None)


# --------------------------------------------------------------------------- Ctrl-C / the Stop button

def _interrupted_step(lines) -> tuple[int, int] | None:
    """(step, total) from an interrupted cell's traceback lines (`hp.train` raises `TrainingInterrupted`
    with "Interrupted at step N of M." in its message), or None."""
    import re

    from .training import _INTERRUPTED_AT

    pattern = re.escape(_INTERRUPTED_AT).replace(r"\{step\}", r"(\d+)").replace(r"\{total\}", r"(\d+)")
    for line in reversed(list(lines or [])):
        match = re.search(pattern, str(line))
        if match:
            return int(match.group(1)), int(match.group(2))
    return None
