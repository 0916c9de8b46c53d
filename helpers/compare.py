"""Compare runs: a table of every run (parameters, headline metrics, time, the best marked) and plots.

    workbook compare runs/sweep-01-lr/*            any run folders (each holds a metrics.json)
    hp.compare.report(["runs/a", "runs/b"], "runs/compare")

Writes `report.md` and `report.html` with `plots/metric_vs_<PARAM>.png` (the metric against each
parameter that differs between the runs) and `plots/validation_curves.png` (every run's validation
metric against the training step, on one axis). `workbook sweep` writes the same report into its
folder after each run. Runs are judged on a *validation* metric (the best value over the run's
evaluations), never on the test split: choosing by test scores would make them optimistic.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import METRICS_FILE

# Parameters that say where or how a run was stored, not what was trained: never "swept".
_BOOKKEEPING = {"OUTPUT_DIR", "RESUME", "OVERWRITE", "TRACKING", "SMOKE", "ALLOW_STANDIN"}


def default_objective(record: dict[str, Any]) -> tuple[str, str]:
    """(metric, direction) a notebook's runs are compared on: macro-F1 for classifiers, loss otherwise."""
    evals = record.get("evaluations") or [record.get("validation") or {}]
    return ("macro_f1", "maximize") if any("macro_f1" in e for e in evals) else ("loss", "minimize")


@dataclass
class RunRow:
    """One run folder as the report reads it."""

    name: str
    folder: Path
    record: dict[str, Any]
    status: str = "ok"  # ok, pruned, failed
    error: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return list(self.record.get("evaluations") or [])

    def objective(self, metric: str, direction: str) -> float | None:
        """The best validation value of `metric` over the run (its last validation when no history)."""
        values = [float(e[metric]) for e in self.evaluations if isinstance(e.get(metric), (int, float))]
        if not values and isinstance(self.record.get("validation", {}).get(metric), (int, float)):
            values = [float(self.record["validation"][metric])]
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return None
        return max(values) if direction == "maximize" else min(values)


def load_run(folder: str | Path, name: str | None = None) -> RunRow:
    """A run folder (its metrics.json); a folder without one is a failed or unfinished run."""
    folder = Path(folder)
    metrics = folder / METRICS_FILE
    if not metrics.exists():
        run_file = folder / "run.json"
        params = json.loads(run_file.read_text()).get("params", {}) if run_file.exists() else {}
        return RunRow(name or folder.name, folder, {}, "failed", f"did not finish (no {METRICS_FILE})", params)
    record = json.loads(metrics.read_text())
    status = "pruned" if record.get("pruned_at_step") is not None else "ok"
    return RunRow(name or folder.name, folder, record, status, params=dict(record.get("params") or {}))


