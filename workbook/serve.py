"""A small web app for a saved model: a page for people and a JSON API for programs.

    workbook serve runs/01_finbert_financial_sentiment            # http://127.0.0.1:8000
    curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
         -d '{"data": {"sentence": "there is a shortage of capital, and we need extra financing"}}'

Endpoints: `GET /` (the page; `POST /` is its plain HTML form, so it works without JavaScript),
`GET /health`, `POST /predict` (classifiers), `POST /summarize` (summarizers), and `POST /model`
(also `/models/<id>/latest/model`), which answers like a Domino model API. The client shapes
accepted, each documented with curl in docs/serving.md:

- `{"text": ...}` (with `"text_pair"` for sentence-pair models), `{"texts": [...]}`;
- the seeds' `{"data": {"sentence" | "text" | "texts": ...}}`; on `/model` the answer is wrapped
  as Domino wraps a scoring function's return value: `{"result": ..., "request_id": ..., ...}`;
- a bare JSON list of strings (OCI Data Science clients): `{"prediction": [...]}`;
- an HTML form post (`text=...`): the page, with the answer in it.

A classifier's probabilities are calibrated: softmax(logits / temperature), the temperature fitted on the
validation split and saved in `workbook.json` (`/health` shows it); `"raw": true` beside the texts adds
`raw_probabilities`, the model's own softmax.

A text longer than the model reads is cut, and the answer says so (`"truncated": true` and a
`"note"`); only absurd sizes (megabytes) get a 413. Bad input gets a 4xx with a message; model
calls are serialized with a lock, so concurrent requests are answered correctly. A summarizer's
"parameters" are held to ranges (`inference.GENERATION_LIMITS`, shown by /health), and a model call
stops at its next token once all its callers have gone (disconnected, or waited QUEUE_TIMEOUT_S) or
after GENERATION_TIMEOUT_S, so one request cannot hold the model for the others.
"""

from __future__ import annotations

import json
import threading
import time
import unicodedata
import uuid
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"  # local only unless asked: a model server is not for the open internet
DEFAULT_PORT = 8000
MAX_TEXTS = 64  # texts per request
MAX_CHARS = 1_000_000  # characters per text: longer is not text for a model that reads a few hundred tokens
MAX_BODY_BYTES = 8 * 2**20  # a request body over this is refused (413) before it is read
MAX_QUEUE = 64  # requests waiting for the model at once; more get 503 with Retry-After
QUEUE_TIMEOUT_S = 20.0  # a request that waited this long for the model gets 503 (under common 30 s gateway limits)
GENERATION_TIMEOUT_S = 15.0  # a summarizer call running longer is stopped (413), so the next caller is served in time
POLL_S = 0.25  # how often a waiting request checks that its caller is still connected
SERVER_NAME = "finetune-workbook"  # the one Server header: no product versions to look up exploits for
TEXT_KEYS = ("text", "sentence", "texts", "sentences")


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Busy(BadRequest):
    """Too many requests waiting, or one waited too long: 503 with Retry-After, so clients back off."""

    def __init__(self, message: str):
        super().__init__(message, 503)


EXAMPLE = 'send {"text": "..."}, {"texts": ["...", "..."]}, ["...", "..."] or {"data": {"sentence": "..."}}'


def check_text(text: Any, where: str, *, max_chars: int = MAX_CHARS) -> str:
    """A text the model can read, or `BadRequest` saying what is wrong with it."""
    if not isinstance(text, str):
        raise BadRequest(f'"{where}" must be a string, got {type(text).__name__}')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(f"{where} holds characters that are not valid Unicode (e.g. a lone surrogate at position "
                         f"{err.start}); send UTF-8 text") from None
    if not text.strip():
        raise BadRequest(f"{where} is empty or only whitespace; send some text")
    if not any(unicodedata.category(c)[0] in "LNPS" for c in text):
        raise BadRequest(f"{where} holds no visible characters (only control, format or zero-width ones); "
                         "send some text")
    if len(text) > max_chars:
        raise BadRequest(f"{where} has {len(text):,} characters, far over what the model reads; send at most "
                         f"{max_chars:,} characters (longer texts are cut to what the model reads anyway)", 413)
    return text


