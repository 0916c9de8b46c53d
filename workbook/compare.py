"""Compare runs: a table of every run (parameters, headline metrics, time, the best marked) and plots.

    workbook compare runs/sweep-01-lr/*            any run folders (each holds a metrics.json)
    workbook.compare.report(["runs/a", "runs/b"], "runs/compare")

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

from helpers.artifacts import _METRICS_FILE, _read_json_object

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
    metrics = folder / _METRICS_FILE
    if not metrics.exists():
        params = (_read_json_object(folder / "run.json") or {}).get("params") or {}
        return RunRow(name or folder.name, folder, {}, "failed", f"did not finish (no {_METRICS_FILE})",
                      params if isinstance(params, dict) else {})
    record = _read_json_object(metrics)
    if record is None:  # one damaged run must not cost the report of the others
        return RunRow(name or folder.name, folder, {}, "failed", f"{_METRICS_FILE} is damaged (not a JSON object): "
                      "run it again, or leave it out of the comparison")
    status = "pruned" if record.get("pruned_at_step") is not None else "ok"
    params = record.get("params")
    return RunRow(name or folder.name, folder, record, status, params=dict(params) if isinstance(params, dict) else {})


def swept_parameters(rows: list[RunRow]) -> list[str]:
    """The parameters whose values differ between the runs (what the comparison is about)."""
    names = sorted({k for r in rows for k in r.params} - _BOOKKEEPING)
    return [n for n in names if len({json.dumps(r.params.get(n), sort_keys=True, default=str) for r in rows}) > 1]


SEED_PARAM = "SEED"


@dataclass
class SeedGroup:
    """Runs of one configuration that differ only by SEED: their objective's mean and spread."""

    name: str
    rows: list[RunRow]
    scores: list[float]

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def spread(self) -> float:
        """The standard deviation over seeds (n - 1 in the denominator); 0 for one seed, where it is unknown."""
        n = len(self.scores)
        return math.sqrt(sum((x - self.mean) ** 2 for x in self.scores) / (n - 1)) if n > 1 else 0.0

    def test_mean_spread(self, key: str) -> tuple[float, float] | None:
        values = [float(v) for r in self.rows if isinstance(v := (r.record.get("test") or {}).get(key), (int, float))
                  and not isinstance(v, bool)]
        if not values:
            return None
        mean = sum(values) / len(values)
        spread = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        return mean, spread


def within_spread(a: SeedGroup, b: SeedGroup) -> bool:
    """True when the two means are closer than their spreads reach: the error bars (mean +- one standard
    deviation over seeds) overlap, so the seeds cannot tell the two configurations apart."""
    return abs(a.mean - b.mean) <= a.spread + b.spread


def seed_groups(rows: list[RunRow], *, metric: str, direction: str) -> list[SeedGroup]:
    """The finished runs grouped by configuration (every parameter but SEED), best mean first; empty unless
    some configuration ran on more than one seed (then the report ranks configurations, not runs)."""
    others = [p for p in swept_parameters(rows) if p != SEED_PARAM]
    groups: dict[str, SeedGroup] = {}
    for r in rows:
        score = r.objective(metric, direction) if r.status == "ok" else None
        if score is None:
            continue
        name = ", ".join(f"{p}={_fmt(r.params.get(p))}" for p in others) or "all runs"
        groups.setdefault(name, SeedGroup(name, [], [])).rows.append(r)
        groups[name].scores.append(score)
    if not any(len({json.dumps(r.params.get(SEED_PARAM)) for r in g.rows}) > 1 for g in groups.values()):
        return []
    return sorted(groups.values(), key=lambda g: -g.mean if direction == "maximize" else g.mean)


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


def _pm(mean_spread: tuple[float, float] | None) -> str:
    return "-" if mean_spread is None else f"{_fmt(mean_spread[0])} ± {_fmt(mean_spread[1])}"


