"""Loading models and data you were handed: no code from a model folder runs, label names are never swapped, and
every absurd file (a lying config.json, a cut-off weights file, a temperature of 1e-300) is refused in one line
that names the file and the fix."""

from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pytest

import helpers as hp
from helpers import metrics
from helpers._readers import DataError

FolderError = hp.inference._FolderError


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def _copy(folder, tmp_path, name="model"):
    return shutil.copytree(folder, tmp_path / name)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------- a model folder that ships its own code

def _folder_with_code(tmp_path):
    """What an attacker hands over: a config.json whose model_type transformers does not know, mapped (auto_map)
    to a .py file beside it that writes a marker file the moment it is imported."""
    folder, marker = tmp_path / "custom-model", tmp_path / "code-ran"
    folder.mkdir()
    classes = "modeling_custom.CustomModel"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "my_custom", "architectures": ["CustomForSequenceClassification"],
        "auto_map": {"AutoConfig": "modeling_custom.CustomConfig", "AutoModel": classes,
                     "AutoModelForSequenceClassification": classes, "AutoModelForCausalLM": classes}}))
    (folder / "modeling_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'my_custom'\n")
    return folder, marker


@pytest.mark.parametrize("how", ["inference.load", "models.load_classifier", "models.load_generator"])
def test_a_folder_that_ships_code_is_refused_and_its_code_never_runs(how, tmp_path, monkeypatch):
    folder, marker = _folder_with_code(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))  # transformers would ask; "y" would run the code
    loaders = {"inference.load": lambda: hp.inference.load(folder, device="cpu"),
               "models.load_classifier": lambda: hp.models.load_classifier(str(folder), ["negative", "positive"]),
               "models.load_generator": lambda: hp.models.load_generator(str(folder), kind="causal-lm")}
    with pytest.raises(FolderError) as err:
        loaders[how]()
    message = _one_line(err)
    assert str(folder) in message and "ships its own Python code" in message and "modeling_custom.py" in message
    assert "save_pretrained" in message and "trust_remote_code=True" not in message  # never the advice that runs it
    assert not marker.exists()
    assert sys.stdin.read() == "y\n" * 20  # nothing was asked


@pytest.mark.parametrize("kind", ["encoder", "causal-lm"])
def test_a_hub_model_that_needs_its_own_code_is_refused_without_asking(kind, tmp_path, monkeypatch):
    """The second line of defence: a Hub model not yet checked by `_refuse_remote_code` (it is downloaded as it
    loads) meets trust_remote_code=False, so transformers refuses instead of asking."""
    folder, marker = _folder_with_code(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))
    source = hp.models._ModelSource("someone/custom-model", str(folder), False, kind, "hub")
    with pytest.raises(FolderError) as err:
        if kind == "encoder":
            hp.models.load_classifier("someone/custom-model", ["negative", "positive"], source=source)
        else:
            hp.models.load_generator("someone/custom-model", kind=kind, source=source)
    message = _one_line(err)
    assert message.startswith("someone/custom-model ships its own Python code") and "never runs code" in message
    assert not marker.exists()


def test_the_refusal_is_one_function_the_tool_can_call(tmp_path, tiny_encoder_dir):
    folder, marker = _folder_with_code(tmp_path)
    with pytest.raises(FolderError, match="ships its own Python code"):
        hp.inference._refuse_remote_code(folder)
    hp.inference._refuse_remote_code(tiny_encoder_dir)  # a standard folder passes
    known = _copy(tiny_encoder_dir, tmp_path)  # a known model_type loads with transformers' own classes
    _edit_json(known / "config.json", auto_map={"AutoModelForSequenceClassification": "modeling_custom.CustomModel"})
    shutil.copy(folder / "modeling_custom.py", known)
    assert hp.inference.load(known, device="cpu").predict("profit rose")["label"] in ("negative", "neutral", "positive")
    assert not marker.exists()


