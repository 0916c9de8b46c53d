"""Score a model saved by the Finetune Workbook. Needs only torch and transformers (peft for an adapter folder).

This file is copied as `score.py` into every saved model folder; it reads `workbook.json` next to it
(the task, labels, lengths, prompt template and decoding settings) and works without the workbook.

Hosted model APIs (Domino style), called with {"data": {"sentence": ...}} or {"data": {"text": ...}}:
    predict_sentiment(sentence) -> {"label", "score", "probabilities", "truncated"}
    predict_sentiment([s1, s2]) -> a list of those, one per text
    predict_sentiment(sentence, text_pair=...)  sentence-pair models
    predict_sentiment(sentence, raw=True)  also "raw_probabilities": before the saved temperature
    summarize(text)             -> {"summary", "truncated"} (a list of texts: a list of those)
    summarize(text, num_beams=4, max_new_tokens=96)  per-call generation settings
A classifier's probabilities are calibrated: softmax(logits / temperature), the temperature fitted on the validation
split and saved in workbook.json (what `workbook serve` and `workbook predict` answer).
Texts must be non-empty strings; anything else raises ValueError with the reason. The same rules as `workbook
serve`: generation settings are held to GENERATION_LIMITS (a one-line ValueError names the setting and its
range), and a `text_pair` is refused by a model that reads one text.
OCI Data Science model deployment:
    load_model() -> the loaded model;  predict(data, model=load_model()) -> {"prediction": [...]}
    `data`: a text, a list of texts, {"text": ...}, {"texts": [...]}, or {"data": {...}} with those keys.

Set MODEL_DIR to score a folder other than this file's own. A classifier exported with `workbook export` runs on
ONNX Runtime (its onnx/model.onnx; onnxruntime installed) unless WORKBOOK_RUNTIME=torch; WORKBOOK_RUNTIME=onnx-int8
takes the int8 export. An export older than the weights (their SHA-256 differs from the one recorded) is refused.

No code from a model folder runs: every from_pretrained gets trust_remote_code=False, and a folder (or a local
base model) whose config.json or tokenizer_config.json names its own code (`auto_map`) is refused in one line.
workbook.json's lengths and temperature are checked when it is read (a ValueError naming the value).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from pathlib import Path

import torch

MODEL_DIR = Path(os.environ.get("MODEL_DIR") or Path(__file__).resolve().parent)
_LOADED: dict | None = None

# The per-call generation settings and their ranges, as `workbook serve` holds them. Copied from
# helpers/inference.py (MAX_NEW_TOKENS, GENERATION_LIMITS) and helpers/textgen.py (GenerationSettings' defaults)
# because this file must run without the workbook; tests/test_hardening_score.py checks that the copies are equal.
MAX_NEW_TOKENS = 512
GENERATION_LIMITS: dict = {  # name: (lowest, highest, note); int bounds: whole numbers
    "num_beams": (1, 8, " (1: greedy)"),
    "no_repeat_ngram_size": (0, 20, " (0: off)"),
    "repetition_penalty": (1.0, 10.0, " (1.0: off)"),
    "length_penalty": (-10.0, 10.0, " (used with num_beams > 1)"),
}
GENERATION_DEFAULTS = {"max_new_tokens": 64, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                       "length_penalty": 1.0, "min_new_tokens": 0}
LENGTH_CAP = 16_384  # saved lengths of a model that states no positions (T5's are relative): 1e9 is still absurd
TEMPERATURES = (0.05, 20.0)  # what calibration can fit (helpers/metrics.py clamps to it): anything else is damage
CODE_FILES = ("config.json", "tokenizer_config.json")  # where a folder names code of its own (auto_map)


def load_model(model_dir: str | os.PathLike | None = None) -> dict:
    """Load the model, tokenizer and settings once (kept for later calls)."""
    global _LOADED
    folder = Path(model_dir) if model_dir else MODEL_DIR
    if _LOADED is not None and _LOADED["folder"] == folder:
        return _LOADED
    import transformers

    info = saved = _read_info(folder)
    _refuse_code(folder)
    task = info.get("task") or _task_from_config(folder)
    auto = {"text-classification": transformers.AutoModelForSequenceClassification,
            "summarization-causal": transformers.AutoModelForCausalLM,
            "summarization-seq2seq": transformers.AutoModelForSeq2SeqLM}.get(task)
    if auto is None:
        raise ValueError(f"{folder} holds a model for {task!r}, which this score.py cannot run (it runs sequence "
                         "classifiers, causal LMs and seq2seq LMs).")
    if not info and task != "text-classification":  # a plain save_pretrained folder: the task's defaults
        info = {"max_length": 1024, "prompt_template": "{source}\n\nTL;DR:", "max_source_length": 512,
                "prefix": "summarize: " if "T5" in (folder / "config.json").read_text() else "",
                "generation": {"max_new_tokens": 64}}
    runtime = _runtime(folder, info, task)
    model = _load_weights(folder, info, auto) if runtime == "torch" else _OnnxModel(folder, info, runtime)
    _check_saved(saved, model.config, folder / "workbook.json")  # the file's values, not the defaults above
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base_model = info.get("base_model") or {}
    if base_model.get("standin"):  # said once, in the deployment's log: the answers are not the real model's
        print(f"score.py: {folder} was fine-tuned from an offline stand-in for {base_model.get('requested')}; "
              "its predictions show that the code works, not how good that model is", file=sys.stderr)
    _LOADED = {"folder": folder, "task": task, "info": info, "runtime": runtime,
               "model": model.to(device).eval() if runtime == "torch" else model, "tokenizer": tokenizer,
               "device": device if runtime == "torch" else torch.device("cpu")}
    return _LOADED


def _runtime(folder: Path, info: dict, task: str) -> str:
    """WORKBOOK_RUNTIME (torch, onnx, onnx-int8), else onnx for a classifier with a fresh export, else torch."""
    asked = os.environ.get("WORKBOOK_RUNTIME")
    record = info.get("onnx") if isinstance(info.get("onnx"), dict) else {}
    if asked not in (None, "", "torch", "onnx", "onnx-int8"):
        raise ValueError(f"WORKBOOK_RUNTIME={asked!r}: use torch, onnx or onnx-int8")
    import importlib.util

    here = importlib.util.find_spec("onnxruntime") is not None  # a torch image has none: it runs torch
    if asked == "torch" or (not asked and (task != "text-classification" or not record or not here)):
        return "torch"
    runtime = asked or "onnx"
    file = folder / str((record.get("files") or {}).get(runtime, ""))
    if not record or not file.is_file():
        raise ValueError(f"{folder} has no {runtime} export; make one with: workbook export {folder}"
                         + (" --quantize int8" if runtime == "onnx-int8" else "") + " (or WORKBOOK_RUNTIME=torch)")
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors")
                    if (folder / n).exists()), None)
    if weights is not None:
        import hashlib

        digest = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != record.get("weights_sha256"):
            raise ValueError(f"the ONNX export in {folder} is stale: the weights changed after it was made; make it "
                             f"again with: workbook export {folder} (or WORKBOOK_RUNTIME=torch)")
    return runtime


class _OnnxModel:
    """A classifier's ONNX export on ONNX Runtime, called as the torch model is: `model(**enc).logits`."""

    def __init__(self, folder: Path, info: dict, runtime: str):
        import onnxruntime
        import transformers

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        self.session = onnxruntime.InferenceSession(str(folder / info["onnx"]["files"][runtime]), options,
                                                    providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config = transformers.AutoConfig.from_pretrained(folder / "onnx", trust_remote_code=False)

    def __call__(self, **enc):
        feed = {name: enc[name].cpu().numpy().astype("int64") for name in self.inputs}
        return type("Output", (), {"logits": torch.from_numpy(self.session.run(None, feed)[0])})()


def _load_weights(folder: Path, info: dict, auto):
    """The model of a folder, or a LoRA adapter on its base model (needs peft); never code from either folder."""
    if not (folder / "adapter_config.json").exists():
        return auto.from_pretrained(folder, trust_remote_code=False)
    from peft import PeftModel

    adapter = json.loads((folder / "adapter_config.json").read_text())
    base = info.get("base_model_path") or adapter["base_model_name_or_path"]
    if Path(str(base)).expanduser().is_dir():  # a Hub id is held to trust_remote_code=False by transformers itself
        _refuse_code(Path(str(base)).expanduser(), f"the base model of {folder.name}")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5: not the caller's matter
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        return PeftModel.from_pretrained(auto.from_pretrained(base, trust_remote_code=False), folder)


def _read_info(folder: Path) -> dict:
    """workbook.json (an empty dict where there is none); a ValueError naming the file when it is not an object."""
    file = folder / "workbook.json"
    if not file.exists():
        return {}
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        raise ValueError(f"{file} is not JSON ({err}); restore it from the run that saved this model") from None
    if not isinstance(info, dict):
        raise ValueError(f"{file} holds a JSON {type(info).__name__}, not the object of settings the workbook saves; "
                         "restore it from the run that saved this model")
    return info


def _refuse_code(folder: Path, what: str = "") -> None:
    """Refuse a folder that ships Python code of its own (`auto_map` in its config.json or tokenizer_config.json)
    before transformers reads it: loading it would run that code, and score.py runs no code from a model folder
    (transformers would otherwise ask on stdin, and a piped "y" would say yes)."""
    for name in CODE_FILES:
        try:
            config = json.loads((folder / name).read_text(encoding="utf-8")) if (folder / name).is_file() else {}
        except (ValueError, OSError):
            continue  # unreadable: transformers' own error names it, and runs nothing
        known = name == "config.json" and _builtin_model_type(config)
        if isinstance(config, dict) and config.get("auto_map") and not known:
            raise ValueError(f"{what or folder.name} ships its own code ({name} has an auto_map), which score.py "
                             "never runs (trust_remote_code=False); use a model of a type transformers has built in "
                             "(saved with save_pretrained), or load this one yourself once you have read its code")


def _builtin_model_type(config) -> bool:
    """A config.json whose model_type transformers has built in: its own classes load it, an auto_map is unused
    (the kit's rule, helpers/models.py `_refuse_remote_code`, so score.py and `workbook serve` agree)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type") if isinstance(config, dict) else None
    return isinstance(model_type, str) and model_type in CONFIG_MAPPING


def _check_saved(info: dict, config, file: Path) -> None:
    """workbook.json's lengths (whole numbers from 1 to the model's positions) and temperature (finite, in
    TEMPERATURES), checked once at load: a value no call could use is a ValueError naming it, not a crash later."""
    limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits = [x for x in limits if isinstance(x, int) and not isinstance(x, bool) and x > 0]
    positions = min(limits) if limits else LENGTH_CAP
    generation = info.get("generation") if isinstance(info.get("generation"), dict) else {}
    try:
        for name, value, high in [("max_length", info.get("max_length"), positions),
                                  ("max_source_length", info.get("max_source_length"), positions),
                                  ("generation.max_new_tokens", generation.get("max_new_tokens"), LENGTH_CAP)]:
            if value is not None:
                _whole(name, value, 1, high, " (tokens)")
        if info.get("temperature") is not None:
            _number("temperature", info["temperature"], *TEMPERATURES, " (what calibration fits)")
        if info.get("task") == "summarization-causal" and info.get("max_length") is not None:  # prompt + summary
            _whole("max_length", info["max_length"], int(generation.get("max_new_tokens") or 0) + 1, positions,
                   " (the prompt and the summary share it: more than generation.max_new_tokens)")
    except ValueError as err:
        raise ValueError(f"{file}: {err}; correct it, or delete it to use the default") from None


def _task_from_config(folder: Path) -> str:
    """The task of a folder without workbook.json: from an adapter's task_type or config.architectures."""
    adapter = folder / "adapter_config.json"
    if adapter.exists():
        kind = json.loads(adapter.read_text()).get("task_type")
        return {"SEQ_CLS": "text-classification", "CAUSAL_LM": "summarization-causal",
                "SEQ_2_SEQ_LM": "summarization-seq2seq"}.get(kind, str(kind))
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    arch = " ".join(config.get("architectures") or [])
    if "ForSequenceClassification" in arch:
        return "text-classification"
    if "ForCausalLM" in arch:
        return "summarization-causal"
    if "ForConditionalGeneration" in arch and config.get("is_encoder_decoder"):
        return "summarization-seq2seq"
    return arch or "unknown"


