"""Seeds in sweeps and comparisons: each configuration on N seeds, ranked by the mean, its spread shown, and
differences smaller than the spread marked; in MLflow every seed's run grouped under its configuration."""

from __future__ import annotations

import json

import pytest

import helpers as hp
from helpers import _mlflow, artifacts
from workbook import cli, compare, runner, sweep, tracking

NB01 = "01_finbert_financial_sentiment"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private runs folder (mlflow.db goes there) and no tracking settings from the caller's shell."""
    monkeypatch.setenv("WORKBOOK_RUNS_DIR", str(tmp_path / "runs"))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", tracking.TRIAL_ENV, tracking.GROUP_ENV):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path / "runs"
    for tracker in list(_mlflow._open):
        tracker.abandon()


def _fake_notebook(calls: list, means: dict[float, float], noise: float):
    """Stands in for papermill: a tracked run whose validation macro-F1 is `means[LR]` moved by the seed
    (seed 42: -noise, 43: 0, 44: +noise), written as a finished notebook writes it. As in the notebook,
    `check_parameters` reads the sweep's WORKBOOK_RUN_GROUP and MLFLOW_EXPERIMENT_NAME, the Run tracks."""

    def run(path, params, *, runs_dir, executed, log_output):
        calls.append(params)
        out = runner.Path(params["OUTPUT_DIR"])
        score = means[params["LR"]] + noise * (params["SEED"] - 43)
        run = hp.notebook.check_parameters(NB01, {**hp.notebook._notebook_defaults(NB01), **params})
        assert run.run_group["group"] in str(run) and run.experiment == "sweep-01-lr"
        run.start_tracking()
        evals = [{"step": 10, "loss": 1.0, "macro_f1": score - 0.05}, {"step": 20, "loss": 0.8, "macro_f1": score}]
        for record in evals:
            run.on_evaluation(record["step"], record, record["step"] == 20)
        path = artifacts.write_metrics(out, notebook=NB01, test={"accuracy": score + 0.02, "macro_f1": score - 0.01},
                                       train={"wall_s": 1.0}, params=params, evaluations=evals)
        run.finish_tracking(path)
        (out / "run.json").write_text(json.dumps({"params": params, "finished": True}))
        return runner.RunResult(path.stem, "ok", 1.0, executed, out, artifacts._read_metrics(out))

    return run


def _sweep(store, monkeypatch, means, noise, *extra):
    calls: list = []
    monkeypatch.setattr(runner, "run_notebook", _fake_notebook(calls, means, noise))
    argv = ["sweep", "01", "--lr", ",".join(map(str, means)), "--seeds", "3", "--runs-dir", str(store), *extra]
    assert cli.main(argv) == 0
    return calls


def test_a_sweep_with_seeds_ranks_by_the_mean_and_says_the_better_one_is_better_by_more_than_the_spread(
        store, monkeypatch, capsys):
    calls = _sweep(store, monkeypatch, {5e-5: 0.80, 1e-4: 0.70}, 0.01)
    assert [(c["LR"], c["SEED"]) for c in calls] == [(5e-5, 42), (5e-5, 43), (5e-5, 44), (1e-4, 42), (1e-4, 43),
                                                      (1e-4, 44)]
    folder = store / "sweep-01-lr"
    assert (folder / "lr-5e-05_seed-44" / "metrics.json").exists()
    said = capsys.readouterr().out
    assert "2 configurations x 3 seeds" in said and "better by more than the spread" in said
    report = (folder / "report.md").read_text()
    assert "Best configuration by the mean over seeds: **LR=5e-05** (validation macro_f1 0.8 ± 0.01 over 3 seeds" \
        in report
    assert "Next: LR=0.0001, 0.7 ± 0.01 over 3 seeds" in report and "larger than the spread" in report
    rows = [line for line in report.splitlines() if line.startswith("| ★ LR=5e-05") or line.startswith("| LR=0.0001")]
    assert len(rows) == 2 and "| 3 | 0.8 | 0.01 | 0.79-0.81 |" in rows[0] and "best (highest mean)" in rows[0]
    assert "test accuracy" in report and "0.82 ± 0.01" in rows[0]
    assert rows[1].endswith("worse by more than the spread |")
    assert "★ lr-" not in report  # configurations are ranked, not single lucky runs
    assert (folder / "plots" / "seeds.png").stat().st_size > 5000
    assert (folder / "plots" / "metric_vs_LR.png").exists() and not (folder / "plots" / "metric_vs_SEED.png").exists()
    assert "<h2>Configurations over seeds</h2>" in (folder / "report.html").read_text()


