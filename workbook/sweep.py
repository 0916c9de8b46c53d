"""Parameter sweeps over a notebook: a grid through papermill, or an Optuna search.

    workbook sweep 01 --lr 2e-5,5e-5,1e-4 --epochs 2,3           a grid: every combination, in order
    workbook sweep 01 --lr 3e-5,1e-4 --seeds 3                    each combination on 3 seeds (SEED, SEED+1, ...)
    workbook sweep 01 --trials 8 --lr 1e-5:1e-4:log --epochs 1:3  Optuna: TPE sampler, median pruner

Each run is a normal notebook run (papermill, its own `OUTPUT_DIR` under `runs/sweep-<name>/`),
tracked in one MLflow experiment, `sweep-<name>`. After every run the sweep rewrites
`runs/sweep-<name>/report.md` and `.html` (`workbook.compare`): the table with the best run
marked, the metric against each swept parameter, the validation curves on one axis.

Runs are judged on a validation metric (macro-F1 for classifiers, loss for the summarizers;
`--metric`), the best value over the run's evaluations, never on the test split.

Seeds: one run of a configuration is one draw. After one epoch on PhraseBank the accuracy of the same
recipe moved by 0.03-0.10 between seeds, more than many a learning-rate change. With `--seeds N` a grid
runs every configuration on N seeds; the report ranks configurations by the mean over seeds, shows
each one's spread (standard deviation; error bars on the plots) and says whether the best beats the
next by more than the spread. In MLflow each seed's run sits under its configuration's parent run.

Resuming: run the same command again. A grid skips the combinations that finished. An Optuna
sweep keeps its study in `runs/optuna.db` (SQLite; not `mlflow.db`: MLflow and Optuna both keep
their schema version in an `alembic_version` table, so one file would break both); finished and
pruned trials count, a trial left running by a killed sweep on this machine is marked failed, and
only the remaining trials run. Several machines can work on one study: give each the same
`--storage` (a database they all reach, e.g. `postgresql://...` or `mysql://...`; SQLite over a
network file system is not safe) and the same `--name`; Optuna coordinates them, each machine
stops when the study has its `--trials`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import compare, runner, tracking

# The median pruner: a trial stops when its best validation value so far trails the median of the
# finished trials at the same step; from the third trial on (Optuna's default waits for five, more
# than a small sweep has).
PRUNER = {"n_startup_trials": 2, "n_warmup_steps": 0}


class SweepError(ValueError):
    """A sweep that cannot start: one line naming the problem and the fix."""


@dataclass
class Axis:
    """One swept parameter: a list of values (grid, or Optuna's categorical) or a range (Optuna only)."""

    name: str
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.values is None

    def distribution(self):
        import optuna

        if not self.is_range:
            return optuna.distributions.CategoricalDistribution(self.values)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if not self.is_range:
            return ",".join(map(str, self.values))
        return f"{self.low}:{self.high}" + (":log" if self.log else "")


def parse_axis(name: str, text: str) -> Axis:
    """`3e-5,1e-4` -> values; `1e-5:1e-4` or `1e-5:1e-4:log` -> a range (ints stay ints)."""
    text = str(text).strip()
    if ":" in text and "," not in text:
        parts = text.split(":")
        log = parts[-1].lower() == "log"
        if log:
            parts = parts[:-1]
        if len(parts) != 2:
            raise SweepError(f"{name}={text!r}: a range is LOW:HIGH or LOW:HIGH:log (e.g. 1e-5:1e-4:log)")
        low, high = (runner.parse_value(p) for p in parts)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise SweepError(f"{name}={text!r}: a range needs two numbers, the lower first (e.g. 1e-5:1e-4:log)")
        if log and low <= 0:
            raise SweepError(f"{name}={text!r}: a log range needs a positive lower end")
        return Axis(name, low=low, high=high, log=log)
    values = [runner.parse_value(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise SweepError(f"{name}: no values given; write them comma-separated, e.g. 2e-5,5e-5")
    if len(set(map(repr, values))) != len(values):
        raise SweepError(f"{name}={text!r}: a value is listed twice")
    return Axis(name, values=values)


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-") or "x"


def run_label(combo: dict[str, Any]) -> str:
    """A folder name for a grid point: `lr-3e-05_num_epochs-1`."""
    return "_".join(f"{k.lower()}-{_slug(v)}" for k, v in combo.items())


def default_name(notebook: Path, axes: list[Axis], trials: int | None) -> str:
    names = "-".join(a.name.lower() for a in axes) or "seeds"
    return f"{notebook.stem[:2]}-{names}" + ("-optuna" if trials else "")


@dataclass
class Sweep:
    """What `workbook sweep` was asked for."""

    notebook: Path
    axes: list[Axis]
    fixed: dict[str, Any]
    name: str
    trials: int | None = None
    metric: str | None = None
    direction: str | None = None
    storage: str | None = None
    seed: int = 42  # Optuna's sampler seed
    runs_dir: Path | None = None
    seeds: int | None = None  # run every configuration on this many seeds (SEED, SEED+1, ...)

    @property
    def folder(self) -> Path:
        return Path(self.runs_dir or tracking.runs_dir()) / f"sweep-{self.name}"

    @property
    def experiment(self) -> str:
        return f"sweep-{self.name}"

    def objective(self) -> tuple[str, str]:
        if self.metric:
            return self.metric, self.direction or ("minimize" if "loss" in self.metric else "maximize")
        if "LABEL_COL" in runner.notebook_parameters(self.notebook):
            return "macro_f1", "maximize"
        return "loss", "minimize"

    def check(self) -> None:
        known = runner.notebook_parameters(self.notebook)
        for name in [a.name for a in self.axes] + list(self.fixed):
            if name not in known:
                raise SweepError(f"{self.notebook.stem} has no parameter {name}; see `workbook list`.")
        self._check_seeds()
        if not self.axes and not self.seeds:
            raise SweepError("nothing to sweep: give values, e.g. --lr 2e-5,5e-5 or -p MAX_LENGTH 64,128")
        ranges = [a.name for a in self.axes if a.is_range]
        if ranges and not self.trials:
            raise SweepError(f"{', '.join(ranges)}: a range is searched, not listed; add --trials N "
                             "(Optuna), or give the values comma-separated for a grid")
        clash = [a.name for a in self.axes if a.name in self.fixed]
        if clash:
            raise SweepError(f"{', '.join(clash)} is both swept and fixed; give it once")
        if "OUTPUT_DIR" in self.fixed:
            raise SweepError("OUTPUT_DIR is chosen per run by the sweep (under runs/sweep-<name>/); leave it out")
        self._check_values()

    def _check_values(self) -> None:
        """Every value of every axis (a range's two ends), every fixed value and every seed, checked as `workbook
        run` checks one run's, before the first trial: a bad value found after an hour of trials costs the hour."""
        single = [{a.name: v} for a in self.axes for v in (a.values if not a.is_range else (a.low, a.high))]
        seeds = [{"SEED": s} for s in self.seed_values()] if self.seeds else []
        for params in [dict(self.fixed), *single, *seeds]:
            try:
                runner.check_parameters(self.notebook, params)
            except runner.RunnerError as err:
                raise SweepError(f"{err} Nothing has run: fix the sweep's values and start it again.") from None

    def _check_seeds(self) -> None:
        if self.seeds is None:
            return
        if self.seeds < 1:
            raise SweepError("--seeds must be 1 or more")
        if self.trials:
            raise SweepError("--seeds goes with a grid (values with commas), not with --trials: an Optuna trial is "
                             "one run; compare its best points on seeds afterwards with a grid")
        if any(a.name == "SEED" for a in self.axes):
            raise SweepError("SEED is both swept and given --seeds; give --seeds N (SEED, SEED+1, ...), or list "
                             "the seeds yourself with --seed 1,2,3")
        if "SEED" not in runner.notebook_parameters(self.notebook):
            raise SweepError(f"{self.notebook.stem} has no SEED parameter, so --seeds cannot vary it")

    def seed_values(self) -> list[int]:
        """The seeds every configuration runs on: the fixed SEED (or the notebook's default) and the next ones."""
        first = self.fixed.get("SEED", runner.parse_value(runner.notebook_parameters(self.notebook)["SEED"]["default"]))
        return [int(first) + i for i in range(self.seeds or 1)]

    def configurations(self) -> list[dict[str, Any]]:
        """Every combination of the axes' values, in order (one empty configuration when only seeds vary)."""
        return [dict(zip([a.name for a in self.axes], values))
                for values in itertools.product(*[a.values for a in self.axes])]

    @property
    def tracked(self) -> bool:
        return self.fixed.get("TRACKING", True) is not False


Runner = Callable[..., runner.RunResult]


@contextlib.contextmanager
def _environment(sweep: Sweep, env: dict[str, str]):
    """`env` set while inside (the notebook's kernel inherits it: its MLflow experiment, its Optuna trial, its
    seed group), with the sweep's runs folder, where the MLflow store goes with the runs."""
    if sweep.runs_dir:
        env = {**env, "WORKBOOK_RUNS_DIR": str(Path(sweep.runs_dir).resolve())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_one(sweep: Sweep, label: str, params: dict[str, Any], env: dict[str, str], run_fn: Runner,
             log_output: bool) -> runner.RunResult:
    out = sweep.folder / label
    with _environment(sweep, env):
        return run_fn(sweep.notebook, {**sweep.fixed, **params, "OUTPUT_DIR": str(out)}, runs_dir=sweep.folder,
                      executed=sweep.folder / f"{label}.ipynb", log_output=log_output)


def write_report(sweep: Sweep, labels: list[str]) -> Path:
    metric, direction = sweep.objective()
    rows = [compare.load_run(sweep.folder / label) for label in labels if (sweep.folder / label).exists()]
    how = f"Optuna, {sweep.trials} trials" if sweep.trials else "grid"
    axes = [f"{a.name} {a.describe()}" for a in sweep.axes]
    if sweep.seeds:
        axes.append(f"{sweep.seeds} seeds each (SEED {', '.join(map(str, sweep.seed_values()))})")
    notes = [f"Notebook {sweep.notebook.stem}; {how} over " + "; ".join(axes)
             + (f"; fixed: {', '.join(f'{k}={v}' for k, v in sweep.fixed.items())}" if sweep.fixed else "")
             + f". MLflow experiment `{sweep.experiment}` (`workbook ui`)."]
    return compare.report(rows, sweep.folder, metric=metric, direction=direction, title=f"Sweep {sweep.name}",
                          notes=notes)


def _finished(folder: Path, params: dict[str, Any]) -> bool:
    run_file = folder / "run.json"
    if not (folder / "metrics.json").exists() or not run_file.exists():
        return False
    record = json.loads(run_file.read_text())
    return bool(record.get("finished")) and all(record.get("params", {}).get(k) == v for k, v in params.items())


def run_grid(sweep: Sweep, *, run_fn: Runner | None = None, log_output: bool = False) -> list[runner.RunResult]:
    """Every combination in order, each on every seed when `seeds` is set; finished ones (same parameters) are
    kept, not run again."""
    configs = sweep.configurations()
    seeds = sweep.seed_values() if sweep.seeds else [None]
    points = [(c, {**c, "SEED": s} if s is not None else c) for c in configs for s in seeds]
    labels = [run_label(params) for _, params in points]
    results = []
    print(f"sweep {sweep.name}: {len(points)} runs of {sweep.notebook.stem} -> {sweep.folder}"
          + (f" ({len(configs)} configurations x {len(seeds)} seeds)" if sweep.seeds else ""))
    for index, config in enumerate(configs):
        group = _SeedGroup(sweep, config) if sweep.seeds else None
        for i in range(index * len(seeds), (index + 1) * len(seeds)):
            params, label = points[i][1], labels[i]
            if _finished(sweep.folder / label, {**sweep.fixed, **params}):
                print(f"[{i + 1}/{len(points)}] {label}: finished earlier, kept")
                continue
            print(f"[{i + 1}/{len(points)}] {label} ...", flush=True)
            env = {"MLFLOW_EXPERIMENT_NAME": sweep.experiment, **(group.env() if group else {})}
            result = _run_one(sweep, label, params, env, run_fn or runner.run_notebook, log_output)
            print(f"  {result.status} ({result.wall_s:.0f} s)" + (f": {result.error}" if result.error else ""))
            results.append(result)
            write_report(sweep, labels)
        if group:
            group.finish([labels[i] for i in range(index * len(seeds), (index + 1) * len(seeds))])
    report = write_report(sweep, labels)
    print(report.read_text(encoding="utf-8").split("\n\n")[1].replace("**", ""))  # the verdict
    print(f"report: {report}")
    return results


class _SeedGroup:
    """One configuration's seeds in MLflow: a parent run, started before its first seed and given the mean and
    spread of the validation metric after its last (`tracking.start_group`, `tracking.finish_group`)."""

    def __init__(self, sweep: Sweep, config: dict[str, Any]):
        self.sweep, self.name = sweep, run_label(config) or "all"
        self.parent = None
        if sweep.tracked:
            with _environment(sweep, {}):
                self.parent = tracking.start_group(sweep.experiment, self.name, {**sweep.fixed, **config})

    def env(self) -> dict[str, str]:
        return {tracking.GROUP_ENV: json.dumps({"group": self.name, "parent": self.parent})}

    def finish(self, labels: list[str]) -> None:
        metric, direction = self.sweep.objective()
        rows = [compare.load_run(self.sweep.folder / label) for label in labels]
        scores = [s for r in rows if r.status == "ok" and (s := r.objective(metric, direction)) is not None]
        with _environment(self.sweep, {}):
            tracking.finish_group(self.parent, metric, scores)


def _storage(sweep: Sweep) -> str:
    if sweep.storage:
        return sweep.storage
    path = Path(sweep.runs_dir or tracking.runs_dir()) / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _study(sweep: Sweep):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric, direction = sweep.objective()
    spec = {"notebook": sweep.notebook.stem, "axes": {a.name: a.describe() for a in sweep.axes},
            "fixed": {k: repr(v) for k, v in sweep.fixed.items()}, "metric": metric}
    study = optuna.create_study(study_name=sweep.name, storage=_storage(sweep), direction=direction,
                                pruner=optuna.pruners.MedianPruner(**PRUNER),
                                load_if_exists=True)
    # A resumed sweep must not draw the same points again: the sampler's seed moves on with the study.
    study.sampler = optuna.samplers.TPESampler(seed=sweep.seed + len(study.get_trials(deepcopy=False)))
    before = study.user_attrs.get("sweep")
    if before is None:
        study.set_user_attr("sweep", spec)
    elif before != spec:
        raise SweepError(f"the study {sweep.name!r} in {_storage(sweep)} was started with other settings "
                         f"({json.dumps(before)}); choose another --name to start a new one")
    return study


def _mark_stale_trials(study) -> list[int]:
    """Trials this machine left RUNNING (the sweep was killed): marked failed so they do not block counting."""
    import optuna

    host, stale = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and (attrs.get("pid") == os.getpid() or not _pid_alive(int(attrs.get("pid", 0)))):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            stale.append(trial.number)
    return stale

def _tell(study, trial, result: runner.RunResult, row, metric: str, direction: str) -> None:
    """Tell the study how a trial ended (failed, pruned, or its value), and say it in one line."""
    import optuna

    states = optuna.trial.TrialState
    value = row.objective(metric, direction) if result.status == "ok" else None
    if result.status != "ok":
        study.tell(trial, state=states.FAIL)
        print(f"  failed ({result.wall_s:.0f} s): {result.error}")
    elif row.status == "pruned":
        study.tell(trial, state=states.PRUNED)
        print(f"  pruned at step {row.record.get('pruned_at_step')} ({result.wall_s:.0f} s)")
    elif value is None or not math.isfinite(value):
        study.tell(trial, state=states.FAIL)
        print(f"  no validation {metric} in its metrics.json; counted as failed")
    else:
        study.tell(trial, value)
        print(f"  {metric} {value:.4f} ({result.wall_s:.0f} s)")


def run_optuna(sweep: Sweep, *, run_fn: Runner | None = None, log_output: bool = False) -> list[runner.RunResult]:
    """Trials until the study holds `trials` finished (complete or pruned) ones."""
    import optuna

    run_fn = run_fn or runner.run_notebook
    study = _study(sweep)
    states = optuna.trial.TrialState
    stale = _mark_stale_trials(study)
    if stale:
        print(f"sweep {sweep.name}: trial(s) {', '.join(map(str, stale))} were cut off by an earlier stop; "
              "marked failed")
    metric, direction = sweep.objective()
    distributions = {a.name: a.distribution() for a in sweep.axes}
    results: list[runner.RunResult] = []

    def counts() -> tuple[int, int]:
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials)
        return done, sum(t.state == states.RUNNING for t in trials)

    done, running = counts()
    print(f"sweep {sweep.name}: {done} of {sweep.trials} trials done; Optuna study in {_storage(sweep)} "
          f"({direction} best validation {metric})")
    while done + running < sweep.trials:
        trial = study.ask(distributions)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        label = f"trial-{trial.number:03d}"
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        print(f"[{done + 1}/{sweep.trials}] {label}: {shown}", flush=True)
        # The process boundary: the notebook's `hp.notebook.check_parameters` reads these once, and its Run
        # reports each evaluation to this trial (`run.on_evaluation`); a pruned run's metrics.json says so.
        env = {"MLFLOW_EXPERIMENT_NAME": sweep.experiment,
               tracking.TRIAL_ENV: json.dumps({"storage": _storage(sweep), "study": sweep.name, "trial": trial.number,
                                               "metric": metric, "pruner": PRUNER})}
        result = _run_one(sweep, label, trial.params, env, run_fn, log_output)
        results.append(result)
        _tell(study, trial, result, compare.load_run(sweep.folder / label), metric, direction)
        write_report(sweep, _trial_labels(study))
        done, running = counts()
    report = write_report(sweep, _trial_labels(study))
    try:
        best = study.best_trial
        print(f"best: trial-{best.number:03d} {best.params} ({metric} {best.value:.4f})")
    except ValueError:
        print("no trial finished")
    print(f"report: {report}")
    return results


def _trial_labels(study) -> list[str]:
    return [f"trial-{t.number:03d}" for t in study.get_trials(deepcopy=False)]


def run(sweep: Sweep, *, run_fn: Runner | None = None, log_output: bool = False) -> list[runner.RunResult]:
    """Run the sweep (`run_fn` runs one notebook: papermill by default) and write its report."""
    sweep.check()
    sweep.folder.mkdir(parents=True, exist_ok=True)
    _end_killed_trials(sweep)  # an earlier sweep's trials killed by a signal
    try:
        return (run_optuna if sweep.trials else run_grid)(sweep, run_fn=run_fn, log_output=log_output)
    except KeyboardInterrupt:
        print(f"\nsweep {sweep.name} stopped; run the same command again to go on", file=sys.stderr)
        raise
    finally:
        _end_killed_trials(sweep)  # on the way out: the trial whose kernel was killed with it


def _end_killed_trials(sweep: Sweep) -> None:
    if sweep.tracked:
        ended = tracking.end_stale_runs(sweep.experiment)
        if ended:
            print(f"tracking: {len(ended)} MLflow run(s) of {sweep.experiment} left RUNNING by a killed notebook "
                  "ended as KILLED")
