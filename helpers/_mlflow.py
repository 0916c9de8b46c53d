"""Experiment tracking: every notebook run logged to MLflow, with no server to start.

What a run logs (one MLflow run per notebook run, in an experiment named after the notebook, or
`MLFLOW_EXPERIMENT_NAME`, which `workbook sweep` sets to `sweep-<name>`):

- parameters: the notebook's parameters as run (smoke sizes included);
- metrics: every evaluation during training as steps (`val_loss`, `val_macro_f1`, ...), then the
  final `test_*`, `baseline_*` (before fine-tuning, majority class) and `train_*` figures;
- tags: `workbook.standin` (an offline stand-in model or sample was used), `workbook.data_fingerprint`,
  `workbook.model_dir` (the saved model folder), `workbook.output_dir`, `workbook.notebook`;
- artifacts: the plots (`OUTPUT_DIR/plots/*.png`) and `metrics.json`. The model itself stays in its
  folder (hundreds of MB; the path is the tag).

Where: `MLFLOW_TRACKING_URI` when it is set (a team's tracking server; Domino and OCI Data Science
set it for their own MLflow), else `runs/mlflow.db` (SQLite, `WORKBOOK_RUNS_DIR` moves it), with
artifacts under `runs/mlartifacts/`. `TRACKING=False` in a notebook turns it off.
`workbook ui` shows the local store.

Tracking is a side effect: any failure to log prints one line and the run goes on untracked.

With `workbook sweep --seeds N`, each configuration gets a parent run (`<config> (seeds)`, with the mean
and spread of the validation metric over its seeds) and every seed's run is nested under it
(`mlflow.parentRunId`, and the tag `workbook.group`), so the UI shows them grouped.

Sweeps (`workbook sweep`) run each trial as a notebook run; when a trial is part of an Optuna study
(`WORKBOOK_TRIAL` in the environment, read once by `hp.notebook.check_parameters` and handed to the
`Tracker`), each evaluation is also reported to the study, and its median pruner may stop training early
(the notebook then finishes normally, marked pruned).

Who calls what: the notebook's run object (`hp.notebook.Run`) owns its `Tracker`: `run.start_tracking()`
makes it, `run.on_evaluation` (an `hp.train` callback) records each evaluation, `run.finish_tracking(...)`
logs the final scores and closes it. Nothing here is reached by another module behind the notebook's back.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
TRIAL_ENV = "WORKBOOK_TRIAL"  # JSON {"storage", "study", "trial", "metric", "pruner"} set by a sweep
GROUP_ENV = "WORKBOOK_RUN_GROUP"  # JSON {"group", "parent"} set by `workbook sweep --seeds`: the runs of one config
_PARAM_LIMIT = 6000  # MLflow's longest parameter value
_TRAIN_METRICS = ("epochs", "steps", "wall_s", "samples_per_s", "peak_mem_mb", "first_train_loss", "final_train_loss")

_open: list[Tracker] = []  # trackers with an MLflow run not closed yet: closed as failed if the kernel exits


def runs_dir() -> Path:
    from ._paths import RUNS_DIR

    return Path(os.environ.get("WORKBOOK_RUNS_DIR") or RUNS_DIR)


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set (a team server, Domino's or OCI's MLflow), else `runs/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(runs_dir() / DB_FILE).resolve()}"


def is_local(uri: str) -> bool:
    return uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI")


@contextmanager
def quiet_mlflow():
    """MLflow and alembic announce schema set-up at INFO on stderr (red boxes in Jupyter): only warnings."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic", "alembic.runtime.migration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # SQLAlchemy's deprecation notes about MLflow's own store code: not the user's to act on.
            warnings.filterwarnings("ignore", message=".*loader strategy is deprecated", module="mlflow")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(mlflow|sqlalchemy|alembic)\.")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def client(uri: str | None = None):
    """An `mlflow.MlflowClient` on `uri` (default `tracking_uri()`); the local store is created on first use."""
    with quiet_mlflow():
        import mlflow

        uri = uri or tracking_uri()
        if not uri.startswith("sqlite:///"):
            return mlflow.MlflowClient(tracking_uri=uri)
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        if db.exists():
            return mlflow.MlflowClient(tracking_uri=uri)
        # A fresh store: MLflow creates its tables (and runs its migrations) on first use; two processes doing
        # that at once (two notebooks, a sweep and a notebook) race, and one fails. One at a time, then.
        from filelock import FileLock

        with FileLock(str(db) + ".lock"):
            made = mlflow.MlflowClient(tracking_uri=uri)
            made.search_experiments(max_results=1)  # the tables exist when this returns
        return made