def seeds_table(groups: list[SeedGroup], *, metric: str) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the configurations, best mean first: seeds, mean and spread of the validation metric,
    the test metrics' mean ± spread, and how each compares with the best (within the seeds' spread or not)."""
    test_keys = sorted({k for g in groups for r in g.rows for k, v in (r.record.get("test") or {}).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    header = ["configuration", "seeds", f"mean val {metric}", "spread (sd)", "min-max",
              *[f"test {k}" for k in test_keys], "against the best"]
    cells = []
    for i, g in enumerate(groups):
        versus = "best (highest mean)" if i == 0 else (
            "within the spread: not shown different" if within_spread(groups[0], g)
            else "worse by more than the spread")
        cells.append([("★ " if i == 0 else "") + g.name, str(len(g.scores)), _fmt(g.mean),
                      _fmt(g.spread) if len(g.scores) > 1 else "- (1 seed)",
                      f"{_fmt(min(g.scores))}-{_fmt(max(g.scores))}",
                      *[_pm(g.test_mean_spread(k)) for k in test_keys], versus])
    return header, cells


def seeds_verdict(groups: list[SeedGroup], *, metric: str, direction: str) -> str:
    """One paragraph: the best configuration by the mean over seeds, and whether the runner-up trails it by more
    than the seeds' spread (their mean +- sd error bars do not overlap) or not."""
    best = groups[0]

    def stated(g: SeedGroup) -> str:
        return f"{_fmt(g.mean)} ± {_fmt(g.spread)} over {len(g.scores)} seed{'s' * (len(g.scores) != 1)}"

    if len(groups) == 1:
        return (f"One configuration ({best.name}) on {len(best.scores)} seeds: validation {metric} {stated(best)} "
                f"(min {_fmt(min(best.scores))}, max {_fmt(max(best.scores))}): the seed noise any change must beat.")
    second = groups[1]
    gap, reach = abs(best.mean - second.mean), best.spread + second.spread
    text = (f"Best configuration by the mean over seeds: **{best.name}** (validation {metric} {stated(best)}, "
            f"{'higher' if direction == 'maximize' else 'lower'} is better). Next: {second.name}, {stated(second)}. ")
    if within_spread(best, second):
        return text + (f"The difference, {_fmt(gap)}, is within the spread of the seeds ({_fmt(reach)}: the error "
                       "bars overlap), so these runs do not show that the best is really better.")
    return text + (f"The difference, {_fmt(gap)}, is larger than the spread of the seeds ({_fmt(reach)}): "
                   "better by more than the spread.")


# --------------------------------------------------------------------------- plots

def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _positions(ax, xs: list[Any]) -> list[Any]:
    """Where values of a parameter go on the x axis: numbers as they are (log scale for float parameters spanning
    3x or more, such as learning rates), anything else as evenly spaced labels."""
    if xs and _numeric(xs):
        positive = [x for x in xs if x > 0]
        floats = any(isinstance(x, float) for x in xs)  # learning rates, weight decay: log; epochs, sizes: linear
        if positive and len(positive) == len(xs) and max(positive) / min(positive) >= (3 if floats else 20):
            ax.set_xscale("log")
        return xs
    labels = sorted({json.dumps(x, default=str) for x in xs})
    ax.set_xticks(range(len(labels)), labels)
    return [labels.index(json.dumps(x, default=str)) for x in xs]