def _paired(text: str, pair: Any, where: str, pairs: bool, max_chars: int):
    """`(text, text_pair)` for a sentence-pair model, the text alone for a one-text model. A pair sent to a model
    that reads one text (or one text to a pair model) is refused: answering it as something else is wrong."""
    if pair is None:
        if pairs:
            raise BadRequest(f'this model reads sentence pairs; send "{where}" with its second text, e.g. '
                             '{"text": "...", "text_pair": "..."}')
        return text
    if not pairs:
        raise _one_text_only(where)
    return text, check_text(pair, where, max_chars=max_chars)


def _one_text_only(where: str) -> BadRequest:
    return BadRequest(f'"{where}" was given, but this model reads one text, not a pair of texts; send the text '
                      'alone (sentence pairs need a model fine-tuned on pairs, with TEXT_PAIR_COL)')


def _check_keys(body: dict, allowed: tuple[str, ...], where: str) -> None:
    """Refuse fields the server would otherwise ignore without a word (a misspelt "text_pair", "parameters"
    inside "data")."""
    unknown = sorted(str(k) for k in body if k not in allowed)
    if unknown:
        raise BadRequest(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                         f"{where}; the fields are {', '.join(allowed)}")


def _one_item(value: Any, where: str, pairs: bool, max_chars: int):
    """A text, or for a sentence-pair model a (text, text_pair) tuple, from a string or an object."""
    if isinstance(value, dict):
        _check_keys(value, ("text", "sentence", "text_pair"), where)
        text = check_text(value.get("text", value.get("sentence")), f"{where}.text", max_chars=max_chars)
        return _paired(text, value.get("text_pair"), f"{where}.text_pair", pairs, max_chars)
    return _paired(check_text(value, where, max_chars=max_chars), None, f"{where}.text_pair", pairs, max_chars)


def _unwrap(payload: Any) -> tuple[dict, tuple[str, ...], str]:
    """(the object holding the texts, its allowed fields, its name) from a body: bare list, object, {"data": ...}."""
    if isinstance(payload, list):  # a bare JSON list of texts (OCI Data Science clients)
        return {"texts": payload}, TEXT_KEYS, "the body"
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object or a list of texts; {EXAMPLE}")
    if "data" not in payload:
        return payload, (*TEXT_KEYS, "text_pair", "parameters", "raw"), "the body"
    _check_keys(payload, ("data", "parameters", "raw"), "the body")  # {"data": ..., "text_pair": ...} is not a pair
    body = payload["data"]
    if isinstance(body, (str, list)):
        body = {"texts" if isinstance(body, list) else "text": body}
    if not isinstance(body, dict):
        raise BadRequest(f'"data" must be an object, got {type(body).__name__}; {EXAMPLE}')
    return body, (*TEXT_KEYS, "text_pair"), '"data" ("parameters" and "raw" go beside "data")'


def parse_texts(payload: Any, *, max_texts: int = MAX_TEXTS, max_chars: int = MAX_CHARS,
                pairs: bool = False) -> tuple[list, bool]:
    """(inputs, single) from a request body; `BadRequest` naming the problem and the fix otherwise.

    An input is a text, or `(text, text_pair)` for a sentence-pair model (`pairs`), which needs both.
    """
    body, allowed, where = _unwrap(payload)
    keys = [k for k in TEXT_KEYS if k in body]
    if len(keys) != 1:
        raise BadRequest(f"give exactly one of text / sentence / texts (got {sorted(map(str, body)) or 'none'}); "
                         f"{EXAMPLE}")
    _check_keys(body, allowed, where)
    key = keys[0]
    value = body[key]
    if key in ("text", "sentence"):
        if isinstance(value, dict):
            return [_one_item(value, key, pairs, max_chars)], True
        return [_paired(check_text(value, key, max_chars=max_chars), body.get("text_pair"), "text_pair", pairs,
                        max_chars)], True
    if body.get("text_pair") is not None:
        if not pairs:
            raise _one_text_only("text_pair")
        raise BadRequest(f'"text_pair" goes with each item of "{key}": {{"{key}": [{{"text": "...", '
                         '"text_pair": "..."}, ...]}')
    if not isinstance(value, list):
        raise BadRequest(f'"{key}" must be a list of strings, got {type(value).__name__}')
    if not value:
        raise BadRequest(f'"{key}" is empty; send at least one text')
    if len(value) > max_texts:
        raise BadRequest(f"{len(value)} texts in one request; send at most {max_texts} per request", 413)
    if not all(isinstance(t, (str, dict)) for t in value):
        raise BadRequest(f'"{key}" must be a list of strings (or of {{"text", "text_pair"}} objects)')
    return [_one_item(t, f"{key}[{i}]", pairs, max_chars) for i, t in enumerate(value)], False


