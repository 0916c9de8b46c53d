"""Summarization with generative models: building training rows and generating in batches.

Two model families, one set of helpers:

* **causal LM** (Pythia, notebook 04): one sequence `prompt + target + EOS`. The prompt is a
  template around the source; labels are -100 on the prompt (and on padding), so the loss is on
  the summary only. Truncation cuts the *source*, never the target.
* **seq2seq** (T5, notebook 05): the encoder reads `prefix + source` (truncated), the decoder
  learns the target (`labels`); T5 builds its decoder inputs from the labels itself.

`generate` batches prompts sorted by length (little padding), pads on the left for decoder-only
models and on the right for encoder-decoders, uses the KV cache, and returns texts in input order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from . import device as dev
from ._batching import PadCollator, sorted_batches

__all__ = ["GenerationSettings", "PromptFormat", "clean_text", "describe_example", "encode_prompts", "generate",
           "tokenize_causal_lm", "tokenize_seq2seq"]

_IGNORE_INDEX = -100
_DEFAULT_PROMPT = "Reviews of a paper:\n{source}\n\nMeta-review (TL;DR):"


# --------------------------------------------------------------------------- text clean-up

_SEED_CLEANING = re.compile(r"[^a-zA-Z0-9\s]")


def clean_text(text: str, *, sep_marker: str | None = "<sep>", sep_as: str = "\n\n", clean: bool = False,
               squeeze: bool = True) -> str:
    """A source or target made ready to tokenize: each `sep_marker` (between reviews) becomes `sep_as`;
    `clean=True` applies the original project's cleaning (keep only `[a-zA-Z0-9\\s]`); `squeeze` collapses
    the spaces in each line and runs of blank lines, and strips the ends.

    The original cleaning makes text uniform, but it also deletes punctuation, so sentence ends, numbers
    like 0.5, hyphenated words and accents are lost, and the model learns to write without punctuation
    that its pre-training knew. Off by default; an option for comparison. That cleaning alone, the text
    otherwise as it was: `clean_text(text, sep_marker=None, squeeze=False, clean=True)`.
    """
    if sep_marker:
        text = text.replace(sep_marker, sep_as)
    if clean:
        text = _SEED_CLEANING.sub("", text)
    if not squeeze:
        return text
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --------------------------------------------------------------------------- causal-LM rows

@dataclass
class PromptFormat:
    """`template` holds `{source}`; the target follows it after `target_prefix` and ends with EOS."""

    template: str = _DEFAULT_PROMPT
    target_prefix: str = " "

    def __post_init__(self):
        if self.template.count("{source}") != 1:
            raise ValueError(f"PROMPT_TEMPLATE must contain '{{source}}' exactly once, got {self.template!r}.")

    @property
    def parts(self) -> tuple[str, str]:
        before, after = self.template.split("{source}")
        return before, after

    def render(self, source: str) -> str:
        before, after = self.parts
        return before + source + after


@dataclass
class _Preprocessed:
    """Tokenized rows plus what preprocessing did to them."""

    dataset: Any  # datasets.Dataset with input_ids, labels (+ bookkeeping columns)
    rows_in: int
    dropped: dict[str, int] = field(default_factory=dict)
    sources_truncated: int = 0
    targets_truncated: int = 0

    def summary(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_out": len(self.dataset), "dropped": self.dropped,
                "sources_truncated": self.sources_truncated, "targets_truncated": self.targets_truncated}

    def __str__(self) -> str:
        s = self.summary()
        return (f"{s['rows_out']} of {s['rows_in']} rows kept; dropped {s['dropped'] or 'none'}; "
                f"sources truncated: {s['sources_truncated']}; targets truncated: {s['targets_truncated']}")


def _ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer, sources: Sequence[str], fmt: PromptFormat, max_prompt_tokens: int | Sequence[int]
                   ) -> tuple[list[list[int]], list[bool]]:
    """Token ids of `fmt.render(source)` with the *source* cut to fit `max_prompt_tokens`.

    The template's text around the source is always kept whole; returns the ids and, per row,
    whether the source was truncated.
    """
    before, after = fmt.parts
    pre = _ids(tokenizer, [before])[0] if before else []
    post = _ids(tokenizer, [after])[0] if after else []
    budgets = [max_prompt_tokens] * len(sources) if isinstance(max_prompt_tokens, int) else list(max_prompt_tokens)
    out, truncated = [], []
    for src, budget in zip(_ids(tokenizer, sources), budgets):
        room = budget - len(pre) - len(post)
        if room < 1:
            raise ValueError(f"No room for the source: the prompt template alone takes {len(pre) + len(post)} tokens "
                             f"of {budget}; raise MAX_LENGTH or shorten PROMPT_TEMPLATE / MAX_TARGET_LENGTH.")
        truncated.append(len(src) > room)
        out.append(pre + src[:room] + post)
    return out, truncated


def tokenize_causal_lm(dataset, tokenizer, *, fmt: PromptFormat | None = None, max_length: int = 1024,
                       max_target_length: int = 256) -> _Preprocessed:
    """Rows `prompt + target + EOS` with labels -100 on the prompt (and, later, on padding).

    Targets are never cut: a row whose target (with EOS) is longer than `max_target_length`
    is dropped and counted. Sources are cut to fit `max_length`; truncations are counted.
    Needs columns `source`, `target`; adds `input_ids`, `labels`, `prompt_length`.
    """
    fmt = fmt or PromptFormat()
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token; the model could not learn where a summary ends.")
    if max_target_length >= max_length:
        raise ValueError(f"MAX_TARGET_LENGTH ({max_target_length}) must be smaller than MAX_LENGTH ({max_length}).")
    sources, targets = list(dataset["source"]), list(dataset["target"])
    target_ids = [ids + [tokenizer.eos_token_id] for ids in _ids(tokenizer, [fmt.target_prefix + t for t in targets])]
    keep = [i for i, t in enumerate(target_ids) if len(t) <= max_target_length]
    prompts, truncated = encode_prompts(tokenizer, [sources[i] for i in keep], fmt,
                                        [max_length - len(target_ids[i]) for i in keep])
    rows = {"input_ids": [], "labels": [], "prompt_length": [], "source_truncated": []}
    for i, prompt, cut in zip(keep, prompts, truncated):
        rows["input_ids"].append(prompt + target_ids[i])
        rows["labels"].append([_IGNORE_INDEX] * len(prompt) + target_ids[i])
        rows["prompt_length"].append(len(prompt))
        rows["source_truncated"].append(cut)
    import datasets

    extra = {c: [dataset[c][i] for i in keep] for c in ("source", "target", "id") if c in dataset.column_names}
    dropped = len(sources) - len(keep)
    reason = f"target longer than MAX_TARGET_LENGTH={max_target_length}"
    return _Preprocessed(datasets.Dataset.from_dict({**extra, **rows}), rows_in=len(sources),
                         dropped={reason: dropped} if dropped else {},
                         sources_truncated=sum(truncated))


def tokenize_seq2seq(dataset, tokenizer, *, prefix: str = "summarize: ", max_source_length: int = 512,
                     max_target_length: int = 64) -> _Preprocessed:
    """Encoder input `prefix + source` and `labels` = target, each cut to its length (EOS kept last)."""
    eos = tokenizer.eos_token_id

    def cut(ids: list[int], limit: int) -> tuple[list[int], bool]:
        body = ids[:-1] if ids and ids[-1] == eos else ids
        if len(body) + 1 <= limit:
            return body + [eos], False
        return body[: limit - 1] + [eos], True

    sources, targets = list(dataset["source"]), list(dataset["target"])
    enc = tokenizer([prefix + s for s in sources])["input_ids"]
    lab = tokenizer(text_target=targets)["input_ids"]
    rows = {"input_ids": [], "labels": [], "source_truncated": []}
    targets_cut = 0
    for src, tgt in zip(enc, lab):
        ids, src_cut = cut(src, max_source_length)
        labels, tgt_cut = cut(tgt, max_target_length)
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["source_truncated"].append(src_cut)
        targets_cut += tgt_cut
    import datasets

    extra = {c: list(dataset[c]) for c in ("source", "target", "id") if c in dataset.column_names}
    return _Preprocessed(datasets.Dataset.from_dict({**extra, **rows}), rows_in=len(sources),
                         sources_truncated=sum(rows["source_truncated"]), targets_truncated=targets_cut)


def describe_example(tokenizer, input_ids: Sequence[int], labels: Sequence[int], *, width: int = 300) -> str:
    """What the model reads and where the loss is, for one row (causal LM or seq2seq)."""
    def show(ids):
        text = tokenizer.decode(list(ids), skip_special_tokens=False)
        return repr(text if len(text) <= width else text[: width // 2] + " ... " + text[-width // 2:])

    if len(labels) == len(input_ids) and any(v == _IGNORE_INDEX for v in labels):  # causal LM: one sequence
        masked = [t for t, v in zip(input_ids, labels) if v == _IGNORE_INDEX]
        learned = [v for v in labels if v != _IGNORE_INDEX]
        k = len(masked)
        boundary = [f"{tokenizer.convert_ids_to_tokens(int(t))!r}:{'-100' if v == _IGNORE_INDEX else v}"
                    for t, v in list(zip(input_ids, labels))[max(0, k - 3): k + 3]]
        return "\n".join([
            f"sequence: {len(input_ids)} tokens = prompt {k} (labels -100, no loss) + target {len(learned)} (loss)",
            f"prompt (masked): {show(masked)}",
            f"target (learned): {show(learned)}",
            f"around the boundary (token:label): {' '.join(boundary)}",
        ])
    learned = [v for v in labels if v != _IGNORE_INDEX]
    return "\n".join([f"encoder input ({len(input_ids)} tokens): {show(input_ids)}",
                      f"labels ({len(learned)} tokens, decoder learns them): {show(learned)}"])


# --------------------------------------------------------------------------- generation

@dataclass
class GenerationSettings:
    """Decoding settings. Greedy by default; `num_beams > 1` for beam search.

    `repetition_penalty > 1` makes tokens already generated less likely; `no_repeat_ngram_size=n`
    forbids repeating any n-gram: both fight the loops small models fall into.
    """

    max_new_tokens: int = 64
    num_beams: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    min_new_tokens: int = 0

    def kwargs(self) -> dict[str, Any]:
        out = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": False,
               "repetition_penalty": self.repetition_penalty, "no_repeat_ngram_size": self.no_repeat_ngram_size}
        if self.num_beams > 1:
            out.update(length_penalty=self.length_penalty, early_stopping=True)
        if self.min_new_tokens:
            out["min_new_tokens"] = self.min_new_tokens
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_encoder_decoder(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _as_ids(tokenizer, inputs) -> list[list[int]]:
    if inputs and isinstance(inputs[0], str):
        return tokenizer(list(inputs))["input_ids"]
    return [list(map(int, x)) for x in inputs]


def _generation_kwargs(model, tokenizer, settings: GenerationSettings | None, overrides: dict) -> dict[str, Any]:
    kwargs = (settings or GenerationSettings()).kwargs()
    kwargs.update(overrides)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs.setdefault("pad_token_id", pad)
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    if _is_encoder_decoder(model) and pad != tokenizer.eos_token_id:
        kwargs.setdefault("suppress_tokens", [pad])  # padding is never a word of a summary (T5 starts from it)
    return kwargs


def _generation_config(model, tokenizer, settings: GenerationSettings | None = None, **overrides):
    """A `transformers.GenerationConfig`: the model's own (decoder start token, ...) updated with the
    workbook's decoding settings, pad and EOS, and for seq2seq models padding suppressed."""
    import copy

    config = copy.deepcopy(model.generation_config)
    config.use_cache = True  # in the config, not as a generate() argument: transformers warns about mixing the two
    unused = config.update(**_generation_kwargs(model, tokenizer, settings, overrides))
    if unused:
        raise ValueError(f"Unknown generation settings {sorted(unused)}.")
    return config