def test_a_difference_smaller_than_the_seeds_spread_is_marked_within_it(store, monkeypatch):
    _sweep(store, monkeypatch, {5e-5: 0.80, 1e-4: 0.78}, 0.03)
    report = (store / "sweep-01-lr" / "report.md").read_text()
    assert "**LR=5e-05**" in report and "0.8 ± 0.03 over 3 seeds" in report and "0.78 ± 0.03 over 3 seeds" in report
    assert "within the spread of the seeds (0.06: the error bars overlap)" in report
    assert "within the spread: not shown different" in report


def test_mlflow_keeps_every_seeds_run_grouped_under_its_configuration(store, monkeypatch):
    _sweep(store, monkeypatch, {5e-5: 0.80, 1e-4: 0.70}, 0.01)
    runs = tracking.runs_frame("sweep-01-lr")
    parents = runs[runs["tags.workbook.seeds_parent"] == "true"]
    children = runs[runs["tags.workbook.seeds_parent"] != "true"]
    assert len(parents) == 2 and len(children) == 6 and set(runs["status"]) == {"FINISHED"}
    for _, parent in parents.iterrows():
        mine = children[children["tags.mlflow.parentRunId"] == parent["run_id"]]
        assert len(mine) == 3 and set(mine["tags.workbook.group"]) == {parent["tags.workbook.group"]}
        assert sorted(mine["params.SEED"]) == ["42", "43", "44"] and parent["metrics.seeds"] == 3
    best = parents[parents["tags.workbook.group"] == "lr-5e-05"].iloc[0]
    assert best["metrics.val_macro_f1_mean"] == pytest.approx(0.80) and best["metrics.val_macro_f1_sd"] == \
        pytest.approx(0.01)
    # the same command again: every run is kept, and the seeds stay under the same parents
    again = _sweep(store, monkeypatch, {5e-5: 0.80, 1e-4: 0.70}, 0.01)
    assert again == [] and len(tracking.runs_frame("sweep-01-lr")) == 8


def test_workbook_compare_groups_runs_that_differ_only_by_seed(store, monkeypatch, tmp_path, capsys):
    _sweep(store, monkeypatch, {5e-5: 0.80, 1e-4: 0.78}, 0.03)
    folder = store / "sweep-01-lr"
    runs = sorted(str(p) for p in folder.glob("lr-*") if p.is_dir())
    assert cli.main(["compare", *runs, "--out", str(tmp_path / "c")]) == 0
    assert "within the spread" in capsys.readouterr().out
    report = (tmp_path / "c" / "report.md").read_text()
    assert "Best configuration by the mean over seeds: **LR=5e-05**" in report and "within the spread" in report
    # three seeds of one configuration: its spread, the noise any change must beat
    assert cli.main(["compare", *[r for r in runs if "lr-5e-05" in r], "--out", str(tmp_path / "one")]) == 0
    assert "One configuration (all runs) on 3 seeds: validation macro_f1 0.8 ± 0.03" in \
        (tmp_path / "one" / "report.md").read_text()
    # one run of each configuration: ranked as runs, as before, and a lucky seed makes the worse mean win
    rows = [compare.load_run(folder / name) for name in ("lr-5e-05_seed-42", "lr-0.0001_seed-44")]
    plain = compare.report(rows, tmp_path / "plain").read_text()
    assert "Best run: **lr-0.0001_seed-44**" in plain and "over seeds" not in plain


