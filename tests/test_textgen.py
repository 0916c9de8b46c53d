"""Summarization helpers: stand-ins, causal-LM rows and label masking, seq2seq rows, generation, ROUGE."""

from __future__ import annotations

import json

import pytest
import torch

import helpers as hp
import helpers._offline.samples
from helpers import _batching as batching
from helpers import textgen

# A row in the layout of `zqz979/meta-review` (`text` = reviews joined by <sep>, `summary` = meta-review),
# written in the style of real OpenReview reviews.
REAL_REVIEWS = (
    "This paper proposes a method for learning disentangled representations by penalizing the total "
    "correlation of the latent code. The idea is interesting and the paper is well written. However, the "
    "experimental evaluation is limited to dSprites and 3D Shapes, and the comparison with beta-TCVAE is "
    "missing. I also have concerns about the sensitivity to the weight of the penalty (Sec. 4.2). "
    "<sep> Summary: the authors introduce a regularizer ... Strengths: + clear motivation + simple to "
    "implement. Weaknesses: - novelty is incremental w.r.t. FactorVAE - no results on real images. "
    "Rating: 5 (marginally below the acceptance threshold). <sep> The rebuttal addressed some of my "
    "concerns; I raise my score to 6.")
REAL_META = ("The reviewers agree that the paper is clearly written and the regularizer is simple, but find the "
             "novelty incremental over FactorVAE and the experiments limited to synthetic data. The AC "
             "recommends rejection.")


@pytest.fixture(scope="module")
def pythia():
    g = hp.models.load_generator("EleutherAI/pythia-70m", kind="causal-lm")
    hp.models.ensure_pad_token(g.tokenizer, g.model, use_eos=True)
    return g


@pytest.fixture(scope="module")
def t5():
    return hp.models.load_generator("google-t5/t5-small", kind="seq2seq")


def _pairs(sources, targets):
    import datasets

    return datasets.Dataset.from_dict({"source": list(sources), "target": list(targets)})


def test_standins_use_the_real_architecture_classes(pythia, t5):
    from transformers import GPTNeoXForCausalLM, GPTNeoXTokenizer, T5ForConditionalGeneration, T5Tokenizer

    assert pythia.source.standin and pythia.source.requested == "EleutherAI/pythia-70m"
    assert isinstance(pythia.model, GPTNeoXForCausalLM) and isinstance(pythia.tokenizer, GPTNeoXTokenizer)
    assert pythia.model.config.max_position_embeddings == 2048
    assert isinstance(t5.model, T5ForConditionalGeneration) and isinstance(t5.tokenizer, T5Tokenizer)
    assert t5.is_encoder_decoder and not pythia.is_encoder_decoder
    assert "<extra_id_0>" in t5.tokenizer.get_vocab()


def test_standin_is_built_once_then_loaded_from_its_folder(tmp_path, monkeypatch):
    from helpers._offline import standins

    monkeypatch.setenv("WORKBOOK_CACHE", str(tmp_path))
    first = standins.tiny_gpt_neox_dir()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert standins.tiny_gpt_neox_dir() == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "standins" and not list(first.parent.glob(".tiny-gpt-neox-*"))


def test_labels_are_masked_on_the_prompt_of_a_real_example(pythia):
    tok = pythia.tokenizer
    source = textgen.clean_text(REAL_REVIEWS)
    assert "<sep>" not in source and "\n\n" in source
    pre = textgen.tokenize_causal_lm(_pairs([source], [REAL_META]), tok, max_length=1024, max_target_length=256)
    row = pre.dataset[0]
    k = row["prompt_length"]
    assert all(v == -100 for v in row["labels"][:k])
    assert row["labels"][k:] == row["input_ids"][k:]
    assert row["labels"][-1] == tok.eos_token_id
    assert tok.decode(row["input_ids"][:k]).endswith("Meta-review (TL;DR):")
    assert tok.decode(row["labels"][k:], skip_special_tokens=True) == " " + REAL_META
    shown = textgen.describe_example(tok, row["input_ids"], row["labels"])
    assert f"prompt {k} (labels -100, no loss)" in shown and "The AC recommends rejection" in shown


def test_truncation_cuts_the_source_never_the_target(pythia):
    tok = pythia.tokenizer
    long_source = " ".join([REAL_REVIEWS] * 20)
    too_long_target = " ".join([REAL_META] * 10)
    pairs = _pairs([long_source, "short reviews", "x"], [REAL_META, REAL_META, too_long_target])
    pre = textgen.tokenize_causal_lm(pairs, tok, max_length=128, max_target_length=80)
    assert len(pre.dataset) == 2 and pre.sources_truncated == 1
    assert pre.dropped == {"target longer than MAX_TARGET_LENGTH=80": 1}
    first = pre.dataset[0]
    assert len(first["input_ids"]) == 128 and first["source_truncated"]
    target = [v for v in first["labels"] if v != -100]
    assert tok.decode(target, skip_special_tokens=True) == " " + REAL_META  # whole
    assert tok.decode(first["input_ids"][: first["prompt_length"]]).endswith("\n\nMeta-review (TL;DR):")


