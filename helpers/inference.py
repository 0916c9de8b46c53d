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
from .batching import PadCollator, padding_bounded_batches
from .models import quiet_peft


def _model_folder(path: str | Path) -> Path:
    path = Path(path)
    if (path / "model" / "config.json").exists() or (path / "model" / "adapter_config.json").exists():
        return path / "model"
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return path
    raise FileNotFoundError(f"No saved model in {path} (no config.json or adapter_config.json); pass a notebook's "
                            "OUTPUT_DIR, its model/ folder, or a folder written by save_pretrained.")


class FolderError(ValueError):
    """A folder this workbook cannot serve: one line saying what it holds and what to do."""


def read_info(folder: str | Path) -> dict[str, Any]:
    """The folder's `workbook.json`; for a folder the workbook did not write, what its own files say."""
    file = Path(folder) / WORKBOOK_FILE
    return json.loads(file.read_text()) if file.exists() else infer_info(folder)


_ADAPTER_TASKS = {"SEQ_CLS": "text-classification", "CAUSAL_LM": "summarization-causal",
                  "SEQ_2_SEQ_LM": "summarization-seq2seq"}


def infer_info(folder: str | Path) -> dict[str, Any]:
    """Task and settings of a plain `save_pretrained` (or peft adapter) folder, from its config files.

    `config.architectures` decides (…ForSequenceClassification, …ForCausalLM, …ForConditionalGeneration);
    an adapter's `adapter_config.json` gives its `task_type` and base model. Anything else is refused.
    """
    folder = Path(folder)
    adapter_file = folder / "adapter_config.json"
    if adapter_file.exists():
        adapter = json.loads(adapter_file.read_text())
        task = _ADAPTER_TASKS.get(str(adapter.get("task_type")))
        if task is None:
            raise FolderError(f"{folder} holds a peft adapter for task_type {adapter.get('task_type')!r}; the workbook "
                              f"serves {', '.join(_ADAPTER_TASKS)} adapters.")
        info = {"task": task, "base_model_path": adapter.get("base_model_name_or_path")}
        config_dir = info["base_model_path"]
    else:
        info, config_dir = {}, folder
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config_dir) if config_dir and Path(str(config_dir)).is_dir() else None
    except (OSError, ValueError):
        config = None
    if "task" not in info:
        if config is None:
            raise FolderError(f"{folder} has no readable config.json; point at a folder written by save_pretrained.")
        arch = " ".join(config.architectures or [])
        if "ForSequenceClassification" in arch:
            info["task"] = "text-classification"
        elif "ForCausalLM" in arch:
            info["task"] = "summarization-causal"
        elif "ForConditionalGeneration" in arch and getattr(config, "is_encoder_decoder", False):
            info["task"] = "summarization-seq2seq"
        else:
            raise FolderError(f"{folder} holds a {arch or config.model_type} model with no task head the workbook "
                              "serves (a sequence classifier, a causal LM or a seq2seq LM).")
    from .models import model_max_length
    from .textgen import DEFAULT_PROMPT

    limit = model_max_length(config) if config is not None else 512
    if info["task"] == "summarization-causal":
        info.update(max_length=min(limit, 2048), prompt_template=DEFAULT_PROMPT, generation={"max_new_tokens": 128})
    elif info["task"] == "summarization-seq2seq":
        is_t5 = getattr(config, "model_type", "") in ("t5", "mt5", "umt5")
        info.update(prefix="summarize: " if is_t5 else "", max_source_length=min(limit, 512),
                    generation={"max_new_tokens": 64})
    else:
        info["max_length"] = min(limit, 512)
    info["inferred"] = True  # no workbook.json: settings are the defaults for the task
    return info


