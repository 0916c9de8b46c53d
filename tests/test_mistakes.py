"""Mistakes users make, tried as they make them: paths typed in a shell, parameters smoke mode must not
override, unusable values, unwritable folders, advice that must work when followed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import helpers as hp
from helpers.notebook import ParameterError
from workbook import runner

NB01 = "01_finbert_financial_sentiment"


def test_relative_paths_mean_what_they_mean_in_the_users_shell(tmp_path):
    (tmp_path / "models" / "finbert").mkdir(parents=True)
    (tmp_path / "data.csv").write_text("label,sentence\n")
    got = runner.resolve_paths({"MODEL_NAME": "models/finbert", "DATA_SOURCE": "data.csv", "OUTPUT_DIR": "relout",
                                "LR": 1e-4}, cwd=tmp_path)
    assert got == {"MODEL_NAME": str(tmp_path / "models" / "finbert"), "DATA_SOURCE": str(tmp_path / "data.csv"),
                   "OUTPUT_DIR": str(tmp_path / "relout"), "LR": 1e-4}
    hub = runner.resolve_paths({"MODEL_NAME": "ProsusAI/finbert", "DATA_SOURCE": "auto"}, cwd=tmp_path)
    assert hub == {"MODEL_NAME": "ProsusAI/finbert", "DATA_SOURCE": "auto"}  # Hub ids stay Hub ids
    missing = runner.resolve_paths({"MODEL_NAME": "./models/nowhere"}, cwd=tmp_path)
    assert missing["MODEL_NAME"] == str(tmp_path / "models" / "nowhere")  # the error will name the full path


def test_a_model_folder_relative_to_the_project_is_found_from_notebooks(monkeypatch, standin_dir, tmp_path):
    monkeypatch.setattr(hp.models, "PROJECT_ROOT", tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "finbert").symlink_to(standin_dir)
    monkeypatch.chdir(tmp_path / "models")  # like a notebook's working directory, notebooks/
    source = hp.models.resolve_model("models/finbert", allow_standin=False)
    assert source.how == "local folder" and not source.standin


def _namespace(**values):
    defaults = hp.notebook._notebook_defaults(NB01)
    return {**defaults, **values}


def test_smoke_changes_only_what_the_user_did_not_set(tmp_path):
    ns = _namespace(SMOKE=True, NUM_EPOCHS=2, OUTPUT_DIR=str(tmp_path / "out"),
                    In=["import helpers", "# Parameters\nNUM_EPOCHS = 2\nSMOKE = True\n"])
    before = dict(ns)
    run = hp.notebook.check_parameters(NB01, ns, smoke={"MAX_TRAIN_SAMPLES": 192, "NUM_EPOCHS": 1,
                                                        "TRAIN_BATCH_SIZE": 16})
    assert ns == before and not (tmp_path / "out").exists()  # a pure reading: nothing written, no folder
    assert run.params["NUM_EPOCHS"] == 2  # set by the user: kept, recorded
    assert run.params["MAX_TRAIN_SAMPLES"] == 192 and run.params["TRAIN_BATCH_SIZE"] == 16
    assert run.params["SMOKE"] is True and run.params["OUTPUT_DIR"] == tmp_path / "out" == run.output_dir
    assert run.smoke_changed == {"MAX_TRAIN_SAMPLES": 192, "TRAIN_BATCH_SIZE": 16}
    assert "TRAIN_BATCH_SIZE" in run.params and "NUM_EPOCHS" in run.set_by_user
    said = str(run)
    assert "papermill set: NUM_EPOCHS=2" in said and "smoke sizes: MAX_TRAIN_SAMPLES=192, TRAIN_BATCH_SIZE=16" in said
    assert run.claim_output_dir() == tmp_path / "out"
    assert json.loads((tmp_path / "out" / "run.json").read_text())["params"]["TRAIN_BATCH_SIZE"] == 16


def test_check_parameters_reads_the_sweeps_variables_once_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv(hp.notebook._SMOKE_ENV, raising=False)
    monkeypatch.setenv("WORKBOOK_TRIAL", json.dumps({"storage": "sqlite:///x.db", "study": "s", "trial": 3,
                                                     "metric": "macro_f1"}))
    monkeypatch.setenv("WORKBOOK_RUN_GROUP", json.dumps({"group": "lr-5e-05", "parent": "abc"}))
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweep-01-lr")
    ns = _namespace(TRACKING=False)
    before = dict(ns)
    run = hp.notebook.check_parameters(NB01, ns)
    assert ns == before and not (tmp_path / "runs").exists()
    assert run.output_dir == run.params["OUTPUT_DIR"] == tmp_path / "runs" / NB01  # the default folder, a Path
    assert run.sweep_trial["trial"] == 3 and run.run_group["parent"] == "abc" and run.experiment == "sweep-01-lr"
    said = str(run)
    assert "sweep trial: 3 of study 's'" in said and "seed group: lr-5e-05 (WORKBOOK_RUN_GROUP)" in said
    assert "MLflow experiment: sweep-01-lr" in said and "WORKBOOK_RUNS_DIR=" in said


def test_a_smoke_run_after_a_full_run_has_its_own_folder_and_is_not_refused(tmp_path, monkeypatch):
    """`make run`, then CI's way (`WORKBOOK_SMOKE=1 pytest --nbmake notebooks/`): the smoke run's default
    OUTPUT_DIR is runs/smoke/<notebook>/, so the full run (other parameters) neither refuses it nor is touched;
    pointed at the full run's folder on purpose, it is still refused."""
    monkeypatch.setenv("WORKBOOK_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv(hp.notebook._SMOKE_ENV, raising=False)
    full_dir, smoke_dir = hp.notebook._default_output_dir(NB01), hp.notebook._default_output_dir(NB01, smoke=True)
    assert full_dir == tmp_path / "runs" / NB01 and smoke_dir == tmp_path / "runs" / "smoke" / NB01
    full = hp.notebook.check_parameters(NB01, _namespace(TRACKING=False))
    full.claim_output_dir()
    assert full.output_dir == full_dir and not full.smoke
    hp.artifacts.write_metrics(full_dir, notebook=NB01, test={"accuracy": 0.9}, params=full.params)
    before = (full_dir / "metrics.json").read_text()

    monkeypatch.setenv(hp.notebook._SMOKE_ENV, "1")  # nbmake cannot set parameters: SMOKE=None asks the environment
    smoke = hp.notebook.check_parameters(NB01, _namespace(TRACKING=False),
                                         smoke={"MAX_TRAIN_SAMPLES": 192, "NUM_EPOCHS": 1})
    smoke.claim_output_dir()
    assert smoke.smoke and smoke.output_dir == smoke_dir != full_dir
    assert smoke.params != full.params  # other parameters: in one folder this run would have been refused
    assert json.loads((smoke_dir / "run.json").read_text())["params"]["MAX_TRAIN_SAMPLES"] == 192
    assert (full_dir / "metrics.json").read_text() == before  # the full run is untouched

    with pytest.raises(hp.artifacts._OutputDirInUseError, match="other parameters"):  # the guard still holds
        hp.notebook.check_parameters(NB01, _namespace(TRACKING=False, OUTPUT_DIR=str(full_dir)),
                                     smoke={"MAX_TRAIN_SAMPLES": 192}).claim_output_dir()


def test_the_runner_puts_smoke_runs_beside_full_runs_not_into_them(tmp_path, monkeypatch):
    """`workbook run --smoke` and WORKBOOK_SMOKE=1: executed copy, OUTPUT_DIR and summary under runs/smoke/."""
    monkeypatch.delenv(hp.notebook._SMOKE_ENV, raising=False)
    path = runner.find_notebook("01")
    seen = []

    def fake_papermill(source, executed, *, parameters, **kw):
        seen.append((executed, parameters["OUTPUT_DIR"]))
        raise RuntimeError("not run in this test")

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_papermill)
    runs = tmp_path / "runs"
    full = runner.run_notebook(path, {}, runs_dir=runs)
    smoke = runner.run_notebook(path, {"SMOKE": True}, runs_dir=runs)
    monkeypatch.setenv(hp.notebook._SMOKE_ENV, "1")
    from_env = runner.run_notebook(path, {}, runs_dir=runs)
    assert full.output_dir == (runs / path.stem).resolve() and full.executed == runs / path.name
    assert smoke.output_dir == from_env.output_dir == (runs / "smoke" / path.stem).resolve()
    assert smoke.executed == from_env.executed == runs / "smoke" / path.name
    assert [Path(o) for _, o in seen] == [full.output_dir, smoke.output_dir, smoke.output_dir]
    runner.run_many(["01"], {"SMOKE": True}, runs_dir=runs, echo=lambda *a, **k: None)
    assert (runs / "smoke" / "summary.md").exists() and not (runs / "summary.md").exists()


