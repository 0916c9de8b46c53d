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

What it trusts (docs/serving.md, "What the server trusts"): only the Host names it serves (DNS rebinding),
nothing a model folder would run (that is helpers.inference's refusal), bodies up to MAX_BODY_BYTES chunked or
not; it shows names, never this machine's paths; SIGTERM / SIGINT drain it (as gunicorn does).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
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
TOO_LARGE = f"the request body is over {MAX_BODY_BYTES // 2**20} MB; send fewer or shorter texts"
MAX_QUEUE = 64  # requests waiting for the model at once; more get 503 with Retry-After
QUEUE_TIMEOUT_S = 20.0  # a request that waited this long for the model gets 503 (under common 30 s gateway limits)
GENERATION_TIMEOUT_S = 15.0  # a summarizer call running longer is stopped (413), so the next caller is served in time
POLL_S = 0.25  # how often a waiting request checks that its caller is still connected
SERVER_NAME = "finetune-workbook"  # the one Server header: no product versions to look up exploits for
TEXT_KEYS = ("text", "sentence", "texts", "sentences")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # the Host names this machine's own clients send
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # binds that take every address: the names must come from elsewhere
# SIGTERM waits this long for the requests in flight: the longest one the limits above allow (a queue wait, then
# a generation), plus a margin; a request still running then is given up and the exit status says so
DRAIN_TIMEOUT_S = QUEUE_TIMEOUT_S + GENERATION_TIMEOUT_S + 5
LENGTH_CAP = 16_384  # saved lengths of a model that states no positions (T5's are relative): 1e9 is still absurd


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


def shown_name(value: Any) -> str:
    """A model as a client may see it: a Hub id as it is, a folder by its name only, never this machine's path."""
    text = str(value)
    if re.match(r"[A-Za-z]:[\\/]", text) or "\\" in text:  # a Windows path
        from pathlib import PureWindowsPath

        return PureWindowsPath(text).name or text
    if text.startswith(("/", ".", "~")) or os.path.exists(text):  # a folder here (a Hub id is org/name)
        return Path(text).expanduser().name or text
    return text


# an absolute path (POSIX or Windows) inside a message: all but its last part is dropped
_PATH_IN_TEXT = re.compile(r"(?<![^\s'\"(\[{=,])(?:[A-Za-z]:)?(?:[\\/][^\s\\/'\"<>|:;,()\[\]{}]+)+[\\/]"
                           r"(?=[^\s\\/'\"<>|:;,()\[\]{}])")


def without_paths(message: str) -> str:
    """A message a client may read: each absolute path in it cut to its last part (`/home/me/models/x` is `x`),
    so an error from deep in a library does not show how this machine is laid out."""
    return _PATH_IN_TEXT.sub("", message)


def describe_model(info: dict[str, Any], fallback: str) -> tuple[str, str, str]:
    """(the model actually used, what was requested, a stand-in notice or '') from workbook.json, as names: a
    base model given as a folder shows its name, not its path (clients read these on /health and the page)."""
    base = info.get("base_model") or {}
    requested = shown_name(base.get("requested") or fallback)
    used = str(base.get("used") or requested)
    if not base.get("standin"):
        return requested, requested, ""
    from helpers.models import _STANDIN_ENCODER_NAME

    shown = _STANDIN_ENCODER_NAME if info.get("task") == "text-classification" else shown_name(used)
    notice = (f"This model was fine-tuned from an offline stand-in ({shown}) because {requested} could not be "
              "reached; its answers show that the code works, not how good the requested model is.")
    if info.get("task") != "text-classification":
        notice += " The stand-in summarizer is tiny and untrained, so its summaries are gibberish."
    return f"{shown} (stand-in for {requested})", requested, notice


def host_name(value: str) -> str:
    """The name in a Host header (or an --allowed-host): lower case, without its port, IPv6 brackets or final dot.
    The port is not compared: a proxy or a port mapping may change it, a rebinding page cannot change the name."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


class HostCheck:
    """The Host names the server answers to, as Jupyter server checks them against DNS rebinding (a page the user
    visits resolving its own name to this machine): this machine's loopback names, the bound address, and each
    `--allowed-host` (a proxy's public name). Bound to every address (0.0.0.0), it also takes the machine's
    hostname and any IP address (a page cannot rebind a name that is an address). Set at start, never from a
    request."""

    def __init__(self, host: str = DEFAULT_HOST, allowed: tuple[str, ...] | list[str] = ()):
        import socket

        self.wildcard = host_name(host) in WILDCARD_HOSTS
        names = {*LOCAL_HOSTS, host_name(host), *(host_name(name) for name in allowed)}
        if self.wildcard:
            names.add(host_name(socket.gethostname()))
        self.names = frozenset(n for n in names if n not in WILDCARD_HOSTS)

    def allows(self, header: str | None) -> bool:
        if header is None:  # no Host at all: not a browser (they always send one), so not a rebinding page
            return True
        name = host_name(header)
        if name in self.names:
            return True
        if not self.wildcard:
            return False
        import ipaddress

        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    @staticmethod
    def refusal(header: str) -> str:
        shown = _shown_value(header)
        return (f"this server does not answer to the Host {shown} (it checks Host against DNS rebinding); open it "
                f"as http://127.0.0.1:<port>/ or http://localhost:<port>/ on its machine, or start it with "
                f"--allowed-host {_shown_value(host_name(header))[1:-1] or 'NAME'} if that is the name it is "
                "reached by (a proxy's public name)")


def _shown_value(value: Any) -> str:
    """A value as a client sent it (quoted), cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + '..."'


_LENGTHS = (("max_length", "the tokens the model reads"), ("max_source_length", "the tokens of a text it reads"))


def check_saved_lengths(info: dict[str, Any], config: Any, where: str = "workbook.json") -> None:
    """Refuse, in one line, a saved length no model call could use (`max_length` of -5, "abc", 1e9): each one a
    whole number from 1 to the model's positions (LENGTH_CAP where it states none), and a causal LM's
    max_length longer than the summary it leaves room for. Checked once at start, not at each request's 500.
    A folder without workbook.json (`inferred` settings) has the kit's defaults, fitted to the model already."""
    if info.get("inferred"):
        return
    limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits = [x for x in limits if isinstance(x, int) and not isinstance(x, bool) and x > 0]
    positions = min(limits) if limits else LENGTH_CAP
    generation = info.get("generation") if isinstance(info.get("generation"), dict) else {}
    values = {**{k: (info.get(k), why, positions) for k, why in _LENGTHS},
              "generation.max_new_tokens": (generation.get("max_new_tokens"), "tokens per summary", LENGTH_CAP)}
    for name, (value, why, high) in values.items():
        whole = (isinstance(value, int) and not isinstance(value, bool)
                 or isinstance(value, float) and value.is_integer())
        if value is not None and not (whole and 1 <= value <= high):
            raise ValueError(f"{where}: {name} must be a whole number from 1 to {high:,} ({why}); got "
                             f"{_shown_value(value)}; correct it, or delete it to use the model's default")
    new_tokens = generation.get("max_new_tokens")
    if info.get("task") == "summarization-causal" and info.get("max_length") and new_tokens is not None \
            and int(info["max_length"]) <= int(new_tokens):
        raise ValueError(f"{where}: max_length ({info['max_length']}) must be larger than generation.max_new_tokens "
                         f"({new_tokens}): the prompt and the summary share it; raise max_length or lower "
                         "max_new_tokens")


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
                "max_texts": self.max_texts, "text_pair": self.pairs,
                "runtime": getattr(self.predictor, "runtime", "torch")}
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
               max_wait_ms: float = 5.0, generation_timeout_s: float = GENERATION_TIMEOUT_S, host: str = DEFAULT_HOST,
               allowed_hosts: tuple[str, ...] | list[str] = (), runtime: str | None = None):
    """A Flask app serving `source`: a saved folder (OUTPUT_DIR, its model/, any save_pretrained folder)
    or a loaded predictor, on `runtime` (torch, onnx, onnx-int8; None: onnx when the folder has a fresh export).
    It answers the Host names of `HostCheck(host, allowed_hosts)` only."""
    from flask import Flask, jsonify, render_template_string, request

    predictor = _load(source, device, base_model, runtime) if isinstance(source, (str, Path)) else source
    service = ModelService(predictor, name=getattr(source, "name", "model"), max_texts=max_texts,
                           max_queue=max_queue, queue_timeout_s=queue_timeout_s, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, generation_timeout_s=generation_timeout_s)
    app = Flask("finetune_workbook")
    app.json.sort_keys = False
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, WORKBOOK_ENDPOINT=service.endpoint,
                      WORKBOOK_PREDICTOR=predictor)

    def error(message: str, status: int):  # every JSON error: no path of this machine in it
        return jsonify({"error": without_paths(message)}), status, ({"Retry-After": "2"} if status == 503 else {})

    def page(**values):
        status = values.pop("status", 200)
        if values.get("error"):
            values["error"] = without_paths(values["error"])
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
    _guards(app, error, HostCheck(host, allowed_hosts))
    return app


