"""Using saved models: score.py, `workbook predict`, the web app's JSON API and its page in a real browser."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import chrome_available, open_chrome

import helpers as hp
import helpers._offline.samples
import workbook.serve
from helpers import textgen

SEED_PAYLOAD = {"data": {"sentence": "there is a shortage of capital, and we need extra financing"}}
HEADLINES = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "The company will cut 250 jobs .",
             "The annual general meeting will be held in Helsinki .", "Shares fell 5 % after the warning ."]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("clf")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)
    return hp.artifacts._save_model(out, model, AutoTokenizer.from_pretrained(tiny_encoder_dir),
                                    task="text-classification", info={"max_length": 32})


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    g = hp.models.load_generator("EleutherAI/pythia-70m", kind="causal-lm")
    hp.models.ensure_pad_token(g.tokenizer, g.model, use_eos=True)
    info = {"prompt_template": textgen._DEFAULT_PROMPT, "max_length": 256, "sep_marker": "<sep>",
            "generation": textgen.GenerationSettings(max_new_tokens=8, min_new_tokens=4).to_dict()}
    return hp.artifacts._save_model(tmp_path_factory.mktemp("causal"), g.model, g.tokenizer,
                                    task="summarization-causal", info=info)


@pytest.fixture(scope="module")
def seq2seq_dir(tmp_path_factory):
    g = hp.models.load_generator("google-t5/t5-small", kind="seq2seq")
    info = {"prefix": "summarize: ", "max_source_length": 64,
            "generation": textgen.GenerationSettings(max_new_tokens=8, min_new_tokens=4,
                                                     no_repeat_ngram_size=1).to_dict()}
    return hp.artifacts._save_model(tmp_path_factory.mktemp("t5"), g.model, g.tokenizer,
                                    task="summarization-seq2seq", info=info)


def _score_py(folder, code: str):
    """Run `code` in a fresh interpreter inside the folder, importing only its score.py."""
    out = subprocess.run([sys.executable, "-c", f"import json, score\nprint(json.dumps({code}))"], cwd=folder,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- score.py

def test_score_py_of_a_classifier_matches_the_workbook(classifier_dir):
    assert (classifier_dir / "score.py").exists()
    expected = hp.inference.load(classifier_dir, device="cpu").predict(HEADLINES)
    got, oci = _score_py(classifier_dir, f"[[score.predict_sentiment(t) for t in {HEADLINES!r}], "
                                         f"score.predict({SEED_PAYLOAD!r}, model=score.load_model())]")
    for e, g in zip(expected, got):
        assert g["label"] == e["label"] and g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)
    assert set(oci) == {"prediction"} and oci["prediction"][0]["label"] in {"negative", "neutral", "positive"}


@pytest.mark.parametrize("which", ["causal_dir", "seq2seq_dir"])
def test_score_py_of_a_summarizer_matches_the_workbook(which, request):
    folder = request.getfixturevalue(which)
    texts = [r["document"] for r in helpers._offline.samples.xsum_rows(4, seed=2)][:3]
    expected = hp.inference.load(folder, device="cpu").summarize(texts)
    domino, oci = _score_py(folder, f"[[score.summarize(t) for t in {texts!r}], "
                                    f"score.predict({{'data': {{'text': {texts[0]!r}}}}})]")
    assert domino == expected and oci == {"prediction": expected[:1]}


# --------------------------------------------------------------------------- the CLI

def test_workbook_predict_reads_stdin_and_prints_json(classifier_dir, causal_dir, monkeypatch, capsys):
    from workbook import cli

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(HEADLINES[:2]) + "\n\n"))
    assert cli.main(["predict", str(classifier_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["text"] for r in rows] == HEADLINES[:2] and all("probabilities" in r for r in rows)
    assert cli.main(["predict", str(causal_dir), "Reviews one <sep> Reviews two"]) == 0
    assert "->" in capsys.readouterr().out
    assert cli.main(["predict", str(classifier_dir.parent / "nowhere"), "x"]) == 2
    assert "No saved model" in capsys.readouterr().err


def test_workbook_predict_scores_a_users_file_and_keeps_its_columns(classifier_dir, seq2seq_dir, tmp_path, capsys,
                                                                     monkeypatch):
    """A latin-1, headerless PhraseBank-style file with the truth in it: every row scored in order, the
    file's columns kept, an empty text left unscored, accuracy against the truth; CSV on stdout stays CSV."""
    import pandas as pd

    from workbook import cli

    truth = ["positive", "negative", "neutral", "negative"]
    lines = [f"{t},{h}" for t, h in zip(truth, HEADLINES)] + ["neutral,", "positive,Caf\xe9 chain sales up 3 %"]
    (tmp_path / "all-data.csv").write_bytes("\r\n".join(lines).encode("latin-1", "replace") + b"\r\n")
    out = tmp_path / "scored.parquet"
    monkeypatch.setattr(sys, "stdin", io.StringIO("must not be read\n"))
    assert cli.main(["predict", str(classifier_dir), "--input", str(tmp_path / "all-data.csv"), "--text-col",
                     "column_1", "--label-col", "column_0", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    scored = pd.read_parquet(out)
    assert list(scored.columns[:2]) == ["column_0", "column_1"] and len(scored) == 6
    assert scored["predicted_label"].isna().tolist() == [False] * 4 + [True, False]
    assert set(scored["predicted_label"].dropna()) <= {"negative", "neutral", "positive"}
    probs = scored[["prob_negative", "prob_neutral", "prob_positive"]].dropna().sum(axis=1)
    assert ((probs - 1).abs() < 1e-5).all()
    assert "scored 5 of 6 rows" in err and "(1 without text left unscored)" in err
    assert scored.loc[5, "column_1"] == "Caf\u00e9 chain sales up 3 %"
    assert "against 'column_0' (labels matched by name" in err and "on 5 rows" in err
    # the model's answer for a row is the one `workbook predict TEXT` gives
    single = hp.inference.load(classifier_dir).predict(HEADLINES[1])
    assert scored.loc[1, "predicted_label"] == single["label"]
    assert abs(scored.loc[1, "predicted_score"] - single["score"]) < 1e-5

    # CSV on stdout, joined columns, a summarizer
    frame = pd.DataFrame({"title": ["Storm hits coast", "Vote delayed"],
                          "body": ["High winds damaged homes on Sunday.", "Parliament put off the vote."]})
    frame.to_json(tmp_path / "news.jsonl", orient="records", lines=True)
    assert cli.main(["predict", str(seq2seq_dir), "--input", str(tmp_path / "news.jsonl"), "--text-col",
                     "title+body", "--label-col", "title"]) == 0
    captured = capsys.readouterr()
    assert "against 'title': rouge1 " in captured.err and "rougeL" in captured.err and "on 2 rows" in captured.err
    back = pd.read_csv(io.StringIO(captured.out))
    assert list(back.columns) == ["title", "body", "predicted_summary", "truncated"]
    assert back["predicted_summary"].notna().all()

    for argv, message in [
            (["--input", str(tmp_path / "nope.csv")], "Input not found"),
            (["--input", str(tmp_path / "news.jsonl"), "--text-col", "text"], "no column 'text'"),
            (["--input", str(tmp_path / "news.jsonl"), "--text-col", "title", "--output", str(tmp_path / "x.doc")],
             "name the output .csv"),
            (["--output", str(tmp_path / "x.csv"), "some text"], "go with --input FILE"),
            (["--input", str(tmp_path / "news.jsonl"), "--text-col", "title", "--text-pair-col", "body"],
             "reads one text per row")]:
        assert cli.main(["predict", str(classifier_dir), *argv]) == 2
        assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- the JSON API

@pytest.fixture(scope="module")
def clf_client(classifier_dir):
    return workbook.serve.create_app(classifier_dir, device="cpu").test_client()


@pytest.fixture(scope="module")
def summ_client(seq2seq_dir):
    return workbook.serve.create_app(seq2seq_dir, device="cpu").test_client()


def test_api_classifier_happy_paths(clf_client, classifier_dir):
    expected = hp.inference.load(classifier_dir, device="cpu").predict(HEADLINES)
    health = clf_client.get("/health").get_json()
    assert health["status"] == "ok" and health["task"] == "text-classification" and len(health["labels"]) == 3
    seed = clf_client.post("/predict", json=SEED_PAYLOAD)
    assert seed.status_code == 200 and set(seed.get_json()) == {"label", "score", "probabilities", "truncated"}
    one = clf_client.post("/predict", json={"text": HEADLINES[0]}).get_json()
    assert one["label"] == expected[0]["label"] and one["score"] == pytest.approx(expected[0]["score"], abs=1e-5)
    batch = clf_client.post("/predict", json={"texts": HEADLINES}).get_json()["predictions"]
    assert [r["label"] for r in batch] == [r["label"] for r in expected]
    page = clf_client.get("/")
    assert page.status_code == 200 and b'id="go"' in page.data and b"/predict" in page.data


def test_api_summarizer_happy_paths(summ_client):
    r = summ_client.post("/summarize", json={"data": {"text": "Police in Glasgow are appealing for witnesses."}})
    assert r.status_code == 200 and set(r.get_json()) == {"summary", "truncated"}
    many = summ_client.post("/summarize", json={"texts": ["A story.", "Another story."],
                                                "parameters": {"max_new_tokens": 5}})
    assert many.status_code == 200 and len(many.get_json()["summaries"]) == 2
    assert summ_client.get("/health").get_json()["endpoint"] == "/summarize"


BAD = [
    ({"text": ""}, 400, "empty"),
    ({"text": "   \n\t"}, 400, "empty or only whitespace"),
    ({"text": 42}, 400, "must be a string, got int"),
    ({"data": {"sentence": None}}, 400, "must be a string, got NoneType"),
    ({"texts": "not a list"}, 400, "must be a list of strings"),
    ({"texts": ["ok", 3]}, 400, "must be a list of strings"),
    ({"texts": []}, 400, "is empty"),
    ({"texts": ["x"] * 65}, 413, "at most 64"),
    ({"text": "word " * 400_000}, 413, "far over what the model reads"),
    ({"sentence": "a", "text": "b"}, 400, "exactly one of"),
    ({}, 400, "exactly one of"),
    ([1, 2], 400, "must be a list of strings"),
    ("just a string", 400, "must be a JSON object or a list of texts"),
    ({"text": "\u200b\u200b\x00\x07"}, 400, "no visible characters"),
    ({"text": "ok", "text_pair": 3}, 400, "this model reads one text"),  # a one-text model: never a pair
    ({"data": 5}, 400, '"data" must be an object'),
    ({"text": "fine", "parameters": {"num_beams": 2}}, 400, "for summarizers only"),
]


@pytest.mark.parametrize(("payload", "status", "message"), BAD)
def test_api_bad_input_gets_a_4xx_and_the_server_keeps_serving(clf_client, payload, status, message):
    r = clf_client.post("/predict", json=payload)
    assert r.status_code == status and message in r.get_json()["error"]
    assert clf_client.post("/predict", json={"text": "still here"}).status_code == 200


def test_api_other_mistakes(clf_client, summ_client):
    r = clf_client.post("/predict", data="hello", content_type="text/plain")
    assert r.status_code == 415 and "application/json" in r.get_json()["error"]
    nested = "[" * 100_000 + "]" * 100_000
    r = clf_client.post("/predict", data=nested, content_type="application/json")
    assert r.status_code == 400 and "nested too deeply" in r.get_json()["error"]
    r = clf_client.post("/predict", data='{"text": "\\ud800"}', content_type="application/json")
    assert r.status_code == 400 and "lone surrogate" in r.get_json()["error"]
    assert clf_client.post("/predict", data="{not json", content_type="application/json").status_code == 400
    wrong = clf_client.post("/summarize", json={"text": "x"})
    assert wrong.status_code == 400 and "POST /predict" in wrong.get_json()["error"]
    assert clf_client.get("/predict").status_code == 405 and clf_client.get("/nope").status_code == 404
    unknown = summ_client.post("/summarize", json={"text": "x", "parameters": {"beams": 2}})
    assert unknown.status_code == 400 and "Unknown generation settings" in unknown.get_json()["error"]


def test_api_long_text_is_truncated_and_says_so(clf_client):
    r = clf_client.post("/predict", json={"text": "profit rose " * 40}).get_json()
    assert r["truncated"] is True
    assert clf_client.post("/predict", json={"text": "profit rose"}).get_json()["truncated"] is False


def test_api_200_concurrent_requests_from_8_clients(classifier_dir):
    app = workbook.serve.create_app(classifier_dir, device="cpu")
    expected = {t: r["label"] for t, r in zip(HEADLINES, hp.inference.load(classifier_dir, device="cpu")
                                              .predict(HEADLINES))}

    def call(i):
        text = HEADLINES[i % len(HEADLINES)]
        with app.test_client() as client:
            r = client.post("/predict", json={"data": {"sentence": text}})
            return r.status_code, text, r.get_json()["label"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(200)))
    assert all(status == 200 for status, _, _ in results)
    assert all(label == expected[text] for _, text, label in results)


# --------------------------------------------------------------------------- the page, in a real browser

@pytest.mark.slow
@pytest.mark.skipif(not chrome_available(),
                    reason="needs chromium + chromium-driver (make test installs them when run as root)")
def test_page_in_a_headless_browser(classifier_dir, tmp_path):
    """With JavaScript: the empty-box message, a prediction, the stand-in banner, a very long text.
    Without: the form posts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    info = json.loads((classifier_dir / "workbook.json").read_text())
    standin = tmp_path / "standin-model"
    shutil.copytree(classifier_dir, standin)
    (standin / "workbook.json").write_text(json.dumps(
        {**info, "base_model": {"requested": "ProsusAI/finbert", "used": "/x", "standin": True}}))
    app = workbook.serve.create_app(standin, device="cpu")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    expected = hp.inference.load(classifier_dir, device="cpu").predict(HEADLINES[0])["label"]
    driver = open_chrome()
    try:
        driver.get(url)
        assert "stand-in" in driver.find_element(By.ID, "standin").text
        driver.find_element(By.ID, "go").click()  # empty box: the page says so
        WebDriverWait(driver, 120).until(ec.text_to_be_present_in_element((By.ID, "result"), "Type some text first"))
        driver.find_element(By.ID, "text").send_keys(HEADLINES[0])
        driver.find_element(By.ID, "go").click()
        label = WebDriverWait(driver, 300).until(ec.visibility_of_element_located((By.ID, "label"))).text
        assert "not ProsusAI/finbert" in driver.find_element(By.ID, "result").text
        driver.save_screenshot(str(tmp_path / "page.png"))
        # A very long text (pasted, not typed): answered, with the note that it was cut to what the model reads.
        driver.execute_script("document.getElementById('text').value = arguments[0]", HEADLINES[0] * 400)
        driver.find_element(By.ID, "go").click()
        cut = WebDriverWait(driver, 300).until(ec.visibility_of_element_located((By.ID, "truncated"))).text
        assert "tokens" in cut and driver.find_element(By.ID, "label").text
    finally:
        driver.quit()
    plain = open_chrome(javascript=False)
    try:
        plain.get(url)
        plain.find_element(By.ID, "text").send_keys(HEADLINES[0])
        plain.find_element(By.ID, "go").click()  # no script: the browser posts the form to /
        posted = WebDriverWait(plain, 300).until(ec.visibility_of_element_located((By.ID, "label"))).text
    finally:
        plain.quit()
        server.shutdown()
    assert label == expected and posted == expected
    assert (tmp_path / "page.png").stat().st_size > 5000


def test_predictions_from_a_stand_in_say_so_on_the_command_line_and_in_score_py(classifier_dir, tmp_path, capsys):
    """Wherever a prediction is shown, a stand-in is named: `workbook predict` on stderr (its --json stays
    JSON), score.py once when it loads."""
    from workbook import cli

    standin = tmp_path / "standin-model"
    shutil.copytree(classifier_dir, standin)
    info = json.loads((standin / "workbook.json").read_text())
    (standin / "workbook.json").write_text(json.dumps(
        {**info, "base_model": {"requested": "ProsusAI/finbert", "used": "/x", "standin": True}}))
    assert cli.main(["predict", str(standin), HEADLINES[0], "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["label"] and "stand-in" in out.err and "ProsusAI/finbert" in out.err
    assert cli.main(["predict", str(classifier_dir), HEADLINES[0]]) == 0
    assert "stand-in" not in capsys.readouterr().err  # a real base model: no note
    shutil.copy(Path(workbook.serve.__file__).parent / "score_template.py", standin / "score.py")
    proc = subprocess.run([sys.executable, "-c", "import score; print(score.predict_sentiment('Profit rose.'))"],
                          cwd=standin, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "offline stand-in for ProsusAI/finbert" in proc.stderr
