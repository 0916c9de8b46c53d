"""Use a saved model folder: load it by the task recorded in it, then predict.

    clf = hp.inference.load("runs/01_finbert_financial_sentiment/model")
    clf.predict(["Operating profit rose to EUR 13.1 mn"])  # [{"label": "positive", "score": .97, ...}]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import device as dev
from .artifacts import WORKBOOK_FILE


def _model_folder(path: str | Path) -> Path:
    path = Path(path)
    if (path / "model" / "config.json").exists() or (path / "model" / "adapter_config.json").exists():
        return path / "model"
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return path
    raise FileNotFoundError(f"No saved model in {path}; pass a notebook's OUTPUT_DIR or its model/ folder.")


def read_info(folder: str | Path) -> dict[str, Any]:
    file = Path(folder) / WORKBOOK_FILE
    return json.loads(file.read_text()) if file.exists() else {"task": "text-classification"}


@dataclass
class TextClassifier:
    """A fine-tuned classifier: `predict(texts)` gives label, score and all probabilities."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]
    device: torch.device
    precision: str = "fp32"

    @property
    def labels(self) -> list[str]:
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    @property
    def max_length(self) -> int:
        return int(self.info.get("max_length") or min(512, getattr(self.tokenizer, "model_max_length", 512)))

    @torch.inference_mode()
    def predict(self, texts: str | list[str], *, batch_size: int = 32) -> list[dict[str, Any]]:
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start: start + batch_size]
            enc = self.tokenizer(chunk, truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="pt").to(self.device)
            with dev.autocast(self.device, self.precision):
                logits = self.model(**enc).logits.float()
            probs = logits.softmax(-1).cpu()
            lengths = enc["attention_mask"].sum(-1).tolist()
            for row, n_tokens in zip(probs, lengths):
                best = int(row.argmax())
                results.append({"label": self.labels[best], "score": float(row[best]),
                                "probabilities": {name: float(p) for name, p in zip(self.labels, row)},
                                "truncated": n_tokens >= self.max_length})
        return results[0] if single else results


def load(path: str | Path, *, device: str | torch.device | None = None, precision: str = "fp32"):
    """Load a saved folder (OUTPUT_DIR or OUTPUT_DIR/model) for the task it records."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _model_folder(path)
    info = read_info(folder)
    device = torch.device(device) if device is not None else dev.best_device()
    if info.get("task", "text-classification") != "text-classification":
        raise ValueError(f"{folder} holds a {info['task']!r} model; this helper loads text classifiers.")
    model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return TextClassifier(model=model, tokenizer=tokenizer, info=info, device=device, precision=precision)
