"""Issue 37, the server and score.py: no code from a model folder runs, no path of this machine is shown, only the
Host names the server serves are answered, a chunked body over the limit gets 413, SIGTERM drains, a restart on
the same port works at once, and an absurd saved length is refused at start in one line."""

from __future__ import annotations

import ast
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for_process

import helpers as hp
import workbook.serve
from workbook import cli

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "workbook" / "score_template.py"
SECRET = "/home/someone/secret-models"  # a path of "this machine" that no answer may show


class StubClassifier:
    """A predictor that answers at once, or fails with `error` (a message holding a path)."""

    task = "text-classification"
    info: dict = {}
    max_input_tokens = 16
    labels = ["negative", "positive"]

    def __init__(self, error: Exception | None = None):
        self.error = error

    def predict(self, items):
        if self.error is not None:
            raise self.error
        return [{"label": "positive", "score": 0.9, "probabilities": {"negative": 0.1, "positive": 0.9},
                 "truncated": False} for _ in items]


# --------------------------------------------------------------------------- a model folder's own code

def _code_folder(folder: Path, marker: Path, *, task: str = "text-classification") -> Path:
    """A folder whose config.json names its own code (auto_map, a model type transformers does not know); the code
    writes `marker` when it is imported."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "trustme", "architectures": ["TrustMeForSequenceClassification"],
        "auto_map": {"AutoConfig": "trustme.TrustMeConfig",
                     "AutoModelForSequenceClassification": "trustme.TrustMeForSequenceClassification"}}))
    (folder / "trustme.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "workbook.json").write_text(json.dumps({"task": task}))
    return folder


def _with_score_py(folder: Path) -> Path:
    shutil.copy(TEMPLATE, folder / "score.py")
    return folder


def _run_score(folder: Path, code: str, stdin: str = "y\ny\n") -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter in the folder, importing only its score.py; stdin answers yes to any prompt."""
    return subprocess.run([sys.executable, "-c", f"import score\n{code}"], cwd=folder, input=stdin,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def _last_line(out: subprocess.CompletedProcess) -> str:
    return (out.stderr.strip().splitlines() or [""])[-1]


def test_score_py_refuses_a_folder_that_ships_code_and_runs_none_of_it(tmp_path):
    marker = tmp_path / "ran.txt"
    folder = _with_score_py(_code_folder(tmp_path / "model", marker))
    out = _run_score(folder, "score.predict_sentiment('Profit rose')")
    assert out.returncode != 0 and not marker.exists(), "the folder's own code ran"
    line = _last_line(out)
    assert line.startswith("ValueError: ") and "ships its own code" in line and "auto_map" in line
    assert "trust_remote_code=False" in line and "[y/N]" not in out.stdout + out.stderr


def test_score_py_refuses_a_tokenizer_that_ships_code(tmp_path, tiny_classifier_dir):
    folder = _with_score_py(Path(shutil.copytree(tiny_classifier_dir, tmp_path / "model")))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["trustme.TrustMeTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "trustme.py").write_text(f"open({str(tmp_path / 'ran.txt')!r}, 'w').write('ran')\n")
    out = _run_score(folder, "score.predict_sentiment('Profit rose')")
    assert out.returncode != 0 and not (tmp_path / "ran.txt").exists()
    assert "tokenizer_config.json has an auto_map" in _last_line(out)


def test_score_py_refuses_a_local_base_model_that_ships_code(tmp_path):
    marker = tmp_path / "ran.txt"
    base = _code_folder(tmp_path / "base", marker)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS", "peft_type": "LORA",
                                                             "base_model_name_or_path": str(base)}))
    (adapter / "workbook.json").write_text(json.dumps({"task": "text-classification", "base_model_path": str(base)}))
    out = _run_score(_with_score_py(adapter), "score.predict_sentiment('Profit rose')")
    assert out.returncode != 0 and not marker.exists(), "the base model's own code ran"
    line = _last_line(out)
    assert "the base model of adapter ships its own code" in line and "trust_remote_code=False" in line


