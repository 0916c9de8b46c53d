"""A small web app for a saved model: a page for people and a JSON API for programs.

    workbook serve runs/01_finbert_financial_sentiment            # http://127.0.0.1:8000
    curl -s localhost:8000/predict -H 'Content-Type: application/json' \\
         -d '{"data": {"sentence": "there is a shortage of capital, and we need extra financing"}}'

Endpoints: `GET /` (the page), `GET /health`, `POST /predict` (classifiers), `POST /summarize`
(summarizers). Both POST endpoints accept `{"text": ...}`, `{"texts": [...]}` and the seeds' shapes
`{"data": {"sentence": ...}}` / `{"data": {"text": ...}}`. Bad input gets a 4xx with a message;
model calls are serialized with a lock, so concurrent requests are answered correctly.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"  # local only unless asked: a model server is not for the open internet
DEFAULT_PORT = 8000
MAX_TEXTS = 64  # texts per request
CHARS_PER_TOKEN_LIMIT = 50  # a text longer than max_input_tokens * this many characters (at least
MIN_CHARS_LIMIT = 10_000     # MIN_CHARS_LIMIT) is refused: it is mostly text the model would never read


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_texts(payload: Any, *, max_texts: int = MAX_TEXTS, max_chars: int | None = None) -> tuple[list[str], bool]:
    """(texts, single) from a request body; `BadRequest` naming the problem and the fix otherwise."""
    example = 'send {"text": "..."}, {"texts": ["...", "..."]} or {"data": {"sentence": "..."}}'
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object; {example}")
    body = payload
    if "data" in body:
        body = body["data"]
        if isinstance(body, str):
            body = {"text": body}
        if not isinstance(body, dict):
            raise BadRequest(f'"data" must be an object, got {type(body).__name__}; {example}')
    keys = [k for k in ("text", "sentence", "texts") if k in body]
    if len(keys) != 1:
        raise BadRequest(f"give exactly one of text / sentence / texts (got {sorted(body) or 'none'}); {example}")
    key = keys[0]
    value = body[key]
    single = key != "texts"
    if single:
        if not isinstance(value, str):
            raise BadRequest(f'"{key}" must be a string, got {type(value).__name__}')
        texts = [value]
    else:
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise BadRequest('"texts" must be a list of strings')
        if not value:
            raise BadRequest('"texts" is empty; send at least one text')
        if len(value) > max_texts:
            raise BadRequest(f"{len(value)} texts in one request; send at most {max_texts} per request", 413)
        texts = value
    for i, text in enumerate(texts):
        where = f"{key}" if single else f"texts[{i}]"
        if not text.strip():
            raise BadRequest(f"{where} is empty or only whitespace; send some text")
        if max_chars is not None and len(text) > max_chars:
            raise BadRequest(f"{where} has {len(text):,} characters, far over what the model reads "
                             f"(it cuts input at a few thousand); send at most {max_chars:,} characters", 413)
    return texts, single


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
 body {{ font-family: system-ui, sans-serif; max-width: 760px; margin: 2rem auto; padding: 0 1rem; color: #222; }}
 textarea {{ width: 100%; min-height: 8rem; font: inherit; padding: .5rem; box-sizing: border-box; }}
 button {{ font: inherit; padding: .5rem 1.25rem; margin-top: .5rem; cursor: pointer; }}
 button:disabled {{ cursor: wait; opacity: .6; }}
 #result {{ margin-top: 1rem; padding: .75rem; border-radius: 6px; background: #f3f5f8; min-height: 1.5rem; }}
 #result.error {{ background: #fdecea; color: #a11; }}
 .bar {{ height: .6rem; background: #3b82f6; border-radius: 3px; }}
 table {{ width: 100%; border-collapse: collapse; }} td {{ padding: .15rem .5rem; }} td:last-child {{ width: 55%; }}
 .muted {{ color: #667; font-size: .9rem; }}
</style></head>
<body>
<h1>{title}</h1>
<p class="muted">Model: <code>{model}</code> &middot; task: {task} &middot; API: <code>POST {endpoint}</code>,
 <code>GET /health</code></p>
<label for="text">{prompt}</label>
<textarea id="text" placeholder="{placeholder}"></textarea>
<button id="go" type="button">{button}</button>
<div id="result" role="status" aria-live="polite"></div>
<script>
const endpoint = "{endpoint}";
const go = document.getElementById("go"), box = document.getElementById("text"), out = document.getElementById("result");
function esc(s) {{ return s.replace(/[&<>"]/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}}[c])); }}
function show(r) {{
  let html = "";
  if (r.label !== undefined) {{
    html = `<p>Label: <strong id="label">${{esc(r.label)}}</strong> (${{(100 * r.score).toFixed(1)}}%)</p><table>`;
    for (const [name, p] of Object.entries(r.probabilities))
      html += `<tr><td>${{esc(name)}}</td><td>${{(100 * p).toFixed(1)}}%</td><td><div class="bar" style="width:${{100 * p}}%"></div></td></tr>`;
    html += "</table>";
  }} else {{
    html = `<p id="summary">${{esc(r.summary) || "<em>(empty summary)</em>"}}</p>`;
  }}
  if (r.truncated) html += '<p class="muted" id="truncated">The text was longer than the model reads; only its start was used.</p>';
  out.className = ""; out.innerHTML = html;
}}
go.addEventListener("click", async () => {{
  if (!box.value.trim()) {{ out.className = "error"; out.textContent = "Type some text first."; return; }}
  go.disabled = true; go.textContent = "Working..."; out.className = ""; out.textContent = "Working...";
  try {{
    const res = await fetch(endpoint, {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                        body: JSON.stringify({{text: box.value}})}});
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.statusText);
    show(body);
  }} catch (err) {{
    out.className = "error"; out.textContent = "Error: " + err.message;
  }} finally {{
    go.disabled = false; go.textContent = "{button}";
  }}
}});
</script>
</body></html>
"""


