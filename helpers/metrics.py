"""Metrics computed with scikit-learn and rouge-score (never `evaluate.load`, which fetches code from the Hub);
calibration (ECE, temperature scaling) and error slices: can the confidence be trusted, where does it fail."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["calibrate", "check_against_majority", "classification_metrics_fn", "classification_report", "error_slices",
           "headline", "majority_baseline", "ordinal_metrics_fn", "rouge_per_example", "summary_metrics"]


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


def _ordinal_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
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
        return {**base(logits, labels), **_ordinal_metrics(labels, logits.argmax(-1))}
    return compute


# --------------------------------------------------------------------------- summarization

_ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_per_example(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True
                      ) -> list[dict[str, float]]:
    """ROUGE-1/2/L F1 (0-100) of each prediction against its reference (`rouge-score`, Porter stemming)."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; they must pair up.")
    scorer = rouge_scorer.RougeScorer(list(_ROUGE_KEYS), use_stemmer=use_stemmer)
    return [{k: 100 * s[k].fmeasure for k in _ROUGE_KEYS} for s in
            (scorer.score(ref, pred) for pred, ref in zip(predictions, references))]


def _rouge(predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over the examples, 0-100 (the scale papers report)."""
    per = rouge_per_example(predictions, references, use_stemmer=use_stemmer)
    if not per:
        raise ValueError("No predictions to score.")
    return {k: round(float(np.mean([p[k] for p in per])), 4) for k in _ROUGE_KEYS}


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]


def _repetition_rate(texts: Sequence[str], n: int = 3) -> float:
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
    return {**_rouge(predictions, references),
            "repeated_3grams": round(_repetition_rate(predictions, 3), 4),
            "mean_words": round(float(np.mean([len(p.split()) for p in predictions])), 2)}


# --------------------------------------------------------------------------- calibration

def _softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Probabilities from logits divided by `temperature` (1: the model's own; above 1 softer, below 1 sharper).

    Dividing every logit of a row by the same positive number never changes which one is largest, so the
    predicted labels, and accuracy, stay exactly the same; only the confidence moves."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _confidence_bins(confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The `n_bins + 1` equal-width edges over 0-1, and each row's bin index (bins are (lower, upper])."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return edges, np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)


def _reliability_bins(probabilities, labels, n_bins: int = 15) -> list[dict[str, float]]:
    """Rows grouped by their top probability into `n_bins` equal-width bins (0-1/15, ..., 14/15-1): each bin's
    range, mean confidence, accuracy and row count. Empty bins are left out. What a reliability diagram draws."""
    probs, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    confidence, correct = probs.max(-1), probs.argmax(-1) == labels
    edges, which = _confidence_bins(confidence, n_bins)
    bins = []
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": int(inside.sum()),
                         "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return bins


def _expected_calibration_error(probabilities, labels, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): the gap between confidence and accuracy in each confidence bin, weighted by the
    bin's share of rows. 0 means "90% sure" is right 90% of the time; 0.1 means off by 10 points on average."""
    bins = _reliability_bins(probabilities, labels, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins)) if total else 0.0