def test_seeds_are_refused_where_they_cannot_work(store):
    nb = runner.find_notebook("01")
    cases = [(sweep.Sweep(nb, [sweep.parse_axis("LR", "1e-5:1e-4")], {}, "x", trials=4, seeds=3), "not with --trials"),
             (sweep.Sweep(nb, [sweep.parse_axis("SEED", "1,2")], {}, "x", seeds=3), "SEED is both swept"),
             (sweep.Sweep(nb, [sweep.parse_axis("LR", "1e-5,1e-4")], {}, "x", seeds=0), "1 or more")]
    for job, message in cases:
        with pytest.raises(sweep.SweepError, match=message):
            job.check()
    only_seeds = sweep.Sweep(nb, [], {"SEED": 7}, sweep.default_name(nb, [], None), seeds=3)
    only_seeds.check()  # seeds alone are a sweep: how much one recipe moves between seeds
    assert only_seeds.seed_values() == [7, 8, 9] and only_seeds.name == "01-seeds"
    assert sweep.Sweep(nb, [], {}, "x", seeds=2).seed_values() == [42, 43]  # from the notebook's SEED


@pytest.mark.slow
@pytest.mark.notebook
def test_a_smoke_sweep_of_notebook_01_on_two_seeds_reports_means_spreads_and_the_mark(store):
    """The real notebook (papermill): SEED reaches each run, each kernel's MLflow run lands under its
    configuration's parent, and the report gives both configurations' means and spreads with a verdict."""
    argv = ["sweep", "01", "--smoke", "--lr", "3e-5,1e-4", "--seeds", "2", "-p", "MAX_TRAIN_SAMPLES", "48",
            "-p", "MAX_EVAL_SAMPLES", "24", "--runs-dir", str(store)]
    assert cli.main(argv) == 0
    folder = store / "sweep-01-lr"
    assert compare.load_run(folder / "lr-0.0001_seed-43").params["SEED"] == 43
    report = (folder / "report.md").read_text()
    assert "Best configuration by the mean over seeds: **LR=" in report and "over 2 seeds" in report
    assert ("within the spread of the seeds" in report) != ("better by more than the spread" in report)
    rows = [line for line in report.splitlines() if line.startswith(("| ★ LR=", "| LR="))]
    assert len(rows) == 2 and all(" ± " in row for row in rows)
    runs = tracking.runs_frame("sweep-01-lr")
    children = runs[runs["tags.workbook.seeds_parent"] != "true"]
    assert len(children) == 4 and children["tags.mlflow.parentRunId"].notna().all()
    assert children["tags.mlflow.parentRunId"].nunique() == 2
    # every run tracked whole (it was a grid sweep of its own before: the same notebook runs, seen from MLflow)
    assert sorted(children["params.LR"]) == ["0.0001", "0.0001", "3e-05", "3e-05"]
    assert set(children["status"]) == {"FINISHED"}
    assert children["metrics.test_macro_f1"].between(0, 1).all() and children["metrics.val_macro_f1"].notna().all()
    assert (folder / "plots" / "metric_vs_LR.png").stat().st_size > 5000
    assert (folder / "plots" / "validation_curves.png").stat().st_size > 5000
    assert "<table>" in (folder / "report.html").read_text()
    # two of its runs compared again from the command line, and a second identical command keeps finished runs
    pair = [str(folder / "lr-3e-05_seed-42"), str(folder / "lr-0.0001_seed-42")]
    assert cli.main(["compare", *pair, "--out", str(store / "c")]) == 0
    assert "Best run: **" in (store / "c" / "report.md").read_text()
    before = (folder / "lr-3e-05_seed-42" / "metrics.json").stat().st_mtime
    assert cli.main(argv) == 0
    assert (folder / "lr-3e-05_seed-42" / "metrics.json").stat().st_mtime == before
