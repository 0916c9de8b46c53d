"""Use a saved model folder: load it by the task recorded in it, then predict or summarize.

    clf = hp.inference.load("runs/01_finbert_financial_sentiment/model")
    clf.predict(["Operating profit rose to EUR 13.1 mn"])  # [{"label": "positive", "score": .97, ...}]

    summ = hp.inference.load("runs/04_pythia_meta_review_summarization/model")
    summ.summarize("Review 1 ... <sep> Review 2 ...")  # {"summary": "...", "truncated": False}
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

    task = "text-classification"

    @property
    def max_input_tokens(self) -> int:
        return self.max_length

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


SUMMARIZATION_TASKS = ("summarization-causal", "summarization-seq2seq")


@dataclass
class Summarizer:
    """A fine-tuned summarizer (causal LM with a prompt template, or seq2seq with a prefix).

    Generation settings come from the folder's `workbook.json` and can be overridden per call.
    """

    model: Any
    tokenizer: Any
    info: dict[str, Any]
    device: torch.device
    precision: str = "fp32"

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def max_input_tokens(self) -> int:
        """Tokens of input text the model reads; longer texts are cut (and say so)."""
        if self.task == "summarization-causal":
            return int(self.info["max_length"]) - int(self.settings().max_new_tokens)
        return int(self.info.get("max_source_length", 512))

    def settings(self, **overrides):
        from .textgen import GenerationSettings

        known = GenerationSettings.__dataclass_fields__
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"Unknown generation settings {unknown}; known: {sorted(known)}.")
        saved = {k: v for k, v in (self.info.get("generation") or {}).items() if k in known}
        return GenerationSettings(**{**saved, **overrides})

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids the model reads for each text, and whether the text had to be cut."""
        from . import textgen

        cleaned = [textgen.normalize_source(t, sep_marker=self.info.get("sep_marker"),
                                            sep_as=self.info.get("sep_as", "\n\n"), clean=self.info.get("clean", False))
                   for t in texts]
        if self.task == "summarization-causal":
            fmt = textgen.PromptFormat(self.info.get("prompt_template", textgen.DEFAULT_PROMPT),
                                       self.info.get("target_prefix", " "))
            budget = int(self.info["max_length"]) - int(self.settings().max_new_tokens)
            return textgen.encode_prompts(self.tokenizer, cleaned, fmt, budget)
        limit = int(self.info.get("max_source_length", 512))
        ids = self.tokenizer([self.info.get("prefix", "") + t for t in cleaned])["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [x if len(x) <= limit else x[: limit - 1] + [eos] for x in ids], [len(x) > limit for x in ids]

    def summarize(self, texts: str | list[str], *, batch_size: int = 8, **overrides) -> Any:
        """{"summary", "truncated"} for one text, or a list of them for a list of texts."""
        from . import textgen

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        ids, truncated = self.encode(texts)
        summaries = textgen.generate(self.model, self.tokenizer, ids, settings=self.settings(**overrides),
                                     batch_size=batch_size, precision=self.precision, device=self.device,
                                     progress=False)
        results = [{"summary": s, "truncated": bool(t)} for s, t in zip(summaries, truncated)]
        return results[0] if single else results


def _load_generative(folder: Path, task: str, info: dict[str, Any]):
    """A causal or seq2seq LM from a full folder, or base model + LoRA adapter from an adapter folder."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto = AutoModelForCausalLM if task == "summarization-causal" else AutoModelForSeq2SeqLM
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        adapter = json.loads((folder / "adapter_config.json").read_text())
        base = info.get("base_model_path") or adapter.get("base_model_name_or_path")
        if not base:
            raise FileNotFoundError(f"{folder} holds a LoRA adapter but names no base model; set "
                                    "base_model_path in its workbook.json.")
        model = PeftModel.from_pretrained(auto.from_pretrained(base), folder)
    else:
        model = auto.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load(path: str | Path, *, device: str | torch.device | None = None, precision: str = "fp32"):
    """Load a saved folder (OUTPUT_DIR or OUTPUT_DIR/model) for the task it records:
    a `TextClassifier` or a `Summarizer`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _model_folder(path)
    info = read_info(folder)
    device = torch.device(device) if device is not None else dev.best_device()
    task = info.get("task", "text-classification")
    if task in SUMMARIZATION_TASKS:
        model, tokenizer = _load_generative(folder, task, info)
        return Summarizer(model=model.to(device).eval(), tokenizer=tokenizer, info=info, device=device,
                          precision=precision)
    if task != "text-classification":
        raise ValueError(f"{folder} holds a {task!r} model, which this workbook cannot load; "
                         f"known tasks: text-classification, {', '.join(SUMMARIZATION_TASKS)}.")
    model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return TextClassifier(model=model, tokenizer=tokenizer, info=info, device=device, precision=precision)
