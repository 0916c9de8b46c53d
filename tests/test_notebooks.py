"""Smoke runs of the notebooks through papermill (SMOKE=True): real code paths, tiny sizes."""

from __future__ import annotations

import json
import re

import pytest

import workbook.serve
from helpers._offline import samples
from workbook import runner

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def _run(name, tmp_path, **params):
    path = runner.find_notebook(name)
    result = runner.run_notebook(path, {"SMOKE": True, **params}, runs_dir=tmp_path)
    assert result.status == "ok", f"{name} failed: {result.error} (see {result.executed})"
    return result


def _default_run(name, tmp_path):
    """The notebook at its defaults in smoke mode. `make test` has just run every notebook that way with
    nbmake (`pytest --nbmake notebooks/`, WORKBOOK_SMOKE=1, into WORKBOOK_RUNS_DIR): those runs are
    checked here rather than run twice. Run alone, the tests run the notebook themselves (papermill)."""
    import os
    from pathlib import Path

    from helpers.notebook import _default_output_dir

    path = runner.find_notebook(name)
    runs = os.environ.get("WORKBOOK_RUNS_DIR")
    metrics = _default_output_dir(path.stem, smoke=True, runs_dir=Path(runs or "/nonexistent")) / "metrics.json"
    if runs and hp_smoke() and metrics.exists():
        return runner.RunResult(path.stem, "ok", 0.0, None, metrics.parent, json.loads(metrics.read_text()))
    return _run(name, tmp_path)


def hp_smoke() -> bool:
    from helpers.notebook import _smoke_from_env

    return _smoke_from_env(None)


@pytest.fixture(scope="module")
def nb01(tmp_path_factory):
    return _default_run("01", tmp_path_factory.mktemp("nb01"))


def test_notebook_01_offline_with_standins(nb01):
    result = nb01
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
    if result.executed:  # an executed copy (papermill) also shows the announcements
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
    # The test split is judged in fp32, as the folder is served, whatever precision trained it (bf16 on CPUs
    # that have it): the served probabilities are the notebook's calibrated ones (bf16 evaluation: 0.0015).
    served = re.search(r"largest difference from the notebook's calibrated probabilities: ([0-9.]+)",
                       result.executed.read_text())
    assert served, "notebook 01 no longer prints its served-probabilities check"
    assert float(served.group(1)) < 1e-4, (f"served probabilities differ from the notebook's by {served.group(1)} "
                                           f"(trained in {m['train']['precision']})")