def test_every_from_pretrained_of_score_py_passes_trust_remote_code_false():
    """A load that does not pass it lets transformers ask on stdin (and a piped "y" answers)."""
    calls = [node for path in (TEMPLATE, ROOT / "workbook" / "serve.py", ROOT / "workbook" / "cli.py")
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"]
    peft = [c for c in calls if isinstance(c.func.value, ast.Name) and c.func.value.id == "PeftModel"]  # no code
    loose = [ast.unparse(c) for c in calls if c not in peft and not any(
        k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is False
        for k in c.keywords)]
    assert len(calls) >= 3 and not loose, loose


def test_workbook_predict_refuses_a_folder_that_ships_code(tmp_path):
    """Needs helpers.inference's own refusal (the kit's side of the issue): the tool says it in one line."""
    marker = tmp_path / "ran.txt"
    folder = _code_folder(tmp_path / "model", marker)
    out = subprocess.run([sys.executable, "-m", "workbook", "predict", str(folder), "Profit rose"], cwd=ROOT,
                         input="y\ny\n", capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert not marker.exists(), "the folder's own code ran"
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "code" in errors[0], out.stderr[-2000:]


# --------------------------------------------------------------------------- names, never paths

@pytest.fixture(scope="module")
def path_named_dir(tmp_path_factory, tiny_encoder_dir):
    """A classifier whose workbook.json names its base model by an absolute path of this machine."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = {"requested": f"{SECRET}/finbert-local", "used": f"{SECRET}/finbert-local"}
    return hp.artifacts._save_model(
        tmp_path_factory.mktemp("paths"), AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
        AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
        info={"max_length": 16, "base_model": base, "base_model_path": f"{SECRET}/finbert-local"})


def test_health_and_the_page_show_the_base_models_name_not_its_path(path_named_dir):
    client = workbook.serve.create_app(path_named_dir, device="cpu").test_client()
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["model"] == "finbert-local"
    page = client.get("/").data.decode()
    assert "finbert-local" in page
    for answer in (health.data.decode(), page, client.post("/", data={"text": "Profit rose"}).data.decode()):
        assert SECRET not in answer and str(path_named_dir) not in answer


def test_error_messages_name_files_without_their_paths():
    error = OSError(f"Unable to load weights from {SECRET}/x/model.safetensors: truncated")
    client = workbook.serve.create_app(StubClassifier(error)).test_client()
    r = client.post("/predict", json={"text": "Profit rose"})
    assert r.status_code == 500 and "model.safetensors" in r.get_json()["error"]
    assert SECRET not in r.get_json()["error"]
    form = client.post("/", data={"text": "Profit rose"}).data.decode()
    assert "model.safetensors" in form and SECRET not in form


@pytest.mark.parametrize(("value", "shown"), [
    ("/home/me/models/finbert", "finbert"), ("~/models/finbert", "finbert"), ("./runs/01/model", "model"),
    ("C:\\Users\\me\\finbert", "finbert"), ("ProsusAI/finbert", "ProsusAI/finbert"),
    ("bert-base-uncased", "bert-base-uncased")])
def test_a_model_is_shown_by_its_name(value, shown):
    assert workbook.serve.shown_name(value) == shown


# --------------------------------------------------------------------------- the Host header

FOREIGN = ["rebind.example:8000", "rebind.example", "evil.localhost.example", "127.0.0.1.evil.example", "",
           "localhost:8000:1", "LOCALHOST:8000 "]
LOCAL = ["localhost:8000", "127.0.0.1:8123", "[::1]:8000", "LOCALHOST.", "127.0.0.1"]


@pytest.fixture(scope="module")
def stub_app():
    return workbook.serve.create_app(StubClassifier())


@pytest.mark.parametrize("host", FOREIGN[:-1])
@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("GET", "/"), ("POST", "/predict"),
                                              ("GET", "/nowhere")])
def test_a_foreign_host_gets_403_naming_allowed_host(stub_app, host, method, path):
    r = stub_app.test_client().open(path, method=method, json={"text": "Profit rose"}, headers={"Host": host})
    assert r.status_code == 403, (host, r.status_code)
    assert "--allowed-host" in r.get_json()["error"] and "DNS rebinding" in r.get_json()["error"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("host", LOCAL)
def test_this_machines_names_are_answered_whatever_the_port(stub_app, host):
    assert stub_app.test_client().get("/health", headers={"Host": host}).status_code == 200


def test_the_check_is_not_taken_from_the_request(stub_app):
    headers = {"Host": "rebind.example", "X-Forwarded-Host": "localhost", "Origin": "http://localhost:8000",
               "Forwarded": "host=localhost"}
    assert stub_app.test_client().get("/health", headers=headers).status_code == 403


def test_allowed_host_names_a_proxy_and_a_wildcard_bind_needs_names():
    proxied = workbook.serve.create_app(StubClassifier(), allowed_hosts=["Models.Example.com"]).test_client()
    assert proxied.get("/health", headers={"Host": "models.example.com:443"}).status_code == 200
    assert proxied.get("/health", headers={"Host": "other.example.com"}).status_code == 403
    wide = workbook.serve.create_app(StubClassifier(), host="0.0.0.0").test_client()
    for host in (socket.gethostname(), f"{socket.gethostname()}:8000", "10.1.2.3:8000", "[fd00::5]:8000"):
        assert wide.get("/health", headers={"Host": host}).status_code == 200, host
    assert wide.get("/health", headers={"Host": "rebind.example:8000"}).status_code == 403
    bound = workbook.serve.create_app(StubClassifier(), host="10.1.2.3").test_client()
    assert bound.get("/health", headers={"Host": "10.1.2.3:8000"}).status_code == 200
    assert bound.get("/health", headers={"Host": "10.9.9.9:8000"}).status_code == 403


@pytest.mark.parametrize("name", ["http://models.example.com/", "*", "models.example.com/x", "a b"])
def test_an_allowed_host_that_is_not_a_name_is_refused_before_the_model_loads(name, capsys):
    assert cli.main(["serve", "/nonexistent/folder", "--port", "0", "--allowed-host", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --allowed-host") and "not a host name" in err[0]


# --------------------------------------------------------------------------- a real server: chunked bodies

@pytest.fixture
def live_stub():
    server = workbook.serve.make_http_server(workbook.serve.create_app(StubClassifier()), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def _read_to_end(sock: socket.socket) -> bytes:
    """An answer read until the server closes the connection (it closes after each one)."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def _post_chunked(port: int, chunks, host: str = "127.0.0.1") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/predict", chunks, {"Content-Type": "application/json", "Host": host},
                 encode_chunked=True)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_a_chunked_body_over_8_mb_gets_413(live_stub):
    big = [b'{"text": "', *[b"a" * 2**20 for _ in range(9)], b'"}']
    status, body = _post_chunked(live_stub, iter(big))
    assert status == 413 and "8 MB" in body["error"]
    status, body = _post_chunked(live_stub, iter([b'{"text": ', b'"Profit rose"}']))
    assert status == 200 and body["label"] == "positive"


def test_a_malformed_chunked_body_gets_400_and_a_foreign_host_403_on_a_real_socket(live_stub):
    with socket.create_connection(("127.0.0.1", live_stub), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        answer = _read_to_end(sock).decode()
    assert answer.startswith("HTTP/1.1 400") and "malformed" in answer
    status, body = _post_chunked(live_stub, iter([b'{"text": "x"}']), host=f"rebind.example:{live_stub}")
    assert status == 403 and "--allowed-host" in body["error"]


# --------------------------------------------------------------------------- `workbook serve` as a process: signals

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve(folder: Path, port: int, log: Path) -> subprocess.Popen:
    """`workbook serve` on 127.0.0.1 in a session of its own (SIGINT at its default, as a terminal gives it)."""
    return subprocess.Popen([sys.executable, "-m", "workbook", "serve", str(folder), "--port", str(port)], cwd=ROOT,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _exit_status(proc: subprocess.Popen, log: Path, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"no exit {timeout:.0f} s after the signal:\n{log.read_text()[-3000:]}") from None


def _half_sent_request(port: int, body: bytes) -> socket.socket:
    """A request the server has accepted and is reading: its headers and half its body are sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    return sock


def test_sigterm_drains_then_a_restart_on_the_same_port_works_at_once(tiny_classifier_dir, tmp_path):
    port, log = _free_port(), tmp_path / "serve.log"
    proc = _start_serve(tiny_classifier_dir, port, log)
    wait_for_process(lambda: _healthy(port), proc, log)
    body = json.dumps({"text": "Operating profit rose to EUR 13.1 mn"}).encode()
    in_flight = _half_sent_request(port, body)
    time.sleep(0.5)  # the server has accepted it and is reading its body
    proc.send_signal(signal.SIGTERM)
    wait_for_process(lambda: "stopping: no new connections" in log.read_text(), proc, log, timeout=10)
    with pytest.raises(ConnectionRefusedError):  # stopped accepting
        socket.create_connection(("127.0.0.1", port), timeout=5)
    in_flight.sendall(body[len(body) // 2:])
    answer = _read_to_end(in_flight)
    in_flight.close()
    assert answer.startswith(b"HTTP/1.1 200") and b'"label"' in answer, answer[:300]
    assert _exit_status(proc, log) == 0
    out = log.read_text()
    assert "Traceback" not in out and "every request accepted was answered" in out
    again = _start_serve(tiny_classifier_dir, port, log)  # its connections are in TIME_WAIT: SO_REUSEADDR
    try:
        wait_for_process(lambda: _healthy(port), again, log)
    finally:
        again.send_signal(signal.SIGINT)
        assert _exit_status(again, log) == 0 and "Traceback" not in log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_model_loads_exits_cleanly(tiny_classifier_dir, tmp_path, sig):
    log = tmp_path / "serve.log"
    proc = _start_serve(tiny_classifier_dir, _free_port(), log)
    wait_for_process(lambda: "loading the model" in log.read_text(), proc, log)
    time.sleep(0.1)  # inside the load: importing torch alone takes longer
    proc.send_signal(sig)
    assert _exit_status(proc, log) == 0
    out = log.read_text()
    assert "Traceback" not in out and f"stopped ({sig.name}) while loading the model" in out, out[-2000:]


# --------------------------------------------------------------------------- absurd lengths

@pytest.fixture
def saved_copy(tiny_classifier_dir, tmp_path):
    """A copy of the tiny classifier whose workbook.json a test may break."""
    return Path(shutil.copytree(tiny_classifier_dir, tmp_path / "model"))


def _set_saved(folder: Path, **values) -> None:
    info = json.loads((folder / "workbook.json").read_text())
    (folder / "workbook.json").write_text(json.dumps({**info, **values}))


@pytest.mark.parametrize("value", [-5, "abc", 1e9, 0, True, [16], 2.5])
def test_an_absurd_saved_max_length_is_refused_at_start_in_one_line(saved_copy, value, capsys):
    _set_saved(saved_copy, max_length=value)
    with pytest.raises(ValueError, match=r"workbook.json in .*: max_length must be a whole number from 1 to 128"):
        workbook.serve.create_app(saved_copy, device="cpu")
    for command in (["serve", str(saved_copy), "--port", "0"], ["predict", str(saved_copy), "Profit rose"]):
        assert cli.main(command) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(err) == 1 and "max_length must be a whole number" in err[0] and "delete it" in err[0], err


@pytest.mark.parametrize("payload", [
    {"text": "Profit rose", "max_length": -5}, {"text": "Profit rose", "max_length": "abc"},
    {"text": "Profit rose", "parameters": {"max_length": 1e9}}, {"data": {"sentence": "x", "max_length": 1e9}}])
def test_an_absurd_length_in_a_request_gets_a_4xx_naming_it(stub_app, payload):
    r = stub_app.test_client().post("/predict", json=payload)
    assert 400 <= r.status_code < 500 and ("max_length" in r.get_json()["error"]
                                           or "parameters" in r.get_json()["error"])


@pytest.mark.parametrize(("values", "message"), [
    ({"max_length": -5}, "max_length must be a whole number from 1 to 128"),
    ({"max_length": "abc"}, "max_length must be a whole number from 1 to 128"),
    ({"max_length": 1e9}, "max_length must be a whole number from 1 to 128"),
    ({"temperature": float("inf")}, "temperature must be a number from 0.05 to 20"),
    ({"temperature": 1e-300}, "temperature must be a number from 0.05 to 20"),
    ({"temperature": float("nan")}, "temperature must be a number from 0.05 to 20")])
def test_score_py_refuses_an_absurd_saved_value_in_one_line(saved_copy, values, message):
    _set_saved(saved_copy, **values)
    with pytest.raises(ValueError) as refused:
        _score_module(_with_score_py(saved_copy)).load_model(saved_copy)
    line = str(refused.value)
    assert "\n" not in line and message in line and "workbook.json" in line


def _score_module(folder: Path):
    """The folder's score.py imported in this process, as a platform imports it (a fresh module each time)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"score_{abs(hash(str(folder)))}", folder / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("text", "what"), [("[1, 2]", "holds a JSON list"), ("{not json", "is not JSON")])
def test_score_py_names_a_workbook_json_that_is_not_an_object(saved_copy, text, what):
    (saved_copy / "workbook.json").write_text(text)
    with pytest.raises(ValueError) as refused:
        _score_module(_with_score_py(saved_copy)).load_model(saved_copy)
    assert "\n" not in str(refused.value) and "workbook.json" in str(refused.value) and what in str(refused.value)


def test_a_second_signal_stops_the_drain_and_the_status_says_a_request_was_left(capsys):
    """The drain without a process: `stop` as the first signal sets it, `hurry` as a second one does."""
    server = workbook.serve.make_http_server(workbook.serve.create_app(StubClassifier()), "127.0.0.1", 0)
    signals = workbook.serve._Signals()  # not entered: no handlers are set in the test process
    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(workbook.serve._serve_until_stopped(server, signals)))
    runner.start()
    stalled = _half_sent_request(server.server_port, json.dumps({"text": "Profit rose"}).encode())
    deadline = time.monotonic() + 30
    while not server.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    signals.stop.set()
    time.sleep(1)
    assert runner.is_alive() and not status, "the drain did not wait for the request it had accepted"
    signals.hurry.set()
    runner.join(timeout=10)
    stalled.close()
    assert status == [1] and "with 1 request(s) unanswered" in capsys.readouterr().out


def test_docs_say_in_one_place_what_the_server_trusts():
    text = (ROOT / "docs" / "serving.md").read_text()
    assert text.count("## What the server trusts") == 1
    section = text.split("## What the server trusts")[1].split("\n## ")[0]
    for needed in ("--allowed-host", "Host", "trust_remote_code=False", "weights_only", "8 MB", "SIGTERM",
                   "paths", "Behind a proxy"):
        assert needed in section, needed
