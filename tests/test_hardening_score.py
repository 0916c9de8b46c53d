"""The exported score.py holds callers to the same rules as `workbook serve`: generation settings within
GENERATION_LIMITS (one-line ValueError naming the setting and its range), no text_pair for a one-text model.
score.py stands alone (no `helpers` import), so it carries copies of the limits; these tests keep them equal."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import helpers as hp
import workbook.serve
from helpers import inference, textgen
from workbook import score_template

TEXT = "Police in Glasgow are appealing for witnesses after a fire in a block of flats."


def _score_module(folder: Path, name: str):
    """The folder's own score.py, imported fresh (its loaded model is its own)."""
    spec = importlib.util.spec_from_file_location(f"score_{name}", folder / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.load_model(folder)
    return module


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    """A causal LM whose prompt leaves few positions for the summary: max_new_tokens is capped below 512."""
    g = hp.models.load_generator("EleutherAI/pythia-70m", kind="causal-lm")
    hp.models.ensure_pad_token(g.tokenizer, g.model, use_eos=True)
    positions = hp.models._model_max_length(g.model.config)
    info = {"prompt_template": textgen._DEFAULT_PROMPT, "max_length": positions - 48,
            "generation": textgen.GenerationSettings(max_new_tokens=8).to_dict()}
    return hp.artifacts._save_model(tmp_path_factory.mktemp("causal"), g.model, g.tokenizer,
                                    task="summarization-causal", info=info)


@pytest.fixture(scope="module")
def clf_dir(tiny_classifier_dir):
    return tiny_classifier_dir


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory, tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return hp.artifacts._save_model(
        tmp_path_factory.mktemp("pairs"), AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
        AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
        info={"max_length": 32, "text_pair": True})


@pytest.fixture(scope="module")
def summarizers(t5_dir, causal_dir):
    """{name: (score.py module, the server's Summarizer)} for both kinds of summarizer."""
    return {name: (_score_module(folder, name), inference.load(folder, device="cpu"))
            for name, folder in (("t5", t5_dir), ("causal", causal_dir))}


# --------------------------------------------------------------------------- the copies stay equal

def test_score_py_limits_are_the_servers():
    assert score_template.MAX_NEW_TOKENS == inference._MAX_NEW_TOKENS
    assert score_template.GENERATION_LIMITS == inference._GENERATION_LIMITS
    assert score_template.GENERATION_DEFAULTS == textgen.GenerationSettings().to_dict()


def test_score_py_imports_nothing_of_the_workbook():
    tree = ast.parse(Path(score_template.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 if node.level == 0}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))  # no relative imports
    assert imported <= {"__future__", "hashlib", "importlib", "json", "math", "os", "re", "sys", "warnings", "pathlib",
                        "torch", "transformers", "peft", "onnxruntime"}, imported


def test_max_new_tokens_limit_is_the_servers(summarizers):
    limits = {name: (score.max_new_tokens_limit(score.load_model()), model.max_new_tokens_limit)
              for name, (score, model) in summarizers.items()}
    assert all(mine == theirs for mine, theirs in limits.values()), limits
    assert limits["t5"][0] == 512 and limits["causal"][0] == 56  # 48 positions the prompt leaves, + the saved 8


# --------------------------------------------------------------------------- generation settings

BAD_SETTINGS = [  # the server's cases (tests/test_hardening_serve.py), called as keyword arguments
    {"num_beams": 0}, {"max_new_tokens": "10"}, {"max_new_tokens": 1.5}, {"max_new_tokens": None},
    {"num_beams": True}, {"min_new_tokens": 500, "max_new_tokens": 10}, {"length_penalty": "x"},
    {"no_repeat_ngram_size": -1}, {"max_new_tokens": 3000}, {"max_new_tokens": 1e9}, {"num_beams": 1000},
    {"num_beams": -2}, {"max_new_tokens": 0}, {"max_new_tokens": [10]}, {"min_new_tokens": -1},
    {"repetition_penalty": 0}, {"repetition_penalty": "1.2"}, {"length_penalty": float("inf")},
    {"length_penalty": float("nan")}, {"no_repeat_ngram_size": 2.5}, {"max_new_tokens": 10**400},
    {"repetition_penalty": 10**400}, {"beams": 2}, {"max_new_tokens": 57}, {"min_new_tokens": 9},
]


@pytest.mark.parametrize("kind", ["t5", "causal"])
@pytest.mark.parametrize("bad", BAD_SETTINGS, ids=lambda bad: json.dumps(bad, default=str)[:40])
def test_summarize_refuses_what_the_server_refuses_with_its_message(summarizers, kind, bad):
    score, model = summarizers[kind]
    if kind == "t5" and bad == {"max_new_tokens": 57}:
        bad = {"max_new_tokens": 513}
    with pytest.raises(ValueError) as server:
        model.check_generation(bad)
    with pytest.raises(ValueError) as mine:
        score.summarize(TEXT, **bad)
    message = str(mine.value)
    assert message == str(server.value) and "\n" not in message
    name = next(iter(bad)) if len(bad) == 1 else "min_new_tokens"
    assert name in message and ("from " in message or "known:" in message)