def test_notebook_02_with_the_seed_job_options(tmp_path, standin_dir, monkeypatch):
    """`workbook run 02 --lr 3e-5 --epochs 1 --train-batch-size 16 --eval-batch-size 64 --text-col content
    --label-col label --model <path>` runs and records those values."""
    from workbook import cli

    monkeypatch.setattr(runner, "RUNS_DIR", tmp_path)
    argv = ["run", "02", "--lr", "3e-5", "--epochs", "1", "--train-batch-size", "16", "--eval-batch-size", "64",
            "--text-col", "content", "--label-col", "label", "--model", str(standin_dir), "--smoke",
            "--runs-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    m = json.loads((tmp_path / "smoke" / "02_distilbert_amazon_polarity" / "metrics.json").read_text())
    assert {k: m["params"][k] for k in ("LR", "NUM_EPOCHS", "TRAIN_BATCH_SIZE", "EVAL_BATCH_SIZE", "TEXT_COL",
                                        "LABEL_COL", "MODEL_NAME")} == {
        "LR": 3e-5, "NUM_EPOCHS": 1, "TRAIN_BATCH_SIZE": 16, "EVAL_BATCH_SIZE": 64, "TEXT_COL": "content",
        "LABEL_COL": "label", "MODEL_NAME": str(standin_dir)}
    assert m["model"]["standin"] is False and m["data"]["standin"] is True
    assert set(m["test"]) >= {"accuracy", "f1", "roc_auc"} and 0 <= m["test"]["roc_auc"] <= 1
    assert "| 02_distilbert_amazon_polarity | ok |" in (tmp_path / "smoke" / "summary.md").read_text()


def test_notebook_03_trainer_and_loop_side_by_side(tmp_path):
    result = _default_run("03", tmp_path)
    m = result.metrics
    assert set(m["comparison"]) == {"Trainer", "workbook loop"}
    for row in m["comparison"].values():
        assert row["samples_per_s"] > 0 and 0 <= row["accuracy"] <= 1
    assert set(m["test"]) >= {"accuracy", "macro_f1", "off_by_one_accuracy", "mae_stars"}
    assert m["test"]["off_by_one_accuracy"] >= m["test"]["accuracy"]
    assert (result.output_dir / "trainer_model" / "config.json").exists()
    assert not result.executed or "predictions.label_ids" in result.executed.read_text()


def test_notebook_04_summarization_offline(tmp_path):
    import pandas as pd

    result = _default_run("04", tmp_path)
    m = result.metrics
    assert m["notebook"] == "04_pythia_meta_review_summarization"
    assert m["model"]["requested"] == "EleutherAI/pythia-70m" and m["model"]["standin"] is True
    assert m["data"]["requested"] == "zqz979/meta-review" and m["data"]["standin"] is True
    for part in ("test", "baseline"):
        assert set(m[part]) >= {"rouge1", "rouge2", "rougeL", "repeated_3grams", "validation_loss"}
        assert all(0 <= m[part][k] <= 100 for k in ("rouge1", "rouge2", "rougeL"))
    assert m["train"]["final_train_loss"] < m["train"]["first_train_loss"]
    assert m["test"]["validation_loss"] < m["baseline"]["validation_loss"]
    assert m["decoding"]["greedy + no_repeat_ngram 3"]["repeated_3grams"] == 0
    out = result.output_dir
    table = pd.read_csv(out / "examples.csv")
    assert list(table.columns) == ["reviews (start)", "reference meta-review", "base model", "fine-tuned",
                                   "rougeL base", "rougeL fine-tuned"]
    assert len(table) == m["data"]["rows"]["test"] and (out / "examples.html").stat().st_size > 1000
    info = json.loads((out / "model" / "workbook.json").read_text())
    assert info["task"] == "summarization-causal" and "{source}" in info["prompt_template"]
    assert not result.executed or "labels -100, no loss" in result.executed.read_text()


def test_notebook_04_with_a_data_file_lora_and_gradient_checkpointing(tmp_path):
    """Other column names in a user's file; the options that let the recipe scale to pythia-1b."""
    import csv

    path = tmp_path / "meta.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["paper_reviews", "meta_review"])
        writer.writerows(samples.meta_review_rows(120, seed=5))
    result = _run("04", tmp_path, DATA_SOURCE=str(path), SOURCE_COL="paper_reviews", TARGET_COL="meta_review",
                  USE_LORA=True, GRADIENT_CHECKPOINTING=True, NUM_BEAMS=2)
    m = result.metrics
    assert m["data"]["standin"] is False and m["model"]["lora"] is True
    assert m["model"]["trainable_parameters"] < 0.5 * m["model"]["total_parameters"]
    assert m["train"]["final_train_loss"] < m["train"]["first_train_loss"]
    assert not (result.output_dir / "model" / "adapter_config.json").exists()  # merged into a plain model


def test_notebook_05_lora_offline(tmp_path):
    result = _run("05", tmp_path, QUANTIZE_4BIT=True)  # no CUDA here: says so and trains plain LoRA
    assert "QUANTIZE_4BIT=True needs a CUDA GPU" in result.executed.read_text()
    m = result.metrics
    assert m["model"]["quantized_4bit"] is False
    assert m["model"]["requested"] == "google-t5/t5-small" and m["model"]["standin"] is True and m["model"]["lora"]
    assert m["data"]["requested"] == "EdinburghNLP/xsum" and m["data"]["standin"] is True
    assert m["model"]["trainable_parameters"] < 0.1 * m["model"]["total_parameters"]
    for part in ("test", "baseline"):
        assert set(m[part]) >= {"rouge1", "rouge2", "rougeL", "validation_loss"}
    assert m["train"]["final_train_loss"] < m["train"]["first_train_loss"]
    assert m["precision"] in ("bf16", "fp32")
    assert m["reload_check"] == {"articles": 8, "identical": True, "variants": ["merged", "adapter"]}
    out = result.output_dir
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model" / "config.json").exists()
    assert m["sizes"]["adapter_mb"] < m["sizes"]["model_mb"]
    assert (out / "examples.csv").exists() and (out / "plots" / "rouge.png").exists()


def test_notebook_05_refuses_fp16(tmp_path):
    path = runner.find_notebook("05")
    result = runner.run_notebook(path, {"SMOKE": True, "PRECISION": "fp16"}, runs_dir=tmp_path)
    assert result.status == "failed" and "overflows in fp16" in result.error
    assert not (result.output_dir / "checkpoints").exists()


def test_notebook_01_is_reproducible_and_records_its_data(nb01, tmp_path):
    again = _run("01", tmp_path).metrics
    first = nb01.metrics
    for part in ("test", "baseline", "validation"):
        assert again[part] == first[part]
    for key in ("first_train_loss", "final_train_loss", "steps", "best_metric"):
        assert again["train"][key] == first["train"][key]
    fingerprint = first["data"]["fingerprint"]
    assert again["data"]["fingerprint"] == fingerprint and len(fingerprint["sha256"]) == 64
    assert fingerprint["rows"] == first["data"]["rows"]
    assert {"SEED", "LR"} <= set(first["params"]) and first["seed"] == 42


def test_a_different_run_into_the_same_output_dir_is_refused_and_loses_nothing(nb01):
    out = nb01.output_dir
    before = (out / "metrics.json").read_text()
    path = runner.find_notebook("01")
    result = runner.run_notebook(path, {"SMOKE": True, "LR": 1e-4, "OUTPUT_DIR": str(out)},
                                 runs_dir=out.parent / "other")
    assert result.status == "failed" and "holds a run with other parameters (LR: 5e-05 -> 0.0001)" in result.error
    assert (out / "model" / "config.json").exists() and (out / "metrics.json").read_text() == before


def test_plain_papermill_with_an_unknown_parameter_stops_at_once(tmp_path):
    import papermill

    path = runner.find_notebook("01")
    with pytest.raises(papermill.PapermillExecutionError, match=r"LRR \(did you mean LR\?\)"):
        papermill.execute_notebook(str(path), str(tmp_path / "out.ipynb"), parameters={"LRR": 3e-5, "SMOKE": True,
                                   "OUTPUT_DIR": str(tmp_path / "run")}, cwd=str(path.parent), progress_bar=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any work


@pytest.mark.parametrize(("params", "message"), [
    ({"DATA_SOURCE": "data/no-such-file.csv"}, "Data file not found: data/no-such-file.csv"),
    ({"MAX_LENGTH": 4096}, "MAX_LENGTH=4096 is beyond the model's limit of 512 tokens"),
])
def test_bad_input_as_a_user_gives_its_message_in_the_run_summary(tmp_path, params, message):
    from workbook import cli

    argv = ["run", "01", "--smoke", "--runs-dir", str(tmp_path)]
    for name, value in params.items():
        argv += ["-p", name, str(value)]
    assert cli.main(argv) == 1
    run = json.loads((tmp_path / "smoke" / "summary.json").read_text())["runs"][0]
    assert run["status"] == "failed" and message in run["error"]
    assert run["output_dir"] == str((tmp_path / "smoke" / "01_finbert_financial_sentiment").resolve())
    assert not (tmp_path / "smoke" / "01_finbert_financial_sentiment" / "checkpoints").exists()  # stopped early


# --------------------------------------------------------------------------- the user's own data, real layouts

def _paraphrase_pairs(path):
    """A paraphrase corpus in the GLUE/MRPC spirit: `sentence1,sentence2,label` with the user's own labels."""
    subjects = ["The company", "Profit", "The board", "Sales", "The bank", "Revenue", "The plant", "Shares"]
    verbs = [("rose", "increased"), ("fell", "declined"), ("doubled", "grew twofold"), ("stalled", "stopped growing"),
             ("was announced", "was made public"), ("was delayed", "was postponed")]
    lines = ["sentence1,sentence2,label"]
    for i, subject in enumerate(subjects):
        for j, (verb, same) in enumerate(verbs):
            for when in ("last year", "in March", "this quarter", "after the merger"):
                lines.append(f"{subject} {verb} {when}.,{subject} {same} {when}.,paraphrase")
                other = verbs[(j + 1 + i) % len(verbs)][1]
                lines.append(f"{subject} {verb} {when}.,{subjects[(i + 3) % 8]} {other} {when}.,different")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_notebook_01_with_sentence_pairs_and_the_users_labels(tmp_path):
    import subprocess
    import sys

    import helpers as hp
    from workbook import cli

    data = _paraphrase_pairs(tmp_path / "pairs.csv")
    result = _run("01", tmp_path, DATA_SOURCE=str(data), TEXT_COL="sentence1", TEXT_PAIR_COL="sentence2")
    m = result.metrics
    assert m["data"]["rows"]["train"] == 192 and m["params"]["TEXT_PAIR_COL"] == "sentence2"
    assert "labels taken from the data (2): different, paraphrase" in result.executed.read_text()
    folder = result.output_dir / "model"
    info = json.loads((folder / "workbook.json").read_text())
    assert info["labels"] == ["different", "paraphrase"] and info["text_pair"] is True
    pair = ("Sales rose in March.", "Sales increased in March.")
    expected = hp.inference.load(folder, device="cpu").predict(pair)
    assert expected["label"] in {"different", "paraphrase"}
    assert cli.main(["predict", str(folder), f"{pair[0]} ||| {pair[1]}", "--json"]) == 0
    client = workbook.serve.create_app(folder, device="cpu").test_client()
    served = client.post("/predict", json={"text": pair[0], "text_pair": pair[1]}).get_json()
    assert served["label"] == expected["label"]
    code = f"import json, score; print(json.dumps(score.predict_sentiment({pair[0]!r}, text_pair={pair[1]!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=600)
    assert json.loads(out.stdout.strip().splitlines()[-1])["label"] == expected["label"]
    # the user's own pairs file scored row by row, the same answer as one pair alone
    import pandas as pd

    pd.DataFrame({"first": [pair[0], "Profit fell."], "second": [pair[1], "The CEO resigned."]}).to_csv(
        tmp_path / "to_score.csv", index=False)
    assert cli.main(["predict", str(folder), "--input", str(tmp_path / "to_score.csv"), "--text-col", "first",
                     "--text-pair-col", "second", "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = pd.read_json(tmp_path / "scored.jsonl", lines=True)
    assert scored.loc[0, "predicted_label"] == expected["label"]
    assert abs(scored.loc[0, "predicted_score"] - expected["score"]) < 1e-5


def test_notebook_02_with_a_three_column_review_file(tmp_path):
    """`review,sentiment,id` with a header: the user's columns win, nothing is renamed by position."""
    lines = ["review,sentiment,id"]
    for i in range(120):
        item = ["blender", "lamp", "kettle", "novel", "charger", "mixer"][i % 6]
        good = i % 2 == 0
        verdict = ["Works great", "Love it", "Broke quickly", "Waste of money"][(i // 6) % 2 + (0 if good else 2)]
        lines.append(f'"{verdict}: the {item} number {i} {"is fine" if good else "failed"}.",'
                     f'{"positive" if good else "negative"},{i}')
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    result = _run("02", tmp_path, DATA_SOURCE=str(path), TEXT_COL="review", LABEL_COL="sentiment", LABEL_NAMES=None)
    text = result.executed.read_text()
    assert "reading it as" not in text and "labels taken from the data (2): negative, positive" in text
    assert result.metrics["data"]["rows"] == {"train": 96, "validation": 12, "test": 12}
    assert "majority_accuracy" in result.metrics["baseline"]


def test_notebook_02_on_a_downloaded_hub_dataset_folder(tmp_path):
    """DATA_SOURCE = the folder `hf download fancyzhx/amazon_polarity --repo-type dataset` writes: every
    train shard is read, the folder's own test shard is the test split (validation is held out of train),
    and the run records the folder."""
    from test_data_folders import _hub_download, _reviews

    root = _hub_download(tmp_path / "amazon_polarity")
    for k in range(2):  # bigger shards: 120 training reviews
        _reviews(60, 200 + 60 * k).to_parquet(root / "plain_text" / f"train-0000{k}-of-00002.parquet")
    result = _run("02", tmp_path, DATA_SOURCE=str(root))
    data = result.metrics["data"]
    assert data["kind"] == "folder" and data["used"] == str(root) and data["standin"] is False
    assert data["rows"] == {"train": 108, "validation": 12, "test": 20}  # test: the folder's 20-row test shard
    assert "reading 2 files as its train table: plain_text/train-00000-of-00002.parquet" in result.executed.read_text()


def _ag_news_layout(path):
    """AG News' layout: header `label,title,description`, topics as 1-based integers."""
    topics = {1: "election vote minister", 2: "match goal season", 3: "shares profit market", 4: "software chip space"}
    lines = ["label,title,description"]
    for i in range(240):
        label = i % 4 + 1
        words = topics[label].split()
        lines.append(f'{label},"{words[i % 3].title()} news {i}","A story about the {words[(i + 1) % 3]} '
                     f'and the {words[(i + 2) % 3]}, item {i}."')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_notebook_03_with_one_based_topics(tmp_path):
    from pathlib import Path

    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news" / "test.csv"
    data = real if real.exists() else _ag_news_layout(tmp_path / "topics.csv")
    result = _run("03", tmp_path, DATA_SOURCE=str(data), TEXT_COL="title+description", RUN_TRAINER=False,
                  LABEL_NAMES="World,Sports,Business,Sci/Tech")
    assert "integer labels counted from 1 (1-based): 1 -> World" in result.executed.read_text()
    info = json.loads((result.output_dir / "model" / "workbook.json").read_text())
    assert info["labels"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert set(result.metrics["report"]["per_class"]) == set(info["labels"])


def test_notebook_04_with_the_hub_layout_in_a_folder(tmp_path):
    """zqz979/meta-review as `hf download --repo-type dataset` leaves it: data/{train,validation,test}-*.parquet,
    columns Input / Output, some rows without an Output. The defaults read it; the splits are its own."""
    import pandas as pd

    rows = samples.meta_review_rows(110, seed=7)
    folder = tmp_path / "meta-review" / "data"
    folder.mkdir(parents=True)
    parts = {"train": rows[:80], "validation": rows[80:95], "test": rows[95:]}
    for split, part in parts.items():
        frame = pd.DataFrame(part, columns=["Input", "Output"])
        frame.loc[len(frame)] = [part[0][0] + " <sep> Another review.", ""]  # empty Output, as on the Hub
        frame.to_parquet(folder / f"{split}-00000-of-00001.parquet")
    result = _run("04", tmp_path, DATA_SOURCE=str(folder.parent), NUM_EPOCHS=1)
    m = result.metrics
    assert "splits: the dataset's own splits" in result.executed.read_text()
    assert m["data"]["dropped"]["empty target"] == 3 and m["data"]["kind"] == "folder"
    assert m["data"]["rows"]["test"] <= len(parts["test"])
