"""Error slices: metrics by text length and by label, the confusions with the most mistakes, and the most
confident wrong examples of each, as the notebooks show them."""

from __future__ import annotations

import json

import numpy as np
import pytest

import helpers as hp
from helpers import metrics

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture
def results():
    """12 short texts, all right; 12 long ones, half wrong: 4 negative read as positive (the most common
    confusion), 2 neutral as negative. Confidence rises with the row number."""
    texts = [f"short text {i}" for i in range(12)] + [" ".join(["long"] * 30 + [str(i)]) for i in range(12)]
    labels = np.array([0, 1, 2] * 8)
    predictions = labels.copy()
    wrong_neg = [i for i in range(12, 24) if labels[i] == 0]  # 4 rows
    wrong_neu = [i for i in range(12, 24) if labels[i] == 1][:2]
    predictions[wrong_neg], predictions[wrong_neu] = 2, 0
    probs = np.full((24, 3), 0.1)
    probs[np.arange(24), predictions] = np.linspace(0.5, 0.8, 24)
    return texts, labels, predictions, probs / probs.sum(-1, keepdims=True)


def test_slices_by_length_and_label_and_the_most_common_confusions(results):
    texts, labels, predictions, probs = results
    s = metrics.error_slices(texts, labels, predictions, LABELS, probabilities=probs, length_buckets=2)
    assert s.accuracy == pytest.approx(18 / 24)
    assert s.by_length["length"].tolist() == ["3-3 words", "31-31 words"]
    assert s.by_length["accuracy"].tolist() == [1.0, 0.5] and s.by_length["rows"].tolist() == [12, 12]
    by_label = s.by_label.set_index("label")
    assert by_label.loc["negative", "recall"] == pytest.approx(4 / 8) and by_label.loc["positive", "recall"] == 1
    assert by_label.loc["positive", "precision"] == pytest.approx(8 / 12)
    assert s.pairs[["true", "predicted", "mistakes"]].values.tolist() == [["negative", "positive", 4],
                                                                         ["neutral", "negative", 2]]
    assert s.pairs["share_of_true"].tolist() == [0.5, 0.25]


def test_the_most_confident_mistakes_of_each_confusion_come_first(results):
    texts, labels, predictions, probs = results
    s = metrics.error_slices(texts, labels, predictions, LABELS, probabilities=probs, examples_per_pair=3)
    assert list(s.mistakes.columns) == ["label", "predicted", "confidence", "words", "text"]
    first = s.mistakes[s.mistakes["label"] == "negative"]
    assert len(first) == 3 and (first["predicted"] == "positive").all()
    assert first["confidence"].is_monotonic_decreasing and first["text"].iloc[0].endswith(" 9")  # row 21: the last
    assert len(s.mistakes) == 3 + 2
    record = json.loads(json.dumps(s.to_dict()))  # plain JSON for metrics.json, no texts
    assert set(record) == {"accuracy", "by_length", "by_label", "pairs"} and record["pairs"][0]["mistakes"] == 4


def test_no_mistakes_and_one_length_still_slice():
    s = metrics.error_slices(["a b", "c d"], [0, 1], [0, 1], ["x", "y"])
    assert s.accuracy == 1.0 and len(s.by_length) == 1 and s.pairs.empty and s.mistakes.empty
    axes = hp.plots.error_slices(s)
    assert axes[2].get_title() == "No mistakes on this split"


def test_the_slices_plot_has_three_panels_and_saves_only_when_asked(results, tmp_path):
    texts, labels, predictions, probs = results
    s = metrics.error_slices(texts, labels, predictions, LABELS, probabilities=probs)
    axes = hp.plots.error_slices(s, path=tmp_path / "plots" / "slices.png")
    assert [ax.get_title() for ax in axes] == ["Accuracy by text length", "Recall by true label",
                                               "Most common confusions (true -> predicted)"]
    assert [t.get_text() for t in axes[2].get_yticklabels()] == ["neutral -> negative", "negative -> positive"]
    assert (tmp_path / "plots" / "slices.png").stat().st_size > 5000
    assert not list(tmp_path.glob("*.png"))
