"""Small things every notebook does the same way: smoke mode, run info, the "Try it" box."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SMOKE_ENV = "WORKBOOK_SMOKE"
SMOKE_FOLDER = "smoke"  # smoke runs' own part of the runs folder: runs/smoke/<notebook>/


def smoke_from_env(smoke: bool | None) -> bool:
    """SMOKE=None means "ask the environment": nbmake cannot inject parameters, CI sets WORKBOOK_SMOKE=1."""
    if smoke is not None:
        return bool(smoke)
    return os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def runs_home(smoke: bool, runs_dir: str | Path | None = None) -> Path:
    """The folder a run's results go to when OUTPUT_DIR is not given: the runs folder (`runs_dir`, else
    `WORKBOOK_RUNS_DIR`, else `runs/` at the project root), and its `smoke/` subfolder for smoke runs."""
    from . import artifacts

    base = Path(runs_dir) if runs_dir is not None else Path(os.environ.get("WORKBOOK_RUNS_DIR") or artifacts.RUNS_DIR)
    return base / SMOKE_FOLDER if smoke else base


def default_output_dir(notebook: str, smoke: bool = False, runs_dir: str | Path | None = None) -> Path:
    """OUTPUT_DIR when the notebook leaves it None: `runs/<notebook>/`, a smoke run `runs/smoke/<notebook>/`.

    A smoke run (CI, nbmake, `--smoke`) and a full run therefore never share a folder, so the smoke run is
    neither refused by the full run's other parameters nor mixed into it, unless the user points both at
    one OUTPUT_DIR.
    """
    return runs_home(smoke, runs_dir) / notebook


class UnknownParameterError(NameError):
    """A parameter was injected (papermill -p NAME ...) that the notebook does not have."""


def params_snapshot(namespace: dict[str, Any], names: list[str]) -> dict[str, Any]:
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
        raise UnknownParameterError(
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


def try_it_box(predict: Callable[[str], str], *, placeholder: str, button: str = "Predict",
               description: str = "Text:", note: str = "") -> None:
    """Display an ipywidgets text box + button showing `predict(text)` (nothing where widgets are missing).

    Returns None so that, as a cell's last line, the box is not displayed a second time.

    Headless runs (papermill, nbmake) can render no widget; notebooks also print predictions
    for fixed examples, so their output is useful without it.
    """
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:
        print("(ipywidgets is not installed: use the printed examples above, or call predict() yourself)")
        return
    text = widgets.Textarea(placeholder=placeholder, description=description,
                            layout=widgets.Layout(width="90%", height="80px"))
    go = widgets.Button(description=button, button_style="primary")
    out = widgets.Output()

    def on_click(_):
        out.clear_output()
        with out:
            if not text.value.strip():
                print("Type some text first.")
                return
            go.disabled, go.description = True, "Working..."
            try:
                print(predict(text.value))
                if note:
                    print(note)
            except Exception as err:  # show the problem in the box, keep the notebook alive
                print(f"error: {err}")
            finally:
                go.disabled, go.description = False, button

    go.on_click(on_click)
    display(widgets.VBox([text, go, out]))


# --------------------------------------------------------------------------- starting a run

class ParameterError(ValueError):
    """A parameter value the notebook cannot use. One line: which, what it got, what it needs."""


_POSITIVE_INT = ("TRAIN_BATCH_SIZE", "EVAL_BATCH_SIZE", "GRAD_ACCUM_STEPS", "GEN_BATCH_SIZE", "NUM_TEST_EXAMPLES",
                 "MAX_NEW_TOKENS", "LORA_R", "LORA_ALPHA", "NUM_BEAMS")
_POSITIVE_INT_OR_NONE = ("MAX_TRAIN_SAMPLES", "MAX_EVAL_SAMPLES", "MAX_STEPS", "EVAL_EVERY_STEPS",
                         "EARLY_STOPPING_PATIENCE")
_LENGTHS = ("MAX_LENGTH", "MAX_SOURCE_LENGTH", "MAX_TARGET_LENGTH")
_BOOLS = ("TRACKING", "RESUME", "OVERWRITE", "AUTO_BATCH_BACKOFF", "ALLOW_STANDIN", "RUN_TRAINER", "USE_LORA",
          "GRADIENT_CHECKPOINTING", "QUANTIZE_4BIT", "CLEAN_CHARS")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_parameter(name: str, value: Any, default: Any = None) -> None:
    """Refuse a value the run cannot use, before anything is loaded (`ParameterError`, one line)."""
    def fail(need: str) -> None:
        raise ParameterError(f"{name}={value!r} cannot be used: {name} must be {need}.")

    if name in _POSITIVE_INT and not (_is_int(value) and value >= 1):
        fail("a whole number of at least 1")
    if name in _POSITIVE_INT_OR_NONE and value is not None and not (_is_int(value) and value >= 1):
        fail("a whole number of at least 1, or None (no limit)")
    if name in _LENGTHS and not (_is_int(value) and value >= 8):
        fail("a whole number of tokens, at least 8")
    if name == "NUM_EPOCHS" and not (_is_number(value) and value > 0):
        fail("a positive number of passes over the data (e.g. 1, 3, or 0.5 for half an epoch)")
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
    if name == "SEED" and not (_is_int(value) and value >= 0):
        fail("a whole number of at least 0")
    if name == "PRECISION" and value not in ("auto", "bf16", "fp16", "fp32"):
        fail('one of "auto", "bf16", "fp16", "fp32"')
    if name in _BOOLS and not isinstance(value, bool):
        fail("True or False")
    if name.endswith(("_COL", "_SOURCE")) and name != "ID_COL" and value is not None and not isinstance(value, str):
        fail("a string")


@dataclass
class Run:
    """What `start` decided: the parameters as run, what smoke mode changed, and the output folder."""

    notebook: str
    params: dict[str, Any]
    smoke: bool
    output_dir: Path
    set_by_user: list[str] = field(default_factory=list)
    smoke_changed: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"SMOKE={self.smoke}", f"OUTPUT_DIR={self.output_dir}"]
        if self.set_by_user:
            parts.append("set: " + ", ".join(f"{k}={self.params[k]!r}" for k in self.set_by_user))
        if self.smoke_changed:
            parts.append("smoke sizes: " + ", ".join(f"{k}={v!r}" for k, v in self.smoke_changed.items()))
        return "  ".join(parts)

    def tracked_runs(self):
        """This notebook's runs in the MLflow store (`MLFLOW_TRACKING_URI`, else runs/mlflow.db) as a pandas
        DataFrame, newest first: one row per run, `params.*`, `metrics.*` and `tags.*` columns."""
        from ._mlflow import runs_frame

        return runs_frame(self.notebook)


def notebook_defaults(notebook: str) -> dict[str, Any] | None:
    """The parameters cell of notebooks/<notebook>.ipynb as {name: default}, read the way papermill reads it
    (None when the file is not there, e.g. a copy opened elsewhere)."""
    import ast

    from .data import PROJECT_ROOT

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


def injected_names(namespace: dict[str, Any]) -> list[str]:
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


def start(notebook: str, namespace: dict[str, Any], *, smoke: dict[str, Any] | None = None) -> Run:
    """The plumbing every notebook runs after its parameters cell, in one call.

    1. Reads the notebook's own parameters cell (as papermill does) for the names and defaults; a
       name injected by papermill that the cell does not have is refused (`-p LRR 3e-5`).
    2. Validates every value first (`ParameterError`: one line naming the value and what it needs).
    3. SMOKE (from WORKBOOK_SMOKE when None) applies the `smoke` sizes, only to parameters the user
       did not set (injected, or changed from the cell's default); the run records what it used.
    4. Claims OUTPUT_DIR (default `runs/<notebook>/`; a smoke run's is `runs/smoke/<notebook>/`) for this
       run (see `artifacts.prepare_output_dir`).
    5. Starts tracking the run in MLflow unless TRACKING=False (`helpers.tracking`).

    The smoke values, SMOKE and OUTPUT_DIR are written back into `namespace` (the notebook's globals),
    so the cells that follow read what is actually used.
    """
    from . import artifacts

    defaults = notebook_defaults(notebook)
    injected = injected_names(namespace)
    names = list(defaults) if defaults is not None else sorted(
        k for k in namespace if k.isupper() and not k.startswith("_") and k != "NOTEBOOK")
    unknown = [n for n in injected if n not in names]
    if unknown:
        params_snapshot({n: namespace.get(n) for n in [*names, *unknown]}, names)  # raises, with a suggestion
    for name in names:
        check_parameter(name, namespace.get(name), (defaults or {}).get(name))
    user_set = [n for n in names if n in injected or (defaults is not None and namespace.get(n) != defaults[n])]
    is_smoke = smoke_from_env(namespace.get("SMOKE"))
    changed = {}
    if is_smoke:
        for name, value in (smoke or {}).items():
            if name not in user_set and namespace.get(name) != value:
                changed[name] = namespace[name] = value
    namespace["SMOKE"] = is_smoke
    params = {name: namespace.get(name) for name in names}
    folder = namespace.get("OUTPUT_DIR")
    output_dir = Path(folder).expanduser() if folder else default_output_dir(notebook, is_smoke)
    artifacts.prepare_output_dir(output_dir, notebook=notebook, params=params, resume=bool(namespace.get("RESUME")),
                                 overwrite=bool(namespace.get("OVERWRITE")))
    namespace["OUTPUT_DIR"] = output_dir
    from . import _mlflow as tracking

    tracking.begin(notebook, params, output_dir, enabled=bool(namespace.get("TRACKING", True)))
    return Run(notebook, params, is_smoke, output_dir, [n for n in user_set if n not in ("SMOKE",)], changed)


# --------------------------------------------------------------------------- Ctrl-C / the Stop button

def interrupted_step(lines) -> tuple[int, int] | None:
    """(step, total) from an interrupted cell's traceback lines (`hp.train` raises `TrainingInterrupted`
    with "Interrupted at step N of M." in its message), or None."""
    import re

    from .training import INTERRUPTED_AT

    pattern = re.escape(INTERRUPTED_AT).replace(r"\{step\}", r"(\d+)").replace(r"\{total\}", r"(\d+)")
    for line in reversed(list(lines or [])):
        match = re.search(pattern, str(line))
        if match:
            return int(match.group(1)), int(match.group(2))
    return None
