"""What a saved classifier answers, whatever runs it: `hp.inference.TextClassifier` (torch) and the tool's
`workbook.onnx.OnnxClassifier` (ONNX Runtime) share it, so their answers are computed alike. Reading a saved
folder's workbook.json lives here too. No torch in this module: the serving image for ONNX folders has none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import _TEMPERATURE_RANGE
from .models import _FolderError

WORKBOOK_FILE = "workbook.json"


def model_folder(path: str | Path) -> Path:
    """The model folder of a notebook's OUTPUT_DIR (its model/), or the folder itself when it holds a model."""
    path = Path(path)
    if (path / "model" / "config.json").exists() or (path / "model" / "adapter_config.json").exists():
        return path / "model"
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return path
    raise FileNotFoundError(f"No saved model in {path} (no config.json or adapter_config.json); pass a notebook's "
                            "OUTPUT_DIR, its model/ folder, or a folder written by save_pretrained.")


def read_workbook_json(folder: str | Path) -> dict[str, Any] | None:
    """The folder's `workbook.json`, checked where it is read (a JSON object; a usable temperature); None when the
    folder has none (a folder the workbook did not write)."""
    file = Path(folder) / WORKBOOK_FILE
    if not file.exists():
        return None
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        where = f"line {err.lineno}, column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else err
        raise _FolderError(f"{file} is not valid JSON ({where}); restore the workbook.json saved with the model, or "
                           "delete it to load the folder with the defaults of the task its config.json names."
                           ) from None
    if not isinstance(info, dict):
        raise _FolderError(f"{file} holds a JSON {type(info).__name__}, not an object; restore the workbook.json "
                           "saved with the model (an object such as {\"task\": \"text-classification\", ...}), or "
                           "delete it to load the folder with the defaults of the task its config.json names.")
    problem = temperature_problem(info.get("temperature"))
    if problem:
        raise _FolderError(f"{file}: {problem}")
    return info


def shown(value: Any) -> str:
    """A value as the client wrote it in JSON (null, true, "10"), cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def temperature_problem(value: Any) -> str | None:
    """Why a saved calibration temperature cannot be used, or None (also for none saved). Outside the range
    `calibrate` fits in, softmax(logits / T) gives NaN (T near 0) or the same probability for every label (T huge)."""
    if value is None:
        return None
    low, high = _TEMPERATURE_RANGE
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and low <= value <= high:  # NaN and infinity fail the comparison; a 400-digit int does not overflow
        return None
    return (f"temperature {shown(value)} is not a usable calibration temperature (a number from {low:g} to {high:g}); "
            "fit it again with hp.metrics.calibrate on the validation split, or remove \"temperature\" to answer "
            "with the model's own probabilities.")


def parse_pair_text(text: str) -> tuple[str, str] | None:
    """'first ||| second' or 'first<TAB>second' (how a pair is typed in a box or a shell) -> (first, second);
    None when there is no separator or a side is empty."""
    for sep in ("|||", "\t"):
        if sep in text:
            first, second = (part.strip() for part in text.split(sep, 1))
            return (first, second) if first and second else None
    return None


def split_pair(item) -> tuple[str, str | None]:
    """(text, text_pair or None) from a text, a `(text, text_pair)` tuple or a dict with those keys."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        text, pair = item.get("text", item.get("sentence")), item.get("text_pair")
    elif isinstance(item, (tuple, list)) and 1 <= len(item) <= 2:
        text, pair = item[0], (item[1] if len(item) == 2 else None)
    else:
        raise TypeError(f"expected a text, a (text, text_pair) tuple or a dict, got {type(item).__name__}")
    if not isinstance(text, str) or not (pair is None or isinstance(pair, str)):
        raise TypeError("text and text_pair must be strings")
    return text, pair