def test_bad_prompt_settings_give_clear_errors(pythia):
    with pytest.raises(ValueError, match="must contain '{source}'"):
        textgen.PromptFormat("Summarize this:")
    with pytest.raises(ValueError, match="raise MAX_LENGTH"):
        textgen.encode_prompts(pythia.tokenizer, ["reviews"], textgen.PromptFormat(), 5)
    with pytest.raises(ValueError, match="MAX_TARGET_LENGTH .* must be smaller"):
        textgen.tokenize_causal_lm(_pairs(["a"], ["b"]), pythia.tokenizer, max_length=64, max_target_length=64)


def test_padding_with_eos_keeps_the_real_eos_attended_and_in_the_loss(pythia):
    tok = pythia.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    pre = textgen.tokenize_causal_lm(_pairs(["short", REAL_REVIEWS], ["ok.", REAL_META]), tok, max_length=512)
    rows = batching.TokenizedRows(pre.dataset)  # what the loop feeds the collator: only model inputs
    batch = batching.PadCollator(tok.pad_token_id)([rows[0], rows[1]])
    n = len(pre.dataset[0]["input_ids"])
    assert batch["input_ids"][0, n - 1] == tok.eos_token_id  # the row's own EOS ...
    assert batch["attention_mask"][0, n - 1] == 1 and batch["labels"][0, n - 1] == tok.eos_token_id  # ... is learned
    assert (batch["attention_mask"][0, n:] == 0).all() and (batch["labels"][0, n:] == -100).all()  # padding is not
    loss = pythia.model(**batch).loss
    assert torch.isfinite(loss)


def test_seq2seq_rows_cut_both_sides_and_keep_eos_last(t5):
    tok = t5.tokenizer
    pre = textgen.tokenize_seq2seq(_pairs([REAL_REVIEWS, "A short story."], [REAL_META, "Short."]), tok,
                                   max_source_length=32, max_target_length=12)
    first, second = pre.dataset[0], pre.dataset[1]
    assert len(first["input_ids"]) == 32 and first["input_ids"][-1] == tok.eos_token_id
    assert len(first["labels"]) == 12 and first["labels"][-1] == tok.eos_token_id
    assert tok.decode(second["input_ids"], skip_special_tokens=True).startswith("summarize: A short story")
    assert pre.sources_truncated == 1 and pre.targets_truncated == 1
    assert "encoder input (32 tokens)" in textgen.describe_example(tok, first["input_ids"], first["labels"])


@pytest.mark.parametrize("which", ["pythia", "t5"])
def test_batched_generation_matches_one_by_one(which, request):
    g = request.getfixturevalue(which)
    sources = [r["document"] for r in helpers._offline.samples.xsum_rows(9, seed=3)]
    if which == "pythia":
        inputs, _ = textgen.encode_prompts(g.tokenizer, sources, textgen.PromptFormat("{source}\nTL;DR:"), 200)
    else:
        inputs = ["summarize: " + s for s in sources]
    settings = textgen.GenerationSettings(max_new_tokens=12, min_new_tokens=4)
    batched = textgen.generate(g.model, g.tokenizer, inputs, settings=settings, batch_size=4, progress=False)
    naive = textgen._generate_one_by_one(g.model, g.tokenizer, inputs, settings=settings)
    assert batched == naive and any(batched)


def test_rouge_and_repetition_metrics():
    m = hp.metrics
    assert m._rouge(["the cat sat on the mat"], ["the cat sat on the mat"]) == {"rouge1": 100.0, "rouge2": 100.0,
                                                                                "rougeL": 100.0}
    assert m._rouge(["dogs bark"], ["the cat sat"])["rouge1"] == 0.0
    assert m._rouge(["the cats were sitting"], ["the cat sat"], use_stemmer=True)["rouge1"] > \
        m._rouge(["the cats were sitting"], ["the cat sat"], use_stemmer=False)["rouge1"]
    assert m._repetition_rate(["a b c d e f"]) == 0.0
    assert m._repetition_rate(["the paper is the paper is the paper is"]) == pytest.approx(4 / 7)
    scores = m.summary_metrics(["the paper is good", "x"], ["the paper is good", "y"])
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "repeated_3grams", "mean_words"}
    with pytest.raises(ValueError, match="must pair up"):
        m._rouge(["a"], ["a", "b"])


