"""Plots. Each takes an optional `ax`, returns it, and writes a file only when given `path`.

No global style changes at import; matplotlib is imported when a plot is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["compare_bars", "confusion_matrix", "error_slices", "history", "label_distribution", "lr_find",
           "reliability_diagram", "rouge_comparison", "token_lengths", "tracked_runs"]


def _axes(ax, figsize=(6, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _save(ax, path: str | Path | None):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax


def _legend_below(ax, handles=None, labels=None) -> None:
    """The legend under the plot, never on top of the data (a single point or a bar can hide behind it)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(handles), 4),
              frameon=False, fontsize=8)


def label_distribution(labels: Sequence[Any], *, ax=None, title: str = "Label distribution", path=None):
    """Bar chart of label counts with percentages (class imbalance at a glance)."""
    from collections import Counter

    counts = sorted(Counter(labels).items(), key=lambda kv: str(kv[0]))
    ax = _axes(ax)
    names = [str(k) for k, _ in counts]
    values = [v for _, v in counts]
    bars = ax.bar(names, values, color="tab:blue")
    total = sum(values)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value} ({100 * value / total:.0f}%)", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=9)
    ax.set(title=title, ylabel="rows")
    ax.margins(y=0.15)
    return _save(ax, path)


def token_lengths(lengths: Sequence[int], *, max_length: int | None = None, ax=None,
                  title: str = "Tokens per example", path=None, limit_name: str = "MAX_LENGTH",
                  limit_effect: str = "truncated", context: int | None = None):
    """Histogram of token counts, with the chosen limit and the share it truncates marked
    (and, with `context`, the model's context window)."""
    import numpy as np

    lengths = np.asarray(lengths)
    ax = _axes(ax)
    ax.hist(lengths, bins=min(50, max(10, len(set(lengths.tolist())))), color="tab:gray")
    if max_length is not None:
        truncated = float((lengths > max_length).mean())
        ax.axvline(max_length, color="tab:red", linestyle="--",
                   label=f"{limit_name}={max_length} ({100 * truncated:.1f}% {limit_effect})")
    if context is not None:
        beyond = float((lengths > context).mean())
        ax.axvline(context, color="black", linestyle=":",
                   label=f"model context {context} ({100 * beyond:.1f}% longer)")
    if max_length is not None or context is not None:
        ax.legend(fontsize=8)
    ax.set(title=title, xlabel="tokens", ylabel="examples")
    return _save(ax, path)


def history(history, *, metric: str | None = None, ax=None, title: str = "Training", path=None):
    """Training loss per step (and evaluation loss), with `metric` on a second axis."""
    ax = _axes(ax, figsize=(7, 4))
    ax.plot(history.steps, history.train_loss, label="train loss", color="tab:blue", alpha=0.6)
    eval_steps = [e["step"] for e in history.evals]
    if history.evals:
        ax.plot(eval_steps, [e["loss"] for e in history.evals], "o-", label="eval loss", color="tab:orange")
    ax.set(title=title, xlabel="optimizer step", ylabel="loss")
    handles, labels = ax.get_legend_handles_labels()
    if metric and history.metric(metric):
        ax2 = ax.twinx()
        ax2.plot(eval_steps, history.metric(metric), "s-", color="tab:green", label=f"eval {metric}")
        ax2.set_ylabel(metric)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _legend_below(ax, handles, labels)
    return _save(ax, path)


