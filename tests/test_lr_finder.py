"""hp.find_lr, the learning-rate range test: an exponential ramp on the model that changes nothing of the run,
a suggestion with its reason, and its plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import helpers as hp
from helpers import planning

FAST = dict(train_batch_size=16, precision="fp32", progress=False, seed=3)


def test_the_range_test_ramps_the_rate_and_changes_nothing(tiny_model, tiny_data):
    before = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    result = hp.find_lr(tiny_model, tiny_data["train"], start_lr=1e-5, end_lr=1.0, num_steps=30, lr=3e-4, **FAST)
    assert torch.equal(torch.rand(2), expected)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in tiny_model.parameters())
    ratios = np.diff(np.log(result.lrs))
    assert result.lrs[0] == pytest.approx(1e-5) and np.allclose(ratios, ratios[0])  # exponential, 16 steps an epoch
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) and len(result.lrs) > 16
    assert result.lrs[0] <= result.suggested_lr <= result.lrs[-1]
    assert result.current_lr == 3e-4 and "Nothing of the run changed" in str(result)


def test_the_range_test_stops_when_the_loss_diverges(tiny_model, tiny_data):
    result = hp.find_lr(tiny_model, tiny_data["train"], start_lr=1e-3, end_lr=1e4, num_steps=40, **FAST)
    assert len(result.lrs) < 40 and "passed 4x its lowest" in result.stopped


def test_the_suggestion_is_the_steepest_descent_or_a_tenth_of_the_minimum():
    rates = np.logspace(-7, 0, 80)
    x = np.log10(rates)
    falling = 2.0 - 1.5 / (1 + np.exp(-(x + 4) * 3))  # falls fastest at 1e-4, flat by 1e-3
    loss = np.where(x < -2, falling, falling + (x + 2) ** 2 * 3)  # then diverges
    steep = planning._suggest_lr(rates, loss)
    assert steep.reason.startswith("where the smoothed loss falls fastest")
    assert 10 ** -4.3 < steep.suggested_lr < 10 ** -3.7
    assert steep.minimum_lr > steep.suggested_lr
    flat = planning._suggest_lr(rates, 1.0 + (x + 2) ** 2 * 0.0005)  # no descent worth the name: lowest at 1e-2
    assert flat.reason.startswith("a tenth of the rate") and flat.suggested_lr == pytest.approx(flat.minimum_lr / 10)
    noisy = planning._suggest_lr(rates, loss + np.random.default_rng(0).normal(0, 0.05, len(loss)))
    assert 10 ** -4.6 < noisy.suggested_lr < 10 ** -3.4  # the smoothing keeps the answer
    late = 2.0 - 1.5 / (1 + np.exp(-(x + 3.3) * 8))  # flat, then a drop just before it blows up (fine-tuning)
    late = np.where(x < -3, late, late + (x + 3) ** 2 * 4)
    tenth = planning._suggest_lr(rates, late)
    assert tenth.steepest_lr is not None and tenth.steepest_lr > tenth.minimum_lr / 10
    assert tenth.suggested_lr == pytest.approx(tenth.minimum_lr / 10) and "too close" in tenth.reason


def test_smoothing_has_no_lag():
    values = np.r_[np.ones(20), np.zeros(20)]
    smoothed = planning._smooth(values, 5)
    assert smoothed[19] == pytest.approx(0.6) and smoothed[20] == pytest.approx(0.4)  # centred on the step
    assert smoothed[0] == 1 and smoothed[-1] == 0


def test_the_plot_marks_the_suggestion(tmp_path):
    rates = np.logspace(-6, -1, 30)
    result = planning._suggest_lr(rates, 2 - np.tanh(np.log10(rates) + 4), stopped="reaching 0.1", current_lr=5e-5)
    ax = hp.plots.lr_find(result, path=tmp_path / "lr.png")
    assert (tmp_path / "lr.png").exists() and ax.get_xscale() == "log"
    assert any("suggested" in t.get_text() for t in ax.get_legend().get_texts())


def test_bad_ranges_are_refused(tiny_model, tiny_data):
    with pytest.raises(ValueError, match="start_lr"):
        hp.find_lr(tiny_model, tiny_data["train"], start_lr=1e-2, end_lr=1e-3, **FAST)