def parse_json_body(raw: bytes) -> Any:
    """JSON from a request body; `BadRequest` for anything that is not (broken, too deeply nested, not UTF-8)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text; send JSON encoded as UTF-8") from None
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply; send a flat object such as {\"text\": \"...\"}") from None
    except ValueError as err:
        raise BadRequest(f"the body is not valid JSON ({err}); {EXAMPLE}") from None


def with_note(result: dict, reads_tokens: int) -> dict:
    """Say in the answer when a text was cut to what the model reads."""
    if result.get("truncated"):
        result = {**result, "note": f"the text was longer than the model reads ({reads_tokens} tokens); "
                                    "only its start was used"}
    return result


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title><link rel="icon" href="data:,">
<style>
 body { font-family: system-ui, sans-serif; max-width: 760px; margin: 2rem auto; padding: 0 1rem; color: #222; }
 textarea { width: 100%; min-height: 7rem; font: inherit; padding: .5rem; box-sizing: border-box; }
 button { font: inherit; padding: .5rem 1.25rem; margin-top: .5rem; cursor: pointer; border: 0; border-radius: 6px;
          background: #2563eb; color: #fff; }
 button:disabled { cursor: wait; opacity: .6; }
 #result { margin-top: 1rem; padding: .75rem; border-radius: 6px; background: #f3f5f8; min-height: 1.5rem; }
 #result.error { background: #fdecea; color: #a11; }
 .bar { height: .6rem; background: #3b82f6; border-radius: 3px; }
 .banner { background: #fff7e6; border: 1px solid #f5c26b; border-radius: 6px; padding: .6rem .8rem; margin: 1rem 0; }
 table { width: 100%; border-collapse: collapse; } td { padding: .15rem .5rem; } td:last-child { width: 55%; }
 .muted { color: #667; font-size: .9rem; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p class="muted">Model: <code id="model">{{ model }}</code> &middot; task: {{ task }} &middot; API:
 <code>POST {{ endpoint }}</code>, <code>GET /health</code></p>
{% if calibration %}<p class="muted" id="calibration">{{ calibration }}</p>{% endif %}
{% if standin %}<div class="banner" id="standin"><strong>Offline stand-in.</strong> {{ standin }}</div>{% endif %}
<form id="form" method="post" action="/">
<label for="text">{{ prompt }}</label>
<textarea id="text" name="text" placeholder="{{ placeholder }}">{{ text }}</textarea>
{% if pairs %}<label for="text_pair">Second text of the pair</label>
<textarea id="text_pair" name="text_pair">{{ text_pair }}</textarea>{% endif %}
<button id="go" type="submit">{{ button }}</button> <span class="muted">(Ctrl+Enter)</span>
</form>
<p class="muted">The model reads up to {{ reads_tokens }} tokens (roughly {{ reads_chars }} characters of English);
 longer texts are cut and the answer says so.</p>
<div id="result" role="status" aria-live="polite" class="{{ 'error' if error else '' }}">
{%- if error %}Error: {{ error }}{% elif result %}
 {%- if result.label is defined %}<p>Label: <strong id="label">{{ result.label }}</strong>
  ({{ '%.1f' % (100 * result.score) }}%)</p><table>
  {%- for name, p in result.probabilities.items() %}<tr><td>{{ name }}</td><td>{{ '%.1f' % (100 * p) }}%</td>
  <td><div class="bar" style="width:{{ '%.1f' % (100 * p) }}%"></div></td></tr>{% endfor %}</table>
 {%- else %}<p id="summary">{{ result.summary or '(empty summary)' }}</p>{% endif %}
 {%- if result.truncated %}<p class="muted" id="truncated">{{ result.note }}</p>{% endif %}
 {%- if standin %}<p class="muted">Answered by the offline stand-in model, not {{ requested }}.</p>{% endif %}
{%- endif %}</div>
<script>
const endpoint = {{ endpoint | tojson }}, standin = {{ (standin != "") | tojson }}, requested = {{ requested | tojson }};
const form = document.getElementById("form"), go = document.getElementById("go"), box = document.getElementById("text");
const pairBox = document.getElementById("text_pair"), out = document.getElementById("result"), label = go.textContent;
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
function show(r) {
  let html = "";
  if (r.label !== undefined) {
    html = `<p>Label: <strong id="label">${esc(r.label)}</strong> (${(100 * r.score).toFixed(1)}%)</p><table>`;
    for (const [name, p] of Object.entries(r.probabilities))
      html += `<tr><td>${esc(name)}</td><td>${(100 * p).toFixed(1)}%</td><td><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div></td></tr>`;
    html += "</table>";
  } else {
    html = `<p id="summary">${r.summary ? esc(r.summary) : "<em>(empty summary)</em>"}</p>`;
  }
  if (r.truncated) html += `<p class="muted" id="truncated">${esc(r.note || "The text was cut to what the model reads.")}</p>`;
  if (standin) html += `<p class="muted">Answered by the offline stand-in model, not ${esc(requested)}.</p>`;
  out.className = ""; out.innerHTML = html;
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!box.value.trim()) { out.className = "error"; out.textContent = "Type some text first."; return; }
  const body = {text: box.value};
  if (pairBox && pairBox.value.trim()) body.text_pair = pairBox.value;
  go.disabled = true; go.textContent = "Working..."; out.className = ""; out.textContent = "Working...";
  try {
    const res = await fetch(endpoint, {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(body)});
    const answer = await res.json();
    if (!res.ok) throw new Error(answer.error || res.statusText);
    show(answer);
  } catch (err) {
    out.className = "error"; out.textContent = "Error: " + err.message;
  } finally {
    go.disabled = false; go.textContent = label;
  }
});
form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
});
</script>
</body></html>
"""

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                "img-src data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
                                "frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def describe_model(info: dict[str, Any], fallback: str) -> tuple[str, str, str]:
    """(the model actually used, what was requested, a stand-in notice or '') from workbook.json."""
    base = info.get("base_model") or {}
    requested = str(base.get("requested") or fallback)
    used = str(base.get("used") or requested)
    if not base.get("standin"):
        return requested, requested, ""
    from helpers.models import _STANDIN_ENCODER_NAME

    shown = _STANDIN_ENCODER_NAME if info.get("task") == "text-classification" else Path(used).name
    notice = (f"This model was fine-tuned from an offline stand-in ({shown}) because {requested} could not be "
              "reached; its answers show that the code works, not how good the requested model is.")
    if info.get("task") != "text-classification":
        notice += " The stand-in summarizer is tiny and untrained, so its summaries are gibberish."
    return f"{shown} (stand-in for {requested})", requested, notice


