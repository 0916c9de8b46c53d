"""Write docs/kit.md: every name `import helpers as hp` offers, with its first docstring sentence.

`.venv/bin/python tests/scripts/write_kit_reference.py` after changing a public name (tests/test_layout.py checks).
"""
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import helpers as hp  # noqa: E402 - from this checkout, not an installed copy

ORDER = ["data", "models", "training", "textgen", "metrics", "plots", "inference", "artifacts", "device",
         "planning", "notebook"]

def first_sentence(obj):
    doc = inspect.getdoc(obj) or ""
    para = doc.split("\n\n")[0].replace("\n", " ").strip()
    m = re.match(r"(.+?[.!?])(\s|$)", para)
    s = (m.group(1) if m else para)
    return s.replace("|", "\\|")

def kind(obj):
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "constant"

lines = ["# The kit's reference: every name `import helpers as hp` offers", "",
         "The teaching kit is what the notebooks import (`import helpers as hp`). These are all of its public",
         "names: the modules, the shortcuts at the top, and each module's `__all__` (what `help(hp.data)` and",
         "tab completion show). Anything else in `helpers/` starts with an underscore: the internals the loop and",
         "the loaders use (`helpers/_readers.py`, `_batching.py`, `_fastpaths.py`, `_offline/`, ...), which the",
         "`workbook` tool may call but a notebook does not need. `help(hp.x.y)` gives the whole docstring; the",
         "code reads top to bottom in `helpers/<module>.py`. [architecture.md](architecture.md) draws how the",
         "modules fit together.", "",
         "## Shortcuts", "", "| name | is | what it does |", "|---|---|---|"]
for name in ["train", "evaluate", "TrainConfig", "History", "plan", "find_lr"]:
    obj = getattr(hp, name)
    lines.append(f"| `hp.{name}` | `hp.{obj.__module__.split('.')[-1]}.{name}` | {first_sentence(obj)} |")
total = len(dir(hp))
for mod_name in ORDER:
    mod = importlib.import_module(f"helpers.{mod_name}")
    lines += ["", f"## `hp.{mod_name}`", "", first_sentence(mod), "", "| name | kind | what it does |", "|---|---|---|"]
    for name in mod.__all__:
        obj = getattr(mod, name)
        sig = ""
        if inspect.isfunction(obj):
            params = [p for p in inspect.signature(obj).parameters]
            sig = "(" + ", ".join(params[:4]) + (", ..." if len(params) > 4 else "") + ")"
        lines.append(f"| `{name}{sig}` | {kind(obj)} | {first_sentence(obj)} |")
    total += len(mod.__all__)
lines += ["", f"In all: {len(dir(hp))} names at the top and {total - len(dir(hp))} in the modules ({total}).", ""]
open(ROOT / "docs" / "kit.md", "w").write("\n".join(lines))
print(total)