def test_every_from_pretrained_of_the_kit_refuses_remote_code():
    """transformers asks on stdin whether to run a model's own code unless told; the kit always tells it no
    (a peft adapter's `PeftModel.from_pretrained` loads weights only, its base goes through an Auto class)."""
    import ast
    from pathlib import Path

    loose = []
    for path in sorted((Path(__file__).parents[1] / "helpers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"):
                continue
            named = {k.arg: k.value for k in node.keywords}
            receiver = ast.unparse(node.func.value)
            refused = isinstance(named.get("trust_remote_code"), ast.Constant) and \
                named["trust_remote_code"].value is False
            if receiver != "PeftModel" and not refused:
                loose.append(f"{path.name}:{node.lineno} {receiver}.from_pretrained")
    assert not loose, loose


# ------------------------------------------------------------------------------- label names of a `datasets` ClassLabel

GOOD = "great product, works perfectly"


def _classlabel_folder(tmp_path, names=("positive", "negative")):
    """A DatasetDict saved with save_to_disk whose ClassLabel stores `positive` as id 0 and `negative` as id 1."""
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))})
    good = [GOOD] + [f"great product number {i}, works perfectly" for i in range(19)]
    bad = [f"broke after {i} days, awful" for i in range(20)]

    def split(texts, labels):
        return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)

    folder = tmp_path / "reviews"
    datasets.DatasetDict({"train": split(good + bad, [0] * 20 + [1] * 20),
                          "test": split([good[1], bad[1], "nothing to say"], [0, 1, -1])}).save_to_disk(str(folder))
    return folder


def test_classlabel_names_are_kept_and_label_names_in_another_order_map_by_name(tmp_path, capsys):
    folder = _classlabel_folder(tmp_path)
    loaded = hp.data.load_labeled_data(folder, label_names="negative,positive")
    rows = dict(zip(loaded.dataset["text"], loaded.dataset["label"]))
    assert rows[GOOD] == "positive" and rows["broke after 0 days, awful"] == "negative"
    assert loaded.label_names == ["negative", "positive"] and "by name" in loaded.label_rule
    test = loaded.given.splits["test"]
    assert dict(zip(test["text"], test["label"])) == {"great product number 0, works perfectly": "positive",
                                                      "broke after 1 days, awful": "negative"}  # -1: no label
    assert "is a ClassLabel" in capsys.readouterr().out
    own = hp.data.load_labeled_data(folder)  # no LABEL_NAMES: the data's own names, never 0 and 1
    assert set(own.label_names) == {"positive", "negative"} and dict(zip(own.dataset["text"], own.dataset["label"]))[
        GOOD] == "positive"


def test_label_names_that_differ_from_the_classlabel_names_are_refused(tmp_path):
    folder = _classlabel_folder(tmp_path)
    with pytest.raises(DataError) as err:
        hp.data.load_labeled_data(folder, label_names="bad,good")
    message = _one_line(err)
    assert "LABEL_NAMES" in message and "negative, positive" in message and "set LABEL_NAMES" in message


def test_a_hub_classlabel_split_arrives_with_its_names(tmp_path, monkeypatch):
    import datasets

    from helpers import _readers

    hub = datasets.load_from_disk(str(_classlabel_folder(tmp_path)))["train"]
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: hub)
    frame = _readers.load_hub_frame("someone/reviews", "train", None)
    assert frame.loc[frame["text"] == GOOD, "label"].tolist() == ["positive"]


# ------------------------------------------------------------------------------- a text column holding objects or lists