class _Job:
    """One request waiting for the model: its inputs, settings, and where its answer goes."""

    def __init__(self, items: list, overrides: dict):
        self.items, self.overrides = items, overrides
        self.done = threading.Event()
        self.results: list[dict] | None = None
        self.error: BaseException | None = None
        self.cancelled = False  # its caller gave up or went away: skip it, or stop the model call it is in


class MicroBatcher:
    """Dynamic batching, as TorchServe and Triton do it: requests that arrive within `max_wait_ms` of
    each other (up to `max_batch` texts) go through the model in one call; each caller gets its own
    answers, and a request whose inputs fail is retried alone, so it cannot fail the others.

    `max_batch=1` and `max_wait_ms=0` is one request per model call (what `--no-batching` serves).
    `call(items, overrides, stop)` gets a `stop()` to poll: it gives a reason once every caller of that call
    has gone, or the call ran over `budget_s`, so no work goes on for nobody."""

    def __init__(self, call, *, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = MAX_QUEUE,
                 budget_s: float = GENERATION_TIMEOUT_S):
        import queue

        self.call, self.max_batch, self.max_wait = call, max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.budget_s = budget_s
        self.queue: queue.Queue[_Job] = queue.Queue(maxsize=max_queue)
        self.active = 0  # requests submitted and not yet answered: waiting makes sense only when > 1
        self.active_lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="micro-batcher", daemon=True)
        self.worker.start()

    def submit(self, items: list, overrides: dict, timeout_s: float, gone=None) -> list[dict]:
        """The answers for `items`; `Busy` when the queue is full or `timeout_s` passed. `gone()`, polled while
        waiting, says the caller closed its connection: its work is then dropped."""
        import queue

        job = _Job(items, overrides)
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"the server is busy ({self.queue.maxsize} requests waiting); retry shortly") from None
        with self.active_lock:
            self.active += 1
        try:
            self._wait(job, timeout_s, gone)
        finally:
            with self.active_lock:
                self.active -= 1
        if job.error is not None:
            raise job.error
        return job.results

    @staticmethod
    def _wait(job: _Job, timeout_s: float, gone) -> None:
        deadline = time.monotonic() + timeout_s
        while not job.done.wait(max(0.0, min(POLL_S, deadline - time.monotonic()))):
            if gone is not None and gone():
                job.cancelled = True
                raise BadRequest("the client closed the connection; its request was dropped", 499)
            if time.monotonic() >= deadline:
                job.cancelled = True
                raise Busy(f"the model was busy for {timeout_s:g} s; retry shortly")

    def _work(self) -> None:
        while True:
            jobs = self._collect()
            groups: dict[str, list[_Job]] = {}
            for job in jobs:  # summarizer settings must match to share a generate call
                groups.setdefault(json.dumps(job.overrides, sort_keys=True, default=str), []).append(job)
            for group in groups.values():
                self._run(group)

    def _collect(self) -> list[_Job]:
        """The first waiting request, and whatever else arrives within max_wait (up to max_batch texts)."""
        import queue

        first = self.queue.get()
        jobs, size = [first], len(first.items)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            if self.queue.empty() and self.active <= len(jobs):  # nobody else is asking: do not wait
                break
            remaining = deadline - time.monotonic()
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            size += len(job.items)
        return [j for j in jobs if not j.cancelled]

    def _stopper(self, jobs: list[_Job]):
        """What a model call polls (once per generated token): a reason to stop, or None."""
        start = time.monotonic()

        def stop() -> str | None:
            if all(job.cancelled for job in jobs):
                return "every caller of this model call has gone"
            if time.monotonic() - start > self.budget_s:
                return f"it ran over {self.budget_s:g} s"
            return None

        return stop

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        try:
            results = self.call([item for job in jobs for item in job.items], jobs[0].overrides, self._stopper(jobs))
        except Exception as err:  # noqa: BLE001 - isolate the request that failed
            if len(jobs) > 1:
                for job in jobs:
                    self._run([job])
                return
            jobs[0].error = err if isinstance(err, BadRequest) else BadRequest(
                f"the model failed on this input ({type(err).__name__}: {err})", 500)
            jobs[0].done.set()
            return
        at = 0
        for job in jobs:
            job.results, at = results[at: at + len(job.items)], at + len(job.items)
            job.done.set()


