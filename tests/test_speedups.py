"""The CPU fast paths of the training loop: same math as the slow paths, and the model is given back unchanged."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from helpers import _fastpaths as speedups


def test_fast_dropout_drops_p_and_keeps_the_expectation():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.ones(2_000_000, dtype=dtype, requires_grad=True)
        y = speedups.fast_dropout(x, 0.1)
        assert y.dtype == dtype
        assert abs((y == 0).float().mean().item() - 0.1) < 0.001
        assert abs(y.float().mean().item() - 1.0) < (0.002 if dtype == torch.float32 else 0.005)
        y.sum().backward()
        assert torch.equal(x.grad, y.detach())  # the backward applies the same mask and scale


def test_fast_dropout_edge_cases_and_bad_probability():
    x = torch.randn(4, 5)
    assert speedups.fast_dropout(x, 0.3, training=False) is x
    assert speedups.fast_dropout(x, 0.0) is x
    assert torch.equal(speedups.fast_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        speedups.fast_dropout(x, 1.5)


def test_fast_dropout_masks_follow_the_seed():
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = speedups.fast_dropout(x, 0.5)
    torch.manual_seed(7)
    b = speedups.fast_dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, speedups.fast_dropout(x, 0.5))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_attention_math_matches_sdpa_without_dropout(mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        mask[0, :, :, 3:] = False  # padding in the first row
    elif mask_kind == "float":
        mask = torch.zeros(2, 1, 5, 5)
        mask[1, :, :, 4:] = torch.finfo(torch.float32).min
    expected = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    got = speedups.attention_math(q, k, v, mask, dropout=0.0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _tiny_bert(dropout: float = 0.1, tied: bool = False):
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = (BertForMaskedLM if tied else BertForSequenceClassification)(config)
    return model.train()


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (4, 12), generator=g)  # a few dozen distinct rows of a 500-row embedding
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def _optimizer(model):
    import helpers as hp

    return hp.training.make_optimizer(model, 1e-2, 0.01, torch.device("cpu"))


def test_fast_paths_switch_on_and_restore_the_model():
    model = _tiny_bert()
    embedding = model.get_input_embeddings()
    with speedups.CpuFastPaths(model, _optimizer(model)) as fast:
        assert all(type(m) is speedups.FastDropout for m in fast.dropouts) and fast.dropouts
        assert model.config._attn_implementation == speedups.ATTENTION_NAME
        assert embedding.sparse
        assert "row-sparse" in fast.describe()
    assert not any(isinstance(m, speedups.FastDropout) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"
    assert not embedding.sparse


def test_fast_paths_restore_the_model_after_an_error():
    model = _tiny_bert()
    with pytest.raises(RuntimeError, match="boom"), speedups.CpuFastPaths(model, _optimizer(model)):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert not model.get_input_embeddings().sparse
    assert not any(isinstance(m, speedups.FastDropout) for m in model.modules())


def test_unknown_fast_path_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        speedups.CpuFastPaths(_tiny_bert(), parts=["dropout", "warp"])


def test_tied_or_frozen_embeddings_keep_dense_gradients():
    assert speedups._sparse_candidate(_tiny_bert(tied=True)) is None  # the MLM head shares the embedding
    frozen = _tiny_bert()
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert speedups._sparse_candidate(frozen) is None
    assert speedups._sparse_candidate(_tiny_bert()) is not None
    plain_sgd = _tiny_bert()
    paths = speedups.CpuFastPaths(plain_sgd, torch.optim.SGD(plain_sgd.parameters(), lr=0.1))
    assert paths.sparse_adam is None  # only AdamW has the row-sparse update


def _train_steps(fast: bool, max_norm: float, steps: int = 4):
    """A few AdamW steps with clipping and weight decay; returns the clip norms and the final weights."""
    model = _tiny_bert(dropout=0.0)
    optimizer = _optimizer(model)
    paths = speedups.CpuFastPaths(model, optimizer) if fast else None
    norms = []
    with paths or contextlib.nullcontext():
        for i in range(steps):
            model(**_batch(seed=i)).loss.backward()  # each batch uses other rows of the embedding
            if fast:
                norms.append(paths.clip_grad_norm_(model.parameters(), max_norm))
                paths.step(optimizer)
            else:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return norms, {n: p.detach().clone() for n, p in model.named_parameters()}, optimizer, paths


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])  # clipping that scales, and clipping that does not
def test_row_sparse_embedding_adamw_matches_the_dense_one(max_norm):
    dense_norms, dense, _, _ = _train_steps(fast=False, max_norm=max_norm)
    fast_norms, fast, _, paths = _train_steps(fast=True, max_norm=max_norm)
    torch.testing.assert_close(torch.stack(fast_norms), torch.stack(dense_norms), rtol=1e-5, atol=1e-8)
    for name in dense:
        if name.endswith("key.bias"):
            continue  # its true gradient is zero (softmax ignores it): Adam turns rounding noise into +-lr
        torch.testing.assert_close(fast[name], dense[name], rtol=1e-5, atol=1e-7, msg=name)
    used = len(paths.sparse_adam.rows)
    assert 0 < used < 100  # only the rows the batches used carry AdamW moments (of 500)


def test_checkpointed_optimizer_state_is_the_dense_one_and_resumes():
    _, _, dense_optimizer, _ = _train_steps(fast=False, max_norm=1.0, steps=2)
    _, _, optimizer, paths = _train_steps(fast=True, max_norm=1.0, steps=2)
    weight = paths.sparse_adam.weight
    assert weight not in optimizer.state  # kept compact while training
    with paths.dense_optimizer_state():
        saved = optimizer.state_dict()
    assert weight not in optimizer.state
    dense_saved = dense_optimizer.state_dict()
    assert saved["state"].keys() == dense_saved["state"].keys()
    for key in ("exp_avg", "exp_avg_sq", "step"):
        index = next(i for i, p in enumerate(optimizer.param_groups[0]["params"]) if p is weight)
        torch.testing.assert_close(saved["state"][index][key], dense_saved["state"][index][key],
                                   rtol=1e-5, atol=1e-9)
    # resuming: a fresh optimizer loads the dense state, the fast paths take it over compactly
    model = _tiny_bert(dropout=0.0)
    fresh = _optimizer(model)
    fresh.load_state_dict(saved)
    resumed = speedups.CpuFastPaths(model, fresh)
    with resumed:
        assert model.get_input_embeddings().weight not in fresh.state
        torch.testing.assert_close(resumed.sparse_adam.exp_avg_sq.sum(), paths.sparse_adam.exp_avg_sq.sum())
        assert float(resumed.sparse_adam.steps) == 2.0


def test_attention_dropout_path_is_used_and_repeats_with_the_seed():
    model = _tiny_bert(dropout=0.2)
    calls = []
    math = speedups.attention_math

    def counting(*args, **kwargs):
        calls.append(kwargs["dropout"])
        return math(*args, **kwargs)

    speedups.attention_math = counting
    try:
        with speedups.CpuFastPaths(model):
            losses = []
            for _ in range(2):
                torch.manual_seed(3)
                losses.append(model(**_batch()).loss.item())
            model.eval()
            with torch.no_grad():
                model(**_batch())  # evaluation: no dropout, so plain sdpa
    finally:
        speedups.attention_math = math
    assert calls == [0.2] * 4  # 2 layers x 2 training forwards, none while evaluating
    assert losses[0] == losses[1]


def test_training_with_and_without_fast_paths_learns_and_gives_the_model_back(tiny_encoder_dir, tiny_data):
    from transformers import AutoModelForSequenceClassification

    import helpers as hp

    results = {}
    for fast in (True, False):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, attn_implementation="sdpa")
        history = hp.train(model, tiny_data["train"], tiny_data["validation"], num_epochs=2, train_batch_size=16,
                           lr=1e-3, precision="fp32", progress=False, cpu_fast_paths=fast, seed=0,
                           eval_each_epoch=True, load_best_at_end=False)
        assert history.train_loss[-1] < history.train_loss[0]
        assert model.config._attn_implementation == "sdpa"
        assert not model.get_input_embeddings().sparse
        assert all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))
        results[fast] = history.evals[-1]["loss"]
    assert abs(results[True] - results[False]) < 0.25 * results[False]  # different masks, same learning


def test_a_fast_path_that_fails_its_check_falls_back_with_one_line(monkeypatch, tiny_model, capsys):
    """Each path checks what it relies on before use; the attention registration is undone on exit;
    describe() names only the paths in use."""
    from transformers import AttentionInterface

    from helpers import _fastpaths as speedups

    monkeypatch.setattr(speedups, "_dropout_works", lambda: "its masks drop 0.50 of values, not 0.25")
    paths = speedups.CpuFastPaths(tiny_model)
    assert "CPU fast path 'dropout' is off: its masks drop 0.50" in capsys.readouterr().out
    assert paths.dropouts == [] and "integer dropout masks" not in paths.describe()
    with paths:
        if paths.attention:
            assert speedups.ATTENTION_NAME in AttentionInterface._global_mapping
    assert speedups.ATTENTION_NAME not in AttentionInterface._global_mapping
