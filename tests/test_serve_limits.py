"""The web API under abuse: random bodies never give a 5xx, the queue is bounded, big bodies are refused."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import workbook.serve


class SlowClassifier:
    """A stand-in predictor that takes `delay` seconds per call (`then` seconds after the first call, when
    given) to fill the queue; `started` is set once a call has begun, so a test can wait for the model to be
    busy instead of guessing how long that takes."""

    task = "text-classification"
    info = {"max_length": 16}
    max_input_tokens = 16
    labels = ["negative", "positive"]

    def __init__(self, delay, then=None):
        self.delay, self.then = delay, then
        self.started = threading.Event()

    def predict(self, items):
        first = not self.started.is_set()
        self.started.set()
        time.sleep(self.delay if first or self.then is None else self.then)
        return [{"label": "positive", "score": 0.9, "probabilities": {"negative": 0.1, "positive": 0.9},
                 "truncated": False} for _ in items]


def test_a_full_queue_answers_503_with_retry_after():
    # the first call takes 2 s, so all six requests arrive while it is still being scored, however slowly the
    # threads start on a busy machine; the queued ones are then answered at once
    app = workbook.serve.create_app(SlowClassifier(2.0, then=0.0), max_queue=2, queue_timeout_s=10, max_batch=1,
                              max_wait_ms=0)

    def call(_):
        with app.test_client() as client:
            r = client.post("/predict", json={"text": "hello"})
            return r.status_code, r.headers.get("Retry-After")

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(call, range(6)))
    codes = [c for c, _ in results]
    assert codes.count(200) >= 2 and 503 in codes
    assert all(after == "2" for code, after in results if code == 503)


def test_a_request_that_waits_too_long_gets_503():
    model = SlowClassifier(3.0)
    app = workbook.serve.create_app(model, queue_timeout_s=0.2)
    first = threading.Thread(target=lambda: app.test_client().post("/predict", json={"text": "a"}))
    first.start()
    assert model.started.wait(timeout=60), "the first request never reached the model"
    r = app.test_client().post("/predict", json={"text": "b"})  # the model stays busy for ~3 s more
    first.join()
    assert r.status_code == 503 and "busy" in r.get_json()["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read():
    client = workbook.serve.create_app(SlowClassifier(0)).test_client()
    r = client.post("/predict", data=b'{"text": "' + b"a" * (9 * 2**20) + b'"}', content_type="application/json")
    assert r.status_code == 413 and "8 MB" in r.get_json()["error"]


@pytest.fixture(scope="module")
def real_client(tiny_classifier_dir):
    return workbook.serve.create_app(tiny_classifier_dir, device="cpu").test_client()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["text", "texts", "sentence", "data", "text_pair", "parameters", "x"]) | st.text(max_size=5),
        children, max_size=4),
    max_leaves=12)


@settings(max_examples=120)  # deadline and health checks: conftest
@given(body=json_values, endpoint=st.sampled_from(["/predict", "/summarize", "/model", "/"]))
def test_random_json_never_gives_a_5xx(real_client, body, endpoint):
    r = real_client.post(endpoint, data=json.dumps(body), content_type="application/json")
    assert r.status_code < 500, r.data[:300]


@settings(max_examples=60)  # deadline and health checks: conftest
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
       mimetype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_random_bytes_never_give_a_5xx_and_the_server_keeps_answering(real_client, raw, mimetype):
    r = real_client.post("/predict", data=raw, content_type=mimetype)
    assert r.status_code < 500, r.data[:300]
    assert real_client.post("/predict", json={"text": "still here"}).status_code == 200


class CountingClassifier(SlowClassifier):
    """Records the size of every model call; fails any call that holds the text "poison"."""

    def __init__(self):
        super().__init__(0.05)
        self.calls = []

    def predict(self, items):
        self.calls.append(len(items))
        if "poison" in items:
            raise RuntimeError("cannot score poison")
        return [{"label": "positive" if len(t) % 2 else "negative", "score": 0.9,
                 "probabilities": {"negative": 0.1, "positive": 0.9}, "truncated": False} for t in items]


def test_concurrent_requests_are_scored_together_and_each_gets_its_own_answer():
    model = CountingClassifier()
    # a batch waits up to 1 s for requests still arriving (it stops waiting once nobody else is asking),
    # so 16 threads started on a busy machine still meet in a batch
    app = workbook.serve.create_app(model, max_batch=32, max_wait_ms=1000)
    texts = [f"text number {i}" + "x" * (i % 3) for i in range(16)]

    def call(text):
        with app.test_client() as client:
            return client.post("/predict", json={"text": text}).get_json()["label"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        labels = list(pool.map(call, texts))
    assert labels == ["positive" if len(t) % 2 else "negative" for t in texts]
    assert max(model.calls) > 1 and len(model.calls) < len(texts)  # batched: fewer calls than requests


def test_one_bad_request_does_not_fail_the_others():
    model = CountingClassifier()
    app = workbook.serve.create_app(model, max_batch=32, max_wait_ms=1000)

    def call(text):
        with app.test_client() as client:
            r = client.post("/predict", json={"text": text})
            return r.status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(call, ["good one", "poison", "good two", "good three", "good four", "good five"]))
    assert codes[1] == 500 and codes[0] == 200 and codes[2:] == [200] * 4
