"""Put the plan and the learning-rate range test into the notebooks (issue 29).

    .venv/bin/python tests/scripts/add_plan_cells.py                  # notebooks/0[1-5]_*.ipynb, in place
    .venv/bin/python tests/scripts/add_plan_cells.py A.ipynb B.ipynb  # these files (copies, for a try)

In each notebook:
- the parameters cell gets PLAN_MEMORY_LIMIT and PLAN_TIME_LIMIT (and FIND_LR in 01-03 and 05), after
  AUTO_BATCH_BACKOFF, each a plain literal with a comment;
- the cell with `history = hp.train(...)` is split just before that statement (in 03 before the
  `start = time.perf_counter()` that times it), so what builds the model and its config stays above;
- between the two halves: a markdown and a code cell for the plan (the code cell tagged "plan": `workbook
  plan` runs the notebook up to it), then, in 01-03 and 05, a markdown and a code cell for the range test;
  both calls take the training call's own arguments (read from it with `ast`), so they plan the run as
  configured;
- the training call gets `plan=plan` (metrics.json then has the plan beside what the run really used).

A notebook that already has a plan cell is left alone. Files are written as the project writes them:
json.dump(nb, f, indent=1, ensure_ascii=False) and a newline, outputs empty.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 116  # code lines stay under the project's 120 columns
RANGE_TEST = {"01", "02", "03", "05"}
# hp.train options that change nothing the plan measures (checkpoints, resuming, picking the best model)
NOT_FOR_THE_PLAN = {"compute_metrics", "plan", "checkpoint_dir", "resume", "auto_batch_backoff", "log_every_steps",
                    "save_every_steps", "keep_checkpoints", "metric_for_best", "greater_is_better",
                    "early_stopping_patience", "stop_after_steps"}
# and those the range test does not use either (it runs its own number of steps, without evaluations)
NOT_FOR_THE_RANGE_TEST = NOT_FOR_THE_PLAN | {"num_epochs", "max_steps", "warmup_ratio", "eval_batch_size",
                                             "eval_every_steps", "eval_each_epoch", "max_eval_batches",
                                             "load_best_at_end"}
LENGTHS = {"01": "lengths", "02": "lengths", "03": "lengths", "05": "source_lengths"}  # untruncated token counts
NEW_PARAMETERS = [
    ("PLAN_MEMORY_LIMIT", "PLAN_MEMORY_LIMIT = None  # MB the run may use (on a CPU: the process); the plan stops a "
                          "run over it (None: free memory)"),
    ("PLAN_TIME_LIMIT", "PLAN_TIME_LIMIT = None  # minutes the run may take; the plan stops a run predicted to take "
                        "longer (None: no limit)"),
    ("FIND_LR", "FIND_LR = None  # learning-rate range test before training: None runs it except in smoke runs; "
                "True or False"),
]

PLAN_MD_01 = """### Before you train: will it fit, and how long will it take?

`hp.plan` looks at the run exactly as configured above, on the device it will use. First an estimate
from sizes: the weights, a gradient and AdamW's two moments for every trainable weight, and the
activations of the longest batch (the loop runs it first). Then a measurement: a few real optimizer
steps of `hp.train`'s own loop on the longest and on typical batches, and a few evaluation batches;
afterwards the weights, gradients and random state are put back, so the run below starts as if
nothing had happened. From the measured times it predicts the whole run, evaluations included.

If the run will not fit (in `PLAN_MEMORY_LIMIT` MB, else the memory the device has free) or will not
end within `PLAN_TIME_LIMIT` minutes, `plan.check()` stops the notebook here, before training, with
what to change: a smaller batch with more accumulation (the same effective batch), a shorter
`MAX_LENGTH` (and the share of sentences it would cut), bf16 where the hardware has it. The plan goes
to `OUTPUT_DIR/plan.json`, and into `metrics.json` beside what the run really used.
`workbook plan 01 --train-batch-size 64` asks the same question for a job, without training."""

PLAN_MD = """### Before you train: will it fit, and how long will it take?

As in notebook 01: an estimate from sizes, then a few real steps of the loop measured on the longest
and on typical batches (the model is put back as it was), and a verdict. A run over `PLAN_MEMORY_LIMIT`
(MB; else the memory the device has free) or `PLAN_TIME_LIMIT` (minutes) stops here with what to
change. `workbook plan {nb}` asks the same for a job, without training."""

RANGE_MD_01 = """### Which learning rate? The range test

