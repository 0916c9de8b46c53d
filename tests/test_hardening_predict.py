"""`workbook predict` and model loading against the hardening issue: the input is never written over and none of
its columns is dropped, a bad --output is refused before the model loads, broken model folders get one line, and no
code runs from a weights file."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest

import helpers as hp
import workbook.serve
from workbook import cli


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory, tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return hp.artifacts._save_model(tmp_path_factory.mktemp("clf"),
                                    AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir),
                                    AutoTokenizer.from_pretrained(tiny_encoder_dir), task="text-classification",
                                    info={"max_length": 32})


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the model is loaded: what is refused must be refused before."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the mistake was refused")

    monkeypatch.setattr(hp.inference, "load", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- the input is the user's

def test_the_inputs_own_prediction_columns_are_kept_and_the_new_ones_suffixed(clf_dir, tmp_path, capsys):
    import pandas as pd

    source = tmp_path / "news.csv"
    pd.DataFrame({"text": ["Profit rose", "Sales fell"], "predicted_label": ["mine-1", "mine-2"],
                  "truncated": ["keep", "these"], "predicted_label_new": ["also", "mine"]}).to_csv(source, index=False)
    before = _digest(source)
    out = tmp_path / "scored.csv"
    assert cli.main(["predict", str(clf_dir), "--input", str(source), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    scored = pd.read_csv(out)
    assert scored["predicted_label"].tolist() == ["mine-1", "mine-2"]
    assert scored["truncated"].tolist() == ["keep", "these"]
    assert scored["predicted_label_new"].tolist() == ["also", "mine"]
    assert set(scored["predicted_label_new2"]) <= {"negative", "neutral", "positive"}
    assert scored["truncated_new"].tolist() == [False, False]
    assert "already has columns predicted_label, truncated" in err and "predicted_label_new2, truncated_new" in err
    assert "scored 2 of 2 rows" in err and _digest(source) == before


def test_label_metrics_use_the_new_columns_when_names_clash(clf_dir, tmp_path, capsys):
    import pandas as pd

    source = tmp_path / "truth.csv"
    pd.DataFrame({"text": ["Profit rose", "Sales fell"], "predicted_label": ["x", "y"],
                  "label": ["positive", "negative"]}).to_csv(source, index=False)
    assert cli.main(["predict", str(clf_dir), "--input", str(source), "--label-col", "label"]) == 0
    assert "accuracy" in capsys.readouterr().err


def test_output_equal_to_the_input_is_refused_and_the_workbook_untouched(clf_dir, tmp_path, capsys, no_model_load):
    import pandas as pd

    book = tmp_path / "news.xlsx"
    with pd.ExcelWriter(book) as writer:
        pd.DataFrame({"text": ["Profit rose", "Sales fell"]}).to_excel(writer, sheet_name="data", index=False)
        pd.DataFrame({"note": ["my other sheet"]}).to_excel(writer, sheet_name="notes", index=False)
    before = _digest(book)
    for output in (book, tmp_path / "." / "news.xlsx", tmp_path / "sub" / ".." / "news.xlsx"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert cli.main(["predict", str(clf_dir), "--input", str(book), "--output", str(output)]) == 2
        line = _one_line_error(capsys)
        assert "would write over the input" in line and "news.scored.xlsx" in line
    link = tmp_path / "link.xlsx"
    link.symlink_to(book)
    assert cli.main(["predict", str(clf_dir), "--input", str(link), "--output", str(book)]) == 2
    assert "would write over the input" in _one_line_error(capsys)
    hard = tmp_path / "hard.xlsx"
    hard.hardlink_to(book)
    assert cli.main(["predict", str(clf_dir), "--input", str(book), "--output", str(hard)]) == 2
    assert "would write over the input" in _one_line_error(capsys)
    assert _digest(book) == before and pd.ExcelFile(book).sheet_names == ["data", "notes"]


def test_output_inside_an_input_folder_is_refused(clf_dir, tmp_path, capsys, no_model_load):
    import pandas as pd

    folder = tmp_path / "parts"
    folder.mkdir()
    pd.DataFrame({"text": ["a b", "c d"]}).to_csv(folder / "part-0.csv", index=False)
    assert cli.main(["predict", str(clf_dir), "--input", str(folder), "--output", str(folder / "part-0.csv")]) == 2
    assert "would write over the input" in _one_line_error(capsys)


@pytest.mark.parametrize(("output", "message"), [
    ("scored.json", "name the output .csv, .tsv, .jsonl, .parquet or .xlsx"),
    ("no/such/folder/scored.csv", "does not exist; create it (mkdir -p"),
    ("scored", "name the output .csv"),
    ("a_folder.csv", "that is a folder"),
])
def test_an_unusable_output_is_refused_before_the_model_loads(clf_dir, tmp_path, capsys, no_model_load, output,
                                                              message):
    import pandas as pd

    source = tmp_path / "big.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(3000)]}).to_csv(source, index=False)
    (tmp_path / "a_folder.csv").mkdir()
    start = time.perf_counter()
    assert cli.main(["predict", str(clf_dir), "--input", str(source), "--output", str(tmp_path / output)]) == 2
    assert message in _one_line_error(capsys) and time.perf_counter() - start < 10


def test_an_output_that_exists_is_replaced_with_a_word(clf_dir, tmp_path, capsys):
    import pandas as pd

    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": ["Profit rose"]}).to_csv(source, index=False)
    out.write_text("old\n")
    assert cli.main(["predict", str(clf_dir), "--input", str(source), "--output", str(out)]) == 0
    assert "the file that was there is replaced" in capsys.readouterr().err


# --------------------------------------------------------------------------- broken model folders

def _copy(clf_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(clf_dir, folder)
    return folder


def test_labels_edited_in_config_json_are_refused_in_one_line(clf_dir, tmp_path, capsys):
    folder = _copy(clf_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "neutral", "2": "positive", "3": "mixed"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    assert cli.main(["predict", str(folder), "Profit rose"]) == 2
    line = _one_line_error(capsys)
    assert "config.json names 4 labels" in line and "model.safetensors was trained for 3" in line
    assert "id2label" in line
    with pytest.raises(hp.inference._FolderError, match="names 4 labels"):
        workbook.serve.create_app(folder, device="cpu")


def test_weights_that_do_not_fit_a_summarizers_config_are_refused_in_one_line(tmp_path, capsys):
    g = hp.models.load_generator("google-t5/t5-small", kind="seq2seq")
    folder = hp.artifacts._save_model(tmp_path, g.model, g.tokenizer, task="summarization-seq2seq",
                                      info={"prefix": "summarize: ", "max_source_length": 64})
    config = json.loads((folder / "config.json").read_text())
    config["d_ff"] = config["d_ff"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    assert cli.main(["predict", str(folder), "Some news."]) == 2
    line = _one_line_error(capsys)
    assert "does not fit" in line and "config.json" in line and "restore the config.json" in line


def test_label_ids_with_a_gap_are_refused_in_one_line(clf_dir, tmp_path, capsys):
    folder = _copy(clf_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "neutral", "5": "positive"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    assert cli.main(["predict", str(folder), "Profit rose"]) == 2
    assert "number them from 0" in _one_line_error(capsys)


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious pytorch_model.bin does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(clf_dir, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    folder = _copy(clf_dir, tmp_path)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({**weights, "payload": _RunsCode(marker)}, folder / "pytorch_model.bin")
    assert cli.main(["predict", str(folder), "Profit rose"]) == 2
    line = _one_line_error(capsys)
    assert "pytorch_model.bin is refused" in line and "could run code" in line and "model.safetensors" in line
    assert "weights_only=False" not in line
    with pytest.raises(hp.inference._FolderError, match="is refused"):
        workbook.serve.create_app(folder, device="cpu")
    assert not marker.exists()


def test_a_pickle_of_plain_tensors_still_loads(clf_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = _copy(clf_dir, tmp_path)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    expected = hp.inference.load(clf_dir, device="cpu").predict("Profit rose")
    assert hp.inference.load(folder, device="cpu").predict("Profit rose")["label"] == expected["label"]