def _ece_noise_floor(probabilities, n_bins: int = 15, *, draws: int = 1000, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences would still score on this many rows: the
    median over `draws` label sets drawn from `probabilities` themselves. Bins of a few rows are noisy, so an
    ECE near this floor is as good as the split can show; only differences well above it mean something."""
    probs = np.asarray(probabilities, dtype=np.float64)
    rows = len(probs)
    if rows == 0:
        return 0.0
    confidence, predicted = probs.max(-1), probs.argmax(-1)
    in_bin = np.eye(n_bins)[_confidence_bins(confidence, n_bins)[1]]  # (rows, bins), one-hot
    counts = in_bin.sum(0)
    mean_confidence = (confidence @ in_bin) / np.maximum(counts, 1)
    rng, cumulative, eces = np.random.default_rng(seed), np.cumsum(probs, -1), []
    draws = min(draws, max(100, 20_000_000 // rows))  # a few seconds even on a 400,000-row test split
    chunk = max(1, 4_000_000 // (rows * probs.shape[-1]))  # bounded memory
    for start in range(0, draws, chunk):
        uniform = rng.random((min(chunk, draws - start), rows, 1))
        labels = (uniform > cumulative[None]).sum(-1).clip(max=probs.shape[-1] - 1)  # one label per row, per draw
        accuracy = ((labels == predicted).astype(np.float64) @ in_bin) / np.maximum(counts, 1)  # (draws, bins)
        eces.append((counts / rows * np.abs(accuracy - mean_confidence)).sum(-1))
    return float(np.median(np.concatenate(eces)))


def _negative_log_likelihood(probabilities, labels) -> float:
    """Mean -log p(true label): the loss temperature scaling minimizes; it punishes confident mistakes hardest."""
    probs = np.asarray(probabilities, dtype=np.float64)
    picked = probs[np.arange(len(probs)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


# The temperatures a fit may give and a saved model may carry (`hp.inference` refuses others in workbook.json): beyond
# them softmax(logits / T) is the same for every label (T huge) or overflows to NaN (T near 0), and a fit that
# lands at an end says the logits carry no usable confidence.
_TEMPERATURE_RANGE = (0.05, 20.0)


def _check_logits_and_labels(logits, labels, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits as (rows, classes) of finite numbers and one label id in 0..classes-1 per row; ValueError (one line,
    naming the split and the first bad row) otherwise: a NaN logit would make T NaN, a label past the last class
    an index error deep in torch."""
    x, y = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"Temperature scaling needs logits of shape (rows, classes) and one label per row; got "
                         f"{split} logits {tuple(x.shape)} and {len(y)} labels.")
    bad = np.flatnonzero(~np.isfinite(x).all(-1))
    if len(bad):
        rows = f"{len(bad)} row{'s' if len(bad) > 1 else ''}"
        raise ValueError(f"The {split} logits hold non-finite numbers (NaN or infinity) in {rows} (first: row "
                         f"{bad[0]}: {x[bad[0]].tolist()}); temperature scaling cannot fit them. Find where they come "
                         "from (a NaN loss, fp16 overflow: evaluate with PRECISION='fp32') and evaluate again.")
    numeric = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    ids = (y >= 0) & (y < x.shape[1]) & (np.mod(y, 1) == 0) if numeric else np.zeros(len(y), dtype=bool)  # NaN: no
    wrong = np.flatnonzero(~ids)
    if len(wrong):
        raise ValueError(f"The {split} labels must be class ids 0 to {x.shape[1] - 1} (the logits have {x.shape[1]} "
                         f"classes); row {wrong[0]} has {y.tolist()[wrong[0]]!r}. Pass the label ids the model was "
                         "trained with (hp.data.to_label_ids), not names or ids of another label set.")
    return x, y.astype(np.int64)


def _fit_temperature(logits, labels, *, max_iter: int = 100) -> float:
    """The one temperature T that makes softmax(logits / T) fit `labels` best (lowest NLL), by LBFGS.

    Fit it on the validation split, never on test. T > 1 softens an over-confident model (fine-tuned
    transformers usually are: Desai and Durrett 2020); T is searched as log T, so it stays positive, and kept
    within `_TEMPERATURE_RANGE`. A fit that fails (no finite answer) keeps 1.0, the model's own probabilities,
    and says so.
    """
    import torch

    logits, labels = _check_logits_and_labels(logits, labels, "validation")
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    try:
        optimizer.step(closure)
        fitted = float(log_t.detach().exp())
    except RuntimeError:  # e.g. a line search that met only non-finite losses
        fitted = float("nan")
    if not np.isfinite(fitted):
        print("warning: temperature scaling found no finite temperature on these logits (the fit diverged); keeping "
              "temperature 1.0, the model's own probabilities")
        return 1.0
    low, high = _TEMPERATURE_RANGE
    kept = float(min(max(fitted, low), high))
    if kept != fitted:
        print(f"note: the best temperature on these logits is {fitted:.3g}, beyond the range {low:g} to {high:g} a "
              f"saved model may carry; kept at {kept:g} (the logits carry little usable confidence)")
    return kept


