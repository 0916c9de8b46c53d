"""The shared loop: it learns, resumes exactly, evaluates, stops early, guards against NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers as hp
from helpers.training import _list_checkpoints, _NonFiniteLossError

LABELS = ["negative", "neutral", "positive"]
FAST = dict(train_batch_size=16, eval_batch_size=64, lr=1e-2, precision="fp32", progress=False, seed=3)


def test_loss_decreases_and_history_is_complete(tiny_model, tiny_data):
    metrics = hp.metrics.classification_metrics_fn(LABELS)
    history = hp.train(tiny_model, tiny_data["train"], tiny_data["validation"], num_epochs=3,
                       compute_metrics=metrics, metric_for_best="accuracy", log_every_steps=4, **FAST)
    losses = history.train_loss
    assert history.global_step == len(losses) == 48  # 256 rows / 16 per batch * 3 epochs
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    assert history.metric("accuracy")[-1] > 0.75  # well above the majority class (~0.59)
    assert [e["epoch"] for e in history.evals] == [1.0, 2.0, 3.0]
    assert history.total_examples == 3 * 256 and history.samples_per_s > 0 and history.peak_mem_mb > 0
    assert history.best_metric == max(history.metric("accuracy"))
    assert 0 <= history.best_metric <= 1
    summary = history.summary()
    assert summary["steps"] == 48 and summary["precision"] == "fp32"


def test_bf16_autocast_runs_when_asked(tiny_model, tiny_data):
    if hp.device.best_device().type == "cpu" and not hp.device._cpu_supports_bf16():
        pytest.skip("no native bf16 on this CPU")
    history = hp.train(tiny_model, tiny_data["train"], max_steps=4, **{**FAST, "precision": "bf16"})
    assert history.precision == "bf16" and all(np.isfinite(history.train_loss))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_continues_exactly_where_it_stopped(tmp_path, tiny_encoder_dir, tiny_data):
    """Interrupted at step 10 (last checkpoint at step 8), resumed: identical to an uninterrupted run."""
    from transformers import AutoModelForSequenceClassification

    def fresh():
        return AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)

    kwargs = dict(num_epochs=2, save_every_steps=4, grad_accum_steps=2, **FAST)
    full_model = fresh()
    full = hp.train(full_model, tiny_data["train"], checkpoint_dir=tmp_path / "full", **kwargs)

    interrupted = hp.train(fresh(), tiny_data["train"], checkpoint_dir=tmp_path / "cut", stop_after_steps=10, **kwargs)
    assert interrupted.global_step == 10
    assert _list_checkpoints(tmp_path / "cut")[-1].name == "checkpoint-8"

    resumed_model = fresh()
    resumed = hp.train(resumed_model, tiny_data["train"], checkpoint_dir=tmp_path / "cut", resume=True, **kwargs)
    assert resumed.resumed_from.endswith("checkpoint-8")
    assert resumed.global_step == full.global_step
    assert resumed.train_loss == full.train_loss
    for name, value in _state(full_model).items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    assert len(_list_checkpoints(tmp_path / "cut")) <= 2  # rotation keeps the newest two


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, tiny_model, tiny_data):
    hp.train(tiny_model, tiny_data["train"], max_steps=4, save_every_steps=2, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match="different run"):
        hp.train(tiny_model, tiny_data["train"], max_steps=6, checkpoint_dir=tmp_path, resume=True, **FAST)


def test_early_stopping_and_best_model_restore(tiny_model, tiny_data):
    history = hp.train(tiny_model, tiny_data["train"], tiny_data["validation"], num_epochs=20,
                       eval_every_steps=2, early_stopping_patience=2, metric_for_best="loss",
                       **{**FAST, "lr": 2e-1})  # far too high: validation loss stops improving quickly
    assert history.stopped_early and history.global_step < 20 * 16
    best = hp.evaluate(tiny_model, tiny_data["validation"], progress=False, precision="fp32")
    assert best.loss == pytest.approx(history.best_metric, rel=1e-4)


class _Exploding(torch.nn.Module):
    """Wraps a model; its loss turns to NaN from the 5th call on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.config = inner.config

    def forward(self, **batch):
        out = self.inner(**batch)
        self.calls += 1
        if self.calls >= 5:
            out.loss = out.loss * float("nan")
        return out


def test_nan_loss_stops_with_a_clear_message(tmp_path, tiny_model, tiny_data):
    with pytest.raises(_NonFiniteLossError) as err:
        hp.train(_Exploding(tiny_model), tiny_data["train"], num_epochs=1, log_every_steps=2, save_every_steps=2,
                 checkpoint_dir=tmp_path, **FAST)
    message = str(err.value)
    assert "step 5" in message and "learning rate" in message and "checkpoint-4" in message
    assert _list_checkpoints(tmp_path)[-1].name == "checkpoint-4"  # the last good one survives


def test_evaluate_returns_outputs_in_data_order(tiny_model, tiny_data):
    result = hp.evaluate(tiny_model, tiny_data["validation"], batch_size=7, progress=False, precision="fp32",
                         compute_metrics=hp.metrics.classification_metrics_fn(LABELS))
    assert result.labels.tolist() == list(tiny_data["validation"]["label"])
    assert result.logits.shape == (64, 3) and set(result.metrics) == {"accuracy", "macro_f1"}
    np.testing.assert_allclose(result.probabilities.sum(-1), 1, rtol=1e-5)
