"""The web app against the callers of the hardening issue: generation settings held to documented ranges, work
stopped when its caller has gone or overruns, a pair never read as one text, one Server header without versions."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

import helpers as hp
import workbook.serve
from helpers import textgen

TEXT = "Police in Glasgow are appealing for witnesses after a fire in a block of flats."


@pytest.fixture(scope="module")
def summ(t5_dir):
    return workbook.serve.create_app(t5_dir, device="cpu").test_client()


@pytest.fixture(scope="module")
def clf(tiny_classifier_dir):
    return workbook.serve.create_app(tiny_classifier_dir, device="cpu").test_client()


@pytest.fixture(scope="module")
def pair_clf(tiny_encoder_dir, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = hp.artifacts._save_model(
        tmp_path_factory.mktemp("pairs"), AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
        AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
        info={"max_length": 32, "text_pair": True})
    return workbook.serve.create_app(folder, device="cpu").test_client()


# --------------------------------------------------------------------------- generation settings

BAD_SETTINGS = [  # the cases as written, then more of the same kinds
    ({"num_beams": 0}, "num_beams", "from 1 to 8"),
    ({"max_new_tokens": "10"}, "max_new_tokens", "from 1 to 512"),
    ({"max_new_tokens": 1.5}, "max_new_tokens", "whole number"),
    ({"max_new_tokens": None}, "max_new_tokens", "got null"),
    ({"num_beams": True}, "num_beams", "got true"),
    ({"min_new_tokens": 500, "max_new_tokens": 10}, "min_new_tokens", "from 0 to 10"),
    ({"length_penalty": "x"}, "length_penalty", "from -10 to 10"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size", "from 0 to 20"),
    ({"max_new_tokens": 3000}, "max_new_tokens", "from 1 to 512"),
    ({"max_new_tokens": 1e9}, "max_new_tokens", "from 1 to 512"),
    ({"num_beams": 1000}, "num_beams", "from 1 to 8"),
    ({"num_beams": -2}, "num_beams", "from 1 to 8"),
    ({"max_new_tokens": 0}, "max_new_tokens", "from 1 to 512"),
    ({"max_new_tokens": [10]}, "max_new_tokens", "got [10]"),
    ({"min_new_tokens": -1}, "min_new_tokens", "from 0 to 8"),
    ({"repetition_penalty": 0}, "repetition_penalty", "from 1 to 10"),
    ({"repetition_penalty": "1.2"}, "repetition_penalty", "from 1 to 10"),
    ({"length_penalty": 1e308 * 10}, "length_penalty", "from -10 to 10"),
    ({"no_repeat_ngram_size": 2.5}, "no_repeat_ngram_size", "whole number"),
    ({"max_new_tokens": 10**400}, "max_new_tokens", "from 1 to 512"),
    ({"repetition_penalty": 10**400}, "repetition_penalty", "from 1 to 10"),
    ({"beams": 2}, "Unknown generation settings", "num_beams"),
]


@pytest.mark.parametrize(("parameters", "setting", "range_text"), BAD_SETTINGS)
def test_each_bad_generation_setting_gets_a_400_naming_it_and_its_range(summ, parameters, setting, range_text):
    r = summ.post("/summarize", data=json.dumps({"text": TEXT, "parameters": parameters}),
                  content_type="application/json")
    assert r.status_code == 400, r.data[:300]
    message = r.get_json()["error"]
    assert setting in message and range_text in message and "\n" not in message


def test_settings_inside_the_ranges_are_used_and_the_ranges_are_on_health(summ):
    r = summ.post("/summarize", json={"text": TEXT, "parameters": {"max_new_tokens": 3.0, "num_beams": 2,
                                                                   "length_penalty": 0.5}})
    assert r.status_code == 200 and r.get_json()["summary"]
    short = summ.post("/summarize", json={"text": TEXT, "parameters": {"max_new_tokens": 2}})  # saved minimum is 4
    assert short.status_code == 200
    limits = summ.get("/health").get_json()["parameters"]
    assert limits["max_new_tokens"] == [1, 512] and limits["num_beams"] == [1, 8]


def test_the_python_api_checks_the_same_settings(t5_dir):
    model = hp.inference.load(t5_dir, device="cpu")
    with pytest.raises(ValueError, match=r"num_beams must be a whole number from 1 to 8 .*; got 0"):
        model.summarize(TEXT, num_beams=0)
    assert model.summarize(TEXT, num_beams=2)["summary"]


def test_the_cap_follows_the_models_positions(tmp_path):
    """A causal LM whose prompt and summary share 2048 positions: max_new_tokens is capped by what is left."""
    g = hp.models.load_generator("EleutherAI/pythia-70m", kind="causal-lm")
    hp.models.ensure_pad_token(g.tokenizer, g.model, use_eos=True)
    info = {"prompt_template": textgen._DEFAULT_PROMPT, "max_length": 2000,
            "generation": textgen.GenerationSettings(max_new_tokens=16).to_dict()}
    model = hp.inference.load(hp.artifacts._save_model(tmp_path, g.model, g.tokenizer, task="summarization-causal",
                                                       info=info), device="cpu")
    assert model.max_new_tokens_limit == 2048 - (2000 - 16)
    with pytest.raises(ValueError, match=r"max_new_tokens must be a whole number from 1 to 64; got 65"):
        model.settings(max_new_tokens=65)


# --------------------------------------------------------------------------- work whose caller has gone

def test_a_generation_past_its_budget_is_stopped_and_the_next_caller_is_served(t5_dir):
    # 3 s: the heavy call takes over 20 s unstopped; a quick one 0.04-0.11 s, with room for a busy machine
    app = workbook.serve.create_app(t5_dir, device="cpu", generation_timeout_s=3)
    client = app.test_client()
    start = time.perf_counter()
    heavy = client.post("/summarize", json={"texts": [TEXT] * 32, "parameters": {
        "max_new_tokens": 512, "min_new_tokens": 512, "num_beams": 8}})
    took = time.perf_counter() - start
    assert heavy.status_code == 413 and "max_new_tokens" in heavy.get_json()["error"]
    assert took < 10
    assert client.post("/summarize", json={"text": TEXT}).status_code == 200


def test_stop_ends_generation_within_a_token(t5_dir):
    model = hp.inference.load(t5_dir, device="cpu")
    calls = []

    def stop():
        calls.append(1)
        return "enough" if len(calls) > 3 else None

    with pytest.raises(hp.inference._GenerationStopped, match="enough"):
        model.summarize(TEXT, max_new_tokens=512, min_new_tokens=512, stop=stop)
    assert len(calls) == 4
    assert model.summarize(TEXT)["summary"]  # the hook is gone afterwards


class WaitingSummarizer:
    """A stand-in summarizer that generates until `stop` says so (or 30 s), recording why it stopped."""

    task = "summarization-seq2seq"
    info: dict = {}
    max_input_tokens = 16

    def __init__(self):
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.reason = None

    def settings(self, **overrides):
        return overrides

    def summarize(self, items, stop=None, **overrides):
        if items != ["quick"]:
            self.running.set()
            end = time.monotonic() + 30
            while time.monotonic() < end:
                self.reason = stop() if stop else None
                if self.reason:
                    self.stopped.set()
                    raise hp.inference._GenerationStopped(self.reason)
                time.sleep(0.01)
        return [{"summary": "done", "truncated": False} for _ in items]


@pytest.fixture
def live_server():
    """A real HTTP server (werkzeug, as `workbook serve` runs it) on a free port, for a given app."""
    servers = []

    def start(app):
        server = workbook.serve.make_http_server(app, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_work_stops_when_the_caller_disconnects(live_server):
    model = WaitingSummarizer()
    port = live_server(workbook.serve.create_app(model, queue_timeout_s=25, generation_timeout_s=25))
    body = json.dumps({"text": "a long job"}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /summarize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert model.running.wait(30), "the job never started"  # the job is running; then the caller goes away
    assert model.stopped.wait(5), "the model kept working for a caller who had gone"
    assert "gone" in model.reason
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/summarize", json.dumps({"text": "quick"}), {"Content-Type": "application/json"})
    assert conn.getresponse().status == 200


def test_one_server_header_without_versions(live_server, clf):
    port = live_server(clf.application)
    for method, path, body in [("GET", "/health", None), ("GET", "/", None), ("POST", "/predict", "{bad"),
                               ("GET", "/nope", None), ("POST", "/predict", json.dumps({"text": "Profit rose"}))]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        response.read()
        assert response.msg.get_all("Server") == ["finetune-workbook"], (path, response.msg.get_all("Server"))
        assert "Werkzeug" not in str(response.msg) and "Python/" not in str(response.msg)


# --------------------------------------------------------------------------- one text or a pair

@pytest.mark.parametrize(("path", "payload", "where"), [
    ("/predict", {"text": "Profit rose", "text_pair": "Sales fell sharply"}, '"text_pair"'),
    ("/predict", {"texts": [{"text": "Profit rose", "text_pair": "Sales fell sharply"}]}, '"texts[0].text_pair"'),
    ("/predict", {"texts": ["Profit rose"], "text_pair": "Sales fell sharply"}, '"text_pair"'),
    ("/predict", {"data": {"sentence": "Profit rose", "text_pair": "Sales fell sharply"}}, '"text_pair"'),
    ("/model", {"data": {"sentence": "Profit rose", "text_pair": "Sales fell sharply"}}, '"text_pair"'),
    ("/predict", [{"text": "Profit rose", "text_pair": "Sales fell sharply"}], '"texts[0].text_pair"'),
])
def test_a_pair_sent_to_a_one_text_classifier_is_refused(clf, path, payload, where):
    r = clf.post(path, json=payload)
    assert r.status_code == 400
    assert where in r.get_json()["error"] and "reads one text" in r.get_json()["error"]


def test_a_pair_in_a_form_post_or_to_a_summarizer_is_refused(clf, summ):
    r = clf.post("/", data={"text": "Profit rose", "text_pair": "Sales fell sharply"})
    assert r.status_code == 400 and "reads one text" in r.data.decode()
    assert clf.post("/", data={"text": "Profit rose"}).status_code == 200
    r = summ.post("/summarize", json={"text": TEXT, "text_pair": "Another text."})
    assert r.status_code == 400 and "reads one text" in r.get_json()["error"]


def test_fields_the_server_would_ignore_are_refused(clf, summ):
    for payload, field in [({"text": "Profit rose", "sentence2": "Sales fell"}, "'sentence2'"),
                           ({"texts": [{"text": "Profit rose", "pair": "Sales fell"}]}, "'pair'"),
                           ({"data": {"text": "x", "parameters": {"num_beams": 2}}}, "'parameters'"),
                           ({"data": {"sentence": "Profit rose"}, "text_pair": "Sales fell"}, "'text_pair'")]:
        r = clf.post("/predict", json=payload)
        assert r.status_code == 400 and field in r.get_json()["error"] and "the fields are" in r.get_json()["error"]
    r = summ.post("/summarize", json={"data": {"text": TEXT, "parameters": {"num_beams": 2}}})
    assert r.status_code == 400 and 'go beside "data"' in r.get_json()["error"]
    r = clf.post("/model", json={"data": {"sentence": "Profit rose"}, "text_pair": "Sales fell"})
    assert r.status_code == 400 and "'text_pair'" in r.get_json()["error"]


def test_a_pair_model_needs_both_texts(pair_clf):
    one = pair_clf.post("/predict", json={"text": "The cat sat."})
    assert one.status_code == 400 and "reads sentence pairs" in one.get_json()["error"]
    both = pair_clf.post("/predict", json={"text": "The cat sat.", "text_pair": "A cat was sitting."})
    assert both.status_code == 200
    many = pair_clf.post("/predict", json={"texts": [{"text": "a", "text_pair": "b"}], "text_pair": "c"})
    assert many.status_code == 400 and "goes with each item" in many.get_json()["error"]