def create_app(source, *, max_texts: int = MAX_TEXTS, device: str | None = None):
    """A Flask app serving `source`: a saved folder (OUTPUT_DIR or its model/) or a loaded predictor."""
    from flask import Flask, jsonify, request

    from . import inference

    predictor = inference.load(source, device=device) if isinstance(source, (str, Path)) else source
    classifier = predictor.task == "text-classification"
    endpoint = "/predict" if classifier else "/summarize"
    max_chars = max(predictor.max_input_tokens * CHARS_PER_TOKEN_LIMIT, MIN_CHARS_LIMIT)
    name = str(predictor.info.get("base_model", {}).get("requested") or getattr(source, "name", "model"))
    lock = threading.Lock()
    app = Flask("finetune_workbook")
    app.json.sort_keys = False
    app.config["WORKBOOK_ENDPOINT"] = endpoint

    def error(message: str, status: int):
        return jsonify({"error": message}), status

    @app.get("/")
    def page():
        title = "Sentiment / text classification" if classifier else "Summarization"
        return PAGE.format(title=title, model=name, task=predictor.task, endpoint=endpoint,
                           prompt="Text to classify" if classifier else "Text to summarize",
                           placeholder="Type a headline or a sentence..." if classifier else "Paste a text...",
                           button="Predict" if classifier else "Summarize")

    @app.get("/health")
    def health():
        body = {"status": "ok", "task": predictor.task, "model": name, "endpoint": endpoint,
                "max_input_tokens": predictor.max_input_tokens, "max_texts": max_texts}
        if classifier:
            body["labels"] = predictor.labels
        return jsonify(body)

    def handle(kind: str):
        if kind != endpoint:
            other = "a text classifier" if classifier else "a summarizer"
            return error(f"this server holds {other}; POST {endpoint} instead", 400)
        payload = request.get_json(silent=True)
        if payload is None:
            return error('send a JSON body with Content-Type: application/json, e.g. {"text": "..."}', 415
                         if not request.is_json else 400)
        try:
            texts, single = parse_texts(payload, max_texts=max_texts, max_chars=max_chars)
            overrides = payload.get("parameters", {}) if isinstance(payload, dict) else {}
            if overrides and classifier:
                raise BadRequest('"parameters" are for summarizers only')
            if not isinstance(overrides, dict):
                raise BadRequest('"parameters" must be an object, e.g. {"num_beams": 4}')
            with lock:  # one model call at a time: correct answers under concurrent requests
                if classifier:
                    results = predictor.predict(texts)
                else:
                    try:
                        results = predictor.summarize(texts, **overrides)
                    except (TypeError, ValueError) as err:
                        raise BadRequest(str(err)) from err
        except BadRequest as err:
            return error(str(err), err.status)
        if single:
            return jsonify(results[0])
        return jsonify({"predictions" if classifier else "summaries": results})

    @app.post("/predict")
    def predict():
        return handle("/predict")

    @app.post("/summarize")
    def summarize():
        return handle("/summarize")

    @app.errorhandler(404)
    def not_found(_):
        return error(f"no such endpoint; use GET /, GET /health or POST {endpoint}", 404)

    @app.errorhandler(405)
    def wrong_method(_):
        return error(f"wrong method; the API is POST {endpoint} with a JSON body", 405)

    @app.errorhandler(500)
    def failed(err):
        return error(f"the model failed on this input ({getattr(err, 'original_exception', err)})", 500)

    return app


def serve(source, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str | None = None) -> None:
    """Run the app with a threaded server until interrupted."""
    from werkzeug.serving import make_server

    app = create_app(source, device=device)
    server = make_server(host, port, app, threaded=True)
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
