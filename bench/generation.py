"""Generation benchmark: the workbook's batched `generate` vs a naive one-by-one `model.generate` loop.

Same model, same prompts, same greedy settings, fp32 (so the outputs can be compared exactly).
"""

from __future__ import annotations

import time


def run(kind: str, *, model: str | None = None, n: int = 48, batch_size: int = 16, max_new_tokens: int = 32,
        device: str | None = None) -> dict:
    import torch

    import helpers as hp
    from helpers import textgen

    name = model or {"causal-lm": "EleutherAI/pythia-70m", "seq2seq": "google-t5/t5-small"}[kind]
    g = hp.models.load_generator(name, kind=kind)
    dev = torch.device(device) if device else hp.device.best_device()
    g.model.to(dev).eval()
    if kind == "causal-lm":
        hp.models.ensure_pad_token(g.tokenizer, g.model, use_eos=True)
        rows = hp.data._load_text_pairs("auto", sample="meta_review", source_col="Input",
                                        target_col="Output").dataset.select(range(n))
        sources = [textgen.clean_text(s) for s in rows["source"]]
        inputs, _ = textgen.encode_prompts(g.tokenizer, sources, textgen.PromptFormat(), 384)
    else:
        rows = hp.data._load_text_pairs("auto", sample="xsum", source_col="document").dataset.select(range(n))
        inputs = textgen.tokenize_seq2seq(rows, g.tokenizer, max_source_length=256).dataset["input_ids"]
    # min_new_tokens: a random stand-in may stop at once; both ways generate the same lengths
    settings = textgen.GenerationSettings(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    # device=dev everywhere: without it generate() puts the model back on the best device
    textgen.generate(g.model, g.tokenizer, inputs[:2], settings=settings, precision="fp32", device=dev,
                     progress=False)  # warm-up
    start = time.perf_counter()
    naive = textgen._generate_one_by_one(g.model, g.tokenizer, inputs, settings=settings, precision="fp32", device=dev)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = textgen.generate(g.model, g.tokenizer, inputs, settings=settings, batch_size=batch_size,
                               precision="fp32", device=dev, progress=False)
    batched_s = time.perf_counter() - start
    identical = sum(a == b for a, b in zip(naive, batched))
    return {"kind": kind, "model": g.source.to_dict(), "prompts": len(inputs), "batch_size": batch_size,
            "max_new_tokens": max_new_tokens, "naive_summaries_per_s": len(inputs) / naive_s,
            "batched_summaries_per_s": len(inputs) / batched_s, "speedup": naive_s / batched_s,
            "identical_outputs": identical, "device": str(dev)}
