"""Saved folders and clients the workbook did not write: plain save_pretrained / peft adapter folders,
the seeds' client shapes (Domino, OCI, an HTML form), sentence pairs, and an injected model name."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

import helpers as hp
import workbook.serve
from workbook import cli

TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def _plain_folder(tmp_path_factory, name: str, kind: str, folder_name: str):
    """A generator saved with plain save_pretrained: no workbook.json, as folders from elsewhere come."""
    g = hp.models.load_generator(name, kind=kind)
    folder = tmp_path_factory.mktemp(folder_name)
    g.model.save_pretrained(folder)
    g.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_t5_dir(tmp_path_factory):
    return _plain_folder(tmp_path_factory, "google-t5/t5-small", "seq2seq", "plain-t5")


@pytest.fixture(scope="module")
def plain_neox_dir(tmp_path_factory):
    return _plain_folder(tmp_path_factory, "EleutherAI/pythia-70m", "causal-lm", "plain-neox")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, plain_t5_dir):
    """A peft LoRA adapter saved by plain peft: adapter_config.json names its base model."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    with hp.models._quiet_peft():  # peft's deprecation warning about transformers, not under test here
        model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(plain_t5_dir),
                               LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, target_modules=["q", "v"]))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(plain_t5_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def topic_pair_dir(tmp_path_factory, tiny_encoder_dir):
    """A sentence-pair classifier with a user's own label names (not the recipe's)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_encoder_dir, num_labels=4, id2label=dict(enumerate(TOPICS)),
        label2id={n: i for i, n in enumerate(TOPICS)}, ignore_mismatched_sizes=True)
    info = {"max_length": 32, "labels": TOPICS, "text_pair": True,
            "base_model": {"requested": "<img src=x onerror=alert(1)>", "used": "/tmp/x", "standin": True}}
    return hp.artifacts._save_model(tmp_path_factory.mktemp("pairs"), model,
                                    AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
                                    info=info)


@pytest.mark.parametrize("which", ["plain_t5_dir", "plain_neox_dir"])
def test_workbook_predict_summarizes_with_a_plain_save_pretrained_folder(which, request, capsys):
    folder = request.getfixturevalue(which)
    assert not (folder / "workbook.json").exists()
    model = hp.inference.load(folder, device="cpu")
    assert model.task.startswith("summarization") and model.info["inferred"]
    assert cli.main(["predict", str(folder), "Police in Glasgow are appealing for witnesses after a fire."]) == 0
    out = capsys.readouterr().out
    assert "->" in out and "LABEL_0" not in out


def test_adapter_folder_whose_base_is_unreachable_is_refused_in_one_line_within_seconds(adapter_dir, capsys,
                                                                                        monkeypatch):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "google-t5/t5-small"  # a Hub id: not cached, no Hub here
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    # What the command imports is loaded before the clock starts: on a busy machine importing it takes seconds;
    # the promise timed here is that the refusal itself waits on no network.
    import peft  # noqa: F401

    from helpers import data, inference  # noqa: F401
    tried = []

    def no_network(sock, address):
        tried.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    start = time.perf_counter()
    assert cli.main(["predict", str(adapter_dir), "Some text."]) == 2
    err = capsys.readouterr().err
    assert not tried, f"the refusal tried the network: {tried}"
    assert time.perf_counter() - start < 20  # a Hub retry alone would take 25-50 s
    assert err.count("\n") == 1 and "google-t5/t5-small" in err and "--base-model" in err


def test_adapter_folder_loads_offline_on_a_local_base(adapter_dir, plain_t5_dir, capsys):
    assert cli.main(["predict", str(adapter_dir), "--base-model", str(plain_t5_dir), "Some news text."]) == 0
    assert "->" in capsys.readouterr().out


def test_a_folder_with_no_model_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert cli.main(["predict", str(tmp_path), "x"]) == 2
    assert "no task head" in capsys.readouterr().err


def test_pair_model_reads_pairs_everywhere(topic_pair_dir, capsys):
    clf = hp.inference.load(topic_pair_dir, device="cpu")
    one = clf.predict(("The cat sat.", "A cat was sitting."))
    assert one["label"] in TOPICS and set(one["probabilities"]) == set(TOPICS)
    same = clf.predict({"text": "The cat sat.", "text_pair": "A cat was sitting."})
    assert same["probabilities"] == pytest.approx(one["probabilities"])
    client = workbook.serve.create_app(topic_pair_dir, device="cpu").test_client()
    r = client.post("/predict", json={"text": "The cat sat.", "text_pair": "A cat was sitting."}).get_json()
    assert r["probabilities"] == pytest.approx(one["probabilities"], abs=1e-5)
    assert cli.main(["predict", str(topic_pair_dir), "The cat sat. ||| A cat was sitting.", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] == one["label"]
    assert cli.main(["predict", str(topic_pair_dir), "no separator"]) == 2
    assert "sentence pairs" in capsys.readouterr().err
    code = ("import json, score; print(json.dumps([score.predict_sentiment('The cat sat.', "
            "text_pair='A cat was sitting.'), score.predict_sentiment(['a b', 'c d'])]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=topic_pair_dir, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-1500:]
    pair, many = json.loads(out.stdout.strip().splitlines()[-1])
    assert pair["label"] == one["label"] and len(many) == 2 and all(m["label"] in TOPICS for m in many)


def test_score_py_follows_the_servers_rules(topic_pair_dir):
    code = ("import json, score\nout = []\nfor bad in (None, 123, '', '\\u200b'):\n"
            "    try:\n        score.predict_sentiment(bad)\n        out.append('accepted')\n"
            "    except ValueError as err:\n        out.append(str(err))\nprint(json.dumps(out))")
    out = subprocess.run([sys.executable, "-c", code], cwd=topic_pair_dir, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-1500:]
    answers = json.loads(out.stdout.strip().splitlines()[-1])
    assert "got NoneType" in answers[0] and "got int" in answers[1]
    assert all("empty" in a for a in answers[2:])


@pytest.fixture(scope="module")
def clf_client(tiny_encoder_dir, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = hp.artifacts._save_model(
        tmp_path_factory.mktemp("clf"), AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
        AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
        info={"max_length": 16, "base_model": {"requested": "ProsusAI/finbert", "used": "x", "standin": True}})
    return workbook.serve.create_app(folder, device="cpu").test_client()


def test_domino_client_reads_result(clf_client):
    r = clf_client.post("/model", json={"data": {"sentence": "Profit rose ."}})
    assert r.status_code == 200 and r.get_json()["result"]["label"] in {"negative", "neutral", "positive"}
    many = clf_client.post("/models/abc123/latest/model", json={"data": {"sentences": ["a b", "c d"]}}).get_json()
    assert len(many["result"]) == 2 and "request_id" in many
    assert clf_client.post("/model", json={"sentence": "no data key"}).status_code == 400


def test_oci_client_posts_a_bare_list(clf_client):
    r = clf_client.post("/predict", data=json.dumps(["Profit rose .", "Sales fell ."]),
                        content_type="application/json").get_json()
    assert set(r) == {"prediction"} and len(r["prediction"]) == 2


def test_html_form_post_works_without_javascript(clf_client):
    r = clf_client.post("/", data={"text": "Profit rose <b>sharply</b> ."})
    page = r.data.decode()
    assert r.status_code == 200 and 'id="label"' in page and "&lt;b&gt;sharply" in page
    empty = clf_client.post("/", data={"text": "   "})
    assert empty.status_code == 400 and "empty or only whitespace" in empty.data.decode()


def test_long_text_is_truncated_with_a_note(clf_client):
    r = clf_client.post("/predict", json={"text": "profit rose " * 3000}).get_json()
    assert r["truncated"] is True and "16 tokens" in r["note"]


def test_injected_model_name_is_shown_as_text_and_headers_are_set(topic_pair_dir):
    client = workbook.serve.create_app(topic_pair_dir, device="cpu").test_client()
    r = client.get("/")
    page = r.data.decode()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert r.headers["X-Content-Type-Options"] == "nosniff" and "default-src 'none'" in r.headers[
        "Content-Security-Policy"]
    assert "Werkzeug" not in r.headers.get("Server", "") and "Python" not in r.headers.get("Server", "")
    health = client.get("/health").get_json()
    assert health["standin"] is True and "stand-in" in health["model"] and health["text_pair"] is True
    assert 'id="standin"' in page