@dataclass
class _Calibration:
    """Temperature scaling, fitted on validation and judged on test: ECE, NLL and accuracy before and after."""

    temperature: float
    n_bins: int
    validation_rows: int
    test_rows: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    accuracy_before: float
    accuracy_after: float
    ece_floor: float = 0.0  # what a perfectly calibrated model would score on this many test rows (median)

    def probabilities(self, logits) -> np.ndarray:
        """Calibrated probabilities: softmax(logits / temperature); ValueError for logits that give none (NaN)."""
        probabilities = _softmax(logits, self.temperature)
        if not np.isfinite(probabilities).all():
            raise ValueError("These logits hold non-finite numbers (NaN or infinity), so they have no probabilities; "
                             "find where they come from (a NaN loss, fp16 overflow: evaluate with PRECISION='fp32').")
        return probabilities

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        same = "unchanged" if self.accuracy_after == self.accuracy_before else "CHANGED"
        return (f"temperature {self.temperature:.3f} (fitted on {self.validation_rows} validation rows); on "
                f"{self.test_rows} test rows: ECE ({self.n_bins} bins) {self.ece_before:.4f} -> {self.ece_after:.4f} "
                f"(a perfectly calibrated model would score about {self.ece_floor:.4f} on these rows), "
                f"NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, accuracy {self.accuracy_before:.4f} -> "
                f"{self.accuracy_after:.4f} ({same})")


def calibrate(validation_logits, validation_labels, test_logits, test_labels, *, n_bins: int = 15) -> _Calibration:
    """Fit a temperature on the validation logits and report what it does on the test split. Non-finite logits and
    labels that are not class ids (0 to classes - 1) are refused in one line; a fit that fails keeps 1.0 (said)."""
    test_logits, labels = _check_logits_and_labels(test_logits, test_labels, "test")
    temperature = _fit_temperature(validation_logits, validation_labels)
    raw, scaled = _softmax(test_logits), _softmax(test_logits, temperature)
    return _Calibration(
        temperature=temperature, n_bins=n_bins, validation_rows=len(validation_labels), test_rows=len(labels),
        ece_before=_expected_calibration_error(raw, labels, n_bins),
        ece_after=_expected_calibration_error(scaled, labels, n_bins),
        nll_before=_negative_log_likelihood(raw, labels), nll_after=_negative_log_likelihood(scaled, labels),
        accuracy_before=float((raw.argmax(-1) == labels).mean()),
        accuracy_after=float((scaled.argmax(-1) == labels).mean()), ece_floor=_ece_noise_floor(scaled, n_bins))


# --------------------------------------------------------------------------- where the errors are

@dataclass
class _ErrorSlices:
    """Where a classifier fails: metrics by text length and by label, the most common confusions, and for
    each of those the examples it got wrong most confidently (`error_slices` builds it)."""

    accuracy: float  # over all rows, for comparison with each slice
    by_length: Any  # DataFrame: one row per length bucket (words): rows, accuracy, macro_f1, mean confidence
    by_label: Any  # DataFrame: one row per true label: rows, recall, precision, f1, mean confidence
    pairs: Any  # DataFrame: (true, predicted) confusions with the most mistakes, and their share of the label
    mistakes: Any  # DataFrame: the most confident wrong examples of each of those pairs

    def to_dict(self) -> dict[str, Any]:
        """The slices as plain records, for metrics.json (the example texts stay in the notebook)."""
        return {"accuracy": self.accuracy, **{name: getattr(self, name).round(4).to_dict(orient="records")
                                              for name in ("by_length", "by_label", "pairs")}}