def test_the_messages_name_the_setting_and_range(summarizers):
    score, _ = summarizers["t5"]
    for bad, expected in [({"num_beams": 0}, "num_beams must be a whole number from 1 to 8 (1: greedy); got 0"),
                          ({"max_new_tokens": 10**9}, "max_new_tokens must be a whole number from 1 to 512; got "),
                          ({"repetition_penalty": 0.5}, "repetition_penalty must be a number from 1 to 10"),
                          ({"min_new_tokens": 20}, "min_new_tokens must be a whole number from 0 to 8 (at most")]:
        with pytest.raises(ValueError, match="^" + re.escape(expected)):
            score.summarize(TEXT, **bad)


@pytest.mark.parametrize("kind", ["t5", "causal"])
def test_settings_within_range_give_the_servers_summaries(summarizers, kind):
    score, model = summarizers[kind]
    for good in ({}, {"num_beams": 2, "max_new_tokens": 6.0}, {"max_new_tokens": 3},
                 {"no_repeat_ngram_size": 2, "repetition_penalty": 1.3, "length_penalty": -1}):
        assert score.summarize([TEXT, TEXT[:30]], **good) == model.summarize([TEXT, TEXT[:30]], **good), good


def test_a_refused_setting_costs_no_generation(summarizers, monkeypatch):
    score, _ = summarizers["t5"]
    monkeypatch.setattr(score.load_model()["model"], "generate", lambda **_: pytest.fail("generate was called"))
    with pytest.raises(ValueError, match="num_beams"):
        score.summarize([TEXT] * 3, num_beams=0)


# --------------------------------------------------------------------------- text_pair

def test_a_one_text_classifier_refuses_a_pair(clf_dir):
    score = _score_module(clf_dir, "clf")
    for call in (lambda: score.predict_sentiment("The cat sat.", text_pair="A cat was sitting."),
                 lambda: score.predict({"text": "The cat sat.", "text_pair": "A cat was sitting."}),
                 lambda: score.predict({"data": {"sentence": "The cat sat.", "text_pair": "A cat was sitting."}})):
        with pytest.raises(ValueError) as err:
            call()
        assert "reads one text, not a pair" in str(err.value) and "\n" not in str(err.value)
    assert score.predict_sentiment("The cat sat.")["label"] in {"negative", "neutral", "positive"}
    client = workbook.serve.create_app(clf_dir, device="cpu").test_client()  # the server's wording
    served = client.post("/predict", json={"text": "The cat sat.", "text_pair": "A cat was sitting."})
    assert served.status_code == 400 and served.get_json()["error"] == str(err.value)


def test_a_summarizer_refuses_a_pair(summarizers):
    score, _ = summarizers["t5"]
    with pytest.raises(ValueError, match="reads one text, not a pair"):
        score.predict({"text": TEXT, "text_pair": TEXT})


def test_a_pair_classifier_still_reads_pairs(pair_dir):
    score = _score_module(pair_dir, "pairs")
    expected = inference.load(pair_dir, device="cpu").predict(("The cat sat.", "A cat was sitting."))
    got = score.predict_sentiment("The cat sat.", text_pair="A cat was sitting.")
    assert got["label"] == expected["label"]
    assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def test_exported_score_py_refuses_without_the_workbook_installed(t5_dir, clf_dir):
    """In a fresh interpreter where `import helpers` fails: the checks live in score.py itself."""
    code = ("import sys; sys.modules['helpers'] = None; sys.path.insert(0, '.')\nimport json, score\nout = []\n"
            "for call in ({calls}):\n    try:\n        call()\n        out.append('accepted')\n"
            "    except ValueError as err:\n        out.append(str(err))\nprint(json.dumps(out))")
    runs = {t5_dir: "lambda: score.summarize('A text.', num_beams=0), "
                    "lambda: score.summarize('A text.', max_new_tokens=10**6)",
            clf_dir: "lambda: score.predict_sentiment('a', text_pair='b'),"}
    answers = []
    for folder, calls in runs.items():
        out = subprocess.run([sys.executable, "-c", code.format(calls=calls)], cwd=folder, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-1500:]
        answers += json.loads(out.stdout.strip().splitlines()[-1])
    assert answers[0].startswith("num_beams must be a whole number from 1 to 8")
    assert answers[1].startswith("max_new_tokens must be a whole number from 1 to 512")
    assert "reads one text, not a pair" in answers[2]