def _check_base_model(folder: Path, info: dict[str, Any], base_model: str | None) -> str:
    """The base model an adapter folder needs, found locally, in the HF cache or on the Hub; else refused at once."""
    from . import hub
    from .models import _in_hf_cache

    base = base_model or info.get("base_model_path")
    if not base:
        raise FolderError(f"{folder} holds a LoRA adapter but names no base model; pass --base-model (a folder "
                          "or Hub id) or set base_model_path in its workbook.json.")
    base = str(base)
    if Path(base).expanduser().is_dir() or _in_hf_cache(base):
        return str(Path(base).expanduser()) if Path(base).expanduser().is_dir() else base
    if not base.startswith((".", "/", "~")) and hub.hub_available():
        return base
    raise FolderError(f"{folder} is a LoRA adapter for base model {base!r}, which is not on this machine (no Hub "
                      f"access, not in the HF cache); download it where the Hub is reachable (hf download {base} "
                      "--local-dir models/base) and pass --base-model models/base.")


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

    @property
    def takes_pairs(self) -> bool:
        """True for a sentence-pair model (trained on `(text, text_pair)`)."""
        return bool(self.info.get("text_pair"))

    @torch.inference_mode()
    def predict(self, texts, *, batch_size: int = 32) -> Any:
        """Label, score and all probabilities for each input.

        An input is a text, a `(text, text_pair)` tuple or a `{"text": ..., "text_pair": ...}` dict
        (sentence-pair models read both through the tokenizer's pair encoding). One input gives one
        result; a list of inputs gives a list of results.
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
                results[i] = result
        return results[0] if single else results

    def _encode(self, texts: list[str], pairs: list[str] | None) -> tuple[list[dict[str, list[int]]], list[bool]]:
        """Token ids of every input (tokenized once), cut to max_length; and which ones were cut."""
        full = self.tokenizer(texts, pairs, truncation=False, verbose=False)
        rows = [{key: full[key][i] for key in full.keys()} for i in range(len(texts))]
        cut = [len(row["input_ids"]) > self.max_length for row in rows]
        long = [i for i, was_cut in enumerate(cut) if was_cut]
        if long:  # only those again, with the tokenizer's own truncation (longest_first for pairs)
            again = self.tokenizer([texts[i] for i in long], [pairs[i] for i in long] if pairs else None,
                                   truncation="longest_first", max_length=self.max_length)
            for j, i in enumerate(long):
                rows[i] = {key: again[key][j] for key in again.keys()}
        return rows, cut

    def _predict_all(self, texts: list[str], pairs: list[str] | None, batch_size: int) -> list[dict[str, Any]]:
        rows, cut = self._encode(texts, pairs)
        collate = PadCollator(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        out: list[dict[str, Any] | None] = [None] * len(rows)
        for batch in padding_bounded_batches([len(r["input_ids"]) for r in rows], batch_size):
            enc = {k: v.to(self.device) for k, v in collate([rows[i] for i in batch]).items()}
            with dev.autocast(self.device, self.precision):
                probs = self.model(**enc).logits.float().softmax(-1).cpu()
            for i, row in zip(batch, probs):
                best = int(row.argmax())
                out[i] = {"label": self.labels[best], "score": float(row[best]),
                          "probabilities": {name: float(p) for name, p in zip(self.labels, row)},
                          "truncated": cut[i]}
        return out


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

        with quiet_peft():
            model = PeftModel.from_pretrained(auto.from_pretrained(info["base_model_path"]), folder)
    else:
        model = auto.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load(path: str | Path, *, device: str | torch.device | None = None, precision: str = "fp32",
         base_model: str | None = None):
    """Load a saved folder (OUTPUT_DIR, OUTPUT_DIR/model, or any `save_pretrained` / peft adapter folder)
    for the task it records (or, without `workbook.json`, the task its config names): a `TextClassifier`
    or a `Summarizer`. `base_model` overrides the base an adapter folder goes on.

    Raises `FolderError` (one line) for a folder it cannot serve; the Hub is probed once, so an
    unreachable Hub costs seconds, not retries.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from . import hub

    hub.hub_available()  # one short probe; offline mode from here on when the Hub is out of reach
    folder = _model_folder(path)
    info = read_info(folder)
    if (folder / "adapter_config.json").exists():
        info["base_model_path"] = _check_base_model(folder, info, base_model)
    device = torch.device(device) if device is not None else dev.best_device()
    task = info.get("task", "text-classification")
    try:
        if task in SUMMARIZATION_TASKS:
            model, tokenizer = _load_generative(folder, task, info)
            return Summarizer(model=model.to(device).eval(), tokenizer=tokenizer, info=info, device=device,
                              precision=precision)
        if task != "text-classification":
            raise FolderError(f"{folder} holds a {task!r} model, which this workbook cannot load; "
                              f"known tasks: text-classification, {', '.join(SUMMARIZATION_TASKS)}.")
        if (folder / "adapter_config.json").exists():
            from peft import PeftModel

            base = AutoModelForSequenceClassification.from_pretrained(info["base_model_path"])
            with quiet_peft():
                model = PeftModel.from_pretrained(base, folder)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        if isinstance(err, FolderError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FolderError(f"{folder} could not be loaded ({first}); it needs the model's config, weights and "
                          "tokenizer files, as save_pretrained writes them for model and tokenizer.") from err
    return TextClassifier(model=model.to(device).eval(), tokenizer=tokenizer, info=info, device=device,
                          precision=precision)


def score_table(model, frame, *, text_col: str, text_pair_col: str | None = None, text_join: str = ". ",
                chunk_rows: int = 1024, batch_size: int | None = None, progress: bool = True):
    """Score every row of a table with a loaded model; returns the table with new columns.

    A classifier adds `predicted_label`, `predicted_score`, `prob_<label>` for each label and
    `truncated`; a summarizer adds `predicted_summary` and `truncated`. The input's own columns (a
    `label` with the truth, ids) are kept as they are, rows in their order. Rows whose text is empty
    stay unscored (empty cells), never given a guess. `text_col` may join columns ("title+description",
    with `text_join`), as the notebooks do. Rows are scored in chunks of `chunk_rows`, with a progress bar
    on stderr.
    """
    from tqdm.auto import tqdm

    from .data import build_text, check_columns, text_columns

    needed = text_columns(text_col) + (text_columns(text_pair_col) if text_pair_col else [])
    check_columns(frame, needed, "the input")
    classifier = model.task == "text-classification"
    if text_pair_col and not (classifier and model.takes_pairs):
        raise ValueError(f"--text-pair-col {text_pair_col!r} was given, but this model reads one text per row; "
                         "drop the option, or use a model trained on sentence pairs.")
    if classifier and model.takes_pairs and not text_pair_col:
        raise ValueError("This model reads sentence pairs; name the second text's column with --text-pair-col.")

    def cells(column: str) -> list[str]:
        return [str(v) for v in build_text(frame, column, join=text_join)]

    texts = cells(text_col)
    pairs = cells(text_pair_col) if text_pair_col else None
    todo = [i for i, t in enumerate(texts) if t and (pairs is None or pairs[i])]
    n = len(frame)
    names = model.labels if classifier else []
    columns: dict[str, list[Any]] = {name: [None] * n for name in (
        ["predicted_label", "predicted_score", *(f"prob_{label}" for label in names)] if classifier
        else ["predicted_summary"])}
    columns["truncated"] = [None] * n
    bar = tqdm(total=len(todo), desc="scoring", unit="row", disable=not progress or not todo)
    for start in range(0, len(todo), chunk_rows):  # columns filled chunk by chunk: no dict kept per row
        index = todo[start:start + chunk_rows]
        if classifier:
            inputs = [(texts[i], pairs[i]) if pairs else texts[i] for i in index]
            scored = model.predict(inputs, batch_size=batch_size or 32)
        else:
            scored = model.summarize([texts[i] for i in index], batch_size=batch_size or 8)
        for i, r in zip(index, scored):
            columns["truncated"][i] = r["truncated"]
            if classifier:
                columns["predicted_label"][i], columns["predicted_score"][i] = r["label"], r["score"]
                for label in names:
                    columns[f"prob_{label}"][i] = r["probabilities"][label]
            else:
                columns["predicted_summary"][i] = r["summary"]
        bar.update(len(index))
    bar.close()
    out = frame.copy()
    for name, values in columns.items():
        out[name] = values
    return out


def write_table(frame, path: str | Path | None) -> None:
    """A scored table to CSV / TSV / JSON lines / parquet / .xlsx by the file's suffix; None: CSV on stdout."""
    import sys

    if path is None:
        frame.to_csv(sys.stdout, index=False)
        return
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    writers = {".csv": lambda: frame.to_csv(path, index=False),
               ".tsv": lambda: frame.to_csv(path, index=False, sep="\t"),
               ".jsonl": lambda: frame.to_json(path, orient="records", lines=True, force_ascii=False),
               ".parquet": lambda: frame.to_parquet(path, index=False),
               ".xlsx": lambda: frame.to_excel(path, index=False)}
    if suffix not in writers:
        raise ValueError(f"Cannot write {path.name}: name the output .csv, .tsv, .jsonl, .parquet or .xlsx.")
    if not path.parent.is_dir():
        raise ValueError(f"Cannot write {path}: the folder {path.parent} does not exist.")
    writers[suffix]()
