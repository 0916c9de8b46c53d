"""The CPU fast paths of the training loop: same math as the slow paths, on by default on a CPU only, exact resume,
and the model is given back unchanged."""

from __future__ import annotations

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


def _tiny_bert(dropout: float = 0.1):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    return model.train()


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def test_fast_paths_switch_on_and_restore_the_model():
    model = _tiny_bert()
    assert speedups.PARTS == ("dropout", "attention")
    with speedups.CpuFastPaths(model) as fast:
        assert all(type(m) is speedups.FastDropout for m in fast.dropouts) and fast.dropouts
        assert model.config._attn_implementation == speedups.ATTENTION_NAME
        assert fast.describe() == f"integer dropout masks ({len(fast.dropouts)} modules); bf16 attention with dropout"
    assert not any(isinstance(m, speedups.FastDropout) for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


def test_fast_paths_restore_the_model_after_an_error():
    model = _tiny_bert()
    with pytest.raises(RuntimeError, match="boom"), speedups.CpuFastPaths(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, speedups.FastDropout) for m in model.modules())


def test_unknown_or_removed_fast_path_is_refused():
    with pytest.raises(ValueError, match="choose from"):
        speedups.CpuFastPaths(_tiny_bert(), parts=["dropout", "warp"])
    with pytest.raises(ValueError, match="'embedding' was removed"):  # the row-sparse embedding path left
        speedups.CpuFastPaths(_tiny_bert(), parts=["dropout", "attention", "embedding"])
    only_dropout = speedups.CpuFastPaths(_tiny_bert(), parts=["dropout"])
    assert only_dropout.dropouts and not only_dropout.attention


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


def test_training_on_a_cpu_uses_both_fast_paths_by_default_and_false_turns_them_off(tiny_encoder_dir, tiny_data,
                                                                                      capsys):
    from transformers import AutoModelForSequenceClassification

    import helpers as hp

    assert hp.TrainConfig().cpu_fast_paths is True
    results = {}
    for option in ({}, {"cpu_fast_paths": False}):  # the default, then off
        model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, attn_implementation="sdpa")
        history = hp.train(model, tiny_data["train"], tiny_data["validation"], num_epochs=2, train_batch_size=16,
                           lr=1e-3, precision="fp32", progress=not option, seed=0, eval_each_epoch=True,
                           load_best_at_end=False, **option)
        assert history.train_loss[-1] < history.train_loss[0]
        assert model.config._attn_implementation == "sdpa"
        assert all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))
        results[bool(option)] = history
    default, off = results[False], results[True]
    assert "integer dropout masks" in default.fast_paths and "bf16 attention with dropout" in default.fast_paths
    assert default.summary()["fast_paths"] == default.fast_paths
    assert "on by default on a CPU; cpu_fast_paths=False turns them off" in capsys.readouterr().out
    assert off.fast_paths == ""
    assert abs(default.evals[-1]["loss"] - off.evals[-1]["loss"]) < 0.25 * off.evals[-1]["loss"]  # same learning


def test_resume_with_the_default_fast_paths_is_exact(tmp_path, tiny_encoder_dir, tiny_data):
    """Interrupted at step 6 (last checkpoint at step 4) and resumed: the dropout masks, the losses and the
    weights are those of an uninterrupted run."""
    from transformers import AutoModelForSequenceClassification

    import helpers as hp

    def fresh():
        return AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, attn_implementation="sdpa")

    kwargs = dict(max_steps=10, save_every_steps=4, log_every_steps=1, train_batch_size=16, lr=1e-3,
                  precision="fp32", progress=False, seed=1)
    full_model = fresh()
    full = hp.train(full_model, tiny_data["train"], **kwargs)
    assert "integer dropout masks" in full.fast_paths and "bf16 attention" in full.fast_paths
    hp.train(fresh(), tiny_data["train"], checkpoint_dir=tmp_path, stop_after_steps=6, **kwargs)
    resumed_model = fresh()
    resumed = hp.train(resumed_model, tiny_data["train"], checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert resumed.resumed_from.endswith("checkpoint-4") and resumed.fast_paths == full.fast_paths
    assert resumed.train_loss == full.train_loss
    for name, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


@pytest.mark.parametrize("kind", ["cuda", "mps"])
def test_no_fast_paths_on_a_gpu_or_mps(monkeypatch, kind):
    """The loop's decision with the device a GPU (CUDA simulated as in test_gpu_decisions) or MPS."""
    from types import SimpleNamespace

    import helpers as hp
    from helpers import device as dev
    from helpers import training

    if kind == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    device = dev.best_device()
    assert device.type == kind
    model = _tiny_bert()
    for option in (True, ["dropout", "attention"]):
        loop = SimpleNamespace(cfg=hp.TrainConfig(cpu_fast_paths=option), device=device, unwrapped=model)
        paths = training._Loop._fast_paths(loop)
        assert not isinstance(paths, speedups.CpuFastPaths) and paths.describe() == ""
        with paths:
            assert model.config._attn_implementation == "sdpa"
            assert not any(isinstance(m, speedups.FastDropout) for m in model.modules())
    cpu = SimpleNamespace(cfg=hp.TrainConfig(), device=torch.device("cpu"), unwrapped=model)
    assert isinstance(training._Loop._fast_paths(cpu), speedups.CpuFastPaths)  # the same model on a CPU: on


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