def padding_bounded_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.25) -> list[list[int]]:
    """Batches of rows of similar length for inference: sorted by length, and a batch is closed when
    one more row would make padding more than `max_padding` of its tokens (or it has `batch_size` rows).

    On a CPU an encoder's cost is per token, padding included, and a batch gains little per row, so
    padding a 40-token text to a 200-token neighbour would cost more than batching saves.
    """
    order = np.argsort(np.asarray(lengths), kind="stable").tolist()
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        n = max(1, int(lengths[i]))
        if current and (len(current) == batch_size or n * (len(current) + 1) > (1 + max_padding) * (real + n)):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        batches.append(current)
    return batches


class ClassifierAnswers:
    """`predict(texts)`: label, score and all probabilities for each input, calibrated with the saved temperature.
    A runtime gives `info` (workbook.json), `labels`, `max_length`, `_encode(texts, pairs)` (token ids of each
    input cut to max_length, and which were cut) and `_logits(rows)` (one padded batch's logits, as numpy)."""

    info: dict[str, Any]
    task = "text-classification"
    runtime = "torch"

    @property
    def max_input_tokens(self) -> int:
        return self.max_length

    @property
    def takes_pairs(self) -> bool:
        """True for a sentence-pair model (trained on `(text, text_pair)`)."""
        return bool(self.info.get("text_pair"))

    @property
    def temperature(self) -> float:
        """The temperature fitted on the validation split and saved in `workbook.json` (1.0: none saved).
        Probabilities are softmax(logits / temperature), so "93%" means right about 93% of the time."""
        value = self.info.get("temperature")
        problem = temperature_problem(value)  # checked where workbook.json is read; again for an info made by hand
        if problem:
            raise _FolderError(f"{WORKBOOK_FILE}: {problem}")
        return 1.0 if value is None else float(value)

    def predict(self, texts, *, batch_size: int = 32, raw: bool = False) -> Any:
        """Label, score and all probabilities for each input: calibrated, with the saved temperature.

        An input is a text, a `(text, text_pair)` tuple or a `{"text": ..., "text_pair": ...}` dict
        (sentence-pair models read both through the tokenizer's pair encoding). One input gives one
        result; a list of inputs gives a list of results. `raw=True` adds `raw_probabilities`, the model's
        own softmax before temperature scaling (the label is the same either way).
        """
        single = isinstance(texts, (str, dict)) or (isinstance(texts, tuple) and len(texts) == 2
                                                    and all(isinstance(t, str) for t in texts))
        items = [split_pair(t) for t in ([texts] if single else list(texts))]
        results: list[dict[str, Any] | None] = [None] * len(items)
        for with_pair in (False, True):  # a tokenizer call takes pairs for all its texts or for none
            index = [i for i, (_, pair) in enumerate(items) if (pair is not None) == with_pair]
            if not index:
                continue
            firsts = [items[i][0] for i in index]
            pairs = [items[i][1] for i in index] if with_pair else None
            for i, result in zip(index, self._predict_all(firsts, pairs, batch_size)):
                results[i] = result if raw else {k: v for k, v in result.items() if k != "raw_probabilities"}
        return results[0] if single else results

    def _predict_all(self, texts: list[str], pairs: list[str] | None, batch_size: int) -> list[dict[str, Any]]:
        rows, cut = self._encode(texts, pairs)
        out: list[dict[str, Any] | None] = [None] * len(rows)
        for batch in padding_bounded_batches([len(r["input_ids"]) for r in rows], batch_size):
            logits = np.asarray(self._logits([rows[i] for i in batch]), dtype=np.float64)
            scaled = logits / self.temperature
            if not (np.isfinite(logits).all() and np.isfinite(scaled).all()):  # NaN would be invalid JSON
                raise RuntimeError(f"the model's outputs are not finite numbers (NaN or infinity)"
                                   f"{self._precision_note()}, so it has no probabilities to give; if that does not "
                                   "help, its weights are damaged: save the model again.")
            for i, row, raw in zip(batch, _softmax(scaled), _softmax(logits)):
                best = int(row.argmax())
                out[i] = {"label": self.labels[best], "score": float(row[best]),
                          "probabilities": {name: float(p) for name, p in zip(self.labels, row)},
                          "truncated": cut[i], "raw_probabilities": {n: float(p) for n, p in zip(self.labels, raw)}}
        return out

    def _precision_note(self) -> str:
        return ""


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)
