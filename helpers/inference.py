"""Use a saved model folder: load it by the task recorded in it, then predict or summarize.

    clf = hp.inference.load("runs/01_finbert_financial_sentiment/model")
    clf.predict(["Operating profit rose to EUR 13.1 mn"])  # [{"label": "positive", "score": .97, ...}]
    clf.predict("...", raw=True)  # also "raw_probabilities": before the saved temperature (calibration)

    summ = hp.inference.load("runs/04_pythia_meta_review_summarization/model")
    summ.summarize("Review 1 ... <sep> Review 2 ...")  # {"summary": "...", "truncated": False}
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import device as dev
from ._batching import PadCollator
from ._classify import ClassifierAnswers, parse_pair_text, read_workbook_json
from ._classify import model_folder as _model_folder
from ._classify import shown as _shown
from .artifacts import _WORKBOOK_FILE
from .models import _LOAD_DTYPE, _damaged_weights, _FolderError, _layer_mismatch, _quiet_peft, _refuse_remote_code

__all__ = ["TextClassifier", "load", "parse_pair_text"]


# `_FolderError` (a folder this workbook cannot serve: one line saying what it holds and what to do) and
# `_refuse_remote_code` (a folder that ships its own code) live in `models`, which loads folders for training too.


def _read_info(folder: str | Path) -> dict[str, Any]:
    """The folder's `workbook.json`, checked where it is read (a JSON object; a usable temperature); for a folder
    the workbook did not write, what its own files say."""
    info = read_workbook_json(folder)
    return info if info is not None else _infer_info(folder)


_ADAPTER_TASKS = {"SEQ_CLS": "text-classification", "CAUSAL_LM": "summarization-causal",
                  "SEQ_2_SEQ_LM": "summarization-seq2seq"}


def _infer_info(folder: str | Path) -> dict[str, Any]:
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
            raise _FolderError(f"{folder} holds a peft adapter for task_type {adapter.get('task_type')!r}; the "
                               f"workbook serves {', '.join(_ADAPTER_TASKS)} adapters.")
        info = {"task": task, "base_model_path": adapter.get("base_model_name_or_path")}
        config_dir = info["base_model_path"]
    else:
        info, config_dir = {}, folder
    try:
        from transformers import AutoConfig

        is_dir = config_dir and Path(str(config_dir)).is_dir()
        config = AutoConfig.from_pretrained(config_dir, trust_remote_code=False) if is_dir else None
    except (OSError, ValueError):
        config = None
    if "task" not in info:
        if config is None:
            raise _FolderError(f"{folder} has no readable config.json; point at a folder written by save_pretrained.")
        info["task"] = _architecture_task(config)
        if info["task"] is None:
            raise _FolderError(f"{folder} holds a {' '.join(config.architectures or []) or config.model_type} model "
                               "with no task head the workbook serves (a sequence classifier, a causal LM or a "
                               "seq2seq LM).")
    from .models import _model_max_length
    from .textgen import _DEFAULT_PROMPT

    limit = _model_max_length(config) if config is not None else 512
    if info["task"] == "summarization-causal":
        info.update(max_length=min(limit, 2048), prompt_template=_DEFAULT_PROMPT, generation={"max_new_tokens": 128})
    elif info["task"] == "summarization-seq2seq":
        is_t5 = getattr(config, "model_type", "") in ("t5", "mt5", "umt5")
        info.update(prefix="summarize: " if is_t5 else "", max_source_length=min(limit, 512),
                    generation={"max_new_tokens": 64})
    else:
        info["max_length"] = min(limit, 512)
    info["inferred"] = True  # no workbook.json: settings are the defaults for the task
    return info


def _architecture_task(config) -> str | None:
    """The task a model's head serves, from `config.architectures` (…ForSequenceClassification, …ForCausalLM,
    …ForConditionalGeneration of an encoder-decoder); None when it names none of them."""
    arch = " ".join(getattr(config, "architectures", None) or [])
    if "ForSequenceClassification" in arch:
        return "text-classification"
    if "ForCausalLM" in arch:
        return "summarization-causal"
    if "ForConditionalGeneration" in arch and getattr(config, "is_encoder_decoder", False):
        return "summarization-seq2seq"
    return None


def _check_task(folder: Path, task: str) -> None:
    """Refuse a whole saved model whose head is for another task than its workbook.json says, naming both: loaded
    anyway, the other head's weights would be missing, which reads as if the files were incomplete."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError):
        return  # unreadable: loading the model says which file is wrong
    held = _architecture_task(config)
    if held is None or held == task:
        return
    arch = " ".join(config.architectures or [])
    raise _FolderError(f"{folder} holds a {arch} ({held}), but its {_WORKBOOK_FILE} says task {task!r}; point at a "
                       f"{task} model, or, if this is the model you mean, set \"task\" in {folder / _WORKBOOK_FILE} "
                       f"to {held!r}.")


