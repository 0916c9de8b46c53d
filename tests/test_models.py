"""Model resolution (local, cache, Hub, stand-in), the Hub probe, label maps by name."""

from __future__ import annotations

import os
import time

import pytest

import helpers as hp
from helpers._offline import hub
from helpers.models import _ModelNotAvailableError


def test_unreachable_model_falls_back_to_the_announced_standin(capsys):
    source = hp.models.resolve_model("ProsusAI/finbert")
    assert source.standin and source.how == "stand-in"
    assert (hp.models._standin_encoder_dir() / "config.json").exists()
    out = capsys.readouterr().out
    assert "OFFLINE STAND-IN MODEL" in out and "ProsusAI/finbert" in out


def test_no_standin_allowed_is_a_clear_error():
    with pytest.raises(_ModelNotAvailableError) as err:
        hp.models.resolve_model("ProsusAI/finbert", allow_standin=False)
    message = str(err.value)
    assert "MODEL_NAME" in message and "ALLOW_STANDIN=True" in message and "\n" not in message


def test_local_folder_wins_and_bad_folders_are_explained(tmp_path, tiny_encoder_dir):
    assert hp.models.resolve_model(str(tiny_encoder_dir)).how == "local folder"
    with pytest.raises(_ModelNotAvailableError, match="no config.json"):
        hp.models.resolve_model(str(tmp_path))
    with pytest.raises(_ModelNotAvailableError, match="not found"):
        hp.models.resolve_model("./no-such-model")


def test_probe_is_quick_and_sets_offline_mode(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    probes = []
    real_probe = hub._probe
    monkeypatch.setattr(hub, "_probe", lambda timeout: probes.append(timeout) or real_probe(timeout))
    hub._reset_for_tests()
    try:
        start = time.perf_counter()
        assert hub.hub_available(timeout=2) is False
        assert time.perf_counter() - start < 5
        assert os.environ["HF_HUB_OFFLINE"] == "1" and hf_constants.HF_HUB_OFFLINE is True
        assert probes == [2]
        monkeypatch.delenv("HF_HUB_OFFLINE")  # so only the remembered answer can skip a second probe
        assert hub.hub_available() is False  # decided once: no second probe
        assert probes == [2]
    finally:
        hub._reset_for_tests()
        os.environ["HF_HUB_OFFLINE"] = "1"


def test_existing_head_is_kept_in_its_own_order(tmp_path, tiny_encoder_dir):
    """A FinBERT-like checkpoint ({0: positive, 1: negative, 2: neutral}) keeps its head and order."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    finbert_like = tmp_path / "finbert-like"
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_encoder_dir, id2label={0: "positive", 1: "negative", 2: "neutral"},
        label2id={"positive": 0, "negative": 1, "neutral": 2})
    model.save_pretrained(finbert_like)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(finbert_like)
    clf = hp.models.load_classifier(str(finbert_like), ["negative", "neutral", "positive"])
    assert clf.new_head is False
    assert clf.id2label == {0: "positive", 1: "negative", 2: "neutral"}
    assert clf.label2id["neutral"] == 2
    import torch

    assert torch.equal(clf.model.classifier.weight, model.classifier.weight)  # the trained head, untouched


def test_other_labels_get_a_new_head(tiny_encoder_dir):
    clf = hp.models.load_classifier(str(tiny_encoder_dir), ["bad", "good"])
    assert clf.new_head and clf.id2label == {0: "bad", 1: "good"}
    assert clf.model.config.num_labels == 2
    count = hp.models._count_parameters(clf.model)
    assert count.trainable == count.total > 0 and "trainable parameters" in str(count)
