"""Smoke runs of the notebooks through papermill (SMOKE=True): real code paths, tiny sizes."""

from __future__ import annotations

import json

import pytest

from helpers import runner, samples

pytestmark = pytest.mark.notebook


def _run(name, tmp_path, **params):
    path = runner.find_notebook(name)
    result = runner.run_notebook(path, {"SMOKE": True, **params}, runs_dir=tmp_path)
    assert result.status == "ok", f"{name} failed: {result.error} (see {result.executed})"
    return result


def test_notebook_01_offline_with_standins(tmp_path):
    result = _run("01", tmp_path)
    m = result.metrics
    assert m["notebook"] == "01_finbert_financial_sentiment"
    assert m["model"]["standin"] is True and m["model"]["requested"] == "ProsusAI/finbert"
    assert m["data"]["standin"] is True and m["data"]["rows"]["train"] == 192
    assert 0 <= m["test"]["accuracy"] <= 1 and 0 <= m["test"]["macro_f1"] <= 1
    assert m["train"]["final_train_loss"] < m["train"]["first_train_loss"]
    assert m["test"]["loss"] < m["baseline"]["loss"]  # fine-tuning helped on held-out data
    assert set(m["versions"]) >= {"torch", "transformers", "python"}
    out = result.output_dir
    assert (out / "model" / "config.json").exists() and (out / "model" / "workbook.json").exists()
    assert "stand-in" in (out / "model" / "README.md").read_text()
    assert (out / "plots" / "history.png").exists()
    text = result.executed.read_text()
    assert "OFFLINE STAND-IN MODEL" in text and "OFFLINE STAND-IN DATA" in text


def test_notebook_01_with_a_data_file_and_a_model_folder(tmp_path, standin_dir):
    """How a user points at real data (the Kaggle file, header variant, CRLF) and a local model."""
    data = samples.write_phrasebank_csv(tmp_path / "all-data.csv", n=400, header="sentiment,text", newline="\r\n")
    result = _run("01", tmp_path, DATA_SOURCE=str(data), MODEL_NAME=str(standin_dir), LR=1e-4)
    m = result.metrics
    assert m["model"]["standin"] is False and m["model"]["how"] == "local folder"
    assert m["data"]["standin"] is False and m["data"]["header"] is True and m["data"]["encoding"] == "latin-1"
    assert m["params"]["LR"] == 1e-4
    assert json.loads((result.output_dir / "model" / "workbook.json").read_text())["task"] == "text-classification"
