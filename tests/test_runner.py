"""The runner and CLI: options map onto parameters, typos are caught, failures don't stop the batch."""

from __future__ import annotations

import json

import nbformat
import pytest

from workbook import cli, runner


def _notebook(path, body, params="LR = 0.1  # learning rate\nOUTPUT_DIR = None  # where metrics.json goes\n"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


WRITE_METRICS = ("import json, pathlib\n"
                 "pathlib.Path(OUTPUT_DIR).mkdir(parents=True, exist_ok=True)\n"
                 "json.dump({'test': {'accuracy': LR}, 'model': {'used': 'm', 'standin': False},"
                 " 'data': {'used': 'd'}}, open(pathlib.Path(OUTPUT_DIR) / 'metrics.json', 'w'))\n")


@pytest.mark.parametrize("text,value", [("3e-5", 3e-5), ("2", 2), ("true", True), ("None", None),
                                        ("content", "content"), ("'quoted'", "quoted"), ("[1, 2]", "[1, 2]")])
def test_parse_value(text, value):
    assert runner.parse_value(text) == value


def test_seed_job_options_map_onto_parameters(monkeypatch):
    seen = {}
    monkeypatch.setattr(runner, "run_many", lambda names, params, **kw: seen.update(names=names, params=params) or [])
    argv = ["run", "02", "--lr", "3e-5", "--epochs", "1", "--train_batch_size", "16", "--eval-batch-size", "64",
            "--text-col", "content", "--label_col", "label", "--distilbert_model", "/m", "--dataset_name", "x.csv",
            "-p", "MAX_LENGTH", "256", "--smoke"]
    assert cli.main(argv) == 0
    assert seen["names"] == ["02"]
    assert seen["params"] == {"LR": 3e-5, "NUM_EPOCHS": 1, "TRAIN_BATCH_SIZE": 16, "EVAL_BATCH_SIZE": 64,
                              "TEXT_COL": "content", "LABEL_COL": "label", "MODEL_NAME": "/m",
                              "DATA_SOURCE": "x.csv", "MAX_LENGTH": 256, "SMOKE": True}


def test_every_parameter_can_be_typed_as_an_option(monkeypatch):
    seen = {}
    monkeypatch.setattr(runner, "run_many", lambda names, params, **kw: seen.update(names=names, params=params) or [])
    argv = ["run", "01", "--label-names", "World,Sports,Business,Sci/Tech", "--early_stopping_patience=2",
            "--text-col", "title+description", "--max-length", "96", "--overw", "--eval-every-steps", "-1"]
    assert cli.main(argv) == 0
    assert seen["params"] == {"LABEL_NAMES": "World,Sports,Business,Sci/Tech", "EARLY_STOPPING_PATIENCE": 2,
                              "TEXT_COL": "title+description", "MAX_LENGTH": 96, "OVERWRITE": True,
                              "EVAL_EVERY_STEPS": -1}


def test_an_option_without_its_value_or_misspelt_is_refused_by_name(capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_many", lambda *a, **kw: pytest.fail("ran despite a bad option"))
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "01", "--label-names", "--smoke"])
    assert stop.value.code == 2
    assert "--label-names needs a value" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli.main(["run", "01", "--label-nmes", "a,b"]) == 2  # refused before anything runs
    assert "no parameter 'LABEL_NMES'; did you mean LABEL_NAMES?" in capsys.readouterr().err


def test_unknown_parameter_is_refused_with_a_suggestion(tmp_path):
    nb = _notebook(tmp_path / "01_x.ipynb", WRITE_METRICS)
    with pytest.raises(runner.RunnerError, match="did you mean LR"):
        runner.check_parameters(nb, {"LRR": 1})


def test_unknown_notebook_is_a_clear_error():
    with pytest.raises(runner.RunnerError, match="No notebook matches"):
        runner.find_notebook("99")


def test_a_failing_notebook_does_not_stop_the_others(tmp_path, monkeypatch):
    good = _notebook(tmp_path / "01_good.ipynb", WRITE_METRICS)
    bad = _notebook(tmp_path / "02_bad.ipynb", "raise ValueError('broken on purpose')")
    monkeypatch.setattr(runner, "list_notebooks", lambda: [good, bad])
    monkeypatch.delenv("WORKBOOK_SMOKE", raising=False)  # `make test` sets it: a smoke run would go to runs/smoke/
    runs = tmp_path / "runs"
    results = runner.run_many(None, {"LR": 0.5}, runs_dir=runs, echo=lambda *a, **k: None)
    assert [r.status for r in results] == ["ok", "failed"]
    assert "broken on purpose" in results[1].error
    assert results[0].metrics["test"]["accuracy"] == 0.5  # the injected value reached the notebook
    executed = nbformat.read(runs / "02_bad.ipynb", as_version=4)
    assert any(o.get("ename") == "ValueError" for c in executed.cells for o in c.get("outputs", []))
    summary = (runs / "summary.md").read_text()
    assert "| 01_good | ok |" in summary and "**failed**" in summary
    assert json.loads((runs / "summary.json").read_text())["runs"][1]["status"] == "failed"


def test_the_notebooks_are_kept_without_outputs():
    """The tracked notebooks carry no outputs, counts or saved widget state: an interactive session's
    autosave must not end up in a commit (`make strip` cleans them, keeping the parameters tag)."""
    import nbformat

    for path in sorted((runner.PROJECT_ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
        assert not dirty, f"{path.name}: code cells {dirty} have outputs: run `make strip` before committing"
        assert "widgets" not in nb.metadata, f"{path.name} holds saved widget state: run `make strip`"
        assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{path.name}: no parameters cell"


def test_a_parameters_file_as_papermill_reads_it(tmp_path, monkeypatch, capsys):
    """`workbook run 02 -f job.yaml --lr 1e-4`: the file's values (YAML's `3e-5` string read as the number it
    is, `null` as None), options on the command line win; a broken file is refused before anything runs."""
    seen = {}
    monkeypatch.setattr(runner, "run_many", lambda names, params, **kw: seen.update(params=params) or [])
    job = tmp_path / "job.yaml"
    job.write_text("LR: 3e-5\nNUM_EPOCHS: 2\nLABEL_NAMES: null\nTEXT_COL: title+content\nMAX_LENGTH: 256\n")
    assert cli.main(["run", "02", "-f", str(job), "--epochs", "1"]) == 0
    assert seen["params"] == {"LR": 3e-5, "NUM_EPOCHS": 1, "LABEL_NAMES": None, "TEXT_COL": "title+content",
                              "MAX_LENGTH": 256}
    (tmp_path / "job.json").write_text('{"LR": 0.0001, "SEED": 7}')
    assert cli.main(["run", "02", "--parameters-file", str(tmp_path / "job.json")]) == 0
    assert seen["params"] == {"LR": 1e-4, "SEED": 7}
    seen.clear()
    for text, message in [("- LR\n- 3e-5\n", "must hold NAME: value pairs"), ("LR: [3e-5\n", "not valid YAML")]:
        job.write_text(text)
        assert cli.main(["run", "02", "-f", str(job)]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["run", "02", "-f", str(tmp_path / "missing.yaml")]) == 2
    assert "Cannot read the parameters file" in capsys.readouterr().err and not seen