def _check_base_model(folder: Path, info: dict[str, Any], base_model: str | None) -> str:
    """The base model an adapter folder needs, found locally, in the HF cache or on the Hub; else refused at once."""
    from ._offline import hub
    from .models import _in_hf_cache

    base = base_model or info.get("base_model_path")
    if not base:
        raise _FolderError(f"{folder} holds a LoRA adapter but names no base model; pass --base-model (a folder "
                           "or Hub id) or set base_model_path in its workbook.json.")
    base = str(base)
    if Path(base).expanduser().is_dir() or _in_hf_cache(base):
        return str(Path(base).expanduser()) if Path(base).expanduser().is_dir() else base
    if not base.startswith((".", "/", "~")) and hub.hub_available():
        return base
    raise _FolderError(f"{folder} is a LoRA adapter for base model {base!r}, which is not on this machine (no Hub "
                       f"access, not in the HF cache); download it where the Hub is reachable (hf download {base} "
                       "--local-dir models/base) and pass --base-model models/base.")


@dataclass
class TextClassifier(ClassifierAnswers):
    """A fine-tuned classifier: `predict(texts)` gives label, score and all probabilities (the answers are
    `ClassifierAnswers`', the same on ONNX Runtime)."""

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

    @torch.inference_mode()
    def _logits(self, rows: list[dict[str, list[int]]]):
        collate = PadCollator(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        enc = {k: v.to(self.device) for k, v in collate(rows).items()}
        with dev._autocast(self.device, self.precision):
            return self.model(**enc).logits.float().cpu().numpy()

    def _precision_note(self) -> str:
        return f" at precision {self.precision}; load it with precision='fp32'"


_SUMMARIZATION_TASKS = ("summarization-causal", "summarization-seq2seq")

# What a caller may ask of a summarizer per call (the server's "parameters", `summarize(**overrides)`). Wider values
# cost minutes of the one model for nothing a summary needs. max_new_tokens: 1 to `max_new_tokens_limit`
# (MAX_NEW_TOKENS, or what the model's positions leave); min_new_tokens: 0 to max_new_tokens.
_MAX_NEW_TOKENS = 512
_GENERATION_LIMITS: dict[str, tuple[Any, Any, str]] = {  # name: (lowest, highest, note); int bounds: whole numbers
    "num_beams": (1, 8, " (1: greedy)"),
    "no_repeat_ngram_size": (0, 20, " (0: off)"),
    "repetition_penalty": (1.0, 10.0, " (1.0: off)"),
    "length_penalty": (-10.0, 10.0, " (used with num_beams > 1)"),
}


def _whole(name: str, value: Any, low: int, high: int, why: str = "") -> int:
    """An integer setting in [low, high] (10.0 is 10; 1.5, true, "10" and null are not)."""
    whole = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not whole or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}{why}; got {_shown(value)}")
    return int(value)


def _number(name: str, value: Any, low: float, high: float, why: str = "") -> float:
    """A finite number setting in [low, high]."""
    number = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)
    if not number or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}{why}; got {_shown(value)}")
    return float(value)