def confusion_matrix(matrix, label_names: Sequence[str], *, ax=None, title: str = "Confusion matrix",
                     normalize: bool = False, path=None):
    """Rows: true label, columns: predicted label; counts (or row shares) written in each cell."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    shown = matrix / np.maximum(matrix.sum(1, keepdims=True), 1) if normalize else matrix
    ax = _axes(ax, figsize=(4.5, 4))
    ax.imshow(shown, cmap="Blues")
    ticks = range(len(label_names))
    ax.set_xticks(ticks, label_names, rotation=30, ha="right")
    ax.set_yticks(ticks, label_names)
    for i in ticks:
        for j in ticks:
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if shown[i, j] > shown.max() / 2 else "black")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return _save(ax, path)


def compare_bars(scores: dict[str, dict[str, float]], *, ax=None, title: str = "Before vs after", path=None):
    """Grouped bars, e.g. {"baseline": {"accuracy": .6}, "fine-tuned": {"accuracy": .9}}."""
    import numpy as np

    ax = _axes(ax)
    names = list(scores)
    keys = list(next(iter(scores.values())))
    width = 0.8 / len(names)
    x = np.arange(len(keys))
    for i, name in enumerate(names):
        values = [scores[name].get(k, 0.0) for k in keys]
        bars = ax.bar(x + i * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(x + width * (len(names) - 1) / 2, keys)
    ax.set(title=title)
    _legend_below(ax)
    ax.margins(y=0.15)
    return _save(ax, path)


def rouge_comparison(scores: dict[str, dict[str, float]], *, ax=None, title: str = "ROUGE (F1, 0-100)", path=None):
    """Grouped ROUGE-1/2/L bars, e.g. {"base model": {...}, "fine-tuned": {...}}."""
    keys = ("rouge1", "rouge2", "rougeL")
    ax = compare_bars({name: {k: float(s.get(k, 0.0)) for k in keys} for name, s in scores.items()},
                      ax=ax, title=title)
    ax.set(ylabel="F1 x 100")
    return _save(ax, path)


def reliability_diagram(labels, probabilities, *, n_bins: int = 15, ax=None, title: str = "Reliability diagram",
                        path=None):
    """Accuracy against confidence in `n_bins` confidence bins, one line per set of probabilities
    (`{"raw": p, "calibrated": q}`, or one array); points sized by rows, ECE in the legend. On the diagonal,
    "80% sure" is right 80% of the time; below it the model is over-confident."""
    from .metrics import _expected_calibration_error, _reliability_bins

    ax = _axes(ax, figsize=(5, 5))
    sets = probabilities if isinstance(probabilities, dict) else {"model": probabilities}
    ax.plot([0, 1], [0, 1], linestyle="--", color="tab:gray", label="perfectly calibrated")
    total = len(labels)
    for name, probs in sets.items():
        bins = _reliability_bins(probs, labels, n_bins)
        ece = _expected_calibration_error(probs, labels, n_bins)
        xs, ys = [b["confidence"] for b in bins], [b["accuracy"] for b in bins]
        line, = ax.plot(xs, ys, "-", alpha=0.7, label=f"{name} (ECE {ece:.3f})")
        ax.scatter(xs, ys, s=[20 + 300 * b["count"] / max(total, 1) for b in bins], color=line.get_color(), zorder=3)
    ax.set(title=title, xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(ax, path)


def _slice_bars(ax, names, values, notes, overall: float | None, *, title: str, ylabel: str,
                horizontal: bool = False):
    """Bars of one metric per slice, each with a note (its row count), and the overall value dashed."""
    bars = ax.barh(names, values, color="tab:red") if horizontal else ax.bar(names, values, color="tab:blue")
    for bar, note in zip(bars, notes):
        if horizontal:
            ax.annotate(note, (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        else:  # inside the bar's top, clear of the dashed overall line; above a bar too short to hold it
            inside = bar.get_height() > 0.2
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, -3 if inside else 2),
                        textcoords="offset points", ha="center", va="top" if inside else "bottom", fontsize=8,
                        color="white" if inside else "black")
    if overall is not None:
        ax.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"all rows {overall:.2f}")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_ylim(0, 1.18)
        ax.tick_params(axis="x", labelrotation=20)
    else:
        ax.margins(x=0.25)
    ax.set(title=title, **({"xlabel": ylabel} if horizontal else {"ylabel": ylabel}))
    return ax


def error_slices(slices, *, axes=None, path=None):
    """Three panels from `hp.metrics.error_slices(...)`: accuracy by text length, recall by true label (both
    against the overall accuracy) and the confusions with the most mistakes. `axes`: three axes, or None for a
    new figure; returns them."""
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    by_length, by_label, pairs = slices.by_length, slices.by_label, slices.pairs
    def notes(frame, metric):
        return [f"{v:.2f}\n(n={n})" for v, n in zip(frame[metric], frame["rows"])]

    _slice_bars(axes[0], list(by_length["length"]), list(by_length["accuracy"]), notes(by_length, "accuracy"),
                slices.accuracy, title="Accuracy by text length", ylabel="accuracy")
    _slice_bars(axes[1], list(by_label["label"]), list(by_label["recall"]), notes(by_label, "recall"),
                slices.accuracy, title="Recall by true label", ylabel="share of the label's rows right")
    rows = list(pairs.itertuples())[::-1]  # the most mistakes on top
    _slice_bars(axes[2], [f"{r.true} -> {r.predicted}" for r in rows], [r.mistakes for r in rows],
                [f"{r.mistakes} ({r.share_of_true:.0%} of {r.true})" for r in rows], None,
                title="Most common confusions (true -> predicted)", ylabel="mistakes", horizontal=True)
    if not rows:
        axes[2].set_title("No mistakes on this split")
    _save(axes[0], path)
    return axes


def lr_find(result, *, ax=None, title: str = "Learning-rate range test", path=None):
    """The range test's loss against the learning rate (log scale): each step's loss, the smoothed curve, the
    suggested rate (and why) and, when known, the rate the run is set to. From `hp.find_lr(...)`."""
    ax = _axes(ax, figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed")
    rule = "steepest descent" if result.suggested_lr == result.steepest_lr else "a tenth of the minimum"
    ax.axvline(result.suggested_lr, color="tab:red", linestyle="--",
               label=f"suggested {result.suggested_lr:.1e} ({rule})")
    lowest = min(range(len(result.smoothed)), key=result.smoothed.__getitem__)
    ax.plot([result.lrs[lowest]], [result.smoothed[lowest]], "o", color="black", label="lowest smoothed loss")
    if result.current_lr is not None:
        ax.axvline(result.current_lr, color="tab:gray", linestyle=":", label=f"LR now {result.current_lr:g}")
    top = max(result.smoothed[0], min(result.smoothed)) * 1.5  # the divergence at the end would flatten the rest
    low = min(result.losses)
    ax.set(xscale="log", title=title, xlabel="learning rate (log scale)", ylabel="training loss",
           ylim=(low * 0.9 if low > 0 else None, top))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False, fontsize=8)
    return _save(ax, path)


def tracked_runs(runs, *, param: str, metric: str, ax=None, path=None):
    """Tracked runs (`run.tracked_runs()`, `run` the notebook's Run) as points: `metric` against parameter `param`
    (MLflow keeps parameters as text; numbers are read back, a float range spanning 3x is drawn in log)."""
    import pandas as pd

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
