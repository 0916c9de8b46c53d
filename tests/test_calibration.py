"""Calibration: ECE and temperature scaling, and the temperature saved with a model and applied wherever it
answers (hp.inference, `workbook predict`, `workbook serve`, score.py), raw probabilities on request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import helpers as hp
import workbook.serve
from helpers import metrics
from workbook import cli

TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "The company will cut 250 jobs .",
         "The annual general meeting will be held in Helsinki .", "Shares fell 5 % after the profit warning ."]
TEMPERATURE = 0.25  # a tiny random model is under-confident: a temperature below 1 sharpens it, visibly


def _overconfident(n: int, seed: int, scale: float = 4.0):
    """Logits whose softmax is calibrated, multiplied by `scale` (> 1: over-confident), and labels drawn from the
    calibrated probabilities: what a fine-tuned transformer's outputs look like, with the truth known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), rng.integers(0, 3, n)] += 1.5
    labels = np.array([rng.choice(3, p=p) for p in metrics._softmax(logits)])
    return logits * scale, labels


def test_temperature_scaling_halves_the_ece_of_an_overconfident_model_and_keeps_every_prediction():
    val_logits, val_labels = _overconfident(1500, seed=0)
    test_logits, test_labels = _overconfident(1500, seed=1)
    cal = metrics.calibrate(val_logits, val_labels, test_logits, test_labels)
    assert cal.temperature == pytest.approx(4.0, rel=0.15)  # it finds the scale that was put in
    assert cal.ece_before > 0.15 and cal.ece_after <= cal.ece_before / 2 and cal.ece_after < 0.05
    assert cal.nll_after < cal.nll_before
    assert cal.accuracy_after == cal.accuracy_before  # exactly: dividing by T never changes the largest logit
    assert (cal.probabilities(test_logits).argmax(-1) == test_logits.argmax(-1)).all()
    assert "(unchanged)" in str(cal) and json.dumps(cal.to_dict())
    under = metrics.calibrate(val_logits / 16, val_labels, test_logits / 16, test_labels)
    assert under.temperature < 1  # an under-confident model is sharpened


def test_the_ece_floor_is_what_a_calibrated_model_scores_and_shrinks_with_more_rows():
    """A model calibrated by construction still scores an ECE above 0 on a few hundred rows: the floor says how
    much, so a user can tell a real gap from sampling noise."""
    logits, labels = _overconfident(500, seed=2, scale=1.0)  # scale 1: calibrated by construction
    probabilities = metrics._softmax(logits)
    floor = metrics._ece_noise_floor(probabilities)
    measured = metrics._expected_calibration_error(probabilities, labels)
    assert 0.01 < floor < 0.08 and floor / 3 < measured < floor * 3, (floor, measured)
    many, _ = _overconfident(5000, seed=3, scale=1.0)
    assert metrics._ece_noise_floor(metrics._softmax(many)) < floor / 2  # about 1/sqrt(rows): 10x rows, ~3x less
    assert metrics._ece_noise_floor(probabilities) == floor  # seeded: the same report every time
    cal = metrics.calibrate(*_overconfident(400, seed=4), *_overconfident(400, seed=5))
    assert 0 < cal.ece_floor < cal.ece_before and cal.to_dict()["ece_floor"] == round(cal.ece_floor, 6)
    assert f"about {cal.ece_floor:.4f} on these rows" in str(cal)


def test_ece_and_reliability_bins_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    bins = metrics._reliability_bins(probs, labels, n_bins=15)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]
    assert bins[1]["confidence"] == pytest.approx(0.95)
    # 2/4 * |1.0 - 0.6| + 2/4 * |0.5 - 0.95|
    assert metrics._expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)
    with pytest.raises(ValueError, match="one label per row"):
        metrics._fit_temperature(np.zeros((3, 2)), [0, 1])


def test_the_reliability_diagram_plots_before_and_after(tmp_path):
    logits, labels = _overconfident(300, seed=3)
    ax = hp.plots.reliability_diagram(labels, {"raw": metrics._softmax(logits), "T=4": metrics._softmax(logits, 4)},
                                      path=tmp_path / "r.png")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "perfectly calibrated" and legend[1].startswith("raw (ECE 0.") and len(legend) == 3
    assert (tmp_path / "r.png").stat().st_size > 5000


# --------------------------------------------------------------------------- the temperature, saved and applied

@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory, tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)
    return hp.artifacts._save_model(tmp_path_factory.mktemp("calibrated"), model,
                                    AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
                                    info={"max_length": 32, "temperature": TEMPERATURE})