def _length_buckets(words: np.ndarray, buckets: int):
    """Quantile buckets of word counts (about the same number of rows in each), labelled '5-12 words'."""
    import pandas as pd

    codes = np.asarray(pd.qcut(words, min(buckets, len(set(words.tolist()))), labels=False, duplicates="drop"),
                       dtype=int)
    names = {c: f"{words[codes == c].min()}-{words[codes == c].max()} words" for c in set(codes.tolist())}
    return codes, names


def _slice_row(labels, predictions, confidence, ids) -> dict[str, float]:
    from sklearn.metrics import f1_score

    return {"rows": int(len(labels)), "accuracy": float((labels == predictions).mean()),
            "macro_f1": float(f1_score(labels, predictions, labels=ids, average="macro", zero_division=0)),
            "confidence": float(confidence.mean())}


def _confusion_pairs(labels, predictions, label_names, top: int):
    import pandas as pd

    matrix = np.zeros((len(label_names), len(label_names)), dtype=int)
    np.add.at(matrix, (labels, predictions), 1)
    pairs = [{"true": label_names[t], "predicted": label_names[p], "mistakes": int(matrix[t, p]),
              "share_of_true": float(matrix[t, p] / max(matrix[t].sum(), 1))}
             for t in range(len(label_names)) for p in range(len(label_names)) if t != p and matrix[t, p]]
    pairs.sort(key=lambda r: -r["mistakes"])
    return pd.DataFrame(pairs[:top], columns=["true", "predicted", "mistakes", "share_of_true"])


def error_slices(texts: Sequence[str], labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str],
                 *, probabilities: np.ndarray | None = None, length_buckets: int = 4, top_pairs: int = 3,
                 examples_per_pair: int = 3) -> _ErrorSlices:
    """Slice the test results to see where the model fails (one accuracy hides it all): by text length in
    words (quantile buckets), by true label, the `top_pairs` confusions with the most mistakes, and for each
    the `examples_per_pair` wrong answers given with the highest confidence (from `probabilities`: pass the
    calibrated ones, which users see). Confident mistakes are often label noise worth reading."""
    import pandas as pd

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    names, ids = list(label_names), list(range(len(label_names)))
    confidence = (np.asarray(probabilities).max(-1) if probabilities is not None
                  else np.full(len(labels), np.nan))
    words = np.array([len(str(t).split()) for t in texts])
    codes, bucket_names = _length_buckets(words, length_buckets)
    by_length = pd.DataFrame([{"length": bucket_names[c], **_slice_row(labels[codes == c], predictions[codes == c],
                                                                        confidence[codes == c], ids)}
                              for c in sorted(bucket_names)])
    report = classification_report(labels, predictions, names)
    by_label = pd.DataFrame([{"label": n, "rows": report["per_class"][n]["support"],
                              "recall": report["per_class"][n]["recall"],
                              "precision": report["per_class"][n]["precision"], "f1": report["per_class"][n]["f1"],
                              "confidence": float(confidence[labels == i].mean()) if (labels == i).any() else np.nan}
                             for i, n in enumerate(names)])
    pairs = _confusion_pairs(labels, predictions, names, top_pairs)
    frame = pd.DataFrame({"label": [names[i] for i in labels], "predicted": [names[i] for i in predictions],
                          "confidence": confidence, "words": words, "text": [str(t) for t in texts]})
    wrong = [frame[(frame["label"] == r.true) & (frame["predicted"] == r.predicted)]
             .sort_values("confidence", ascending=False).head(examples_per_pair) for r in pairs.itertuples()]
    mistakes = (pd.concat(wrong, ignore_index=True) if wrong else frame.head(0))
    return _ErrorSlices(float((labels == predictions).mean()), by_length, by_label, pairs, mistakes)