def _decode(tokenizer, model, out: torch.Tensor, input_width: int) -> list[str]:
    new = out if _is_encoder_decoder(model) else out[:, input_width:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


@torch.inference_mode()
def generate(model, tokenizer, inputs: Sequence[str] | Sequence[Sequence[int]], *,
             settings: GenerationSettings | None = None, batch_size: int = 16, precision: str = "fp32",
             allow_fp16: bool = True, device: torch.device | None = None, progress: bool = True,
             desc: str = "generate", **overrides) -> list[str]:
    """Generated texts for `inputs` (prompt texts, or token ids from `encode_prompts`), in input order.

    Batches are formed from inputs sorted by length, so each is padded little; decoder-only
    models are padded on the left (generation continues from the right end), encoder-decoders on
    the right. The KV cache is on. `overrides` go to `model.generate` (e.g. `num_beams=4`).
    The model is put on `device` (default: the best one, as for `hp.evaluate`); `allow_fp16=False`
    for models that overflow in fp16 (T5).
    """
    from ._progress import progress_bar

    ids = _as_ids(tokenizer, inputs)
    if not ids:
        return []
    device = dev._place_model(model, device)
    precision = dev.resolve_precision(precision, device, allow_fp16=allow_fp16)
    config = _generation_config(model, tokenizer, settings, **overrides)
    collate = PadCollator(config.pad_token_id, padding_side="right" if _is_encoder_decoder(model) else "left")
    was_training = model.training
    model.eval()
    texts: list[str | None] = [None] * len(ids)
    try:
        with dev._autocast(device, precision):
            for batch_ids in progress_bar(sorted_batches([len(x) for x in ids], batch_size), desc=desc, leave=False,
                                  disable=not progress):
                batch = collate([{"input_ids": ids[i]} for i in batch_ids])
                batch = dev._to_device(batch, device)
                out = model.generate(**batch, generation_config=config)
                for i, text in zip(batch_ids, _decode(tokenizer, model, out, batch["input_ids"].shape[1])):
                    texts[i] = text
    finally:
        model.train(was_training)
    return texts  # type: ignore[return-value]


@torch.inference_mode()
def _generate_one_by_one(model, tokenizer, inputs, *, settings: GenerationSettings | None = None,
                         precision: str = "fp32", allow_fp16: bool = True, device: torch.device | None = None,
                         **overrides) -> list[str]:
    """The naive way (one `model.generate` call per input): the reference the benchmark compares to."""
    ids = _as_ids(tokenizer, inputs)
    device = dev._place_model(model, device)
    precision = dev.resolve_precision(precision, device, allow_fp16=allow_fp16)
    kwargs = _generation_kwargs(model, tokenizer, settings, overrides)
    model.eval()
    texts = []
    with dev._autocast(device, precision):
        for row in ids:
            input_ids = torch.tensor([row], device=device)
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            texts.extend(_decode(tokenizer, model, out, input_ids.shape[1]))
    return texts