@pytest.mark.parametrize("name,value,needle", [
    ("NUM_EPOCHS", 0, "positive number of passes"),
    ("TRAIN_BATCH_SIZE", 0, "at least 1"),
    ("LR", -1, "positive learning rate"),
    ("LR", "abc", "positive learning rate"),
    ("WARMUP_RATIO", 1.5, "from 0 to below 1"),
    ("MAX_LENGTH", 2, "at least 8"),
    ("PRECISION", "fp8", '"auto", "bf16"'),
    ("RESUME", "yes", "True or False"),
    ("MAX_TRAIN_SAMPLES", -5, "or None"),
])
def test_unusable_values_are_refused_before_anything_loads(tmp_path, name, value, needle):
    ns = _namespace(**{name: value}, OUTPUT_DIR=str(tmp_path / "out"))
    with pytest.raises(ParameterError) as err:
        hp.notebook.check_parameters(NB01, ns)
    assert needle in str(err.value) and f"{name}={value!r}" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before the folder was claimed
    with pytest.raises(runner.RunnerError, match=name):  # `workbook run` refuses before papermill starts
        runner.check_parameters(runner.find_notebook("01"), {name: value})


def test_an_injected_unknown_parameter_is_refused_with_a_suggestion(tmp_path):
    ns = _namespace(LRR=3e-5, OUTPUT_DIR=str(tmp_path / "o"), In=["# Parameters\nLRR = 3e-05\n"])
    with pytest.raises(hp.notebook._UnknownParameterError, match=r"LRR \(did you mean LR\?\)"):
        hp.notebook.check_parameters(NB01, ns)
    rerun = _namespace(OUTPUT_DIR=str(tmp_path / "p"), LABELS=["a"], POOL=3)  # names the notebook set later
    again = hp.notebook.check_parameters(NB01, rerun)  # re-running the cell in JupyterLab is fine
    rerun.update(again.params)  # what the cell's `globals().update(run.params)` does
    assert hp.notebook.check_parameters(NB01, rerun).params == again.params