def plot_metric_vs(rows: list[RunRow], param: str, *, metric: str, direction: str,
                   groups: list[SeedGroup] | None = None, ax=None, path=None):
    """The runs' objective against one parameter, the best starred. With `groups` (runs on several seeds), each
    configuration's mean with error bars (+- one standard deviation over its seeds), the best mean starred."""
    from helpers.plots import _axes, _legend_below, _save

    ax = _axes(ax)
    if groups:
        points = [(g.rows[0].params.get(param), g.mean, g.spread, "ok") for g in groups]
    else:
        points = [(r.params.get(param), r.objective(metric, direction), 0.0, r.status) for r in rows]
    points = [p for p in points if p[1] is not None]
    positions = _positions(ax, [p[0] for p in points])
    for (_, y, spread, status), pos in zip(points, positions):
        color = "tab:gray" if status == "pruned" else "tab:blue"
        if groups:
            ax.errorbar([pos], [y], yerr=[spread], fmt="o", color=color, capsize=6, zorder=3)
        else:
            ax.scatter([pos], [y], color=color, zorder=3)
    finished = [(pos, p[1]) for p, pos in zip(points, positions) if p[3] == "ok"]
    if finished:
        if groups:  # best mean first
            pos, y = finished[0]
        else:
            pos, y = (max if direction == "maximize" else min)(finished, key=lambda p: p[1])
        ax.scatter([pos], [y], marker="*", s=220, color="tab:orange", zorder=4,
                   label="best mean (error bars: ± sd over seeds)" if groups else "best run")
        _legend_below(ax)
    ax.set_xlabel(param)
    ax.set_ylabel(f"best validation {metric}" + (" (mean over seeds)" if groups else ""))
    ax.set_title(f"{metric} against {param}" + (" (grey: pruned)" if any(p[3] == "pruned" for p in points) else ""))
    ax.grid(alpha=0.3)
    return _save(ax, path)


def plot_validation_curves(rows: list[RunRow], *, metric: str, ax=None, path=None):
    """Every run's validation metric against the training step, on one axis."""
    from helpers.plots import _axes, _legend_below, _save

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


def plot_seed_spread(groups: list[SeedGroup], *, metric: str, ax=None, path=None):
    """Each configuration's mean over seeds with error bars (+- one standard deviation) and every seed's value:
    bars that overlap the best one's are differences the seeds cannot tell apart."""
    from helpers.plots import _axes, _legend_below, _save

    ax = _axes(ax, figsize=(max(5.0, 1.4 * len(groups) + 2), 4))
    for i, g in enumerate(groups):
        color = "tab:orange" if i == 0 else "tab:blue"
        ax.errorbar([i], [g.mean], yerr=[g.spread], fmt="o", color=color, capsize=8, markersize=8, zorder=3,
                    label="mean ± sd over seeds" if i == 0 else None)
        offsets = [(j - (len(g.scores) - 1) / 2) * 0.06 for j in range(len(g.scores))]
        ax.scatter([i + o for o in offsets], g.scores, color="tab:gray", s=14, zorder=2,
                   label="one seed" if i == 0 else None)
    best = groups[0]
    ax.axhspan(best.mean - best.spread, best.mean + best.spread, color="tab:orange", alpha=0.12,
               label="the best's spread")
    ax.set_xticks(range(len(groups)), [g.name for g in groups], rotation=15 if len(groups) > 3 else 0)
    ax.set_ylabel(f"best validation {metric}")
    ax.set_title(f"{metric} over seeds, by configuration (best first)")
    ax.grid(alpha=0.3, axis="y")
    _legend_below(ax)
    return _save(ax, path)


# --------------------------------------------------------------------------- the report

@dataclass
class _Table:
    """One table of the report: a heading, its header and cells, the starred row, a note under it."""

    heading: str
    header: list[str]
    cells: list[list[str]]
    best: int | None
    note: str


def _plots(rows: list[RunRow], swept: list[str], groups: list[SeedGroup], out: Path, *, metric: str,
           direction: str) -> list[tuple[str, Path]]:
    """The report's figures: the metric against each swept parameter (not SEED when runs are grouped by seed),
    the configurations' spread over seeds, and every run's validation curve."""
    import matplotlib.pyplot as plt

    plots = []
    for param in [p for p in swept if not (groups and p == SEED_PARAM)]:
        path = out / "plots" / f"metric_vs_{param}.png"
        plt.close(plot_metric_vs(rows, param, metric=metric, direction=direction, groups=groups, path=path).figure)
        plots.append((f"{metric} against {param}" + (" (mean ± sd over seeds)" if groups else ""), path))
    if groups:
        path = out / "plots" / "seeds.png"
        plt.close(plot_seed_spread(groups, metric=metric, path=path).figure)
        plots.append((f"{metric} over seeds, by configuration", path))
    path = out / "plots" / "validation_curves.png"
    plt.close(plot_validation_curves(rows, metric=metric, path=path).figure)
    plots.append((f"validation {metric} of every run", path))
    return plots