def experiment_id(mlflow_client, name: str, uri: str | None = None) -> str:
    """The id of experiment `name`, created if needed (locally with artifacts under runs/mlartifacts)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = uri or tracking_uri()
    location = None
    if is_local(uri):
        location = (Path(uri[len("sqlite:///"):]).parent / ARTIFACTS_DIR).resolve().as_uri()
    # "Model training" (a runs table with params and metrics) in MLflow 3's UI, not its GenAI traces view.
    return mlflow_client.create_experiment(name, artifact_location=location,
                                           tags={"mlflow.experimentKind": "custom_model_development"})


def _flat(prefix: str, section: dict[str, Any] | None) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in (section or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}  # v == v: not NaN


def _fingerprint(value: Any) -> str:
    """The data's sha256 (metrics.json keeps {"rows": ..., "sha256": ...})."""
    return str(value.get("sha256", "")) if isinstance(value, dict) else str(value or "")


def _group_tags(group: dict[str, Any] | None) -> dict[str, str]:
    """Tags that put a seed's run under its configuration's parent run (`workbook sweep --seeds`, the spec
    {"group", "parent"} of WORKBOOK_RUN_GROUP): the MLflow UI nests it there, `workbook.group` names the
    configuration."""
    spec = group or {}
    tags = {"workbook.group": str(spec["group"])} if spec.get("group") else {}
    if spec.get("parent"):
        tags["mlflow.parentRunId"] = str(spec["parent"])
    return tags


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"


