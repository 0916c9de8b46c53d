"""Tracking (MLflow), sweeps (grid, Optuna) and the comparison report."""

from __future__ import annotations

import json
import os

import pytest

from helpers import _mlflow, artifacts
from helpers.notebook import Run
from workbook import runner, sweep, tracking

NB01 = "01_finbert_financial_sentiment"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private runs folder: runs/mlflow.db and runs/optuna.db go there."""
    monkeypatch.setenv("WORKBOOK_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv(tracking.TRIAL_ENV, raising=False)
    yield tmp_path / "runs"
    for tracker in list(_mlflow._open):
        tracker.abandon()


def _finish_a_run(out, evals, *, standin=True, params=None):
    """What a notebook does, minus the model: start tracking, evaluations (hp.train's callback), plots,
    metrics.json (files only), then finish tracking with it."""
    run = Run(NB01, params or {"LR": 5e-5, "NUM_EPOCHS": 2}, False, out)
    run.start_tracking()
    for step, metrics in evals:
        assert run.on_evaluation(step, metrics, False) is False
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "plots" / "history.png").write_bytes(b"\x89PNG fake")
    (out / "model").mkdir(exist_ok=True)
    path = artifacts.write_metrics(out, notebook=NB01, test={"accuracy": 0.81, "macro_f1": 0.77},
                                   baseline={"accuracy": 0.3, "majority_accuracy": 0.6},
                                   model={"requested": "ProsusAI/finbert", "used": "/x/minilm", "standin": standin},
                                   data={"used": "all-data.csv", "fingerprint": "abc123"},
                                   train={"wall_s": 12.5, "samples_per_s": 40.0, "num_processes": 1},
                                   params=params or {"LR": 5e-5, "NUM_EPOCHS": 2},
                                   evaluations=[{"step": s, **m} for s, m in evals])
    assert _mlflow._open == ([run._tracker] if run._tracker.client is not None else [])  # writing closed nothing
    run.finish_tracking(path)
    assert _mlflow._open == []
    return run._tracker


def test_a_tracked_run_holds_its_params_evaluations_final_metrics_tags_and_plots(store, tmp_path):
    out = tmp_path / "out"
    tracker = _finish_a_run(out, [(10, {"loss": 0.9, "macro_f1": 0.5}), (20, {"loss": 0.7, "macro_f1": 0.7})])
    client = tracking.client()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["workbook.status"] == "finished"
    assert run.data.params == {"LR": "5e-05", "NUM_EPOCHS": "2"}
    history = client.get_metric_history(tracker.run_id, "val_macro_f1")
    assert [(m.step, m.value) for m in history] == [(10, 0.5), (20, 0.7)]
    metrics = run.data.metrics
    assert metrics["test_accuracy"] == 0.81 and metrics["baseline_majority_accuracy"] == 0.6
    assert [m.step for m in client.get_metric_history(tracker.run_id, "test_accuracy")] == [20]
    assert metrics["train_samples_per_s"] == 40.0 and "train_num_processes" not in metrics
    tags = run.data.tags
    assert tags["workbook.standin"] == "true" and tags["workbook.data_fingerprint"] == "abc123"
    assert tags["workbook.model_dir"] == str((out / "model").resolve())
    assert client.get_experiment(run.info.experiment_id).name == NB01
    assert {a.path for a in client.list_artifacts(tracker.run_id, "plots")} == {"plots/history.png"}
    assert "metrics.json" in {a.path for a in client.list_artifacts(tracker.run_id)}
    assert (store / "mlflow.db").exists()
    assert [e["step"] for e in artifacts._read_metrics(out)["evaluations"]] == [10, 20]
    frame = tracking.runs_frame(NB01)
    assert len(frame) == 1 and frame.loc[0, "metrics.test_macro_f1"] == 0.77


def test_write_metrics_alone_touches_no_tracking(store, tmp_path):
    """metrics.json is a file: writing it opens, logs to and closes no MLflow run."""
    artifacts.write_metrics(tmp_path / "plain", notebook=NB01, test={"accuracy": 0.9},
                            train={"pruned_at_step": 8}, params={"LR": 1e-4})
    assert artifacts._read_metrics(tmp_path / "plain")["pruned_at_step"] == 8  # what the sweep counts as pruned
    assert _mlflow._open == [] and not (store / "mlflow.db").exists()


def test_a_restarted_notebook_closes_its_earlier_run_and_finishing_takes_the_metrics_dict(store, tmp_path):
    first = Run(NB01, {"LR": 1e-4}, False, tmp_path / "a")
    first.start_tracking()
    second = Run(NB01, {"LR": 1e-4}, False, tmp_path / "a")  # the cells run again in the same kernel
    second.start_tracking()
    client = tracking.client()
    assert client.get_run(first._tracker.run_id).info.status == "KILLED"
    second.on_evaluation(4, {"macro_f1": 0.5}, True)
    second.finish_tracking({"test": {"accuracy": 0.7}, "pruned_at_step": 4})
    done = client.get_run(second._tracker.run_id)
    assert done.info.status == "FINISHED" and done.data.tags["workbook.status"] == "pruned"
    assert done.data.metrics["test_accuracy"] == 0.7


def test_tracking_off_and_a_broken_store_never_fail_the_run(store, tmp_path, monkeypatch, capsys):
    off = Run(NB01, {"LR": 1e-4, "TRACKING": False}, False, tmp_path / "off")
    off.start_tracking()
    assert off.on_evaluation(5, {"loss": 1.0}, False) is False
    off.finish_tracking({"test": {"accuracy": 0.5}})
    assert off._tracker.client is None and not (store / "mlflow.db").exists()
    assert "tracking: off (TRACKING=False)" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no-such-dir/mlflow.db")  # cannot be created
    tracker = _finish_a_run(tmp_path / "broken", [(5, {"loss": 1.0, "macro_f1": 0.4})])
    said = capsys.readouterr().out
    assert "tracking: could not start the MLflow run" in said and "goes on untracked" in said
    assert tracker.client is None
    assert artifacts._read_metrics(tmp_path / "broken")["test"]["accuracy"] == 0.81  # the run's results are all there


def test_a_trial_is_pruned_by_the_median_pruner_but_never_at_its_last_evaluation(store, monkeypatch, tmp_path, capsys):
    """The sweep's trial reaches the run as WORKBOOK_TRIAL, read once by check_parameters; the Run hands it to
    its tracker: evaluations are reported to the study although MLflow tracking is off."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    for step, value in [(10, 0.6), (20, 0.7)]:
        good.report(value, step)
    study.tell(good, 0.7)
    for last, expected in [(True, False), (False, True)]:
        trial = study.ask()
        spec = {"storage": storage, "study": "s", "trial": trial.number, "metric": "macro_f1",
                "pruner": {"n_startup_trials": 1}}
        run = Run(NB01, {"TRACKING": False}, False, tmp_path / f"t{trial.number}", sweep_trial=spec)
        assert f"sweep trial: {trial.number} of study 's'" in str(run)
        run.start_tracking()
        assert run.on_evaluation(10, {"macro_f1": 0.1}, last) is expected
    assert "pruned at step 10 by the median pruner" in capsys.readouterr().out


def test_a_callback_saying_true_stops_training_at_that_evaluation(store, tmp_path, tiny_model, tiny_data):
    """hp.train(callbacks=...): each is called after every evaluation with (step, record, last); True stops
    the run there (history.pruned_at_step). The Run's callback logs each evaluation to MLflow meanwhile."""
    import helpers as hp

    seen = []

    def stop_at_4(step, record, last):
        seen.append((step, "loss" in record, last))
        return step == 4

    run = Run(NB01, {"LR": 1e-2}, False, tmp_path / "cb")
    run.start_tracking()
    history = hp.train(tiny_model, tiny_data["train"], tiny_data["validation"], max_steps=8, eval_every_steps=2,
                       train_batch_size=16, precision="fp32", progress=False, seed=3,
                       callbacks=[run.on_evaluation, stop_at_4])
    assert seen == [(2, True, False), (4, True, False)]
    assert history.pruned_at_step == 4 and history.global_step == 4 and history.summary()["pruned_at_step"] == 4
    steps = [m.step for m in tracking.client().get_metric_history(run._tracker.run_id, "val_loss")]
    assert steps == [2, 4]
    run.abandon_tracking("KILLED")
    assert tracking.client().get_run(run._tracker.run_id).info.status == "KILLED"


def test_sweep_values_and_ranges_are_parsed_with_clear_errors():
    assert sweep.parse_axis("LR", "3e-5,1e-4").values == [3e-5, 1e-4]
    axis = sweep.parse_axis("LR", "1e-5:1e-4:log")
    assert (axis.low, axis.high, axis.log) == (1e-5, 1e-4, True)
    assert sweep.parse_axis("NUM_EPOCHS", "1:3").distribution().__class__.__name__ == "IntDistribution"
    for bad, message in [("1e-4:1e-5", "lower first"), ("0:1:log", "positive"), ("1,1", "twice"),
                         ("a:b:c:d", "LOW:HIGH")]:
        with pytest.raises(sweep.SweepError, match=message):
            sweep.parse_axis("LR", bad)
    grid_with_range = sweep.Sweep(runner.find_notebook("01"), [sweep.parse_axis("LR", "1e-5:1e-4")], {}, "x")
    with pytest.raises(sweep.SweepError, match="--trials"):
        grid_with_range.check()
    misspelt = sweep.Sweep(runner.find_notebook("01"), [sweep.parse_axis("LRR", "1,2")], {}, "x")
    with pytest.raises(sweep.SweepError, match="no parameter LRR"):
        misspelt.check()


def test_a_sweep_keeps_comma_separated_label_names_as_one_value():
    from workbook import cli

    parser = cli.build_parser()
    rest = ["01", "--lr", "3e-5,1e-4", "--label-names", "World,Sports,Business,Sci/Tech", "-p", "SEED", "1,2"]
    args = parser.parse_args(["sweep", *cli.options_as_parameters(rest, parser.parameter_commands["sweep"])])
    axes, fixed = cli._sweep_axes(args)
    assert [(a.name, a.values) for a in axes] == [("LR", [3e-5, 1e-4]), ("SEED", [1, 2])]
    assert fixed == {"LABEL_NAMES": "World,Sports,Business,Sci/Tech"}


def _fake_notebook_run(calls, stop_at=None):
    """Stands in for papermill: writes what a finished notebook writes; macro-F1 peaks near LR 5e-5."""
    import math

    def run(path, params, *, runs_dir, executed, log_output):
        calls.append(params)
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt  # the sweep is killed in the middle of this trial
        out = runner.Path(params["OUTPUT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        score = 0.8 - 0.1 * abs(math.log10(params["LR"] / 5e-5))
        record = {"params": params, "test": {"macro_f1": score - 0.02}, "train": {"wall_s": 1.0},
                  "evaluations": [{"step": 10, "macro_f1": score - 0.1}, {"step": 20, "macro_f1": score}]}
        (out / "metrics.json").write_text(json.dumps(record))
        (out / "run.json").write_text(json.dumps({"params": params, "finished": True}))
        return runner.RunResult(path.stem, "ok", 1.0, executed, out, record)

    return run


def test_an_interrupted_optuna_sweep_resumes_with_the_remaining_trials_only(store):
    job = sweep.Sweep(runner.find_notebook("01"), [sweep.parse_axis("LR", "1e-5:1e-4:log")], {"SMOKE": True},
                      "resume-test", trials=4)
    first: list = []
    with pytest.raises(KeyboardInterrupt):
        sweep.run(job, run_fn=_fake_notebook_run(first, stop_at=3))  # killed during the third trial
    again: list = []
    sweep.run(job, run_fn=_fake_notebook_run(again))
    assert len(first) == 3 and len(again) == 2  # 2 finished + 2 more; the cut-off one is marked failed
    import optuna

    study = optuna.load_study(study_name="resume-test", storage=f"sqlite:///{store / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1
    assert len({round(t.params["LR"], 12) for t in study.trials}) == 5  # the resumed sampler drew new points
    report = (job.folder / "report.md").read_text()
    assert f"Best run: **trial-{study.best_trial.number:03d}**" in report
    sweep.run(job, run_fn=_fake_notebook_run(again))  # nothing left to do
    assert len(again) == 2


def test_only_this_machines_dead_trials_are_marked_failed_on_resume(tmp_path):
    """A shared study: a trial whose sweep process died here is failed; another machine's running trial is not."""
    import socket
    import subprocess

    import optuna

    study = optuna.create_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine, theirs = study.ask(), study.ask()
    mine.set_user_attr("host", socket.gethostname())
    mine.set_user_attr("pid", dead.pid)
    theirs.set_user_attr("host", "another-machine")
    theirs.set_user_attr("pid", dead.pid)
    assert sweep._mark_stale_trials(study) == [mine.number]
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]


def test_every_sweep_value_is_checked_before_the_first_trial(store):
    nb01 = runner.find_notebook("01")
    calls: list = []
    for axes, fixed, seeds, named in [([sweep.parse_axis("LR", "1e-4,-1")], {}, None, "LR=-1"),
                                      ([sweep.parse_axis("MAX_LENGTH", "64,abc")], {}, None, "MAX_LENGTH='abc'"),
                                      ([sweep.parse_axis("LR", "1e-4,3e-4")], {"SEED": 2**32 - 1}, 2,
                                       "SEED=4294967296"),
                                      ([sweep.parse_axis("LR", "0:1e-4")], {}, None, "LR=0")]:
        job = sweep.Sweep(nb01, axes, fixed, "bad-values", trials=4 if axes[0].is_range else None, seeds=seeds)
        with pytest.raises(sweep.SweepError, match=rf"{named} cannot be used.*Nothing has run"):
            sweep.run(job, run_fn=_fake_notebook_run(calls))
    assert calls == []  # refused before any trial, not after its training


def test_runs_left_running_by_a_killed_notebook_are_ended_as_killed(store):
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    mlflow_client = tracking.client()
    exp = tracking.experiment_id(mlflow_client, "sweep-killed")
    host = socket.gethostname()
    killed, alive, elsewhere = (mlflow_client.create_run(exp, tags={"workbook.host": h, "workbook.pid": str(pid)})
                                for h, pid in [(host, dead.pid), (host, os.getpid()), ("another-machine", dead.pid)])
    assert tracking.end_stale_runs("sweep-killed") == [killed.info.run_id]
    status = {r.info.run_id: r.info.status for r in mlflow_client.search_runs([exp])}
    assert status == {killed.info.run_id: "KILLED", alive.info.run_id: "RUNNING", elsewhere.info.run_id: "RUNNING"}
    assert tracking.end_stale_runs("no-such-experiment") == []


def test_two_processes_creating_a_fresh_store_at_once_both_succeed(tmp_path):
    """MLflow makes its tables on first use; two processes doing it at once failed ("table ... already exists")."""
    import subprocess
    import sys
    import time

    code = ("import sys, time; from helpers import _mlflow; uri = sys.argv[1]\n"
            "while time.time() < float(sys.argv[2]): time.sleep(0.005)\n"
            "_mlflow.experiment_id(_mlflow.client(uri), 'x', uri)")
    start = str(time.time() + 6)  # both past their imports, then at once
    env = dict(os.environ, PYTHONPATH=str(runner.PROJECT_ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{tmp_path / 'mlflow.db'}", start], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