class _GenerationStopped(RuntimeError):
    """Generation ended part-way because its `stop` callable gave a reason (the reason is the message)."""


@contextlib.contextmanager
def _stoppable(model, stop):
    """While inside, every forward pass of `model` first asks `stop()`; a reason raises `GenerationStopped`.

    `generate` makes one forward pass per new token, so work ends within a token of `stop` saying so, where
    a StoppingCriteria would need textgen's generate call to take one. A peft wrapper's inner model is hooked:
    that is what `generate` calls."""
    if stop is None:
        yield
        return
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model

    def check(_module, _args):
        reason = stop()
        if reason:
            raise _GenerationStopped(reason)

    handle = inner.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class _Summarizer:
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

    def _saved_settings(self) -> dict[str, Any]:
        from .textgen import GenerationSettings

        known = GenerationSettings.__dataclass_fields__
        return {k: v for k, v in (self.info.get("generation") or {}).items() if k in known}

    def settings(self, **overrides):
        """The folder's generation settings with `overrides` (checked by `check_generation`) on top."""
        from .textgen import GenerationSettings

        return GenerationSettings(**{**self._saved_settings(), **self.check_generation(overrides)})

    @property
    def max_new_tokens_limit(self) -> int:
        """The most tokens one summary may ask for: MAX_NEW_TOKENS, or fewer where the model's positions end
        first (a causal LM's prompt and summary share them); never fewer than the folder was saved with."""
        from .models import _model_max_length
        from .textgen import GenerationSettings

        saved = int(self._saved_settings().get("max_new_tokens", GenerationSettings.max_new_tokens))
        positions = _model_max_length(self.model.config)
        if self.task == "summarization-causal":
            positions -= int(self.info["max_length"]) - saved  # the prompt's share
        return max(saved, min(_MAX_NEW_TOKENS, positions))

    def generation_limits(self) -> dict[str, list]:
        """Each per-call setting's allowed range [lowest, highest], as the server's /health shows it."""
        return {"max_new_tokens": [1, self.max_new_tokens_limit], "min_new_tokens": [0, "max_new_tokens"],
                **{name: [low, high] for name, (low, high, _) in _GENERATION_LIMITS.items()}}

    def check_generation(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Per-call settings, each checked against its documented range (GENERATION_LIMITS): one caller must not
        hold the model with 10^9 tokens or 0 beams. ValueError names the setting and its range."""
        from .textgen import GenerationSettings

        known = GenerationSettings.__dataclass_fields__
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"Unknown generation settings {unknown}; known: {sorted(known)}.")
        out = dict(overrides)
        saved = {**GenerationSettings().to_dict(), **self._saved_settings()}
        if "max_new_tokens" in out:
            out["max_new_tokens"] = _whole("max_new_tokens", out["max_new_tokens"], 1, self.max_new_tokens_limit)
        most = int(out.get("max_new_tokens", saved["max_new_tokens"]))
        rules = {**_GENERATION_LIMITS, "min_new_tokens": (0, most, " (at most max_new_tokens)")}
        for name in sorted(set(out) & set(rules) - {"max_new_tokens"}):
            low, high, why = rules[name]
            check = _whole if isinstance(low, int) else _number
            out[name] = check(name, out[name], low, high, why)
        if "min_new_tokens" not in out and int(saved["min_new_tokens"]) > most:
            out["min_new_tokens"] = most  # the caller's own max_new_tokens wins over the folder's minimum
        return out

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids the model reads for each text, and whether the text had to be cut."""
        from . import textgen

        cleaned = [textgen.clean_text(t, sep_marker=self.info.get("sep_marker"),
                                            sep_as=self.info.get("sep_as", "\n\n"), clean=self.info.get("clean", False))
                   for t in texts]
        if self.task == "summarization-causal":
            fmt = textgen.PromptFormat(self.info.get("prompt_template", textgen._DEFAULT_PROMPT),
                                       self.info.get("target_prefix", " "))
            budget = int(self.info["max_length"]) - int(self.settings().max_new_tokens)
            return textgen.encode_prompts(self.tokenizer, cleaned, fmt, budget)
        limit = int(self.info.get("max_source_length", 512))
        ids = self.tokenizer([self.info.get("prefix", "") + t for t in cleaned])["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [x if len(x) <= limit else x[: limit - 1] + [eos] for x in ids], [len(x) > limit for x in ids]

    def summarize(self, texts: str | list[str], *, batch_size: int = 8, stop=None, **overrides) -> Any:
        """{"summary", "truncated"} for one text, or a list of them for a list of texts.

        `stop`: a callable polled before every forward pass (one per generated token); when it returns a reason,
        generation ends with `GenerationStopped` (the server's way to drop work whose caller has gone).
        """
        from . import textgen

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        settings = self.settings(**overrides)
        ids, truncated = self.encode(texts)
        with _stoppable(self.model, stop):
            summaries = textgen.generate(self.model, self.tokenizer, ids, settings=settings, batch_size=batch_size,
                                         precision=self.precision, device=self.device, progress=False)
        results = [{"summary": s, "truncated": bool(t)} for s, t in zip(summaries, truncated)]
        return results[0] if single else results


def _weights_file(folder: Path, suffix: str = "") -> str:
    """The weights file a folder's model loads from (for messages): safetensors first, as transformers reads."""
    for name in ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                 "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin"):
        if name.endswith(suffix) and (folder / name).exists():
            return str(folder / name)
    found = sorted(folder.glob(f"*{suffix or '.safetensors'}")) or sorted(folder.glob("*.bin"))
    return str(found[0]) if found else f"the weights in {folder}"


def _mismatch_message(folder: Path, config, report: dict) -> str | None:
    """One line for weights that do not fit config.json (an edited id2label, a lost head); None when they fit."""
    weights = _weights_file(folder)
    labels = int(getattr(config, "num_labels", 0) or 0)
    for key, saved, wanted in sorted(report.get("mismatched_keys") or [], key=lambda m: m[0]):
        if "ForSequenceClassification" in " ".join(config.architectures or []) and len(wanted) and \
                wanted[0] == labels != saved[0]:
            names = ", ".join(str(config.id2label[i]) for i in sorted(config.id2label))
            return (f"{folder / 'config.json'} names {labels} labels ({names}) but {weights} was trained for "
                    f"{saved[0]}; put id2label and label2id in config.json back to {saved[0]} labels (renaming "
                    f"them is fine), or fine-tune again for {labels} labels.")
        return (f"{weights} does not fit {folder / 'config.json'} ({key}: {tuple(saved)} in the weights, "
                f"{tuple(wanted)} in the config); restore the config.json saved with these weights.")
    layers = _layer_mismatch(folder, report)  # config.json's layer count is not the weights'
    if layers:
        return layers
    missing = sorted(report.get("missing_keys") or [])
    if missing:
        return (f"{weights} lacks {len(missing)} weights the model in config.json needs (e.g. {missing[0]}), so its "
                "answers would come from random numbers; point at the folder save_pretrained wrote, whole.")
    unexpected = sorted(report.get("unexpected_keys") or [])
    if unexpected:
        return (f"{weights} holds {len(unexpected)} weights the model in {folder / 'config.json'} has no place for "
                f"(e.g. {unexpected[0]}), so it would answer without them; restore the config.json saved with these "
                "weights.")
    return None


def _from_pretrained(auto, folder: Path):
    """`auto.from_pretrained(folder)` for a whole saved model, refused in one line when its weights do not fit its
    config.json: transformers would print a report and a traceback, or, told to ignore it, answer with a
    randomly initialised head."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: the one line below says what matters
    try:
        model, report = auto.from_pretrained(folder, ignore_mismatched_sizes=True, output_loading_info=True,
                                             trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    problem = _mismatch_message(folder, model.config, report)
    if problem:
        raise _FolderError(problem)
    ids = sorted(getattr(model.config, "id2label", None) or {})
    if "ForSequenceClassification" in " ".join(model.config.architectures or []) and ids != list(range(len(ids))):
        raise _FolderError(f"{folder / 'config.json'}: id2label must number its labels 0 to {len(ids) - 1}, found ids "
                           f"{ids}; number them from 0 in the order of the model's outputs.")
    return model


def _load_error(folder: Path, err: BaseException) -> _FolderError:
    """One line for a folder that failed to load: what is wrong with which file, and what to do."""
    from safetensors import SafetensorError

    if isinstance(err, _FolderError):
        return err
    if isinstance(err, pickle.UnpicklingError):  # torch.load(weights_only=True) met more than tensors
        found = re.search(r"GLOBAL (\S+)", str(err))
        return _FolderError(f"{_weights_file(folder, '.bin')} is refused: it is a pickle holding Python objects "
                            f"besides tensors{f' ({found.group(1)})' if found else ''}, which could run code, so "
                            "nothing in it was loaded or run. Get the model as model.safetensors from its source "
                            "(or a pickle of plain tensors) and remove the .bin file.")
    if isinstance(err, SafetensorError):  # a weights file cut short or corrupted
        return _FolderError(_damaged_weights(folder, err))
    if "trust_remote_code" in str(err):  # a tokenizer (or a cached Hub model) that needs its own code
        return _FolderError(f"{folder} needs Python code that ships with it to load, and the workbook never runs code "
                            "from a model folder, so nothing in it was loaded; use a folder written by "
                            "save_pretrained of a standard transformers architecture and tokenizer.")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return _FolderError(f"{folder} could not be loaded ({first}); it needs the model's config, weights and "
                        "tokenizer files, as save_pretrained writes them for model and tokenizer.")


def _load_generative(folder: Path, task: str, info: dict[str, Any]):
    """A causal or seq2seq LM from a full folder, or base model + LoRA adapter from an adapter folder."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto = AutoModelForCausalLM if task == "summarization-causal" else AutoModelForSeq2SeqLM
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        with _quiet_peft():  # the base in fp32, not its saved half dtype
            base = auto.from_pretrained(info["base_model_path"], dtype=_LOAD_DTYPE, trust_remote_code=False)
            model = PeftModel.from_pretrained(base, folder)
    else:
        model = _from_pretrained(auto, folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _load_classifier(folder: Path, info: dict[str, Any]):
    """A sequence classifier and its tokenizer, from a full folder or base model + adapter (its head inside)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(info["base_model_path"], dtype=_LOAD_DTYPE,
                                                                  trust_remote_code=False)
        with _quiet_peft():
            model = PeftModel.from_pretrained(base, folder)
    else:
        model = _from_pretrained(AutoModelForSequenceClassification, folder)
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def load(path: str | Path, *, device: str | torch.device | None = None, precision: str = "fp32",
         base_model: str | None = None):
    """Load a saved folder (OUTPUT_DIR, OUTPUT_DIR/model, or any `save_pretrained` / peft adapter folder)
    for the task it records (or, without `workbook.json`, the task its config names): a `TextClassifier`
    or a `Summarizer`. `base_model` overrides the base an adapter folder goes on.

    Raises `FolderError` (one line) for a folder it cannot serve; the Hub is probed once, so an
    unreachable Hub costs seconds, not retries. Weights are read as safetensors or with torch.load's
    weights_only=True (transformers' and peft's default, kept): a pickle holding code is refused, never run.
    """
    from safetensors import SafetensorError

    from ._offline import hub

    hub.hub_available()  # one short probe; offline mode from here on when the Hub is out of reach
    folder = _model_folder(path)
    _refuse_remote_code(folder)  # before anything reads it with transformers
    info = _read_info(folder)
    adapter = (folder / "adapter_config.json").exists()
    if adapter:
        info["base_model_path"] = _check_base_model(folder, info, base_model)
        if Path(info["base_model_path"]).is_dir():
            _refuse_remote_code(info["base_model_path"])
    device = torch.device(device) if device is not None else dev.best_device()
    task = info.get("task", "text-classification")
    if task not in ("text-classification", *_SUMMARIZATION_TASKS):
        raise _FolderError(f"{folder} holds a {task!r} model, which this workbook cannot load; "
                           f"known tasks: text-classification, {', '.join(_SUMMARIZATION_TASKS)}.")
    if not adapter and not info.get("inferred"):
        _check_task(folder, task)
    try:
        if task in _SUMMARIZATION_TASKS:
            model, tokenizer = _load_generative(folder, task, info)
        else:
            model, tokenizer = _load_classifier(folder, info)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError) as err:
        raise _load_error(folder, err) from err
    kind = _Summarizer if task in _SUMMARIZATION_TASKS else TextClassifier
    precision = _serving_precision(precision, device, model)
    return kind(model=model.to(device).eval(), tokenizer=tokenizer, info=info, device=device, precision=precision)


def _serving_precision(precision: str, device: torch.device, model) -> str:
    """`load(precision=...)` checked as training checks it (`dev.resolve_precision`): one of auto / bf16 / fp16 /
    fp32; fp16 needs a GPU and never for T5 (it overflows); bf16 only where the hardware runs it natively (a T4
    emulates it, slowly). fp32, the default, is what the notebooks judge the test split in, so served answers
    equal the notebook's. TF32 matmuls stay as torch leaves them (off): on Ampere and newer GPUs they would be
    faster but round differently from the notebook's fp32 (docs/serving.md)."""
    t5 = getattr(getattr(model, "config", None), "model_type", "") in ("t5", "mt5", "umt5", "longt5")
    try:
        return dev.resolve_precision(precision, device, allow_fp16=not t5)
    except ValueError as err:
        raise ValueError(f"precision={precision!r}: {str(err).replace('PRECISION=', 'precision=')}") from None


def _score_table(model, frame, *, text_col: str, text_pair_col: str | None = None, text_join: str = ". ",
                 chunk_rows: int = 1024, batch_size: int | None = None, progress: bool = True, raw: bool = False):
    """Score every row of a table with a loaded model; returns the table with new columns.

    A classifier adds `predicted_label`, `predicted_score`, `prob_<label>` for each label (calibrated with the
    folder's temperature; `raw=True` adds `raw_prob_<label>`, the model's own softmax) and `truncated`; a
    summarizer adds `predicted_summary` and `truncated`. The input's own columns are kept as they are (a new
    name already taken gets `_new`: `new_column_names`), rows in their order. Rows whose text is empty stay
    unscored (empty cells), never given a guess. `text_col` may join columns ("title+description", with
    `text_join`), as the notebooks do. Rows are scored in chunks of `chunk_rows`, with a progress bar on stderr.
    """
    from tqdm.auto import tqdm

    from ._readers import build_text, check_columns, text_columns

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
        ["predicted_label", "predicted_score", *(f"prob_{label}" for label in names),
         *(f"raw_prob_{label}" for label in (names if raw else []))] if classifier else ["predicted_summary"])}
    columns["truncated"] = [None] * n
    bar = tqdm(total=len(todo), desc="scoring", unit="row", disable=not progress or not todo)
    for start in range(0, len(todo), chunk_rows):  # columns filled chunk by chunk: no dict kept per row
        index = todo[start:start + chunk_rows]
        if classifier:
            inputs = [(texts[i], pairs[i]) if pairs else texts[i] for i in index]
            scored = model.predict(inputs, batch_size=batch_size or 32, **({"raw": True} if raw else {}))
        else:
            scored = model.summarize([texts[i] for i in index], batch_size=batch_size or 8)
        for i, r in zip(index, scored):
            _fill_row(columns, i, r, names)
        bar.update(len(index))
    bar.close()
    out, given = frame.copy(), _new_column_names(frame.columns, list(columns))
    for name, values in columns.items():
        out[given[name]] = values
    out.attrs["predicted_columns"] = given  # what `workbook predict` reads its counts and metrics from
    return out