class ModelService:
    """What the web app does, independent of its routes: parse a request, run the model (micro-batched,
    through a bounded queue), shape the answer for the client that asked."""

    def __init__(self, predictor, *, name: str, max_texts: int = MAX_TEXTS, max_queue: int = MAX_QUEUE,
                 queue_timeout_s: float = QUEUE_TIMEOUT_S, max_batch: int = 32, max_wait_ms: float = 5.0,
                 generation_timeout_s: float = GENERATION_TIMEOUT_S):
        self.predictor = predictor
        self.classifier = predictor.task == "text-classification"
        self.pairs = self.classifier and getattr(predictor, "takes_pairs", False)
        self.endpoint = "/predict" if self.classifier else "/summarize"
        self.reads_tokens = int(predictor.max_input_tokens)
        self.model_name, self.requested, self.standin = describe_model(predictor.info, name)
        self.max_texts, self.queue_timeout_s = max_texts, queue_timeout_s
        self.batcher = MicroBatcher(self._call_model, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                    max_queue=max_queue, budget_s=generation_timeout_s)

    def run(self, items: list, overrides: dict, gone=None, *, raw: bool = False) -> list[dict]:
        """The model on `items`; `Busy` when the queue is full or the wait too long. Generation settings are
        checked against their limits first (`inference._GENERATION_LIMITS`): a 400 naming the setting.
        A classifier's probabilities are calibrated (the folder's temperature); `raw` adds the model's own."""
        if overrides and self.classifier:
            raise BadRequest('"parameters" are for summarizers only')
        if raw and not self.classifier:
            raise BadRequest('"raw" (probabilities before temperature scaling) is for classifiers only')
        if raw:
            overrides = {"raw": True}  # raw requests are batched apart from the others
        if not self.classifier:
            try:
                self.predictor.settings(**overrides)  # unknown settings: this request's 400, before it is queued
            except (TypeError, ValueError) as err:
                raise BadRequest(str(err)) from None
        results = self.batcher.submit(items, overrides, self.queue_timeout_s, gone)
        return [with_note(r, self.reads_tokens) for r in results]

    def _call_model(self, items: list, overrides: dict, stop=None) -> list[dict]:
        if self.classifier:
            return self.predictor.predict(items, **overrides)
        from helpers.inference import _GenerationStopped

        try:
            return self.predictor.summarize(items, stop=stop, **overrides)
        except _GenerationStopped as err:
            raise BadRequest(f"generating these summaries was stopped: {err}; send fewer texts per request, or a "
                             "smaller max_new_tokens or num_beams", 413) from None
        except (TypeError, ValueError) as err:
            raise BadRequest(str(err)) from err

    def answer_json(self, payload, gone=None) -> tuple[dict, int]:
        """A JSON request's answer: a result, {"predictions" | "summaries": [...]}, or OCI's {"prediction": [...]}."""
        items, single = parse_texts(payload, max_texts=self.max_texts, pairs=self.pairs)
        overrides = payload.get("parameters", {}) if isinstance(payload, dict) else {}
        if not isinstance(overrides, dict):
            raise BadRequest('"parameters" must be an object, e.g. {"num_beams": 4}')
        raw = payload.get("raw", False) if isinstance(payload, dict) else False
        if not isinstance(raw, bool):
            raise BadRequest(f'"raw" must be true or false, got {json.dumps(raw, default=str)[:40]}')
        results = self.run(items, overrides, gone, raw=raw)
        if isinstance(payload, list):  # OCI Data Science's answer shape
            return {"prediction": results}, 200
        if single:
            return results[0], 200
        return {"predictions" if self.classifier else "summaries": results}, 200

    def answer_domino(self, payload, gone=None) -> dict:
        """Domino's model API: {"data": {<argument>: value}} in, the function's return value as "result" out."""
        start = time.perf_counter()
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), (dict, str, list)):
            raise BadRequest('a Domino model API call is {"data": {"sentence": "..."}} '
                             '(or {"data": {"text": ...}} / {"data": {"texts": [...]}})')
        _check_keys(payload, ("data",), "a Domino model API call")
        items, single = parse_texts({"data": payload["data"]}, max_texts=self.max_texts, pairs=self.pairs)
        results = self.run(items, {}, gone)
        elapsed = round(1000 * (time.perf_counter() - start), 1)
        return {"result": results[0] if single else results, "request_id": str(uuid.uuid4()),
                "model_time_in_ms": elapsed, "timing": elapsed,
                "release": {"harness_version": "finetune-workbook", "model_version": self.model_name}}

    def answer_form(self, form, gone=None) -> dict:
        """An HTML form post (`text`, `text_pair`): the values to render the page with."""
        text, pair = form.get("text", form.get("sentence", "")), form.get("text_pair")
        try:
            item = _paired(check_text(text, "text"), pair or None, "text_pair", self.pairs, MAX_CHARS)
            return {"text": text, "text_pair": pair or "", "result": self.run([item], {}, gone)[0]}
        except BadRequest as err:
            return {"text": text, "text_pair": pair or "", "error": str(err), "status": err.status}

    def page_values(self) -> dict:
        return dict(title="Text classification" if self.classifier else "Summarization", model=self.model_name,
                    requested=self.requested, standin=self.standin, task=self.predictor.task,
                    endpoint=self.endpoint, pairs=self.pairs, reads_tokens=self.reads_tokens,
                    reads_chars=f"{self.reads_tokens * 4:,}",
                    prompt="Text to classify" if self.classifier else "Text to summarize",
                    placeholder="Type a headline or a sentence..." if self.classifier else "Paste a text...",
                    button="Predict" if self.classifier else "Summarize", text="", text_pair="", result=None,
                    error=None, calibration=self.calibration_note())

    def calibration_note(self) -> str:
        """What the page says about its probabilities: calibrated with the saved temperature, or not."""
        temperature = getattr(self.predictor, "temperature", None) if self.classifier else None
        if temperature is None:
            return ""
        if temperature == 1.0:
            return "Probabilities: the model's own softmax (no temperature was saved with this model)."
        return (f"Probabilities are calibrated: temperature {temperature:.3g}, fitted on the validation split, so "
                '"80%" is right about 80% of the time there. The JSON API gives the raw ones with "raw": true.')

    def health(self) -> dict:
        body = {"status": "ok", "task": self.predictor.task, "model": self.model_name, "requested": self.requested,
                "standin": bool(self.standin), "endpoint": self.endpoint, "max_input_tokens": self.reads_tokens,
                "max_texts": self.max_texts, "text_pair": self.pairs}
        if self.classifier:
            body["labels"] = self.predictor.labels
            body["temperature"] = float(getattr(self.predictor, "temperature", 1.0))
        elif hasattr(self.predictor, "generation_limits"):
            body["parameters"] = self.predictor.generation_limits()
        return body