def _markdown(title: str, verdict: str, warnings: list[str], tables: list[_Table],
              plots: list[tuple[str, Path]]) -> str:
    lines = [f"# {title}", "", verdict, ""]
    lines += [line for w in warnings for line in (w, "")]
    for t in tables:
        lines += [f"## {t.heading}", ""] if len(tables) > 1 else []
        lines += ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in t.cells]
        lines += ["", t.note, ""]
    for caption, plot in plots:
        lines += [f"![{caption}](plots/{plot.name})", ""]
    return "\n".join(lines)


RUNS_NOTE = "Runs are ranked on the best validation value over their evaluations; test figures are for reading, not " \
            "for choosing."
SEEDS_NOTE = ("Configurations are ranked on the mean over seeds of each run's best validation value; the spread is the "
              "standard deviation over seeds. A difference no larger than the two spreads together (the error bars "
              "overlap) is within the spread: the seeds alone could make it. Test figures are mean ± sd, for reading.")


def report(run_dirs: list[str | Path] | list[RunRow], out_dir: str | Path, *, metric: str | None = None,
           direction: str | None = None, title: str = "Run comparison", notes: list[str] | None = None) -> Path:
    """Write `out_dir/report.md` and `report.html` comparing the runs; returns the Markdown path.

    Runs that differ only by SEED are grouped: the report then ranks configurations by the mean over seeds,
    shows each one's spread (error bars on the plots) and says when a difference is within the spread."""
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
    groups = seed_groups(rows, metric=metric, direction=direction)
    header, cells, best = table(rows, metric=metric, direction=direction, swept=swept)
    tables = [_Table("Every run", header, cells, None if groups else best, RUNS_NOTE)]
    if groups:
        tables.insert(0, _Table("Configurations over seeds", *seeds_table(groups, metric=metric), 0, SEEDS_NOTE))
        tables[1].cells = [[row[0].removeprefix("★ "), *row[1:]] for row in tables[1].cells]  # configurations rank
        verdict = seeds_verdict(groups, metric=metric, direction=direction)
    elif best is not None:
        verdict = (f"Best run: **{rows[best].name}** (best validation {metric} "
                   f"{_fmt(rows[best].objective(metric, direction))}, "
                   f"{'higher' if direction == 'maximize' else 'lower'} is better).")
    else:
        verdict = "No run finished with a validation metric."
    standins = [r.name for r in finished if (r.record.get("model") or {}).get("standin")
                or (r.record.get("data") or {}).get("standin")]
    warnings = [f"Offline stand-ins were used in {len(standins)} of {len(rows)} runs: their numbers show the code "
                "works, not how good the requested model is."] if standins else []
    plots = _plots(rows, swept, groups, out, metric=metric, direction=direction)
    md = out / "report.md"
    md.write_text(_markdown(title, verdict, warnings + list(notes or []), tables, plots), encoding="utf-8")
    (out / "report.html").write_text(_html(title, verdict, warnings, notes or [], tables, plots), encoding="utf-8")
    return md


def _html(title, verdict, warnings, notes, tables, plots) -> str:
    esc = html.escape
    verdict_html = esc(verdict).replace("**", "")
    extra = "".join(f"<p>{esc(n)}</p>" for n in notes)
    extra += "".join(f'<p class="standin">{esc(w)}</p>' for w in warnings)
    parts = []
    for t in tables:
        head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
        body = "".join("<tr" + (' class="best"' if i == t.best else "") + ">"
                       + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for i, row in enumerate(t.cells))
        parts.append((f"<h2>{esc(t.heading)}</h2>" if len(tables) > 1 else "")
                     + f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><p>{esc(t.note)}</p>")
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
{"".join(parts)}
{figures}
</body></html>
"""