@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
def test_an_output_dir_that_cannot_be_written_is_one_clear_line(tmp_path, where):
    (tmp_path / "file").write_text("x")
    folder = tmp_path / "file" / "out" if where == "under-a-file" else tmp_path / "file"
    with pytest.raises(hp.artifacts._OutputDirInUseError) as err:
        hp.artifacts._prepare_output_dir(folder, notebook="01_x", params={})
    assert "choose" in str(err.value) and "OUTPUT_DIR" in str(err.value) and "\n" not in str(err.value)


def test_the_nan_advice_works_when_followed(tmp_path):
    """The NaN message says: lower LR with OVERWRITE=True. A resume with another LR is refused, so the
    advice must not be 'resume'; following it in the same OUTPUT_DIR must be accepted."""
    params = {"LR": 0.5, "SEED": 0}
    hp.artifacts._prepare_output_dir(tmp_path, notebook="01_x", params=params)
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # the run died after a checkpoint
    with pytest.raises(hp.artifacts._OutputDirInUseError):
        hp.artifacts._prepare_output_dir(tmp_path, notebook="01_x", params={**params, "LR": 0.05}, resume=True)
    hp.artifacts._prepare_output_dir(tmp_path, notebook="01_x", params={**params, "LR": 0.05}, overwrite=True)


def test_summary_keeps_the_whole_error_with_its_fix(tmp_path):
    long = "DataError: " + "x" * 200 + "; set TEXT_COL / LABEL_COL to the right names."
    result = runner.RunResult("01_x", "failed", 1.0, tmp_path / "x.ipynb", tmp_path, {}, long)
    text = runner.write_summary([result], tmp_path).read_text()
    assert "set TEXT_COL / LABEL_COL to the right names." in text