def read_payload(request):
    """The JSON body, or None for an HTML form post (JSON sent as a form, as plain `curl -d` does, is JSON)."""
    raw = request.get_data(cache=True)
    if request.mimetype == "application/json" or raw.lstrip()[:1] in (b"{", b"["):
        return parse_json_body(raw)
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return None
    raise BadRequest('send a JSON body with Content-Type: application/json, e.g. {"text": "..."}', 415)


def create_app(source, *, max_texts: int = MAX_TEXTS, device: str | None = None, base_model: str | None = None,
               max_queue: int = MAX_QUEUE, queue_timeout_s: float = QUEUE_TIMEOUT_S, max_batch: int = 32,
               max_wait_ms: float = 5.0, generation_timeout_s: float = GENERATION_TIMEOUT_S):
    """A Flask app serving `source`: a saved folder (OUTPUT_DIR, its model/, any save_pretrained folder)
    or a loaded predictor."""
    from flask import Flask, jsonify, render_template_string, request

    from helpers import inference

    predictor = (inference.load(source, device=device, base_model=base_model) if isinstance(source, (str, Path))
                 else source)
    service = ModelService(predictor, name=getattr(source, "name", "model"), max_texts=max_texts,
                           max_queue=max_queue, queue_timeout_s=queue_timeout_s, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, generation_timeout_s=generation_timeout_s)
    app = Flask("finetune_workbook")
    app.json.sort_keys = False
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, WORKBOOK_ENDPOINT=service.endpoint)

    def error(message: str, status: int):
        return jsonify({"error": message}), status, ({"Retry-After": "2"} if status == 503 else {})

    def page(**values):
        status = values.pop("status", 200)
        html = render_template_string(PAGE, **{**service.page_values(), **values})
        return html, status, {"Content-Type": "text/html; charset=utf-8"}

    def handle(kind: str):
        if kind != service.endpoint:
            other = "a text classifier" if service.classifier else "a summarizer"
            return error(f"this server holds {other}; POST {service.endpoint} instead", 400)
        try:
            payload = read_payload(request)
            if payload is None:
                return page(**service.answer_form(request.form, caller_gone(request.environ)))
            body, status = service.answer_json(payload, caller_gone(request.environ))
        except BadRequest as err:
            return error(str(err), err.status)
        return jsonify(body), status

    def domino(model_id: str | None = None):
        try:
            return jsonify(service.answer_domino(parse_json_body(request.get_data(cache=True)),
                                                 caller_gone(request.environ)))
        except BadRequest as err:
            return error(str(err), err.status)

    app.add_url_rule("/", "index", lambda: page(), methods=["GET"])
    app.add_url_rule("/", "form", lambda: handle(service.endpoint), methods=["POST"])
    app.add_url_rule("/health", "health", lambda: jsonify(service.health()), methods=["GET"])
    app.add_url_rule("/favicon.ico", "favicon", lambda: ("", 204), methods=["GET"])  # browsers ask; no 404
    app.add_url_rule("/predict", "predict", lambda: handle("/predict"), methods=["POST"])
    app.add_url_rule("/summarize", "summarize", lambda: handle("/summarize"), methods=["POST"])
    app.add_url_rule("/model", "domino", domino, methods=["POST"])
    app.add_url_rule("/models/<model_id>/latest/model", "domino_latest", domino, methods=["POST"])
    _error_pages(app, error, service.endpoint)
    return app