def _load(folder, device: str | None, base_model: str | None, runtime: str | None = None):
    """The predictor of a saved folder on its runtime (torch, or ONNX Runtime: `workbook.onnx.load`), its saved
    lengths checked: refused at start rather than a 500 per request."""
    from . import onnx

    predictor = onnx.load(folder, runtime, device=device, base_model=base_model)
    config = getattr(predictor, "config", None) or predictor.model.config
    check_saved_lengths(predictor.info, config, f"workbook.json in {folder}")
    return predictor


def _guards(app, error, hosts: HostCheck) -> None:
    """Before any route: the Host check (403 naming --allowed-host), then a chunked body read here up to the limit,
    so one over it gets the same 413 as a body that declares its length (Werkzeug cuts a chunked body at the limit
    without a word, and the JSON parser then blamed the client's JSON with a 400)."""
    from flask import request

    @app.before_request
    def guard():
        environ = request.environ
        if not hosts.allows(environ.get("HTTP_HOST")):
            return error(hosts.refusal(environ["HTTP_HOST"]), 403)
        if environ.get("wsgi.input_terminated") and not environ.get("CONTENT_LENGTH"):
            try:
                body = _read_at_most(environ["wsgi.input"], MAX_BODY_BYTES + 1)
            except (OSError, ValueError):
                return error("the chunked request body is malformed; send the JSON with a Content-Length", 400)
            if len(body) > MAX_BODY_BYTES:
                _read_at_most(environ["wsgi.input"], 4 * MAX_BODY_BYTES, keep=False)  # so the client reads the 413
                return error(TOO_LARGE, 413)
            environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
            for key in ("wsgi.input_terminated", "HTTP_TRANSFER_ENCODING"):  # now a body of known length
                environ.pop(key, None)
        return None