A short run with the learning rate rising exponentially, from 1e-7 until the loss blows up (Smith 2017,
"Cyclical learning rates"; fastai's `lr_find`), again on the model put back as it was afterwards. Too
low a rate and the loss does not move; too high and it diverges. The suggestion is the lower of two
classic rules: where the loss falls fastest (the steepest descent) and a tenth of the rate where it is
lowest; fine-tuned weights suffer more from a rate too high than too low. The test only suggests: `LR`
stays what the parameters cell says (set it, or `workbook run 01 --lr ...`). It is off in smoke runs
(`FIND_LR=None`); `FIND_LR=True` or `False` decides."""

RANGE_MD = """### Which learning rate? The range test

As in notebook 01: the rate rising exponentially until the loss blows up, a suggested `LR` and why; the
run keeps its `LR`. Off in smoke runs (`FIND_LR=None`).{extra}"""


def cell_id(stem: str, role: str) -> str:
    return "cell-" + hashlib.sha1(f"{stem}:{role}".encode()).hexdigest()[:8]


def lines_of(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def markdown(stem: str, role: str, text: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id(stem, role), "metadata": {}, "source": lines_of(text)}


def code(stem: str, role: str, text: str, tags: list[str] | None = None) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": cell_id(stem, role),
            "metadata": {"tags": tags} if tags else {}, "outputs": [], "source": lines_of(text)}


def wrapped_call(head: str, arguments: list[str], indent: str = "    ") -> str:
    """`head(arguments)` on one line when it fits under WIDTH, else the arguments greedily filled into lines
    with a hanging indent."""
    one_line = f"{head}({', '.join(arguments)})"
    if len(one_line) <= WIDTH:
        return one_line
    lines, line = [head + "("], indent
    for i, argument in enumerate(arguments):
        piece = argument + ("," if i < len(arguments) - 1 else ")")
        if line.strip() and len(line) + 1 + len(piece) > WIDTH:
            lines.append(line.rstrip())
            line = indent
        line += ("" if not line.strip() else " ") + piece
    lines.append(line.rstrip())
    return "\n".join(lines)


def train_call(source: str) -> tuple[int, ast.Call]:
    """(index of the top-level statement holding `hp.train(...)`, that call) in a cell's code."""
    tree = ast.parse(source)
    for index, statement in enumerate(tree.body):
        for node in ast.walk(statement):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "train"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "hp"):
                return index, node
    raise LookupError("no hp.train(...) call")


def call_arguments(source: str, call: ast.Call) -> tuple[list[str], list[tuple[str | None, str]]]:
    positional = [ast.get_source_segment(source, a) for a in call.args]
    keywords = [(k.arg, ast.get_source_segment(source, k.value)) for k in call.keywords]
    return positional, keywords


def plan_cells(stem: str, positional: list[str], keywords: list[tuple[str | None, str]]) -> list[dict]:
    number = stem[:2]
    kept = [f"{name}={value}" if name else f"**{value}" for name, value in keywords if name not in NOT_FOR_THE_PLAN]
    extra = ["memory_limit_mb=PLAN_MEMORY_LIMIT", "time_limit_min=PLAN_TIME_LIMIT", "params=PARAMS"]
    extra += [f"lengths={LENGTHS[number]}"] if number in LENGTHS else []
    call = wrapped_call("plan = hp.plan", [*positional, *kept, *extra, "output_dir=OUTPUT_DIR"])
    text = (f"{call}\nprint(plan)\n"
            "plan.check()  # a run that will not fit (or not within PLAN_TIME_LIMIT) stops here, saying what to change")
    intro = PLAN_MD_01 if number == "01" else PLAN_MD.format(nb=number)
    return [markdown(stem, "plan-md", intro), code(stem, "plan", text, tags=["plan"])]


