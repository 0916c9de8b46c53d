"""Tiny offline stand-ins for the generative models: GPT-NeoX (Pythia) and T5, same classes.

When `EleutherAI/pythia-70m` or `google-t5/t5-small` cannot be reached, notebooks 04 and 05 use a
tiny model of the *same architecture classes* (`GPTNeoXForCausalLM`, `T5ForConditionalGeneration`),
built from a config with a fixed seed and a tokenizer trained offline (byte-level BPE like Pythia's,
Unigram with `<extra_id_*>` sentinels like T5's). Each is built once into a cache folder and then
loaded with the ordinary `from_pretrained(path)`, so the code path is the real one. Its weights are
random: it shows that the code works, not what the real model would score.

The cache folder is `$WORKBOOK_CACHE/standins` (default `~/.cache/finetune-workbook/standins`).
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

from . import samples

VERSION = "v1"  # bump when a builder changes so old cached builds are not reused
VOCAB_SIZE = 4096
SEED = 0

CAUSAL_LM = "causal-lm"
SEQ2SEQ = "seq2seq"
DESCRIPTIONS = {
    CAUSAL_LM: "a tiny GPT-NeoX (Pythia architecture, random weights, offline BPE tokenizer)",
    SEQ2SEQ: "a tiny T5 (T5 architecture, random weights, offline Unigram tokenizer)",
}


def cache_dir() -> Path:
    """`$WORKBOOK_CACHE/standins`, else `~/.cache/finetune-workbook/standins`; when neither can be written (a
    read-only or missing HOME, as on some job runners), a folder in the system's temporary directory, said once."""
    if os.environ.get("WORKBOOK_CACHE"):
        return Path(os.environ["WORKBOOK_CACHE"]) / "standins"
    preferred = Path.home() / ".cache" / "finetune-workbook" / "standins"
    if _writable(preferred):
        return preferred
    fallback = Path(tempfile.gettempdir()) / f"finetune-workbook-{os.getuid() if hasattr(os, 'getuid') else 0}"
    if not getattr(cache_dir, "said", False):
        cache_dir.said = True
        print(f"note: {preferred.parent} cannot be written (HOME={os.environ.get('HOME', '?')}); the offline "
              f"stand-ins are built in {fallback} instead (set WORKBOOK_CACHE to a folder to keep them)")
    return fallback / "standins"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


_EXTRA_CHARS = "äöüßéèêàâçñíóúåøæÄÖÜÉÅØ€£¥–—‘’“”…°"


def _corpus() -> list[str]:
    """Text to train the tokenizers on: the generated samples plus every printable character."""
    texts = [" ".join(pair) for pair in samples.meta_review_rows(240)]
    texts += [row["document"] + " " + row["summary"] for row in samples.xsum_rows(240)]
    texts += [sentence for _, sentence in samples.phrasebank_rows(600)]
    texts += [text for _, text in samples.yelp_rows(300)]
    texts.append(string.printable + _EXTRA_CHARS)
    return texts


def _build_atomically(name: str, build) -> Path:
    """Build into a temporary folder next to the target, then rename: a killed build never looks done."""
    import hashlib

    digest = hashlib.sha256("\n".join(_corpus()).encode()).hexdigest()[:10]  # new samples -> a new build
    final = cache_dir() / f"{name}-{VERSION}-{digest}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: use its build
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _save(folder: Path, model_class, config, tokenizer, requested: str, kind: str) -> None:
    """Initialize the model with the fixed seed and save it, its tokenizer and a note on what it is."""
    import torch

    torch.manual_seed(SEED)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "STANDIN.md").write_text(f"Offline stand-in for {requested}: {DESCRIPTIONS[kind]}.\n")


# --------------------------------------------------------------------------- GPT-NeoX (Pythia)

def _bpe_tokenizer():
    """A byte-level BPE tokenizer with Pythia's special tokens (`<|endoftext|>` = 0, `<|padding|>` = 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXTokenizer

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(_corpus(), trainer)
    model = json.loads(raw.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Like Pythia's own tokenizer_config: bos = eos = unk = <|endoftext|>; padding handled by the notebook.
    return GPTNeoXTokenizer(vocab=model["vocab"], merges=merges, unk_token="<|endoftext|>",
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|padding|>")


def _build_gpt_neox(folder: Path) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = _bpe_tokenizer()
    # Pythia-70m's shape scaled down: same rotary attention, parallel residual, untied embeddings,
    # and the same 2,048-token context.
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, max_position_embeddings=2048, rotary_pct=0.25,
                           use_parallel_residual=True, tie_word_embeddings=False,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    _save(folder, GPTNeoXForCausalLM, config, tokenizer, "EleutherAI/pythia-70m", CAUSAL_LM)


def tiny_gpt_neox_dir() -> Path:
    """Folder of the tiny GPT-NeoX stand-in (built on first use)."""
    return _build_atomically("tiny-gpt-neox", _build_gpt_neox)


# --------------------------------------------------------------------------- T5

def _unigram_tokenizer():
    """A Unigram tokenizer laid out like T5's: <pad> = 0, </s> = 1, <unk> = 2, then pieces, then sentinels."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    raw = Tokenizer(models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", initial_alphabet=list(string.printable.strip() + _EXTRA_CHARS),
                                      show_progress=False)
    raw.train_from_iterator(_corpus(), trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(raw.to_str())["model"]["vocab"]]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=vocab, extra_ids=100)


def _build_t5(folder: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _unigram_tokenizer()
    # t5-small's shape scaled down: relative attention buckets, ReLU feed-forward, tied embeddings.
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=32, dropout_rate=0.1,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    _save(folder, T5ForConditionalGeneration, config, tokenizer, "google-t5/t5-small", SEQ2SEQ)


def tiny_t5_dir() -> Path:
    """Folder of the tiny T5 stand-in (built on first use)."""
    return _build_atomically("tiny-t5", _build_t5)


BUILDERS = {CAUSAL_LM: tiny_gpt_neox_dir, SEQ2SEQ: tiny_t5_dir}
