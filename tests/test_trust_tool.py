"""The tool around the notebooks meets accidents: damaged files, folders it cannot write, a HOME it cannot use,
absurd parameters. Each gets one line naming the problem and the fix; nothing already computed is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import artifacts
from helpers._offline import standins
from workbook import cli, compare

NB01 = "01_finbert_financial_sentiment"


def _finished_run(folder, lr, macro_f1):
    return artifacts.write_metrics(folder, notebook=NB01, test={"accuracy": 0.8, "macro_f1": macro_f1},
                                   params={"LR": lr}, evaluations=[{"step": 10, "macro_f1": macro_f1}])


@pytest.mark.parametrize("damage", ["{\"test\": {\"accuracy\": 0.9", "[1, 2, 3]", "", "\x00\xff"])
def test_compare_reports_the_good_runs_and_names_a_damaged_metrics_json(tmp_path, damage, capsys):
    _finished_run(tmp_path / "a", 3e-5, 0.71)
    _finished_run(tmp_path / "b", 1e-4, 0.75)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text(damage, errors="surrogateescape")
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"),
                     "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Best run: **b**" in report and "metrics.json is damaged" in report
    assert compare.load_run(tmp_path / "c").status == "failed"


def test_an_output_folder_that_cannot_be_written_is_refused_in_one_line_before_anything_runs(tmp_path, capsys):
    _finished_run(tmp_path / "a", 3e-5, 0.71)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # as root, permissions do not stop writes; a file in the way does
    assert cli.main(["compare", str(tmp_path / "a"), "--out", str(blocked / "report")]) == 2
    assert cli.main(["run", "01", "--smoke", "--runs-dir", str(blocked / "runs")]) == 2
    assert cli.main(["sweep", "01", "--lr", "1e-4,3e-4", "--runs-dir", str(blocked / "runs")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all("cannot be written" in e and "choose a folder you can write" in e for e in errors)
    assert "--out" in errors[0] and "--runs-dir" in errors[1] and "--runs-dir" in errors[2]


def test_stand_ins_are_built_in_the_temporary_folder_when_home_cannot_be_written(monkeypatch, capsys):
    monkeypatch.delenv("WORKBOOK_CACHE", raising=False)
    monkeypatch.setenv("HOME", "/dev/null")  # not a folder: nothing can be made under it
    monkeypatch.setattr(standins.cache_dir, "said", False, raising=False)
    folder = standins.cache_dir()
    assert folder.name == "standins" and str(folder).startswith(standins.tempfile.gettempdir())
    assert "cannot be written (HOME=/dev/null)" in capsys.readouterr().out
    standins.cache_dir()
    assert capsys.readouterr().out == ""  # said once


@pytest.mark.parametrize("name, value, need", [("SEED", 2**70, "4,294,967,295"), ("NUM_EPOCHS", 1e9, "at most 10,000"),
                                               ("MAX_STEPS", 10**12, "at most 100,000,000"),
                                               ("MAX_LENGTH", -5, "at least 8"), ("MAX_LENGTH", "abc", "at least 8")])
def test_absurd_parameters_are_refused_before_anything_runs(name, value, need, capsys):
    option = {"SEED": "--seed", "NUM_EPOCHS": "--epochs", "MAX_STEPS": "--max-steps"}.get(name)
    argv = [option, str(value)] if option else ["-p", name, json.dumps(value)]
    assert cli.main(["plan", "01", "--smoke", *argv]) == 2  # workbook plan --epochs 1e9 answers at once
    assert need in capsys.readouterr().err


def test_a_run_that_failed_before_saving_anything_does_not_keep_its_output_dir(tmp_path):
    out = tmp_path / "run"
    params = {"LR": 5e-5, "MAX_LENGTH": 4096, "SEED": 42}
    artifacts._prepare_output_dir(out, notebook=NB01, params=params)  # this run then failed: MAX_LENGTH too long
    artifacts._prepare_output_dir(out, notebook=NB01, params={**params, "MAX_LENGTH": 128})  # the fixed run goes on
    assert json.loads((out / "run.json").read_text())["params"]["MAX_LENGTH"] == 128
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # work to protect: refused as before
    with pytest.raises(artifacts._OutputDirInUseError, match="other parameters"):
        artifacts._prepare_output_dir(out, notebook=NB01, params={**params, "MAX_LENGTH": 64})
    (out / "run.json").write_text("{ damaged")
    with pytest.raises(artifacts._OutputDirInUseError, match="results of an unknown run; set OVERWRITE=True"):
        artifacts._prepare_output_dir(out, notebook=NB01, params=params)


def test_a_full_disk_during_the_final_save_leaves_no_half_written_model_and_says_so(tmp_path, tiny_model,
                                                                                    tiny_encoder_dir):
    import errno

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    first = artifacts._save_model(tmp_path, tiny_model, tokenizer, task="text-classification", info={"max_length": 16})
    before = sorted(p.name for p in first.iterdir())
    real = type(tiny_model).save_pretrained

    def fills_the_disk(self, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)  # half of it made it
        raise OSError(errno.ENOSPC, "No space left on device")

    type(tiny_model).save_pretrained = fills_the_disk
    try:
        with pytest.raises(artifacts._SaveError, match=r"could not save .*model: no space left on the disk \(\d+ MB "
                                                        r"free, about \d+ MB needed\).*run this cell again"):
            artifacts._save_model(tmp_path, tiny_model, tokenizer, task="text-classification", info={})
    finally:
        type(tiny_model).save_pretrained = real
    assert sorted(p.name for p in first.iterdir()) == before  # the earlier complete model is still there, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no partial folder left
    with pytest.raises(artifacts._SaveError, match="no space left"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Path, "write_text", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
            artifacts._write_json(tmp_path / "metrics.json", {"test": {}})
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_data_is_refused_where_it_enters_with_advice_about_the_data(tiny_model):
    import datasets

    import helpers as hp

    empty = datasets.Dataset.from_dict({"input_ids": [[101, 102]], "labels": [0]}).select([])  # a cap or filter
    some = datasets.Dataset.from_dict({"input_ids": [[101, 7, 102]] * 4, "labels": [0, 1, 0, 1]})
    advice = r"is empty \(0 rows\); check the data caps \(MAX_TRAIN_SAMPLES, MAX_EVAL_SAMPLES\)"
    for call, what in [(lambda: hp.find_lr(tiny_model, empty, progress=False), "The training split"),
                       (lambda: hp.plan(tiny_model, empty, measure_steps=0), "The training split"),
                       (lambda: hp.train(tiny_model, some, empty, max_steps=1, progress=False), "The validation split"),
                       (lambda: hp.evaluate(tiny_model, empty, progress=False), "The data to evaluate")]:
        with pytest.raises(ValueError, match=f"{what} {advice}"):
            call()


def test_predict_output_on_a_full_disk_is_named_and_leaves_no_truncated_file(tmp_path, tiny_classifier_dir, capsys,
                                                                             monkeypatch):
    import errno

    import pandas as pd

    table = tmp_path / "in.csv"
    pd.DataFrame({"text": ["profit rose", "sales fell", "the meeting is in May"]}).to_csv(table, index=False)
    out = tmp_path / "scored.csv"
    out.write_text("what was there before\n")
    real = pd.DataFrame.to_csv

    def full(self, path=None, *args, **kwargs):
        if path is not None and not hasattr(path, "write"):
            Path(path).write_text("text,predicted_la")  # part of it made it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert cli.main(["predict", str(tiny_classifier_dir), "--input", str(table), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "could not save" in err and "no space left on the disk" in err and "--output on another disk" in err
    assert out.read_text() == "what was there before\n"  # not replaced by a truncated table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "scored.csv"]