def _fill_row(columns: dict[str, list[Any]], i: int, result: dict[str, Any], labels: list[str]) -> None:
    """One scored row into the table's columns (raw probabilities only where the table has their columns)."""
    columns["truncated"][i] = result["truncated"]
    if "summary" in result:
        columns["predicted_summary"][i] = result["summary"]
        return
    columns["predicted_label"][i], columns["predicted_score"][i] = result["label"], result["score"]
    for label in labels:
        columns[f"prob_{label}"][i] = result["probabilities"][label]
        if f"raw_prob_{label}" in columns:
            columns[f"raw_prob_{label}"][i] = result["raw_probabilities"][label]


def _new_column_names(existing, wanted: list[str]) -> dict[str, str]:
    """A free name for each new column: the input's own columns are never overwritten; a clash gets a suffix
    (`predicted_label_new`, then `_new2`, ...), and the note says so."""
    taken, given = {str(c) for c in existing}, {}
    for name in wanted:
        free, n = name, 1
        while free in taken:
            free, n = f"{name}_new{n if n > 1 else ''}", n + 1
        given[name] = free
        taken.add(free)
    clashes = [name for name in wanted if given[name] != name]
    if clashes:
        print(f"note: the input already has columns {', '.join(clashes)}; they are kept as they are, and this "
              f"model's answers go in {', '.join(given[c] for c in clashes)}")
    return given


_OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet", ".xlsx")


def _check_output(path: str | Path, source: str | Path | None = None) -> Path:
    """Where a scored table may go, checked before the model loads (not after minutes of scoring): a known
    suffix, an existing folder that can be written, and never the input itself or a file inside an input
    folder (it would be read as part of the input next time). ValueError says which and what to do."""
    import os

    out = Path(path).expanduser()
    if out.suffix.lower() not in _OUTPUT_SUFFIXES or out.is_dir():
        raise ValueError(f"Cannot write {out}: name the output .csv, .tsv, .jsonl, .parquet or .xlsx"
                         + (" (that is a folder: name a file in it)." if out.is_dir() else "."))
    if not out.parent.is_dir():
        raise ValueError(f"Cannot write {out}: the folder {out.parent} does not exist; create it "
                         f"(mkdir -p {out.parent}) or name a file in an existing folder.")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"Cannot write {out}: no permission to write there; name a file in a folder you can write.")
    if source is not None:
        src, dst = Path(source).expanduser().resolve(), out.resolve()
        if dst == src or (src.is_dir() and src in dst.parents) or (dst.exists() and os.path.samefile(dst, src)):
            other = src.with_name(f"{src.stem}.scored{out.suffix}")
            raise ValueError(f"--output {path} would write over the input {source}; the input is never written "
                             f"over, so name another file, e.g. --output {other}.")
    return out


def _write_table(frame, path: str | Path | None) -> None:
    """A scored table to CSV / TSV / JSON lines / parquet / .xlsx by the file's suffix; None: CSV on stdout."""
    import sys

    if path is None:
        frame.to_csv(sys.stdout, index=False)
        return
    path = _check_output(path)
    # Written next to the target, then renamed: a full disk leaves no truncated table under the name asked for
    # (and a file that was there stays as it was).
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    writers = {".csv": lambda: frame.to_csv(tmp, index=False),
               ".tsv": lambda: frame.to_csv(tmp, index=False, sep="\t"),
               ".jsonl": lambda: frame.to_json(tmp, orient="records", lines=True, force_ascii=False),
               ".parquet": lambda: frame.to_parquet(tmp, index=False),
               ".xlsx": lambda: frame.to_excel(tmp, index=False)}
    try:
        writers[path.suffix.lower()]()
    except OSError as err:
        tmp.unlink(missing_ok=True)
        from .artifacts import _save_failed

        raise OSError(str(_save_failed(path, err, fix="no rows need scoring again before the write: free some space, "
                                                   "or give --output on another disk, and run the command again"))
                      ) from None
    os.replace(tmp, path)
