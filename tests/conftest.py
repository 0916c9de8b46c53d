"""Shared fixtures: offline by default, a tiny BERT for fast loop tests, tiny tokenized data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test waits on the network; test_models probes on purpose
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

LABELS = ["negative", "neutral", "positive"]


def _patient_nbmake_kernels(startup_timeout: int = 600) -> None:
    """nbmake gives a notebook's kernel nbclient's default 60 s to start; the notebooks run first in `make
    test`, on the coldest machine, so they get what `workbook run` gives papermill (600 s). Collection loads
    this file before any notebook runs."""
    import functools

    try:
        import nbmake.nb_run
    except ImportError:
        return
    nbmake.nb_run.NotebookClient = functools.partial(nbmake.nb_run.NotebookClient, startup_timeout=startup_timeout)


_patient_nbmake_kernels()


def _untimed_hypothesis() -> None:
    """Property tests judge behaviour, not speed: no per-example deadline, and a busy 2-core machine does not
    fail them for slow example generation (`too_slow`) or for function-scoped fixtures shared by examples."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("workbook", deadline=None,
                              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    settings.load_profile("workbook")


_untimed_hypothesis()


@pytest.fixture(scope="session")
def standin_dir():
    from helpers.models import _standin_encoder_dir

    return _standin_encoder_dir()


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, standin_dir):
    """A 2-layer, 32-wide BERT classifier with the stand-in's real vocabulary: trains in milliseconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(standin_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3,
                        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_classifier_dir(tiny_encoder_dir, tmp_path_factory):
    """The tiny classifier saved as a notebook saves a model (workbook.json, score.py): for serving and scoring."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import helpers as hp

    return hp.artifacts._save_model(
        tmp_path_factory.mktemp("clf"), AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
        AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification", info={"max_length": 16})


@pytest.fixture(scope="session")
def t5_dir(tmp_path_factory):
    """The offline T5 stand-in saved as a summarizer (8 new tokens, at least 4): for serving and scoring."""
    import helpers as hp
    from helpers import textgen

    g = hp.models.load_generator("google-t5/t5-small", kind="seq2seq")
    info = {"prefix": "summarize: ", "max_source_length": 64,
            "generation": textgen.GenerationSettings(max_new_tokens=8, min_new_tokens=4).to_dict()}
    return hp.artifacts._save_model(tmp_path_factory.mktemp("t5"), g.model, g.tokenizer, task="summarization-seq2seq",
                                    info=info)


@pytest.fixture(scope="session")
def tiny_data(tiny_encoder_dir):
    """Tokenized train/validation splits of the generated PhraseBank sample (label ids in LABELS order)."""
    from transformers import AutoTokenizer

    import helpers as hp
    from helpers._readers import sample_path

    loaded = hp.data.load_labeled_data(sample_path("financial_phrasebank"), text_col="sentence",
                                       label_col="label", columns=["label", "sentence"], label_names=LABELS)
    splits = hp.data.stratified_split(loaded.dataset, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)

    def encode(split, n):
        split = hp.data.to_label_ids(hp.data.cap_samples(split, n, seed=0), {n: i for i, n in enumerate(LABELS)})
        return split.map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True,
                         remove_columns=["text"])

    return {"train": encode(splits["train"], 256), "validation": encode(splits["validation"], 64)}


@pytest.fixture
def tiny_model(tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)


# --------------------------------------------------------------------------- a real browser (Debian's chromium)

def _chromium():
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def chrome_available() -> bool:
    import shutil

    return bool(_chromium() and shutil.which("chromedriver"))


def open_chrome(javascript: bool = True, window: str = "1000,900", attempts: int = 3):
    """Headless chromium through selenium; `make test` installs chromium + chromium-driver when root.

    The browser console is kept (`driver.get_log("browser")`) for failure reports. Selenium gives chromedriver
    a fixed ~30 s to start listening; on a cold, busy machine that can pass, so a start that fails is tried
    again (a fresh chromedriver) rather than failing the test.
    """
    import contextlib
    import shutil

    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={window}", "--disable-background-networking", "--disable-component-update"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    for attempt in range(1, attempts + 1):
        service = Service(shutil.which("chromedriver"))
        try:
            return webdriver.Chrome(options=options, service=service)
        except WebDriverException:
            with contextlib.suppress(Exception):  # usually stopped already by selenium itself
                service.stop()
            if attempt == attempts:
                raise


def wait_for_process(condition, proc, log, timeout: float = 120, poll_s: float = 0.1) -> None:
    """Poll `condition()` while `proc` runs; fail with the tail of its `log` when it ends first or time runs out."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the process ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(poll_s)