def _check_text(text, where: str = "text") -> str:
    """The same rules as `workbook serve`: a non-empty string with something visible in it."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip() or not any(c.isprintable() and not c.isspace() and c not in "\u200b\u200c\u200d\ufeff"
                                    for c in text):
        raise ValueError(f"{where} is empty (no visible characters); send some text")
    return text


# --------------------------------------------------------------------------- classification

def _temperature(info: dict) -> float:
    """The calibration temperature saved in workbook.json (1.0 when there is none)."""
    value = info.get("temperature")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 1.0


@torch.inference_mode()
def _classify(items: list, loaded: dict, batch_size: int = 32, raw: bool = False) -> list[dict]:
    """Items are texts or (text, text_pair) tuples (sentence-pair models). Probabilities are calibrated with the
    saved temperature; `raw` adds the model's own softmax as "raw_probabilities"."""
    model, tokenizer, info = loaded["model"], loaded["tokenizer"], loaded["info"]
    max_length = int(info.get("max_length") or min(512, tokenizer.model_max_length))
    labels = [str(model.config.id2label[i]) for i in range(len(model.config.id2label))]
    out: list = [None] * len(items)
    for with_pair in (False, True):  # one tokenizer call takes pairs for all its texts or for none
        index = [i for i, item in enumerate(items) if isinstance(item, tuple) == with_pair]
        for start in range(0, len(index), batch_size):
            chunk = index[start: start + batch_size]
            texts = [items[i][0] if with_pair else items[i] for i in chunk]
            pairs = [items[i][1] for i in chunk] if with_pair else None
            enc = tokenizer(texts, pairs, truncation="longest_first", max_length=max_length, padding=True,
                            return_tensors="pt").to(loaded["device"])
            logits = model(**enc).logits.float().cpu()
            probs, raws = (logits / _temperature(info)).softmax(-1), logits.softmax(-1)
            full = tokenizer(texts, pairs, truncation=False)["input_ids"]
            for i, row, raw_row, ids in zip(chunk, probs, raws, full):
                best = int(row.argmax())
                out[i] = {"label": labels[best], "score": float(row[best]),
                          "probabilities": {name: float(p) for name, p in zip(labels, row)},
                          "truncated": len(ids) > max_length}
                if raw:
                    out[i]["raw_probabilities"] = {name: float(p) for name, p in zip(labels, raw_row)}
    return out


