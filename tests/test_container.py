"""The serving image (Dockerfile, `make docker`): built from model folders the suite trained, with its packages
from the wheel folder (the air-gapped path), run, asked /health and predictions, which must equal
`workbook predict`'s for the same texts. It holds no lab or test packages, runs as a non-root user and has a
HEALTHCHECK. Skipped, saying why, where neither docker nor podman can run a container; as root on Debian,
`make docker-deps` installs podman first (as `make browser` installs chromium).

The classifier and the summarizer are the notebooks' own smoke runs when `make test` has just made them with
nbmake (WORKBOOK_RUNS_DIR: notebook 01 and notebook 05, a merged T5 + LoRA); run alone, tiny folders saved here.
Images are tagged finetune-workbook-serve-test:*; the Debian base and the wheels are cached between runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import helpers as hp
import helpers._offline.samples
from helpers import textgen

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
WORKBOOK = Path(sys.executable).with_name("workbook")
DEFAULT_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/finetune-workbook-base:bookworm"
HEADLINES = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
             "The company said it would cut 300 jobs after sales fell sharply.",
             "The annual general meeting will be held on 5 May."]
DOCUMENTS = [r["document"] for r in helpers._offline.samples.xsum_rows(8, seed=2) if r["document"].strip()][:3]
LAB_PACKAGES = {"jupyterlab", "jupyter-server", "notebook", "ipykernel", "ipython", "ipywidgets", "mlflow",
                "mlflow-skinny", "optuna", "papermill", "nbmake", "nbclient", "pytest", "hypothesis", "selenium",
                "matplotlib", "datasets", "scikit-learn"}


def _run(cmd, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _tail(proc: subprocess.CompletedProcess, n: int = 2500) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def _working_engine() -> str | None:
    """docker when its daemon answers, else podman when it is installed (whether it can run a container is
    checked on the base image)."""
    if shutil.which("docker") and _run(["docker", "info"], timeout=60).returncode == 0:
        return "docker"
    if shutil.which("podman") and _run(["podman", "info"], timeout=60).returncode == 0:
        return "podman"
    return None


@pytest.fixture(scope="module")
def engine():
    found = _working_engine()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        deps = _run(["make", "-s", "docker-deps"], timeout=900, cwd=ROOT)  # installs podman + runc as root
        found = _working_engine()
        if found is None:
            pytest.skip(f"neither docker nor podman works here, and make docker-deps could not install podman: "
                        f"{_tail(deps, 300)}")
    if found is None:
        pytest.skip("neither docker nor podman can run a container here (not root: install one to run this test)")
    return found


@pytest.fixture(scope="module")
def base_image(engine):
    """The Dockerfile's default base when it is here or can be pulled; else a Debian base made with mmdebstrap
    (`make docker-base`: no registry needed). WORKBOOK_DOCKER_BASE names another."""
    base = os.environ.get("WORKBOOK_DOCKER_BASE")
    if not base:
        if _run([engine, "image", "inspect", DEFAULT_BASE]).returncode == 0 or \
                _run([engine, "pull", "-q", DEFAULT_BASE], timeout=600).returncode == 0:
            base = DEFAULT_BASE
        else:
            made = _run(["make", "-s", "docker-base", f"ENGINE={engine}"], timeout=900, cwd=ROOT)
            if made.returncode != 0:
                pytest.skip(f"no base image: {DEFAULT_BASE} cannot be pulled and make docker-base failed: "
                            f"{_tail(made, 400)}")
            base = LOCAL_BASE
    probe = _run([engine, "run", "--rm", base, "python3", "-c", "print('ok')"], timeout=300)
    if probe.returncode != 0 or "ok" not in probe.stdout:
        pytest.skip(f"{engine} cannot run a container here: {_tail(probe, 400)}")
    return base


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_encoder_dir):
    """(classifier, summarizer) folders: the nbmake smoke runs of notebooks 01 and 05 when there, else tiny
    folders saved here."""
    from helpers.notebook import _default_output_dir

    runs = os.environ.get("WORKBOOK_RUNS_DIR")
    if runs:
        found = [_default_output_dir(name, smoke=True, runs_dir=runs)
                 for name in ("01_finbert_financial_sentiment", "05_t5_lora_xsum")]
        if all((f / "model" / "config.json").exists() for f in found):
            return found[0], found[1]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    clf = hp.artifacts._save_model(
        tmp_path_factory.mktemp("clf"), AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
        AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification", info={"max_length": 32})
    g = hp.models.load_generator("google-t5/t5-small", kind="seq2seq")
    t5 = hp.artifacts._save_model(
        tmp_path_factory.mktemp("t5"), g.model, g.tokenizer, task="summarization-seq2seq",
        info={"prefix": "summarize: ", "max_source_length": 64,
              "generation": textgen.GenerationSettings(max_new_tokens=12, no_repeat_ngram_size=2).to_dict()})
    return clf.parent, t5.parent  # OUTPUT_DIR-like: the image takes their model/


def _build(engine: str, base: str, folder: Path, tag: str, *make_vars: str) -> dict:
    start = time.perf_counter()
    proc = _run(["make", "docker", f"ENGINE={engine}", f"DIR={folder}", f"TAG={tag}", f"BASE_IMAGE={base}", *make_vars],
                timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, _tail(proc, 4000)
    size = int(_run([engine, "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())
    return {"seconds": round(time.perf_counter() - start, 1), "bytes": size}


class Container:
    """A detached container of `tag` on a free port of 127.0.0.1; stopped and removed on exit."""

    def __init__(self, engine: str, tag: str, *extra: str):
        self.engine, self.name = engine, f"wb-test-{os.getpid()}-{time.monotonic_ns() % 10**8}"
        args = [engine, "run", "-d", "--name", self.name, "-p", "127.0.0.1::8000", *extra, tag]
        if engine == "podman":  # no systemd timer for the periodic check here; `podman healthcheck run` runs it
            args[2:2] = ["--health-interval", "disable"]
        proc = _run(args, timeout=300)
        assert proc.returncode == 0, _tail(proc)
        port = _run([engine, "port", self.name, "8000"]).stdout.strip().splitlines()[0].rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        return _tail(_run([self.engine, "logs", self.name]), 3000)

    def wait_healthy(self, timeout: float = 300) -> tuple[dict, float]:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    return json.loads(r.read()), time.perf_counter() - start
            except (urllib.error.URLError, ConnectionError, OSError):
                running = _run([self.engine, "inspect", "--format", "{{.State.Running}}", self.name]).stdout
                assert "true" in running, f"the container stopped:\n{self.logs()}"
                time.sleep(1)
        raise AssertionError(f"no answer on /health within {timeout} s:\n{self.logs()}")

    def post(self, path: str, body) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return _run([self.engine, "exec", self.name, *cmd], timeout=120)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _run([self.engine, "rm", "-f", self.name], timeout=120)


def _predict_here(folder: Path, texts: list[str], *options: str) -> list[dict]:
    proc = _run([str(WORKBOOK), "predict", str(folder), *texts, "--json", *options], timeout=600,
                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, _tail(proc)
    return json.loads(proc.stdout)


def _check_healthcheck(box: Container, engine: str, tag: str) -> None:
    config = json.loads(_run([engine, "image", "inspect", "--format", "{{json .Config.Healthcheck}}", tag]).stdout)
    assert "/health" in " ".join(config["Test"]), config
    if engine == "podman":
        ran = _run(["podman", "healthcheck", "run", box.name], timeout=120)
        assert ran.returncode == 0, _tail(ran)
    else:  # docker runs it itself: healthy once the first check (30 s interval) has passed
        deadline = time.time() + 180
        while time.time() < deadline:
            state = _run([engine, "inspect", "--format", "{{.State.Health.Status}}", box.name]).stdout.strip()
            if state == "healthy":
                break
            time.sleep(3)
        assert state == "healthy", state


def test_the_image_serves_a_classifier_as_workbook_predict_does(engine, base_image, folders, record_property):
    folder = folders[0]
    built = _build(engine, base_image, folder, "finetune-workbook-serve-test:clf")
    record_property("image", built)
    print(f"\nclassifier image: {built['bytes'] / 1e9:.2f} GB, built in {built['seconds']} s ({engine}, {base_image})")
    assert built["bytes"] < 1.5e9, f"the CPU image is {built['bytes'] / 1e9:.2f} GB"
    expected = _predict_here(folder, HEADLINES)
    with Container(engine, "finetune-workbook-serve-test:clf") as box:
        health, waited = box.wait_healthy()
        print(f"/health answered {waited:.1f} s after the start")
        assert health["status"] == "ok" and health["task"] == "text-classification"
        status, answer = box.post("/predict", {"texts": HEADLINES})
        assert status == 200, answer
        got = answer["predictions"]
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        for mine, theirs in zip(got, expected):
            assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-5)
        status, one = box.post("/predict", {"data": {"sentence": HEADLINES[0]}})  # the seeds' payload
        assert status == 200 and one["label"] == expected[0]["label"]
        assert box.exec("id", "-u").stdout.strip() == "10001"  # not root
        _check_healthcheck(box, engine, "finetune-workbook-serve-test:clf")
        # a serving image, not the lab: none of its packages, and torch's CPU build
        listed = box.exec("/opt/venv/bin/python", "-m", "pip", "list", "--format", "json")
        packages = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
        assert not packages & LAB_PACKAGES, packages & LAB_PACKAGES
        assert not any(p.startswith("nvidia-") for p in packages)
        cuda = box.exec("python3", "-c", "import torch; print(torch.__version__, torch.version.cuda)").stdout
        assert cuda.split()[1] == "None", cuda
        # only the model folder went in: no checkpoints, plots or notebook
        listing = box.exec("ls", "-A", "/model").stdout.split()
        assert "config.json" in listing and "checkpoints" not in listing and "plots" not in listing
        start = time.perf_counter()  # STOPSIGNAL SIGINT: stopped cleanly, not killed after the grace period
        stopped = _run([engine, "stop", "-t", "20", box.name], timeout=120)
        assert stopped.returncode == 0 and time.perf_counter() - start < 20, _tail(stopped)  # before the grace period


def test_the_image_serves_a_summarizer_and_a_mounted_folder(engine, base_image, folders, tmp_path):
    clf, summ = folders
    linked = tmp_path / "linked"  # every file a symbolic link, as a Hub cache's snapshot folder has them
    (linked / "model").mkdir(parents=True)
    for file in (summ / "model").iterdir():
        (linked / "model" / file.name).symlink_to(file.resolve())
    built = _build(engine, base_image, linked, "finetune-workbook-serve-test:summ")  # the files go in, not links
    print(f"\nsummarizer image: {built['bytes'] / 1e9:.2f} GB, built in {built['seconds']} s (cached layers)")
    expected = _predict_here(summ, DOCUMENTS)
    with Container(engine, "finetune-workbook-serve-test:summ") as box:
        health, _ = box.wait_healthy()
        assert health["task"] == "summarization-seq2seq" and health["endpoint"] == "/summarize"
        status, answer = box.post("/summarize", {"texts": DOCUMENTS})
        assert status == 200, answer
        assert [r["summary"] for r in answer["summaries"]] == [r["summary"] for r in expected]
        status, refused = box.post("/summarize", {"text": DOCUMENTS[0], "parameters": {"num_beams": 0}})
        assert status == 400 and "num_beams" in refused["error"]
    # the same image with another folder mounted at /model at run time (readable by its user, as a user's is)
    mounted = tmp_path / "mounted"
    shutil.copytree(clf / "model", mounted)
    for path in [mounted, *mounted.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    expected = _predict_here(clf, HEADLINES[:1])
    with Container(engine, "finetune-workbook-serve-test:summ", "-v", f"{mounted}:/model:ro") as box:
        health, _ = box.wait_healthy()
        assert health["task"] == "text-classification", health
        status, one = box.post("/predict", {"text": HEADLINES[0]})
        assert status == 200 and one["label"] == expected[0]["label"]
        assert one["probabilities"] == pytest.approx(expected[0]["probabilities"], abs=1e-5)


def test_the_onnx_image_serves_an_exported_classifier_without_torch(engine, base_image, folders, tmp_path):
    """make docker RUNTIME=onnx: ONNX Runtime, tokenizers, Flask and numpy only, at most 450 MB with MiniLM's fp32
    and int8 exports; it answers as `workbook predict` does on the same export, and as torch does within 1e-4."""
    exported = tmp_path / "exported"
    shutil.copytree(folders[0] / "model", exported / "model")  # a copy: the suite's folder stays as it was
    made = _run([str(WORKBOOK), "export", str(exported), "--quantize", "int8"], timeout=600,
                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert made.returncode == 0, _tail(made)
    built = _build(engine, base_image, exported, "finetune-workbook-serve-test:onnx", "RUNTIME=onnx")
    print(f"\nONNX image: {built['bytes'] / 1e6:.0f} MB, built in {built['seconds']} s")
    assert built["bytes"] <= 450e6, f"the ONNX image is {built['bytes'] / 1e6:.0f} MB"
    on_onnx, on_torch = _predict_here(exported, HEADLINES), _predict_here(exported, HEADLINES, "--runtime", "torch")
    with Container(engine, "finetune-workbook-serve-test:onnx") as box:
        health, _ = box.wait_healthy()
        assert health["runtime"] == "onnx" and health["task"] == "text-classification"
        status, answer = box.post("/predict", {"texts": HEADLINES})
        assert status == 200, answer
        for got, here, torch_answer in zip(answer["predictions"], on_onnx, on_torch):
            assert got["label"] == here["label"] == torch_answer["label"]
            assert got["probabilities"] == pytest.approx(here["probabilities"], abs=1e-6)
            assert got["probabilities"] == pytest.approx(torch_answer["probabilities"], abs=1e-4)
        assert box.exec("python", "-c", "import torch").returncode != 0  # not in this image
        assert "model.safetensors" not in box.exec("ls", "/model").stdout.split()  # the export serves, not weights