def _notebook_probabilities(folder):
    """What a notebook computes: hp.evaluate's logits on the tokenized texts, divided by the temperature."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = Dataset.from_dict({"text": TEXTS, "label": [0] * len(TEXTS)}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    logits = hp.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, precision="fp32",
                         device=torch.device("cpu"), progress=False).logits
    return metrics._softmax(logits, TEMPERATURE), metrics._softmax(logits)


def _vectors(results, key="probabilities"):
    return np.array([list(r[key].values()) for r in results])


def test_the_temperature_round_trips_and_inference_gives_the_notebooks_calibrated_probabilities(calibrated_dir):
    assert json.loads((calibrated_dir / "workbook.json").read_text())["temperature"] == TEMPERATURE
    assert "softmax(logits / 0.25)" in hp.artifacts._calibration_note({"temperature": TEMPERATURE})  # the card
    model = hp.inference.load(calibrated_dir, device="cpu")
    assert model.temperature == TEMPERATURE
    calibrated, raw = _notebook_probabilities(calibrated_dir)
    results = model.predict(TEXTS)
    assert set(results[0]) == {"label", "score", "probabilities", "truncated"}  # raw only on request
    np.testing.assert_allclose(_vectors(results), calibrated, atol=1e-5)
    assert [r["score"] for r in results] == pytest.approx(calibrated.max(-1).tolist(), abs=1e-5)
    with_raw = model.predict(TEXTS, raw=True)
    np.testing.assert_allclose(_vectors(with_raw, "raw_probabilities"), raw, atol=1e-5)
    assert [r["label"] for r in with_raw] == [r["label"] for r in results]
    assert not np.allclose(calibrated, raw, atol=1e-3)  # the temperature really changed what users see
    import pandas as pd

    table = hp.inference._score_table(model, pd.DataFrame({"text": TEXTS}), text_col="text", progress=False, raw=True)
    np.testing.assert_allclose(table[[f"prob_{n}" for n in model.labels]].to_numpy(float), calibrated, atol=1e-5)
    np.testing.assert_allclose(table[[f"raw_prob_{n}" for n in model.labels]].to_numpy(float), raw, atol=1e-5)


def test_a_folder_without_a_temperature_answers_with_the_models_own_softmax(tiny_encoder_dir):
    model = hp.inference.load(tiny_encoder_dir, device="cpu")
    assert model.temperature == 1.0
    result = model.predict(TEXTS[0], raw=True)
    assert result["probabilities"] == pytest.approx(result["raw_probabilities"])


def test_workbook_predict_prints_the_calibrated_probabilities(calibrated_dir, capsys):
    calibrated, _ = _notebook_probabilities(calibrated_dir)
    assert cli.main(["predict", str(calibrated_dir), "--json", *TEXTS]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(_vectors(rows), calibrated, atol=1e-5)


def test_workbook_predict_gives_the_raw_probabilities_on_request(calibrated_dir, tmp_path, capsys):
    import pandas as pd

    calibrated, raw = _notebook_probabilities(calibrated_dir)
    assert cli.main(["predict", str(calibrated_dir), "--json", "--raw", *TEXTS]) == 0
    rows = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(_vectors(rows), calibrated, atol=1e-5)
    np.testing.assert_allclose(_vectors(rows, "raw_probabilities"), raw, atol=1e-5)
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    assert cli.main(["predict", str(calibrated_dir), "--input", str(tmp_path / "in.csv"), "--raw",
                     "--output", str(tmp_path / "out.csv")]) == 0
    table = pd.read_csv(tmp_path / "out.csv")
    labels = [c.removeprefix("raw_prob_") for c in table.columns if c.startswith("raw_prob_")]
    np.testing.assert_allclose(table[[f"prob_{n}" for n in labels]].to_numpy(float), calibrated, atol=1e-5)
    np.testing.assert_allclose(table[[f"raw_prob_{n}" for n in labels]].to_numpy(float), raw, atol=1e-5)


def test_workbook_serve_answers_calibrated_and_raw_on_request(calibrated_dir):
    calibrated, raw = _notebook_probabilities(calibrated_dir)
    client = workbook.serve.create_app(calibrated_dir, device="cpu").test_client()
    one = client.post("/predict", json={"text": TEXTS[0]}).get_json()
    assert set(one) == {"label", "score", "probabilities", "truncated"}
    assert list(one["probabilities"].values()) == pytest.approx(calibrated[0].tolist(), abs=1e-5)
    both = client.post("/predict", json={"texts": TEXTS, "raw": True}).get_json()["predictions"]
    np.testing.assert_allclose(_vectors(both), calibrated, atol=1e-5)
    np.testing.assert_allclose(_vectors(both, "raw_probabilities"), raw, atol=1e-5)
    seed = client.post("/predict", json={"data": {"sentence": TEXTS[1]}, "raw": True}).get_json()
    assert seed["raw_probabilities"] and seed["probabilities"] != seed["raw_probabilities"]
    bad = client.post("/predict", json={"text": "x", "raw": "yes"})
    assert bad.status_code == 400 and '"raw" must be true or false' in bad.get_json()["error"]
    assert client.get("/health").get_json()["temperature"] == TEMPERATURE
    assert b"Probabilities are calibrated: temperature 0.25" in client.get("/").data


def test_score_py_answers_calibrated_and_raw_on_request(calibrated_dir, tmp_path):
    import shutil

    calibrated, raw = _notebook_probabilities(calibrated_dir)
    folder = tmp_path / "model"
    shutil.copytree(calibrated_dir, folder)
    template = Path(workbook.serve.__file__).with_name("score_template.py")  # the current template
    shutil.copyfile(template, folder / "score.py")
    code = (f"import json, score; print(json.dumps([score.predict_sentiment({TEXTS!r}), "
            f"score.predict_sentiment({TEXTS[0]!r}, raw=True), score.predict({{'texts': {TEXTS!r}, 'raw': True}})]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    plain, one, oci = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(_vectors(plain), calibrated, atol=1e-5)
    assert "raw_probabilities" not in plain[0]
    assert list(one["raw_probabilities"].values()) == pytest.approx(raw[0].tolist(), abs=1e-5)
    np.testing.assert_allclose(_vectors(oci["prediction"], "raw_probabilities"), raw, atol=1e-5)