def test_load_text_pairs_from_a_jsonl_file_with_other_columns(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"reviews": REAL_REVIEWS, "meta": REAL_META, "id": 7}, {"reviews": " ", "meta": "empty"},
            {"reviews": REAL_REVIEWS, "meta": REAL_META, "id": 7},
            {"reviews": "Other reviews.", "meta": "Other.", "id": 8}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = hp.data._load_text_pairs(path, source_col="reviews", target_col="meta", id_col="id")
    assert loaded.dataset.column_names == ["source", "target", "id"] and len(loaded.dataset) == 2
    assert loaded.report.dropped == {"empty source": 1, "duplicate (same source and target)": 1}
    assert loaded.dataset[0]["id"] == "7"
    with pytest.raises(hp.data.DataError, match="no column 'text'.*set SOURCE_COL / TARGET_COL"):
        hp.data._load_text_pairs(path)


def test_a_saved_summarizer_loads_back_and_summarizes_the_same(pythia, tmp_path):
    fmt = textgen.PromptFormat()
    info = {"prompt_template": fmt.template, "max_length": 1024, "sep_marker": "<sep>",
            "generation": textgen.GenerationSettings(max_new_tokens=10, min_new_tokens=3).to_dict()}
    folder = hp.artifacts._save_model(tmp_path, pythia.model, pythia.tokenizer, task="summarization-causal", info=info)
    summarizer = hp.inference.load(folder, device="cpu")
    assert isinstance(summarizer, hp.inference._Summarizer)
    ids, _ = textgen.encode_prompts(pythia.tokenizer, [textgen.clean_text(REAL_REVIEWS)], fmt, 1024 - 10)
    expected = textgen.generate(pythia.model, pythia.tokenizer, ids, max_new_tokens=10, min_new_tokens=3,
                                progress=False)[0]
    result = summarizer.summarize(REAL_REVIEWS)
    assert result == {"summary": expected, "truncated": False}
    assert summarizer.summarize([REAL_REVIEWS, "x"])[0] == result
    with pytest.raises(ValueError, match="Unknown generation settings"):
        summarizer.summarize("x", beams=2)


def test_lora_adapter_and_merged_model_reload_to_identical_summaries(t5, tmp_path):
    """What notebook 05 ships: the adapter alone and a merged model, both loading back the same."""
    from peft import LoraConfig, PeftModel

    base_dir = t5.source.used
    model = hp.models.add_lora(hp.models.load_generator(base_dir, kind="seq2seq").model,
                           LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=16, target_modules=["q", "v"]))
    counts = hp.models._count_parameters(model)
    assert 0 < counts.trainable < 0.1 * counts.total
    rows = hp.data._load_text_pairs("auto", sample="xsum", source_col="document").dataset.select(range(48))
    data = textgen.tokenize_seq2seq(rows, t5.tokenizer, max_source_length=96, max_target_length=24).dataset
    history = hp.train(model, data, num_epochs=2, train_batch_size=8, lr=1e-2, precision="fp32", progress=False,
                       eval_each_epoch=False, log_every_steps=1)
    assert history.summary()["final_train_loss"] < history.summary()["first_train_loss"]

    # no_repeat_ngram_size=1 keeps a briefly trained tiny model from emitting one token over and over
    settings = textgen.GenerationSettings(max_new_tokens=12, min_new_tokens=6, no_repeat_ngram_size=1)
    info = {"prefix": "summarize: ", "max_source_length": 96, "sep_marker": None, "base_model_path": base_dir,
            "generation": settings.to_dict()}
    adapter_dir = hp.artifacts._save_model(tmp_path, model, t5.tokenizer, task="summarization-seq2seq", info=info,
                                           subdir="adapter")
    assert (adapter_dir / "adapter_config.json").exists() and not (adapter_dir / "config.json").exists()
    with hp.models._quiet_peft():
        merged = PeftModel.from_pretrained(hp.models.load_generator(base_dir, kind="seq2seq").model,
                                           adapter_dir).merge_and_unload()
    model_dir = hp.artifacts._save_model(tmp_path, merged, t5.tokenizer, task="summarization-seq2seq", info=info)
    assert hp.artifacts._folder_size_mb(adapter_dir) < hp.artifacts._folder_size_mb(model_dir)

    texts = [r["document"] for r in helpers._offline.samples.xsum_rows(10, seed=11)]
    from_adapter = hp.inference.load(adapter_dir, device="cpu").summarize(texts)
    from_merged = hp.inference.load(model_dir, device="cpu").summarize(texts)
    assert isinstance(hp.inference.load(adapter_dir, device="cpu").model, PeftModel)
    assert [r["summary"] for r in from_adapter] == [r["summary"] for r in from_merged]
    assert all(r["summary"] for r in from_merged)