def test_verbose_run_configures_logging(monkeypatch, tmp_path):
    import logging
    import os

    from workbook import cli

    seen = {}
    before = os.environ.get("WORKBOOK_RUNS_DIR")
    monkeypatch.setattr(runner, "run_many", lambda names, params, **kw: seen.update(
        kw, store=os.environ.get("WORKBOOK_RUNS_DIR")) or [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert cli.main(["run", "01", "-v", "--runs-dir", str(tmp_path)]) == 0
    assert seen["log_output"] is True and logging.getLogger().level == logging.INFO
    # the runs' MLflow store goes with --runs-dir during the run, and the caller's setting is back after it
    assert seen["store"] == str(tmp_path.resolve()) and os.environ.get("WORKBOOK_RUNS_DIR") == before


@pytest.mark.parametrize("content,needle", [
    ("label,sentence\npositive,Profit rose .\npositive,Sales grew .\npositive,Orders up .\n",
     "Only one label in bad.csv ('positive': 3 rows)"),
    ("label,text,date\npositive,Profit rose .,2020\nnegative,Sales fell .,2021\n",
     'no column \'sentence\' (columns: label, text, date); set TEXT_COL / LABEL_COL to the right names '
     '(here perhaps TEXT_COL="text", LABEL_COL="label")'),
])
def test_data_mistakes_name_the_real_problem(tmp_path, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(hp.data.DataError) as err:
        hp.data.load_labeled_data(path, text_col="sentence", label_col="label", columns=["label", "sentence"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_first_line_over_128_kb_is_read(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("label,sentence\n" + "positive," + "word " * 40_000 + "\nnegative,Sales fell .\n")
    loaded = hp.data.load_labeled_data(path, text_col="sentence", label_col="label")
    assert len(loaded.dataset) == 2 and max(len(t) for t in loaded.dataset["text"]) > 190_000


def test_too_few_rows_to_split_is_a_data_error_not_sklearns():
    import datasets

    tiny = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(9)], "label": ["a", "b", "c"] * 3})
    with pytest.raises(hp.data.DataError, match="9 rows for 3 labels are too few.*at least 30 rows"):
        hp.data.stratified_split(tiny)


def test_majority_baseline_warning():
    majority = {"majority_label": "neutral", "accuracy": 0.6}
    assert hp.metrics.check_against_majority(0.55, majority).startswith("WARNING: test accuracy 0.550 does not beat")
    assert "majority-class baseline" in hp.metrics.check_against_majority(0.8, majority)


def test_the_label_advice_works_when_followed(tmp_path):
    stars = tmp_path / "stars.csv"
    stars.write_text("label,text\n2,ok\n3,fine\n2,meh\n")
    with pytest.raises(hp.data.DataError, match="LABEL_NAMES='2=1 star,3=2 stars,...'") as err:
        hp.data.load_labeled_data(stars, label_names="1 star,2 stars,3 stars,4 stars,5 stars")
    assert "count from 0 or 1" in str(err.value)
    loaded = hp.data.load_labeled_data(stars, label_names="2=two stars,3=three stars")
    assert sorted(set(loaded.dataset["label"])) == ["three stars", "two stars"]
    topics = tmp_path / "topics.csv"
    topics.write_text("label,text\nsports,A goal .\nworld,A vote .\n")
    with pytest.raises(hp.data.DataError, match="None to take them from the data"):
        hp.data.load_labeled_data(topics, label_names="negative,positive")
    assert hp.data.load_labeled_data(topics, label_names=None).label_names == ["sports", "world"]


@pytest.mark.parametrize("labels,needle", [([f"0.{i}" for i in range(10, 70)], "decimal numbers"),
                                           ([f"id-{i}" for i in range(60)], "looks like text or ids")])
def test_a_column_that_is_not_labels_is_refused(tmp_path, labels, needle):
    path = tmp_path / "scores.csv"
    path.write_text("label,text\n" + "".join(f"{lab},text number {i}\n" for i, lab in enumerate(labels)))
    with pytest.raises(hp.data.DataError, match=needle):
        hp.data.load_labeled_data(path)
