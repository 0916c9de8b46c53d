"""Metrics computed with scikit-learn and rouge-score (never `evaluate.load`, which fetches code from the Hub)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def classification_report(labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str],
                          probabilities: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0)
    report: dict[str, Any] = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(label_names)},
        "confusion_matrix": confusion_matrix(labels, predictions, labels=ids).tolist(),
        "label_names": list(label_names),
    }
    if probabilities is not None and len(label_names) == 2 and len(set(labels.tolist())) == 2:
        from sklearn.metrics import roc_auc_score

        report["roc_auc"] = float(roc_auc_score(labels, probabilities[:, 1]))
    return report


def headline(report: dict[str, Any], keys: Sequence[str] = ("accuracy", "macro_f1")) -> dict[str, float]:
    """The scalar metrics of a report (what `metrics.json` and the summary table show)."""
    return {k: round(float(report[k]), 4) for k in keys if k in report}


def classification_metrics_fn(label_names: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """`compute_metrics(logits, labels)` for the training loop: accuracy and macro-F1."""
    def compute(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        report = classification_report(labels, logits.argmax(-1), label_names)
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    return compute


def majority_baseline(train_labels: Sequence[Any], test_labels: Sequence[Any]) -> dict[str, float]:
    """Accuracy of always predicting the most common training label: the bar any model must clear."""
    from collections import Counter

    majority = Counter(train_labels).most_common(1)[0][0]
    test = list(test_labels)
    return {"majority_label": majority, "accuracy": sum(t == majority for t in test) / max(len(test), 1)}


def check_against_majority(accuracy: float, majority: dict[str, Any]) -> str:
    """One line comparing a model's test accuracy with always answering the most common label; a model that
    does not beat it has learned nothing beyond the class balance, and the line says so loudly."""
    bar, label = float(majority["accuracy"]), majority["majority_label"]
    if accuracy <= bar:
        return (f"WARNING: test accuracy {accuracy:.3f} does not beat always answering {label!r} ({bar:.3f}): "
                "the model has learned nothing beyond the class balance. Train longer, check the labels, or "
                "use more data.")
    return f"test accuracy {accuracy:.3f} vs {bar:.3f} for always answering {label!r} (the majority-class baseline)"


def ordinal_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """For ordered classes (stars): off-by-one accuracy and mean absolute error in classes.

    Predicting 4 stars for a 5-star review is a smaller mistake than predicting 1; accuracy
    counts both the same, these two metrics do not.
    """
    diff = np.abs(np.asarray(labels) - np.asarray(predictions))
    return {"off_by_one_accuracy": float((diff <= 1).mean()), "mae_stars": float(diff.mean())}


def ordinal_metrics_fn(label_names: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """`compute_metrics` for the loop on ordered classes: accuracy, macro-F1, off-by-one, MAE."""
    base = classification_metrics_fn(label_names)

    def compute(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {**base(logits, labels), **ordinal_metrics(labels, logits.argmax(-1))}
    return compute


# --------------------------------------------------------------------------- summarization

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_per_example(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True
                      ) -> list[dict[str, float]]:
    """ROUGE-1/2/L F1 (0-100) of each prediction against its reference (`rouge-score`, Porter stemming)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must pair up.")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    return [{k: 100 * s[k].fmeasure for k in ROUGE_KEYS} for s in
            (scorer.score(ref, pred) for pred, ref in zip(predictions, references))]


def rouge(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over the examples, 0-100 (the scale papers report)."""
    per = rouge_per_example(predictions, references, use_stemmer=use_stemmer)
    if not per:
        raise ValueError("No predictions to score.")
    return {k: round(float(np.mean([p[k] for p in per])), 4) for k in ROUGE_KEYS}


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def repetition_rate(texts: Sequence[str], n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same text, pooled over texts (0-1).

    0 means no n-gram is said twice; a model stuck in a loop ("the paper is the paper is ...")
    scores close to 1.
    """
    total = repeated = 0
    for text in texts:
        grams = _ngrams(text, n)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else 0.0


def summary_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L (0-100), the share of repeated 3-grams and the mean length in words."""
    return {**rouge(predictions, references),
            "repeated_3grams": round(repetition_rate(predictions, 3), 4),
            "mean_words": round(float(np.mean([len(p.split()) for p in predictions])), 2)}
