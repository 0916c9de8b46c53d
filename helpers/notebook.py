"""Small things every notebook does the same way: smoke mode, run info, the "Try it" box."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

SMOKE_ENV = "WORKBOOK_SMOKE"


def smoke_from_env(smoke: bool | None) -> bool:
    """SMOKE=None means "ask the environment": nbmake cannot inject parameters, CI sets WORKBOOK_SMOKE=1."""
    if smoke is not None:
        return bool(smoke)
    return os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


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


def try_it_box(predict: Callable[[str], str], *, placeholder: str, button: str = "Predict",
               description: str = "Text:") -> None:
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
            except Exception as err:  # show the problem in the box, keep the notebook alive
                print(f"error: {err}")
            finally:
                go.disabled, go.description = False, button

    go.on_click(on_click)
    display(widgets.VBox([text, go, out]))