def _read_at_most(stream, limit: int, *, keep: bool = True) -> bytes:
    """Up to `limit` bytes of a stream (all of them when it ends first); with keep=False, read and dropped."""
    parts, size = [], 0
    while size < limit:
        part = stream.read(min(limit - size, 2**16))
        if not part:
            break
        size += len(part)
        if keep:
            parts.append(part)
    return b"".join(parts)


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
    app.register_error_handler(413, lambda _: error(TOO_LARGE, 413))
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
    """Werkzeug's threaded server, without its own `Server: Werkzeug/3.x Python/3.x` header (answers carry one
    Server header, the app's, naming no versions), counting the requests it has accepted and not yet answered
    (`busy`), so `serve` can drain them. Its socket has SO_REUSEADDR (http.server's default), so a restart binds
    at once even while the last connections sit in TIME_WAIT."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        def send_response(self, code, message=None):  # http.server's, less its Server header
            self.log_request(code)
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

    class DrainingServer(ThreadedWSGIServer):
        block_on_close = False  # serve() waits for the requests itself, with a deadline

        def __init__(self, *args, **kwargs):
            self.busy, self._busy_lock = 0, threading.Lock()
            super().__init__(*args, **kwargs)

        def _count(self, step: int) -> None:
            with self._busy_lock:
                self.busy += step

        def process_request(self, request, client_address):  # the accepting thread: counted before it is handed on
            self._count(1)
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._count(-1)
                raise

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._count(-1)

    return DrainingServer(host, port, app, Handler)


def claim_port(host: str, port: int) -> None:
    """Check that `host:port` can be bound before the model loads (seconds to minutes), with SO_REUSEADDR as the
    server's own socket has it: a restart on the port of a server just stopped works at once (its connections'
    TIME_WAIT does not count), another server listening there is still refused."""
    import socket

    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror}); is another server running there? "
                      "Pick another port with --port (make serve PORT=...)") from None
    finally:
        probe.close()


class _Signals:
    """SIGTERM and SIGINT for `serve`: while the model loads, exit at once, status 0 (nothing was accepted or
    written yet; an exception raised into the load could be caught and turned into another error by the library
    it lands in); once serving, drain (set `stop`: no new connections, the accepted ones answered, as gunicorn
    does on SIGTERM); a second signal while draining (`hurry`) stops without waiting. Handlers are set in the
    main thread only, and put back on exit."""

    def __init__(self):
        self.serving = False
        self.stop, self.hurry = threading.Event(), threading.Event()
        self.previous: dict = {}

    def __enter__(self):
        import signal

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        import signal

        if not self.serving:
            with contextlib.suppress(Exception):  # the main thread may be writing: what can be flushed is
                sys.stdout.flush()
            os.write(1, f"stopped ({signal.Signals(signum).name}) while loading the model; nothing was "
                        "served\n".encode())
            os._exit(0)
        (self.hurry if self.stop.is_set() else self.stop).set()  # only flags: the main thread does the work


def _serve_until_stopped(server, signals: _Signals) -> int:
    """Answer requests until a signal; then drain: take the connections already queued on the socket, close it (new
    ones are refused), and wait up to DRAIN_TIMEOUT_S for every accepted request to be answered. 0 when all were."""
    import select

    server.timeout = 0.1  # how soon the loop sees a signal (it polls, as serve_forever does)
    while not signals.stop.is_set():
        server.handle_request()
    server.timeout = 0
    for _ in range(server.request_queue_size):  # connections the kernel accepted before the signal
        if not select.select([server.socket], [], [], 0)[0]:
            break
        server.handle_request()
    server.server_close()
    print(f"stopping: no new connections; answering the {server.busy} request(s) already accepted ...", flush=True)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while server.busy and time.monotonic() < deadline and not signals.hurry.is_set():
        time.sleep(0.05)
    if server.busy:
        why = "a second signal" if signals.hurry.is_set() else f"waiting {DRAIN_TIMEOUT_S:g} s"
        print(f"stopped after {why}, with {server.busy} request(s) unanswered", flush=True)
        return 1
    print("stopped: every request accepted was answered", flush=True)
    return 0


def serve(source, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str | None = None,
          base_model: str | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
          allowed_hosts: tuple[str, ...] | list[str] = (), runtime: str | None = None) -> int:
    """Run the app with a threaded server until SIGTERM or SIGINT (Ctrl+C), then drain; the exit status (0: every
    request accepted was answered). The port is claimed before the model loads; a signal during the load stops
    it cleanly. Only the Host names of `HostCheck(host, allowed_hosts)` are answered."""
    claim_port(host, port)
    with _Signals() as signals:
        print(f"loading the model from {source} ...", flush=True)
        app = create_app(source, device=device, base_model=base_model, max_batch=max_batch,
                         max_wait_ms=max_wait_ms, host=host, allowed_hosts=allowed_hosts, runtime=runtime)
        server = make_http_server(app, host, port)
        signals.serving = True
        _announce(server, source, host, app, allowed_hosts)
        return _serve_until_stopped(server, signals)


def _announce(server, source, host: str, app, allowed_hosts) -> None:
    url = f"http://{host}:{server.server_port}"
    endpoint = app.config["WORKBOOK_ENDPOINT"]
    print(f"serving {source} at {url}  (page: {url}/, health: {url}/health; Ctrl+C stops)")
    predictor = app.config["WORKBOOK_PREDICTOR"]
    print(f"  runtime: {getattr(predictor, 'runtime', 'torch')} ({getattr(predictor, 'runtime_why', 'given')}; "
          "--runtime torch|onnx|onnx-int8 chooses)")
    print(f"  curl -s {url}{endpoint} -H 'Content-Type: application/json' -d '{{\"text\": \"...\"}}'")
    if host not in LOCAL_HOSTS:
        print(f"  note: bound to {host}, reachable from other machines; there is no authentication")
    if allowed_hosts:
        print(f"  also answers to Host: {', '.join(host_name(h) for h in allowed_hosts)} (--allowed-host)")
    sys.stdout.flush()  # the lines above are what a supervisor's log shows first
