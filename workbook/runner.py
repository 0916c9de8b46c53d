"""Run notebooks headless with papermill, the way users schedule jobs, and summarize the runs.

    workbook run 01 --lr 3e-5 --epochs 2          # = papermill notebooks/01_*.ipynb runs/01_*.ipynb -p LR 3e-5 ...

Each notebook runs into `runs/<notebook>.ipynb` (the executed copy keeps any error) with its
artifacts in `runs/<notebook>/`. A failing notebook does not stop the others; `runs/summary.md`
gets one row per notebook, and the exit status says whether all passed. Smoke runs (`--smoke`,
WORKBOOK_SMOKE=1) do the same under `runs/smoke/`, so they never meet a full run's folder.

Ctrl-C is passed on to the notebook's kernel (which papermill starts in a session of its own, out of the
terminal's reach): the training cell stops, the executed copy and the summary are written with the
notebook marked interrupted, and `RunInterrupted` carries the step, the last checkpoint and what resumes.
A second Ctrl-C stops at once.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers._paths import PROJECT_ROOT, RUNS_DIR
from helpers.artifacts import _METRICS_FILE, _write_json

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


class RunnerError(ValueError):
    """A run that cannot start (unknown notebook or parameter). One line: problem and fix."""


@dataclass
class RunResult:
    notebook: str
    status: str  # "ok", "failed", "interrupted" (Ctrl-C) or "not run" (a notebook after an interrupted one)
    wall_s: float
    executed: Path
    output_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    interruption: Interruption | None = None


@dataclass
class Interruption:
    """Where an interrupted run stopped: the step training had reached (reported by the kernel, else the last
    checkpoint's), its total, the last complete checkpoint, and the command that continues (set by the caller)."""

    step: int | None = None
    total_steps: int | None = None
    checkpoint: Path | None = None
    step_is_checkpoints: bool = False  # the kernel did not say: the step is the last checkpoint's
    resume: str | None = None

    def describe(self) -> str:
        """'at step 40 of 120; last checkpoint .../checkpoint-32' (or 'before the first checkpoint')."""
        if self.step is None:
            where = "before the first checkpoint" if self.checkpoint is None else "at an unknown step"
        else:
            where = f"{'after' if self.step_is_checkpoints else 'at'} step {self.step}" + (
                f" of {self.total_steps}" if self.total_steps else "")
        if self.checkpoint is None:
            return f"{where}; no checkpoint was written" if self.step is not None else where
        return f"{where}; last checkpoint {self.checkpoint}"

    def line(self, notebook: str) -> str:
        """The one line `workbook run` prints on Ctrl-C."""
        if not self.resume:
            return f"interrupted: {notebook} {self.describe()}"
        if self.checkpoint is not None:
            return f"interrupted: {notebook} {self.describe()}; resume with: {self.resume}"
        return f"interrupted: {notebook} {self.describe()}; the run can only start over: {self.resume}"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a notebook; `result` (status "interrupted") says where. A KeyboardInterrupt, so callers
    that stop on Ctrl-C (sweeps) still do."""

    def __init__(self, result: RunResult):
        super().__init__(result.notebook)
        self.result = result


def list_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def find_notebook(name: str) -> Path:
    """'01', '01_finbert', a file name or a path -> the notebook file."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.exists():
        return path
    matches = [p for p in list_notebooks() if p.stem == name or p.stem.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(p.stem for p in list_notebooks())
    if not matches:
        raise RunnerError(f"No notebook matches {name!r}; known: {known}.")
    raise RunnerError(f"{name!r} matches several notebooks ({', '.join(p.stem for p in matches)}); be more specific.")


def parse_value(text: str) -> Any:
    """Command-line text -> a parameter value: int, float, bool, None or str (as papermill's -p does)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (int, float, str, bool)) or value is None else text


def writable_folder(folder: str | Path, option: str) -> Path:
    """`folder` (made if missing), resolved, when files can be written in it; else `RunnerError` naming the option,
    before anything runs (a read-only runs folder would otherwise fail after the notebook's work, or mid-run)."""
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RunnerError(f"{option} {path} cannot be written ({err.strerror or err}): choose a folder you can "
                          f"write, e.g. {option} ~/workbook-runs") from None
    return path


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names (and defaults) of the notebook's `parameters` cell."""
    import papermill

    return papermill.inspect_notebook(str(path))


def check_parameters(path: Path, params: dict[str, Any]) -> None:
    """Refuse unknown names and unusable values before anything runs (the notebook checks them again)."""
    from helpers.notebook import ParameterError, _check_parameter

    known = notebook_parameters(path)
    for name, value in params.items():
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
            raise RunnerError(f"{path.stem} has no parameter {name!r}; {hint}")
        try:
            _check_parameter(name, value, parse_value(known[name]["default"]))
        except ParameterError as err:
            raise RunnerError(str(err)) from None


PATH_PARAMS = ("MODEL_NAME", "DATA_SOURCE", "OUTPUT_DIR")  # values that may be paths typed in a shell


def resolve_paths(params: dict[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """Make the paths a user typed mean what they mean in their shell: relative to *their* working
    directory, not the notebook's (papermill runs notebooks from notebooks/).

    OUTPUT_DIR is always a path. MODEL_NAME and DATA_SOURCE become absolute when they exist relative
    to `cwd` or look like paths (`./x`, `../x`, `~/x`); Hub ids (`ProsusAI/finbert`) stay as they are.
    """
    cwd = Path(cwd or Path.cwd())
    out = dict(params)
    for name in PATH_PARAMS:
        value = out.get(name)
        if not isinstance(value, str) or not value.strip() or value == "auto":
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            out[name] = str(path)
        elif name == "OUTPUT_DIR" or (cwd / path).exists() or value.startswith(("./", "../", ".\\", "..\\")):
            out[name] = str((cwd / path).resolve())
    return out


# --------------------------------------------------------------------------- Ctrl-C

def _kernel_manager_class(made: list):
    """papermill's kernel manager, each one made appended to `made`, so that Ctrl-C can reach its kernel."""
    from jupyter_client import AsyncKernelManager

    class WatchedKernelManager(AsyncKernelManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    return WatchedKernelManager


def _kernel_group(kernel_manager) -> tuple[Any, int | None]:
    """(the kernel's Popen, its process group) while the kernel process is alive, else (None, None)."""
    provisioner = getattr(kernel_manager, "provisioner", None)
    process = getattr(provisioner, "process", None)
    if process is None or process.poll() is not None:  # poll(): our own child, so never a reused pid
        return None, None
    return process, getattr(provisioner, "pgid", None)


def _interrupt_kernel(made: list) -> bool:
    """SIGINT to the running kernel's process group, as Jupyter's Interrupt does. False when there is none."""
    process, pgid = _kernel_group(made[-1]) if made else (None, None)
    if process is None or not hasattr(os, "killpg"):
        return False
    try:
        os.killpg(pgid, signal.SIGINT) if pgid else process.send_signal(signal.SIGINT)
    except OSError:
        return False
    return True


def _kill_kernels(made: list) -> None:
    """Kernels papermill could not shut down (Ctrl-C while it started one): killed, silently (SIGKILL)."""
    for kernel_manager in made:
        process, pgid = _kernel_group(kernel_manager)
        if process is None:
            continue
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL) if pgid and hasattr(os, "killpg") else process.kill()
        with contextlib.suppress(Exception):
            process.wait(timeout=10)


@contextlib.contextmanager
def _ctrl_c_to_the_kernel():
    """While a notebook runs: the first Ctrl-C interrupts the kernel once it is ready (the cell raises
    KeyboardInterrupt and papermill stops after saving the executed copy); a second one, or one while the
    kernel starts (a signal then would kill it mid-import, with a traceback), is a KeyboardInterrupt here.
    Yields (papermill options: a watched kernel manager and a hook marking the kernel ready, a list that is
    non-empty once Ctrl-C was pressed). SIGINT is left alone where it is ignored (nohup, a background job)
    or off the main thread. A kernel left running on the way out is killed."""
    made: list = []
    ready: list[bool] = []
    pressed: list[bool] = []
    options = {"kernel_manager_class": _kernel_manager_class(made),
               "on_notebook_start": lambda **_: ready.append(True)}  # nbclient: the kernel answered, cells follow
    before = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None

    def on_ctrl_c(signum, frame):
        pressed.append(True)
        if len(pressed) == 1 and ready and _interrupt_kernel(made):
            return
        # killed first: papermill's clean-up would ask a kernel still in its cell to shut down, and the kernel
        # then logs a traceback from its closed sockets (ZMQError) into this run's output
        _kill_kernels(made)
        raise KeyboardInterrupt

    passing_on = before is not None and before is not signal.SIG_IGN
    if passing_on:
        signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield options, pressed
    finally:
        if passing_on:
            signal.signal(signal.SIGINT, before)
        _kill_kernels(made)


def _interruption(output_dir: Path, traceback_lines) -> Interruption:
    """Where the run stopped: the kernel's 'Interrupted at step N of M' line, else the last checkpoint's step."""
    from helpers.notebook import _interrupted_step
    from helpers.training import _latest_checkpoint

    checkpoint = _latest_checkpoint(output_dir / "checkpoints") if (output_dir / "checkpoints").is_dir() else None
    found = Interruption(checkpoint=checkpoint)
    reported = _interrupted_step(traceback_lines)
    if reported:
        found.step, found.total_steps = reported
    elif checkpoint is not None:
        try:
            state = json.loads((checkpoint / "state.json").read_text())
            found.step, found.total_steps = state["history"]["global_step"], state.get("total_steps")
            found.step_is_checkpoints = True
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return found


def run_notebook(path: Path, params: dict[str, Any], *, runs_dir: Path = RUNS_DIR, executed: Path | None = None,
                 log_output: bool = False, kernel_name: str | None = None) -> RunResult:
    """Execute one notebook with papermill: the executed copy to `executed` (default `runs_dir/<name>`),
    results to OUTPUT_DIR (default `runs_dir/<stem>/`). A smoke run (SMOKE, or WORKBOOK_SMOKE=1 when SMOKE
    is not given) uses `runs_dir/smoke/` for both, as the notebook itself does (`notebook.default_output_dir`).

    Ctrl-C (or the kernel interrupted by anyone) raises `RunInterrupted`, whose result says where it stopped."""
    import papermill

    from helpers.notebook import _runs_home, _smoke_from_env

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    params = resolve_paths(params)
    home = _runs_home(_smoke_from_env(params.get("SMOKE")), runs_dir)
    params.setdefault("OUTPUT_DIR", str((home / path.stem).resolve()))
    check_parameters(path, params)
    executed = Path(executed) if executed else home / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    output_dir = Path(params["OUTPUT_DIR"])
    metrics_file = output_dir / _METRICS_FILE

    def stamp():
        return metrics_file.stat().st_mtime_ns if metrics_file.exists() else None

    before = stamp()  # an earlier run's file must not pass for this run's result, nor be deleted
    start = time.perf_counter()
    error, stopped = None, None
    try:
        with _ctrl_c_to_the_kernel() as (ctrl_c_options, pressed):
            papermill.execute_notebook(str(path), str(executed), parameters=params, cwd=str(path.parent),
                                       log_output=log_output, progress_bar=False, kernel_name=kernel_name,
                                       # papermill gives a kernel 60 s to start; a cold, busy machine takes longer
                                       start_timeout=600,
                                       # ipykernel 7 warns on every start that its local TCP sockets (127.0.0.1,
                                       # HMAC-signed) are not encrypted: the kernel app's own log, errors only
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                       **ctrl_c_options)
    except papermill.PapermillExecutionError as err:
        error = f"{err.ename}: {err.evalue}".splitlines()[0]
        if err.ename in ("KeyboardInterrupt", "TrainingInterrupted"):  # the kernel was interrupted (Ctrl-C, or anyone)
            stopped = _interruption(output_dir, err.traceback)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the kernel was up
        stopped = _interruption(output_dir, [])
    except Exception as err:  # kernel died, notebook unreadable...
        error = f"{type(err).__name__}: {err}".splitlines()[0]
        if pressed:  # Ctrl-C while papermill was starting or stopping the kernel
            stopped = _interruption(output_dir, [])
    wall = time.perf_counter() - start
    if stopped is not None:
        raise RunInterrupted(RunResult(path.stem, "interrupted", wall, executed, output_dir,
                                       error="interrupted (Ctrl-C)", interruption=stopped))
    fresh = metrics_file.exists() and stamp() != before
    metrics = json.loads(metrics_file.read_text()) if fresh and error is None else {}
    if error is None and not metrics:
        error = f"the notebook finished but wrote no {_METRICS_FILE}"
    return RunResult(path.stem, "ok" if error is None else "failed", wall, executed, output_dir, metrics, error)


def _fmt_metrics(section: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in section.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool))


def write_summary(results: list[RunResult], runs_dir: Path = RUNS_DIR) -> Path:
    """`runs/summary.md` (one row per notebook) and `runs/summary.json`."""
    lines = ["# Workbook runs", "",
             "| notebook | status | model used | data used | test metrics | before fine-tuning | time |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        model = r.metrics.get("model", {})
        data = r.metrics.get("data", {})
        model_used = (f"stand-in for {model.get('requested')}" if model.get("standin")
                      else Path(str(model.get("used", "-"))).name)
        data_used = f"{Path(str(data.get('used', '-'))).name}" + (" (generated sample)" if data.get("standin") else "")
        error = " ".join((r.error or "").replace("|", "/").split())
        status = "ok" if r.status == "ok" else f"**failed**: {error}"
        if r.status == "interrupted" and r.interruption is not None:
            how = "" if not r.interruption.resume else (
                f"; resume with `{r.interruption.resume}`" if r.interruption.checkpoint is not None
                else f"; start over with `{r.interruption.resume}`")
            status = f"**interrupted** (Ctrl-C) {r.interruption.describe()}{how}".replace("|", "/")
        elif r.status == "not run":
            status = "not run (interrupted before it)"
        lines.append(f"| {r.notebook} | {status} | {model_used} | {data_used} "
                     f"| {_fmt_metrics(r.metrics.get('test', {}))} "
                     f"| {_fmt_metrics(r.metrics.get('baseline', {}))} | {r.wall_s:.0f} s |")
    standins = [r.notebook for r in results if r.metrics.get("model", {}).get("standin")
                or r.metrics.get("data", {}).get("standin")]
    if standins:
        lines += ["", f"Offline stand-ins were used in: {', '.join(standins)}. Their numbers show the code works, "
                      "not how good the requested models are (see docs/your-data.md, 'Offline first')."]
    if any((r.metrics.get("params") or {}).get("TRACKING", True) for r in results
           if r.status not in ("interrupted", "not run")):  # those have no metrics.json to say
        lines += ["", "Each run is also tracked in MLflow (runs/mlflow.db, or MLFLOW_TRACKING_URI): `make ui` shows "
                      "them side by side; `workbook sweep` runs a notebook over parameter values."]
    runs_dir = Path(runs_dir)
    path = runs_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    _write_json(runs_dir / "summary.json", {"runs": [
        {"notebook": r.notebook, "status": r.status, "error": r.error, "wall_s": round(r.wall_s, 1),
         "executed": str(r.executed) if r.executed else None, "output_dir": str(r.output_dir) if r.output_dir else None,
         "test": r.metrics.get("test", {}), "model": r.metrics.get("model", {}), "data": r.metrics.get("data", {}),
         **({"interrupted": {"step": r.interruption.step, "total_steps": r.interruption.total_steps,
                             "checkpoint": str(r.interruption.checkpoint) if r.interruption.checkpoint else None,
                             "resume": r.interruption.resume}} if r.interruption else {})} for r in results]})
    return path


def run_many(names: list[str] | None, params: dict[str, Any], *, runs_dir: Path = RUNS_DIR,
             log_output: bool = False, echo=print, resume_command=None) -> list[RunResult]:
    """Run the named notebooks (all when none), keep going past failures, write the summary
    (`runs_dir/summary.md`; smoke runs: `runs_dir/smoke/summary.md`).

    Ctrl-C stops the run: the interrupted notebook's result has status "interrupted" (the later ones "not run"),
    with `interruption.resume` from `resume_command(notebooks, resume)`: the command that continues it
    (resume=True) or starts it over (no checkpoint). The summary is written all the same."""
    paths = [find_notebook(n) for n in names] if names else list_notebooks()
    if not paths:
        raise RunnerError(f"No notebooks found in {NOTEBOOKS_DIR}.")
    for path in paths:  # fail fast on typos, before anything runs
        check_parameters(path, {k: v for k, v in params.items()})
    results = []
    for index, path in enumerate(paths):
        echo(f"running {path.stem} ...", flush=True)
        try:
            result = run_notebook(path, params, runs_dir=runs_dir, log_output=log_output)
        except RunInterrupted as stop:
            result, left = stop.result, paths[index + 1:]
            if resume_command is not None:
                resume = result.interruption.checkpoint is not None or _has_partial_checkpoints(result.output_dir)
                result.interruption.resume = resume_command([path, *left], resume)
            results.append(result)
            results += [RunResult(p.stem, "not run", 0.0, None, None) for p in left]
            echo(f"  interrupted ({result.wall_s:.0f} s); executed copy: {result.executed}", flush=True)
            break
        results.append(result)
        tail = f"ok ({result.wall_s:.0f} s)" if result.status == "ok" else f"FAILED ({result.error})"
        echo(f"  {tail}; executed copy: {result.executed}", flush=True)
    from helpers.notebook import _runs_home, _smoke_from_env

    with _ctrl_c_ignored():  # the summary of an interrupted run is written whole, however often Ctrl-C is pressed
        summary = write_summary(results, _runs_home(_smoke_from_env(params.get("SMOKE")), runs_dir))
    echo(f"summary: {summary}")
    return results


def _has_partial_checkpoints(output_dir: Path) -> bool:
    """A checkpoint write cut short leaves a temporary folder; a run then starts over only with RESUME=True
    (which finds no complete checkpoint and starts from scratch) or OVERWRITE=True."""
    folder = Path(output_dir) / "checkpoints"
    return folder.is_dir() and any(folder.iterdir())


@contextlib.contextmanager
def _ctrl_c_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def clear_outputs(paths: list[Path] | None = None) -> list[Path]:
    """Drop outputs, execution counts and saved widget state from notebooks (default: notebooks/*.ipynb).

    For the tracked notebooks after working in them in JupyterLab (`make strip`), so an interactive
    session's autosave never lands in a commit. Cell tags (the parameters cell) are kept.
    Returns the notebooks that changed.
    """
    import nbformat

    changed = []
    for path in paths or sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        before = Path(path).read_text(encoding="utf-8")
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
        if Path(path).read_text(encoding="utf-8") != before:
            changed.append(Path(path))
    return changed
