"""Progress bars: tqdm.auto (widgets in Jupyter, text elsewhere) whose transient bars survive a reopened notebook.

A tqdm notebook bar made with `leave=False` *closes* its widget when done. The cell output still
refers to that widget, so once the notebook is saved and opened again JupyterLab shows
"Error displaying widget: model not found" where the bar was. Transient bars here keep their widget
and hide it instead; the saved widget state then renders them as nothing, which is what the user saw.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm as _tqdm
from tqdm.notebook import tqdm as _notebook_tqdm


class _HiddenWhenDone(_notebook_tqdm):
    """A notebook bar with `leave=False` that hides its widget on completion instead of closing it."""

    def close(self) -> None:
        if self.disable or self.leave or getattr(self, "container", None) is None:
            return super().close()
        finished = not self.total or self.n >= self.total
        self.leave = True  # closing the widget would leave a dangling reference in the saved output
        super().close()
        if finished:  # an interrupted bar stays visible, in red, as tqdm shows it
            self.container.layout.display = "none"


def progress_bar(iterable: Any = None, *, leave: bool = True, **kwargs: Any):
    """`tqdm.auto.tqdm(iterable, leave=leave, **kwargs)`, with transient notebook bars hidden, not closed."""
    if not leave and issubclass(_tqdm, _notebook_tqdm):
        return _HiddenWhenDone(iterable, leave=False, **kwargs)
    return _tqdm(iterable, leave=leave, **kwargs)