@pytest.mark.parametrize("cell, what", [({"a": 1}, "records"), (["great", 2], "lists")])
def test_a_jsonl_text_column_holding_objects_or_lists_is_refused_naming_column_and_row(cell, what, tmp_path):
    rows = [{"text": f"plain review number {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]
    rows[3]["text"] = cell
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        hp.data.load_labeled_data(path)
    message = _one_line(err)
    assert f"Column 'text' holds {what}" in message and "data row 4" in message and "set TEXT_COL" in message


def test_a_jsonl_source_column_holding_objects_is_refused_naming_column_and_row(tmp_path):
    rows = [{"document": f"an article number {i} about markets", "summary": f"markets moved {i}"} for i in range(8)]
    rows[5]["document"] = {"title": "an article", "body": "its text"}
    path = tmp_path / "articles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        hp.data.load_pair_splits(path, source_col="document", target_col="summary")
    message = _one_line(err)
    assert "Column 'document' holds records" in message and "data row 6" in message


# ----------------------------------------------------------------------- workbook.json: not JSON, a list, a temperature

@pytest.fixture
def classifier_copy(tiny_classifier_dir, tmp_path):
    """The tiny classifier as a notebook saves it (with its workbook.json), copied to be damaged."""
    return _copy(tiny_classifier_dir, tmp_path)


@pytest.mark.parametrize("written, shown", [("1e-300", "1e-300"), ("1e308", "1e+308"), ("Infinity", "Infinity"),
                                            ("NaN", "NaN"), ("-2", "-2"), ('"0.5"', '"0.5"'), ("true", "true")])
def test_an_unusable_saved_temperature_is_refused_naming_the_file_and_value(written, shown, classifier_copy):
    file = classifier_copy / "workbook.json"
    text = json.dumps({**json.loads(file.read_text()), "temperature": "X"}).replace('"X"', written)
    file.write_text(text)
    with pytest.raises(FolderError) as err:
        hp.inference.load(classifier_copy, device="cpu")
    message = _one_line(err)
    assert str(file) in message and f"temperature {shown} " in message and "hp.metrics.calibrate" in message


@pytest.mark.parametrize("text, needle", [("{not json", "is not valid JSON (line 1, column 2"),
                                          ("[1, 2]", "holds a JSON list, not an object")])
def test_a_workbook_json_that_is_not_an_object_is_named(text, needle, classifier_copy):
    (classifier_copy / "workbook.json").write_text(text)
    with pytest.raises(FolderError) as err:
        hp.inference.load(classifier_copy, device="cpu")
    message = _one_line(err)
    assert str(classifier_copy / "workbook.json") in message and needle in message and "restore" in message


def test_probabilities_are_never_nan(classifier_copy):
    import torch

    model = hp.inference.load(classifier_copy, device="cpu")
    assert all(np.isfinite(list(model.predict("profit rose")["probabilities"].values())))
    with torch.no_grad():
        model.model.classifier.bias.fill_(float("nan"))  # what damaged weights or an fp16 overflow give
    with pytest.raises(RuntimeError, match=r"not finite numbers .*precision='fp32'"):
        model.predict("profit rose")


# ------------------------------------------------------------------------------- config.json that lies, weights cut off

@pytest.mark.parametrize("layers, says", [(1, "fewer layers than the weights hold"),
                                          (3, "more layers than the weights hold")])
def test_a_config_that_lies_about_the_layer_count_is_refused(layers, says, tiny_encoder_dir, tmp_path):
    folder = _copy(tiny_encoder_dir, tmp_path)
    _edit_json(folder / "config.json", num_hidden_layers=layers)  # the weights have 2
    for load in (lambda: hp.inference.load(folder, device="cpu"),
                 lambda: hp.models.load_classifier(str(folder), ["negative", "neutral", "positive"]),
                 lambda: hp.models.load_classifier(str(folder), ["down", "up"])):  # a new head: the body still lies
        with pytest.raises(FolderError) as err:
            load()
        message = _one_line(err)
        assert str(folder / "config.json") in message and says in message and "layer count" in message
    clf = hp.models.load_classifier(str(tiny_encoder_dir), ["down", "up"])  # only the head differs: a new one
    assert clf.new_head and clf.label_names == ["down", "up"]


def test_a_truncated_safetensors_file_is_named_as_damaged(tiny_encoder_dir, tmp_path):
    folder = _copy(tiny_encoder_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # a copy broken off, a full disk
    for load in (lambda: hp.inference.load(folder, device="cpu"),
                 lambda: hp.models.load_classifier(str(folder), ["negative", "neutral", "positive"])):
        with pytest.raises(FolderError) as err:
            load()
        message = _one_line(err)
        assert message.startswith(f"{weights} is damaged") and "save the model again" in message


# --------------------------------------------------------------------------------------------- a model for another task

def test_a_classifier_whose_workbook_json_says_summarizer_names_the_task_not_the_files(classifier_copy):
    _edit_json(classifier_copy / "workbook.json", task="summarization-causal")
    with pytest.raises(FolderError) as err:
        hp.inference.load(classifier_copy, device="cpu")
    message = _one_line(err)
    assert "holds a BertForSequenceClassification (text-classification)" in message
    assert "says task 'summarization-causal'" in message and "lacks" not in message


def test_a_causal_lm_loaded_as_a_classifier_names_the_task(tmp_path):
    from helpers._offline import standins

    folder = _copy(standins.tiny_gpt_neox_dir(), tmp_path)
    (folder / "workbook.json").write_text(json.dumps({"task": "text-classification"}))
    with pytest.raises(FolderError) as err:
        hp.inference.load(folder, device="cpu")
    message = _one_line(err)
    assert "GPTNeoXForCausalLM (summarization-causal)" in message and "'text-classification'" in message
    assert "score.weight" not in message


@pytest.mark.parametrize("kind", ["causal-lm", "seq2seq"])
def test_a_classifier_where_a_generator_is_expected_says_so(kind, tiny_encoder_dir):
    with pytest.raises(FolderError) as err:
        hp.models.load_generator(str(tiny_encoder_dir), kind=kind)
    message = _one_line(err)
    assert "a classifier" in message and "set MODEL_NAME" in message


def test_a_causal_lm_where_a_seq2seq_model_is_expected_says_so():
    from helpers._offline import standins

    with pytest.raises(FolderError, match=r"GPTNeoXForCausalLM model, which is not an encoder-decoder \(seq2seq\) "
                                          r"model.*set MODEL_NAME"):
        hp.models.load_generator(str(standins.tiny_gpt_neox_dir()), kind="seq2seq")


# ------------------------------------------------------------------------------------------------ an empty label column

def test_an_empty_label_column_gets_advice_about_the_label_column(tmp_path):
    path = tmp_path / "unlabelled.csv"
    path.write_text("text,label,sentiment\n" + "".join(f"review number {i},,{'pos' if i % 2 else 'neg'}\n"
                                                       for i in range(10)))
    with pytest.raises(DataError) as err:
        hp.data.load_labeled_data(path)
    message = _one_line(err)
    assert "Column 'label'" in message and "empty in every row" in message and "set LABEL_COL" in message
    assert "sentiment" in message and "TEXT_COL" not in message


# ---------------------------------------------------------------------------------------------------------- calibration

def _logits(n=200, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, 3))
    labels = logits.argmax(-1)
    labels[: n // 5] = (labels[: n // 5] + 1) % 3
    return logits * 3, labels


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("split", ["validation", "test"])
def test_calibration_refuses_non_finite_logits(bad, split):
    (val, val_labels), (test, test_labels) = _logits(), _logits(seed=1)
    (val if split == "validation" else test)[7, 1] = bad
    with pytest.raises(ValueError) as err:
        metrics.calibrate(val, val_labels, test, test_labels)
    message = _one_line(err)
    assert f"The {split} logits hold non-finite numbers" in message and "row 7" in message
    assert "PRECISION='fp32'" in message


@pytest.mark.parametrize("split", ["validation", "test"])
def test_calibration_refuses_a_label_past_the_last_class(split):
    (val, val_labels), (test, test_labels) = _logits(), _logits(seed=1)
    (val_labels if split == "validation" else test_labels)[4] = 3
    with pytest.raises(ValueError) as err:
        metrics.calibrate(val, val_labels, test, test_labels)
    message = _one_line(err)
    assert f"The {split} labels must be class ids 0 to 2" in message and "row 4 has 3" in message
    assert "hp.data.to_label_ids" in message


def test_a_failed_fit_keeps_temperature_one_and_says_so(monkeypatch, capsys):
    import torch

    def diverge(self, closure):
        for group in self.param_groups:
            for p in group["params"]:
                p.data.fill_(float("nan"))

    monkeypatch.setattr(torch.optim.LBFGS, "step", diverge)
    (val, val_labels), (test, test_labels) = _logits(), _logits(seed=1)
    cal = metrics.calibrate(val, val_labels, test, test_labels)
    assert cal.temperature == 1.0 and cal.accuracy_after == cal.accuracy_before
    assert np.isfinite([cal.ece_after, cal.nll_after]).all()
    assert "keeping temperature 1.0" in capsys.readouterr().out


def test_a_fitted_temperature_stays_within_what_a_saved_model_may_carry(capsys):
    logits, labels = _logits()
    low, high = metrics._TEMPERATURE_RANGE
    assert metrics._fit_temperature(logits * 1e6, labels) == high  # wildly over-confident: the fit wants 1e6
    assert "beyond the range" in capsys.readouterr().out
    from helpers._classify import temperature_problem

    assert temperature_problem(high) is None and temperature_problem(low) is None