# --------------------------------------------------------------------------- summarization

def _normalize(text: str, info: dict) -> str:
    if info.get("sep_marker"):
        text = text.replace(info["sep_marker"], info.get("sep_as", "\n\n"))
    if info.get("clean"):
        text = re.sub(r"[^a-zA-Z0-9\s]", "", text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _inputs(texts: list[str], loaded: dict) -> tuple[list[list[int]], list[bool]]:
    """Token ids per text: the prompt template with the source cut to fit (causal), or prefix + text (seq2seq)."""
    info, tokenizer = loaded["info"], loaded["tokenizer"]
    texts = [_normalize(t, info) for t in texts]
    if loaded["task"] == "summarization-causal":
        before, after = info.get("prompt_template", "{source}\n\nTL;DR:").split("{source}")
        pre = tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
        post = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        new_tokens = int(info.get("generation", {}).get("max_new_tokens", 64))
        room = int(info["max_length"]) - new_tokens - len(pre) - len(post)
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [pre + x[:room] + post for x in ids], [len(x) > room for x in ids]
    limit = int(info.get("max_source_length", 512))
    ids = tokenizer([info.get("prefix", "") + t for t in texts])["input_ids"]
    eos = tokenizer.eos_token_id
    return [x if len(x) <= limit else x[: limit - 1] + [eos] for x in ids], [len(x) > limit for x in ids]


def _shown(value) -> str:
    """A value as a client wrote it in JSON (null, true, "10"), cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(name: str, value, low: int, high: int, why: str = "") -> int:
    """An integer setting in [low, high] (10.0 is 10; 1.5, True, "10" and None are not)."""
    whole = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
    if not whole or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}{why}; got {_shown(value)}")
    return int(value)


def _number(name: str, value, low: float, high: float, why: str = "") -> float:
    """A finite number setting in [low, high]."""
    number = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)
    if not number or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}{why}; got {_shown(value)}")
    return float(value)


def _saved_settings(loaded: dict) -> dict:
    return {k: v for k, v in (loaded["info"].get("generation") or {}).items()
            if k in GENERATION_DEFAULTS and v is not None}


def max_new_tokens_limit(loaded: dict) -> int:
    """The most tokens one summary may ask for: MAX_NEW_TOKENS, or fewer where the model's positions end first
    (a causal LM's prompt and summary share them); never fewer than the folder was saved with."""
    saved = int(_saved_settings(loaded).get("max_new_tokens", GENERATION_DEFAULTS["max_new_tokens"]))
    config = loaded["model"].config
    limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits = [int(x) for x in limits if isinstance(x, int) and x > 0]
    positions = min(limits) if limits else 512
    if loaded["task"] == "summarization-causal":
        positions -= int(loaded["info"]["max_length"]) - saved  # the prompt's share
    return max(saved, min(MAX_NEW_TOKENS, positions))


def check_generation(loaded: dict, overrides: dict) -> dict:
    """Per-call settings, each checked against its range (GENERATION_LIMITS), as `workbook serve` checks them:
    one caller must not hold the model with 10^9 tokens or 0 beams. ValueError names the setting and its range."""
    unknown = sorted(set(overrides) - set(GENERATION_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown generation settings {unknown}; known: {sorted(GENERATION_DEFAULTS)}.")
    out = dict(overrides)
    saved = {**GENERATION_DEFAULTS, **_saved_settings(loaded)}
    if "max_new_tokens" in out:
        out["max_new_tokens"] = _whole("max_new_tokens", out["max_new_tokens"], 1, max_new_tokens_limit(loaded))
    most = int(out.get("max_new_tokens", saved["max_new_tokens"]))
    rules = {**GENERATION_LIMITS, "min_new_tokens": (0, most, " (at most max_new_tokens)")}
    for name in sorted(set(out) & set(rules) - {"max_new_tokens"}):
        low, high, why = rules[name]
        check = _whole if isinstance(low, int) else _number
        out[name] = check(name, out[name], low, high, why)
    if "min_new_tokens" not in out and int(saved["min_new_tokens"]) > most:
        out["min_new_tokens"] = most  # the caller's own max_new_tokens wins over the folder's minimum
    return out


def _generation_kwargs(loaded: dict, overrides: dict) -> dict:
    settings = {**GENERATION_DEFAULTS, **_saved_settings(loaded), **check_generation(loaded, overrides)}
    kwargs = {"max_new_tokens": settings["max_new_tokens"], "num_beams": settings["num_beams"], "do_sample": False,
              "repetition_penalty": settings["repetition_penalty"],
              "no_repeat_ngram_size": settings["no_repeat_ngram_size"]}
    if settings["num_beams"] > 1:
        kwargs.update(length_penalty=settings["length_penalty"], early_stopping=True)
    if settings["min_new_tokens"]:
        kwargs["min_new_tokens"] = settings["min_new_tokens"]
    tokenizer = loaded["tokenizer"]
    kwargs.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if loaded["task"] == "summarization-seq2seq" and tokenizer.pad_token_id != tokenizer.eos_token_id:
        kwargs["suppress_tokens"] = [tokenizer.pad_token_id]
    return kwargs


@torch.inference_mode()
def _summarize(texts: list[str], loaded: dict, batch_size: int = 8, **overrides) -> list[dict]:
    model, tokenizer = loaded["model"], loaded["tokenizer"]
    kwargs = _generation_kwargs(loaded, overrides)  # refused settings: before any work
    ids, truncated = _inputs(texts, loaded)
    left = loaded["task"] == "summarization-causal"  # decoder-only models continue from the right end
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    summaries = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), kwargs["pad_token_id"], dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            n = len(ids[i])
            span = slice(width - n, width) if left else slice(0, n)
            input_ids[row, span] = torch.tensor(ids[i])
            mask[row, span] = 1
        out = model.generate(input_ids=input_ids.to(loaded["device"]), attention_mask=mask.to(loaded["device"]),
                             use_cache=True, **kwargs)
        new = out[:, width:] if left else out
        for i, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
            summaries[i] = text.strip()
    return [{"summary": s, "truncated": bool(t)} for s, t in zip(summaries, truncated)]


# --------------------------------------------------------------------------- entry points

def _texts(data) -> tuple[list, bool]:
    """(inputs, single) from any accepted payload shape; inputs are texts or (text, text_pair) tuples."""
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    pair = None
    if isinstance(data, dict):
        pair = data.get("text_pair")
        for key in ("sentence", "text", "texts", "sentences"):
            if key in data:
                data = data[key]
                break
        else:
            raise ValueError('send {"text": "..."}, {"texts": [...]}, or {"data": {"sentence": "..."}}')
    if isinstance(data, str):
        text = _check_text(data)
        return [(text, _check_text(pair, "text_pair")) if pair is not None else text], True
    if isinstance(data, (list, tuple)) and data:
        return [_check_text(t, f"texts[{i}]") for i, t in enumerate(data)], False
    raise ValueError(f"expected a text or a non-empty list of texts, got {type(data).__name__}")


def _check_pairs(items: list, loaded: dict) -> list:
    """A (text, text_pair) item only for a sentence-pair classifier: a model that reads one text would answer a
    pair as something else (`workbook serve` refuses it the same way)."""
    if any(isinstance(item, tuple) for item in items) and not (
            loaded["task"] == "text-classification" and loaded["info"].get("text_pair")):
        raise ValueError('"text_pair" was given, but this model reads one text, not a pair of texts; send the text '
                         "alone (sentence pairs need a model fine-tuned on pairs, with TEXT_PAIR_COL)")
    return items


def predict_sentiment(sentence, text_pair: str | None = None, raw: bool = False):
    """Domino-style scoring function of a classifier: label, its probability, all probabilities (calibrated).
    A list of sentences gives a list of results; `text_pair` is the second text of a sentence pair; `raw=True`
    adds "raw_probabilities", the model's own softmax before the saved temperature."""
    items, single = _texts({"text": sentence, "text_pair": text_pair} if text_pair is not None else sentence)
    loaded = load_model()
    results = _classify(_check_pairs(items, loaded), loaded, raw=raw is True)
    return results[0] if single else results


def summarize(text, **overrides):
    """Domino-style scoring function of a summarizer: the summary and whether the text was cut
    (a list of texts gives a list of results)."""
    items, single = _texts(text)
    loaded = load_model()
    results = _summarize(_check_pairs(items, loaded), loaded, **overrides)
    return results[0] if single else results


def predict(data, model: dict | None = None) -> dict:
    """OCI Data Science entry point: {"prediction": [...]} for a text, a list, or a dict payload (a classifier's
    probabilities calibrated; `"raw": true` in a dict payload adds the raw ones)."""
    loaded = model or load_model()
    items = _check_pairs(_texts(data)[0], loaded)
    if loaded["task"] == "text-classification":
        return {"prediction": _classify(items, loaded, raw=isinstance(data, dict) and data.get("raw") is True)}
    return {"prediction": _summarize(items, loaded)}


if __name__ == "__main__":  # python score.py "some text" ...
    import sys

    print(json.dumps(predict(sys.argv[1:] or [sys.stdin.read()]), indent=2))