def range_test_cells(stem: str, positional: list[str], keywords: list[tuple[str | None, str]]) -> list[dict]:
    number = stem[:2]
    arguments = positional[:2] + positional[3:4]  # model, training rows, the config (no evaluation rows)
    arguments += [f"{name}={value}" if name else f"**{value}" for name, value in keywords
                  if name not in NOT_FOR_THE_RANGE_TEST]
    call = wrapped_call("    lr_test = hp.find_lr", arguments, indent="        ")
    text = ("range_test = (not SMOKE) if FIND_LR is None else FIND_LR  # off in smoke runs: up to 100 more steps\n"
            f"if range_test:\n{call}\n    print(lr_test)\n"
            '    ax = hp.plots.lr_find(lr_test, path=OUTPUT_DIR / "plots" / "lr_find.png")\n'
            "else:\n"
            '    print("no learning-rate range test (a smoke run, or FIND_LR=False); FIND_LR=True runs it")')
    extra = ("\nHere it runs on the LoRA adapters (the only weights that train): they take far higher rates "
             "than full fine-tuning." if number == "05" else "")
    intro = RANGE_MD_01 if number == "01" else RANGE_MD.format(extra=extra)
    return [markdown(stem, "lr-md", intro), code(stem, "lr", text)]


def with_plan_argument(source: str) -> str:
    """The training call with `plan=plan` as its last argument."""
    _, call = train_call(source)
    lines = source.split("\n")
    row, col = call.end_lineno - 1, call.end_col_offset - 1  # the closing parenthesis
    line = lines[row]
    if len(line) + len(", plan=plan") <= 120:
        lines[row] = line[:col] + ", plan=plan" + line[col:]
    else:
        indent = " " * (len(line) - len(line.lstrip()))
        lines[row] = line[:col] + ","
        lines.insert(row + 1, indent + "plan=plan" + line[col:])
    return "\n".join(lines)


def split_training_cell(stem: str, cell: dict) -> tuple[dict | None, dict]:
    """(the cell up to the training statement, or None; the cell from it on, with `plan=plan`)."""
    source = "".join(cell["source"])
    index, _ = train_call(source)
    body = ast.parse(source).body
    before = ast.get_source_segment(source, body[index - 1]) if index else ""
    if index and before.replace(" ", "") == "start=time.perf_counter()":
        index -= 1
    cut = body[index].lineno - 1
    lines = source.split("\n")
    head, tail = "\n".join(lines[:cut]).rstrip(), "\n".join(lines[cut:])
    if not head:
        cell["source"] = lines_of(with_plan_argument(source))
        return None, cell
    cell["source"] = lines_of(head)
    return cell, code(stem, "train", with_plan_argument(tail))


def first(items, what: str):
    """The first of `items`, or a clear error naming what the notebook lacks (it changed since this was written)."""
    for item in items:
        return item
    raise LookupError(f"cannot find {what}; add the cells by hand (see docs/planning.md)")


def add_parameters(cell: dict, number: str) -> None:
    source = "".join(cell["source"])
    lines = source.split("\n")
    anchor = first((i for i, line in enumerate(lines) if line.startswith("AUTO_BATCH_BACKOFF")),
                   "the AUTO_BATCH_BACKOFF line of the parameters cell")
    new = [text for name, text in NEW_PARAMETERS if (name != "FIND_LR" or number in RANGE_TEST)
           and not any(line.startswith(name + " ") for line in lines)]
    cell["source"] = lines_of("\n".join(lines[: anchor + 1] + new + lines[anchor + 1:]))


def convert(path: Path) -> bool:
    """Add the cells to one notebook; False when it already has a plan cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells, stem = nb["cells"], path.stem
    if any("plan" in c.get("metadata", {}).get("tags", []) for c in cells):
        return False
    number = stem[:2]
    add_parameters(first((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])),
                         "the parameters cell"), number)
    where = first((i for i, c in enumerate(cells) if c["cell_type"] == "code" and "hp.train(" in "".join(c["source"])),
                  "the cell calling hp.train(...)")
    source = "".join(cells[where]["source"])
    positional, keywords = call_arguments(source, train_call(source)[1])
    head, tail = split_training_cell(stem, cells[where])
    new = plan_cells(stem, positional, keywords)
    if number in RANGE_TEST:
        new += range_test_cells(stem, positional, keywords)
    cells[where: where + 1] = ([head] if head else []) + new + [tail]
    for cell in cells:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    with path.open("w", encoding="utf-8") as handle:
        json.dump(nb, handle, indent=1, ensure_ascii=False)
        handle.write("\n")
    return True


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted((ROOT / "notebooks").glob("0[1-5]_*.ipynb"))
    for path in paths:
        try:
            print(f"{path}: {'plan cells added' if convert(path) else 'already has a plan cell, left as it is'}")
        except LookupError as err:
            print(f"{path}: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