class Tracker:
    """The record keeper of one notebook run: the evaluations it made, its MLflow run, its sweep trial.

    `experiment`: the MLflow experiment (default: the notebook's name). `trial`: a sweep trial's spec
    {"storage", "study", "trial", "metric", "pruner"} (WORKBOOK_TRIAL), `group`: a seed group's
    {"group", "parent"} (WORKBOOK_RUN_GROUP), both as the notebook's `check_parameters` read them.
    With `enabled=False` nothing is logged to MLflow; a sweep trial is still reported to (pruning works).
    A new tracker of a notebook closes its unfinished earlier one (the notebook started over in its kernel).
    """

    def __init__(self, notebook: str, params: dict[str, Any], output_dir: Path, *, enabled: bool = True,
                 experiment: str | None = None, trial: dict[str, Any] | None = None,
                 group: dict[str, Any] | None = None):
        self.notebook, self.params, self.output_dir = notebook, dict(params), Path(output_dir).resolve()
        self.evals: list[dict[str, Any]] = []
        self.pruned_at: int | None = None
        self.finished = False
        self.client = self.run_id = None
        self.uri = tracking_uri()
        self.started = time.time()
        self.group = group
        for earlier in [t for t in _open if t.notebook == notebook]:
            earlier.abandon("KILLED")
        self.trial = self._sweep_trial(trial)
        if enabled:
            self._start(experiment or notebook)
            if self.client is not None:
                _open.append(self)

    # ------------------------------------------------------------------ MLflow
    def _start(self, experiment: str) -> None:
        # An unreachable tracking server would otherwise be retried for minutes (MLflow's defaults: 7
        # retries with backoff, 120 s timeouts); a user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            from mlflow.entities import Param, RunTag

            self.client = client(self.uri)
            with quiet_mlflow():
                exp = experiment_id(self.client, experiment, self.uri)
                name = self.output_dir.name if self.output_dir.name != self.notebook else None
                run = self.client.create_run(exp, run_name=name, tags={
                    "mlflow.source.name": f"{self.notebook}.ipynb", "workbook.notebook": self.notebook,
                    "workbook.output_dir": str(self.output_dir), "workbook.host": socket.gethostname(),
                    "workbook.pid": str(os.getpid()),  # a run left RUNNING by a dead process is found by it
                    **_group_tags(self.group)})
                self.run_id = run.info.run_id
                params = [Param(k, (v if isinstance(v, str) else json.dumps(v, default=str))[:_PARAM_LIMIT])
                          for k, v in sorted(self.params.items())]
                self.client.log_batch(self.run_id, params=params, tags=[RunTag("workbook.status", "running")])
            where = self.uri
            if is_local(self.uri):
                from ._paths import PROJECT_ROOT

                db = Path(self.uri[len("sqlite:///"):])
                where = str(db.relative_to(PROJECT_ROOT)) if db.is_relative_to(PROJECT_ROOT) else str(db)
            print(f"tracking: MLflow run {self.run_id[:8]} in experiment {experiment!r} ({where}; "
                  "TRACKING=False turns it off)")
        except Exception as err:  # noqa: BLE001 - tracking must never fail the run
            self._give_up("could not start", err)

    def _give_up(self, what: str, err: BaseException) -> None:
        print(f"tracking: {what} the MLflow run ({_one_line(err)}); the notebook goes on untracked")
        self.client = None

    def _log(self, metrics: dict[str, float], step: int | None = None, tags: dict[str, str] | None = None) -> None:
        if self.client is None:
            return
        try:
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            with quiet_mlflow():
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step or 0) for k, v in metrics.items()],
                                      tags=[RunTag(k, v) for k, v in (tags or {}).items()])
        except Exception as err:  # noqa: BLE001
            self._give_up("could not log to", err)

    # ------------------------------------------------------------------ during training
    def evaluation(self, step: int, metrics: dict[str, Any], *, last: bool = False) -> bool:
        """Record one evaluation (logged as step `step`); True when the sweep's pruner says stop
        (never at the `last` evaluation, where stopping would save nothing)."""
        record = {"step": int(step), **{k: v for k, v in metrics.items() if k != "step"}}
        self.evals.append(record)
        self._log(_flat("val_", {k: v for k, v in record.items() if k not in ("step", "elapsed_s")}), step=step)
        return self._report_to_trial(step, record, last)

    # ------------------------------------------------------------------ the end of the run
    def finish(self, record: dict[str, Any]) -> None:
        """Log the final metrics (`record`: metrics.json's content), tags and artifacts (the plots, metrics.json),
        and close the run (from `run.finish_tracking`)."""
        self.finished = True
        self._forget()
        if self.client is None:
            return
        model, data = record.get("model", {}), record.get("data", {})
        folders = [self.output_dir / sub for sub in ("model", "adapter") if (self.output_dir / sub).is_dir()]
        metrics = {**_flat("test_", record.get("test")), **_flat("baseline_", record.get("baseline")),
                   **_flat("train_", {k: v for k, v in (record.get("train") or {}).items() if k in _TRAIN_METRICS}),
                   "wall_s": round(time.time() - self.started, 2)}
        tags = {"workbook.standin": str(bool(model.get("standin") or data.get("standin"))).lower(),
                "workbook.model_used": str(model.get("used", "")), "workbook.data_used": str(data.get("used", "")),
                "workbook.data_fingerprint": _fingerprint(data.get("fingerprint")),
                "workbook.model_dir": str(folders[0]) if folders else "",
                "workbook.status": "finished" if self.pruned_at is None and record.get("pruned_at_step") is None
                else "pruned"}
        evals = self.evals or record.get("evaluations") or []
        self._log(metrics, step=evals[-1].get("step", 0) if evals else 0, tags=tags)
        if self.client is None:
            return
        try:
            with quiet_mlflow():
                for plot in sorted((self.output_dir / "plots").glob("*.png")):
                    self.client.log_artifact(self.run_id, str(plot), "plots")
                metrics_file = self.output_dir / "metrics.json"
                if metrics_file.exists():
                    self.client.log_artifact(self.run_id, str(metrics_file))
                self.client.set_terminated(self.run_id, "FINISHED")
        except Exception as err:  # noqa: BLE001
            self._give_up("could not finish", err)

    def abandon(self, status: str = "FAILED") -> None:
        """Close a run that did not reach `finish` (the kernel exits, or the notebook starts over)."""
        if self.client is not None and not self.finished:
            try:
                with quiet_mlflow():
                    self.client.set_terminated(self.run_id, status)
            except Exception:  # noqa: BLE001 - at exit, nothing left to tell
                pass
        self.finished = True
        self._forget()

    def _forget(self) -> None:
        if self in _open:
            _open.remove(self)

    # ------------------------------------------------------------------ sweeps (Optuna)
    def _sweep_trial(self, spec: dict[str, Any] | None):
        if not spec:
            return None
        try:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            pruner = optuna.pruners.MedianPruner(**spec.get("pruner", {}))  # the sweep's, not Optuna's defaults
            study = optuna.load_study(study_name=spec["study"], storage=spec["storage"], pruner=pruner)
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, spec["trial"])
            self.trial_metric = spec["metric"]
            return optuna.trial.Trial(study, trial_id)
        except Exception as err:  # noqa: BLE001 - an unreachable study must not fail the run
            print(f"tracking: could not reach the sweep's Optuna study ({_one_line(err)}); no pruning in this run")
            return None

    def _report_to_trial(self, step: int, record: dict[str, Any], last: bool) -> bool:
        if self.trial is None or self.trial_metric not in record:
            return False
        try:
            self.trial.report(float(record[self.trial_metric]), step)
            if not last and self.trial.should_prune():
                self.pruned_at = step
                print(f"sweep: trial {self.trial.number} pruned at step {step} by the median pruner "
                      f"({self.trial_metric} {record[self.trial_metric]:.4f} trails the other trials' median)")
                return True
        except Exception as err:  # noqa: BLE001
            print(f"tracking: could not report to the Optuna study ({_one_line(err)}); no pruning in this run")
            self.trial = None
        return False


@atexit.register
def _close_at_exit() -> None:
    for tracker in list(_open):
        tracker.abandon("FAILED")


def runs_frame(experiment: str | None = None, *, uri: str | None = None):
    """The tracked runs as a pandas DataFrame (`mlflow.search_runs`): one row per run, `params.*`,
    `metrics.*` and `tags.*` columns; every experiment when `experiment` is None."""
    import mlflow

    mlflow_client = client(uri)
    with quiet_mlflow():
        experiments = [e for e in mlflow_client.search_experiments()
                       if experiment is None or e.name == experiment]
        if not experiments:
            import pandas as pd

            return pd.DataFrame()
        mlflow.set_tracking_uri(uri or tracking_uri())
        return mlflow.search_runs(experiment_ids=[e.experiment_id for e in experiments],
                                  order_by=["attributes.start_time DESC"])