def swept_parameters(rows: list[RunRow]) -> list[str]:
    """The parameters whose values differ between the runs (what the comparison is about)."""
    names = sorted({k for r in rows for k in r.params} - _BOOKKEEPING)
    return [n for n in names if len({json.dumps(r.params.get(n), sort_keys=True, default=str) for r in rows}) > 1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return "-" if value is None else str(value)


def table(rows: list[RunRow], *, metric: str, direction: str,
          swept: list[str]) -> tuple[list[str], list[list[str]], int | None]:
    """(header, cells, index of the best row) for the report."""
    test_keys = sorted({k for r in rows for k, v in (r.record.get("test") or {}).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    header = ["run", *swept, f"best val {metric}", *[f"test {k}" for k in test_keys], "train time (s)", "status"]
    scores = [r.objective(metric, direction) if r.status != "failed" else None for r in rows]
    candidates = [i for i, s in enumerate(scores) if s is not None and rows[i].status == "ok"]
    best = None
    if candidates:
        pick = max if direction == "maximize" else min
        best = pick(candidates, key=lambda i: scores[i])
    cells = []
    for i, (r, score) in enumerate(zip(rows, scores)):
        status = r.status if r.status != "failed" else f"failed: {r.error}"
        cells.append([("★ " if i == best else "") + r.name, *[_fmt(r.params.get(p)) for p in swept], _fmt(score),
                      *[_fmt((r.record.get("test") or {}).get(k)) for k in test_keys],
                      _fmt((r.record.get("train") or {}).get("wall_s")), status])
    return header, cells, best


# --------------------------------------------------------------------------- plots

def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_metric_vs(rows: list[RunRow], param: str, *, metric: str, direction: str, ax=None, path=None):
    """The runs' objective against one parameter, the best starred (log scale for float parameters
    spanning 3x or more, such as learning rates)."""
    from .plots import _axes, _legend_below, _save

    ax = _axes(ax)
    points = [(r.params.get(param), r.objective(metric, direction), r.status) for r in rows]
    points = [(x, y, s) for x, y, s in points if y is not None]
    xs = [p[0] for p in points]
    if points and _numeric(xs):
        positions = xs
        positive = [x for x in xs if x > 0]
        floats = any(isinstance(x, float) for x in xs)  # learning rates, weight decay: log; epochs, sizes: linear
        if positive and len(positive) == len(xs) and max(positive) / min(positive) >= (3 if floats else 20):
            ax.set_xscale("log")
    else:
        labels = sorted({json.dumps(x, default=str) for x in xs})
        positions = [labels.index(json.dumps(x, default=str)) for x in xs]
        ax.set_xticks(range(len(labels)), labels)
    for (_, y, status), pos in zip(points, positions):
        ax.scatter([pos], [y], color="tab:gray" if status == "pruned" else "tab:blue", zorder=3)
    finished = [(pos, y) for (_, y, status), pos in zip(points, positions) if status == "ok"]
    if finished:
        pos, y = (max if direction == "maximize" else min)(finished, key=lambda p: p[1])
        ax.scatter([pos], [y], marker="*", s=220, color="tab:orange", zorder=4, label="best run")
        _legend_below(ax)
    ax.set_xlabel(param)
    ax.set_ylabel(f"best validation {metric}")
    ax.set_title(f"{metric} against {param}" + (" (grey: pruned)" if any(s == "pruned" for *_, s in points) else ""))
    ax.grid(alpha=0.3)
    return _save(ax, path)


def plot_validation_curves(rows: list[RunRow], *, metric: str, ax=None, path=None):
    """Every run's validation metric against the training step, on one axis."""
    from .plots import _axes, _legend_below, _save

    ax = _axes(ax, figsize=(7, 4.5))
    for r in rows:
        points = [(e["step"], e[metric]) for e in r.evaluations if "step" in e and metric in e]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, label=r.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"Validation {metric} during training")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        _legend_below(ax)
    return _save(ax, path)


# --------------------------------------------------------------------------- the report

def report(run_dirs: list[str | Path] | list[RunRow], out_dir: str | Path, *, metric: str | None = None,
           direction: str | None = None, title: str = "Run comparison", notes: list[str] | None = None) -> Path:
    """Write `out_dir/report.md` and `report.html` comparing the runs; returns the Markdown path."""
    import matplotlib.pyplot as plt

    rows = [r if isinstance(r, RunRow) else load_run(r) for r in run_dirs]
    if not rows:
        raise ValueError("No runs to compare: give run folders (each with a metrics.json).")
    finished = [r for r in rows if r.record]
    if metric is None or direction is None:
        guess = default_objective(finished[0].record) if finished else ("loss", "minimize")
        metric, direction = metric or guess[0], direction or guess[1]
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    swept = swept_parameters(rows)
    header, cells, best = table(rows, metric=metric, direction=direction, swept=swept)
    plots = []
    for param in swept:
        path = out / "plots" / f"metric_vs_{param}.png"
        plt.close(plot_metric_vs(rows, param, metric=metric, direction=direction, path=path).figure)
        plots.append((f"{metric} against {param}", path))
    path = out / "plots" / "validation_curves.png"
    plt.close(plot_validation_curves(rows, metric=metric, path=path).figure)
    plots.append((f"validation {metric} of every run", path))

    verdict = "No run finished with a validation metric."
    if best is not None:
        verdict = (f"Best run: **{rows[best].name}** (best validation {metric} "
                   f"{_fmt(rows[best].objective(metric, direction))}, "
                   f"{'higher' if direction == 'maximize' else 'lower'} is better).")
    standins = [r.name for r in finished if (r.record.get("model") or {}).get("standin")
                or (r.record.get("data") or {}).get("standin")]
    lines = [f"# {title}", "", verdict, ""]
    if standins:
        lines += [f"Offline stand-ins were used in {len(standins)} of {len(rows)} runs: their numbers show the code "
                  "works, not how good the requested model is.", ""]
    lines += [*(notes or []), *([""] if notes else [])]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    lines += ["", "Runs are ranked on the best validation value over their evaluations; test figures are "
                  "for reading, not for choosing.", ""]
    for caption, plot in plots:
        lines += [f"![{caption}](plots/{plot.name})", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    (out / "report.html").write_text(_html(title, verdict, standins, rows, notes or [], header, cells, best, plots),
                                     encoding="utf-8")
    return md


def _html(title, verdict, standins, rows, notes, header, cells, best, plots) -> str:
    esc = html.escape
    verdict_html = esc(verdict).replace("**", "")
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr" + (' class="best"' if i == best else "") + ">" + "".join(f"<td>{esc(c)}</td>" for c in row)
                   + "</tr>" for i, row in enumerate(cells))
    extra = "".join(f"<p>{esc(n)}</p>" for n in notes)
    if standins:
        extra += (f'<p class="standin">Offline stand-ins were used in {len(standins)} of {len(rows)} runs: their '
                  "numbers show the code works, not how good the requested model is.</p>")
    figures = "".join(f'<figure><img src="plots/{esc(p.name)}" alt="{esc(c)}"><figcaption>{esc(c)}</figcaption>'
                      "</figure>" for c, p in plots)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr.best {{ background: #e8f5e9; font-weight: 600; }}
.standin {{ background: #fff3cd; border: 1px solid #e0c36c; padding: 6px 10px; }}
figure {{ display: inline-block; margin: 1rem 1rem 0 0; }} img {{ max-width: 640px; }}
</style></head><body>
<h1>{esc(title)}</h1><p>{verdict_html}</p>{extra}
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>Runs are ranked on the best validation value over their evaluations; test figures are for reading, not
for choosing.</p>
{figures}
</body></html>
"""


def plot_tracked(runs, *, param: str, metric: str, ax=None, path=None):
    """Tracked runs (`hp.tracking.runs_frame(...)`) as points: `metric` against parameter `param`
    (MLflow keeps parameters as text; numbers are read back, a float range spanning 3x is drawn in log)."""
    import pandas as pd

    from .plots import _axes, _save

    ax = _axes(ax)
    column, value = f"params.{param}", f"metrics.{metric}"
    if column not in runs or value not in runs:
        ax.set_title(f"no tracked runs with {param} and {metric} yet")
        return _save(ax, path)
    frame = pd.DataFrame({"x": pd.to_numeric(runs[column], errors="coerce"), "y": runs[value]}).dropna()
    ax.scatter(frame["x"], frame["y"], zorder=3)
    if len(frame) and (frame["x"] > 0).all() and frame["x"].max() / frame["x"].min() >= 3:
        ax.set_xscale("log")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of {len(frame)} tracked run{'s' * (len(frame) != 1)} against {param}")
    ax.grid(alpha=0.3)
    return _save(ax, path)