def _error_pages(app, error, endpoint: str) -> None:
    """JSON answers for 404 / 405 / 413 / 500, and the security headers on every response."""

    @app.after_request
    def headers(response):
        response.headers.update(SECURITY_HEADERS)
        response.headers["Server"] = SERVER_NAME  # the only one: make_http_server drops Werkzeug's
        return response

    app.register_error_handler(404, lambda _: error(f"no such endpoint; use GET /, GET /health or POST {endpoint}",
                                                    404))
    app.register_error_handler(405, lambda _: error(f"wrong method; the API is POST {endpoint} with a JSON body",
                                                    405))
    app.register_error_handler(413, lambda _: error(f"the request body is over {MAX_BODY_BYTES // 2**20} MB; "
                                                    "send fewer or shorter texts", 413))
    app.register_error_handler(500, lambda err: error(
        f"the model failed on this input ({getattr(err, 'original_exception', err)})", 500))


def caller_gone(environ):
    """For a request on a real connection, a check that its client has closed it (the socket reads end-of-file,
    peeked, nothing consumed); None where there is no socket (the test client, other WSGI servers)."""
    import select
    import socket

    sock = environ.get("werkzeug.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionError:
            return True
        except (OSError, ValueError):  # closed here already, or TLS (no peeking): assume it is still there
            return False

    return gone


def make_http_server(app, host: str, port: int):
    """Werkzeug's threaded server, without its own `Server: Werkzeug/3.x Python/3.x` header: answers carry one
    Server header, the app's, naming no versions."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Handler(WSGIRequestHandler):
        def send_response(self, code, message=None):  # http.server's, less its Server header
            self.log_request(code)
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

    return make_server(host, port, app, threaded=True, request_handler=Handler)


def serve(source, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str | None = None,
          base_model: str | None = None, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
    """Run the app with a threaded server until interrupted. The port is claimed before the model loads."""
    import socket

    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.bind((host, port))
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror}); is another server running there? "
                      "Pick another port with --port (make serve PORT=...)") from None
    finally:
        probe.close()
    print(f"loading the model from {source} ...", flush=True)
    app = create_app(source, device=device, base_model=base_model, max_batch=max_batch, max_wait_ms=max_wait_ms)
    server = make_http_server(app, host, port)
    url = f"http://{host}:{server.server_port}"
    endpoint = app.config["WORKBOOK_ENDPOINT"]
    print(f"serving {source} at {url}  (page: {url}/, health: {url}/health; Ctrl+C stops)")
    print(f"  curl -s {url}{endpoint} -H 'Content-Type: application/json' -d '{{\"text\": \"...\"}}'")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  note: bound to {host}, reachable from other machines; there is no authentication")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
