"""Run notebooks headless with papermill, the way users schedule jobs, and summarize the runs.

    workbook run 01 --lr 3e-5 --epochs 2          # = papermill notebooks/01_*.ipynb runs/01_*.ipynb -p LR 3e-5 ...

Each notebook runs into `runs/<notebook>.ipynb` (the executed copy keeps any error) with its
artifacts in `runs/<notebook>/`. A failing notebook does not stop the others; `runs/summary.md`
gets one row per notebook, and the exit status says whether all passed. Smoke runs (`--smoke`,
WORKBOOK_SMOKE=1) do the same under `runs/smoke/`, so they never meet a full run's folder.
"""

from __future__ import annotations

import ast
import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import METRICS_FILE, RUNS_DIR, write_json
from .data import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


class RunnerError(ValueError):
    """A run that cannot start (unknown notebook or parameter). One line: problem and fix."""


@dataclass
class RunResult:
    notebook: str
    status: str  # "ok" or "failed"
    wall_s: float
    executed: Path
    output_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


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


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names (and defaults) of the notebook's `parameters` cell."""
    import papermill

    return papermill.inspect_notebook(str(path))


def check_parameters(path: Path, params: dict[str, Any]) -> None:
    """Refuse unknown names and unusable values before anything runs (the notebook checks them again)."""
    from .notebook import ParameterError, check_parameter

    known = notebook_parameters(path)
    for name, value in params.items():
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
            raise RunnerError(f"{path.stem} has no parameter {name!r}; {hint}")
        try:
            check_parameter(name, value, parse_value(known[name]["default"]))
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


def run_notebook(path: Path, params: dict[str, Any], *, runs_dir: Path = RUNS_DIR, executed: Path | None = None,
                 log_output: bool = False, kernel_name: str | None = None) -> RunResult:
    """Execute one notebook with papermill: the executed copy to `executed` (default `runs_dir/<name>`),
    results to OUTPUT_DIR (default `runs_dir/<stem>/`). A smoke run (SMOKE, or WORKBOOK_SMOKE=1 when SMOKE
    is not given) uses `runs_dir/smoke/` for both, as the notebook itself does (`notebook.default_output_dir`)."""
    import papermill

    from .notebook import runs_home, smoke_from_env

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    params = resolve_paths(params)
    home = runs_home(smoke_from_env(params.get("SMOKE")), runs_dir)
    params.setdefault("OUTPUT_DIR", str((home / path.stem).resolve()))
    check_parameters(path, params)
    executed = Path(executed) if executed else home / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    output_dir = Path(params["OUTPUT_DIR"])
    metrics_file = output_dir / METRICS_FILE

    def stamp():
        return metrics_file.stat().st_mtime_ns if metrics_file.exists() else None

    before = stamp()  # an earlier run's file must not pass for this run's result, nor be deleted
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(str(path), str(executed), parameters=params, cwd=str(path.parent),
                                   log_output=log_output, progress_bar=False, kernel_name=kernel_name,
                                   # papermill gives a kernel 60 s to start; a cold, busy machine can take longer
                                   start_timeout=600,
                                   # ipykernel 7 warns on every start that its local TCP sockets (127.0.0.1,
                                   # HMAC-signed) are not encrypted: the kernel app's own log, errors only
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except papermill.PapermillExecutionError as err:
        error = f"{err.ename}: {err.evalue}".splitlines()[0]
    except Exception as err:  # kernel died, notebook unreadable...
        error = f"{type(err).__name__}: {err}".splitlines()[0]
    wall = time.perf_counter() - start
    fresh = metrics_file.exists() and stamp() != before
    metrics = json.loads(metrics_file.read_text()) if fresh and error is None else {}
    if error is None and not metrics:
        error = f"the notebook finished but wrote no {METRICS_FILE}"
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
        lines.append(f"| {r.notebook} | {status} | {model_used} | {data_used} "
                     f"| {_fmt_metrics(r.metrics.get('test', {}))} "
                     f"| {_fmt_metrics(r.metrics.get('baseline', {}))} | {r.wall_s:.0f} s |")
    standins = [r.notebook for r in results if r.metrics.get("model", {}).get("standin")
                or r.metrics.get("data", {}).get("standin")]
    if standins:
        lines += ["", f"Offline stand-ins were used in: {', '.join(standins)}. Their numbers show the code works, "
                      "not how good the requested models are (see README, 'Offline first')."]
    if any((r.metrics.get("params") or {}).get("TRACKING", True) for r in results):
        lines += ["", "Each run is also tracked in MLflow (runs/mlflow.db, or MLFLOW_TRACKING_URI): `make ui` shows "
                      "them side by side; `workbook sweep` runs a notebook over parameter values."]
    runs_dir = Path(runs_dir)
    path = runs_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    write_json(runs_dir / "summary.json", {"runs": [
        {"notebook": r.notebook, "status": r.status, "error": r.error, "wall_s": round(r.wall_s, 1),
         "executed": str(r.executed), "output_dir": str(r.output_dir), "test": r.metrics.get("test", {}),
         "model": r.metrics.get("model", {}), "data": r.metrics.get("data", {})} for r in results]})
    return path


def run_many(names: list[str] | None, params: dict[str, Any], *, runs_dir: Path = RUNS_DIR,
             log_output: bool = False, echo=print) -> list[RunResult]:
    """Run the named notebooks (all when none), keep going past failures, write the summary
    (`runs_dir/summary.md`; smoke runs: `runs_dir/smoke/summary.md`)."""
    paths = [find_notebook(n) for n in names] if names else list_notebooks()
    if not paths:
        raise RunnerError(f"No notebooks found in {NOTEBOOKS_DIR}.")
    for path in paths:  # fail fast on typos, before anything runs
        check_parameters(path, {k: v for k, v in params.items()})
    results = []
    for path in paths:
        echo(f"running {path.stem} ...", flush=True)
        result = run_notebook(path, params, runs_dir=runs_dir, log_output=log_output)
        results.append(result)
        tail = f"ok ({result.wall_s:.0f} s)" if result.status == "ok" else f"FAILED ({result.error})"
        echo(f"  {tail}; executed copy: {result.executed}", flush=True)
    from .notebook import runs_home, smoke_from_env

    summary = write_summary(results, runs_home(smoke_from_env(params.get("SMOKE")), runs_dir))
    echo(f"summary: {summary}")
    return results


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
