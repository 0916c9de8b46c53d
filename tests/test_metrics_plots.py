"""Metrics on known inputs; plots take an ax, return it, and write files only when asked."""

from __future__ import annotations

import numpy as np
import pytest

import helpers as hp
from helpers.training import History


def test_classification_report_on_known_predictions():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    report = hp.metrics.classification_report(labels, preds, ["neg", "neu", "pos"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["neu"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                          "f1": pytest.approx(0.8), "support": 2}
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    f1s = [report["per_class"][k]["f1"] for k in ("neg", "neu", "pos")]
    assert report["macro_f1"] == pytest.approx(np.mean(f1s))
    assert hp.metrics.headline(report) == {"accuracy": 0.6667, "macro_f1": round(report["macro_f1"], 4)}


def test_roc_auc_for_binary_tasks_and_majority_baseline():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    report = hp.metrics.classification_report([0, 1, 0, 1], probs.argmax(-1), ["neg", "pos"], probabilities=probs)
    assert report["roc_auc"] == 1.0
    baseline = hp.metrics.majority_baseline(["a", "a", "b"], ["a", "b", "b", "a"])
    assert baseline == {"majority_label": "a", "accuracy": 0.5}


def _history():
    h = History(steps=[1, 2, 3, 4], train_loss=[1.0, 0.8, 0.6, 0.5])
    h.evals = [{"step": 2, "loss": 0.9, "accuracy": 0.6}, {"step": 4, "loss": 0.7, "accuracy": 0.8}]
    return h


@pytest.mark.parametrize("draw", [
    lambda ax, path: hp.plots.label_distribution(["a", "b", "b"], ax=ax, path=path),
    lambda ax, path: hp.plots.token_lengths([3, 10, 50, 120], max_length=64, ax=ax, path=path),
    lambda ax, path: hp.plots.history(_history(), metric="accuracy", ax=ax, path=path),
    lambda ax, path: hp.plots.confusion_matrix([[3, 1], [0, 4]], ["neg", "pos"], ax=ax, path=path),
    lambda ax, path: hp.plots.compare_bars({"before": {"acc": 0.5}, "after": {"acc": 0.9}}, ax=ax, path=path),
])
def test_plots_use_the_given_ax_and_save_only_with_a_path(tmp_path, monkeypatch, draw):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    fig, ax = plt.subplots()
    assert draw(ax, None) is ax
    assert list(tmp_path.iterdir()) == []  # no side-effect files
    target = tmp_path / "sub" / "plot.png"
    draw(None, target)
    assert target.exists() and target.stat().st_size > 1000
    plt.close("all")


def test_token_length_plot_marks_the_truncated_share():
    ax = hp.plots.token_lengths([10, 20, 30, 100], max_length=50)
    assert "25.0% truncated" in ax.get_legend().get_texts()[0].get_text()
