"""Ctrl-C during `workbook run`: no traceback, the summary written, one line with the step, the last
checkpoint and the command that resumes, exit status 130; that command then finishes the run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import wait_for_process

import helpers as hp
from workbook import cli, runner

ROOT = Path(__file__).resolve().parents[1]
WORKBOOK = Path(sys.executable).with_name("workbook")  # the console script of this environment
LINE = re.compile(r"^interrupted: (\S+) (at|after) step (\d+) of (\d+); last checkpoint (\S+); resume with: (.+)$",
                  re.MULTILINE)


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    for name in ("WORKBOOK_SMOKE", "WORKBOOK_RUNS_DIR"):
        env.pop(name, None)
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """`workbook ...` in a process group of its own, as a terminal runs it (Ctrl-C goes to the group). SIGINT
    is set back to its default: a test run from a background job or nohup would otherwise pass on 'ignored'."""
    return subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _ctrl_c(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"no exit {timeout:.0f} s after Ctrl-C:\n{log.read_text()[-3000:]}") from None
    return log.read_text()


# --------------------------------------------------------------------------- the lines, without a kernel

def test_the_line_names_the_step_the_checkpoint_and_the_command(tmp_path):
    ckpt = tmp_path / "checkpoint-32"
    stopped = runner.Interruption(step=40, total_steps=120, checkpoint=ckpt, resume="workbook run 01 --resume")
    assert stopped.line("01_x") == (f"interrupted: 01_x at step 40 of 120; last checkpoint {ckpt}; "
                                    "resume with: workbook run 01 --resume")
    early = runner.Interruption(step=5, total_steps=120, resume="workbook run 01")
    assert early.line("01_x") == ("interrupted: 01_x at step 5 of 120; no checkpoint was written; "
                                  "the run can only start over: workbook run 01")
    assert runner.Interruption(resume="workbook run 01").line("01_x") == (
        "interrupted: 01_x before the first checkpoint; the run can only start over: workbook run 01")
    assert "after step 32 of 120" in runner.Interruption(32, 120, ckpt, step_is_checkpoints=True).describe()


def test_ctrl_c_in_training_says_the_step_and_the_checkpoint(tmp_path, tiny_model, tiny_data, monkeypatch):
    """What a notebook cell shows (the Stop button, or `workbook run` passing on Ctrl-C), and what
    `workbook run` reads back: `hp.train` raises TrainingInterrupted with the step and the checkpoint."""
    from helpers import training

    real_step = training._Loop.train_step

    def ctrl_c_at_step_11(self, batch):
        if self.history.global_step == 11:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(training._Loop, "train_step", ctrl_c_at_step_11)
    with pytest.raises(training.TrainingInterrupted) as err:
        hp.train(tiny_model, tiny_data["train"], max_steps=24, save_every_steps=4, checkpoint_dir=tmp_path,
                 train_batch_size=16, precision="fp32", progress=False)
    note = str(err.value)
    assert note.startswith("Interrupted at step 11 of 24. The last checkpoint is ") and "RESUME=True" in note
    assert str(tmp_path / "checkpoint-8") in note
    assert isinstance(err.value, KeyboardInterrupt)  # callers that stop on Ctrl-C still do
    assert hp.notebook._interrupted_step(["\x1b[0;31mTrainingInterrupted\x1b[0m: " + note]) == (11, 24)
    assert hp.notebook._interrupted_step(["KeyboardInterrupt"]) is None


def test_the_resume_command_repeats_the_options_for_the_notebooks_left(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["workbook"])
    parser = cli.build_parser()
    argv = ["run", "01", "02", "--lr", "3e-5", "--epochs", "2", "--label-names", "a b,c", "--smoke",
            "--overwrite", "--runs-dir", "/tmp/my runs"]
    args = parser.parse_args(argv[:1] + cli.options_as_parameters(argv[1:], parser.parameter_commands["run"]))
    second = runner.find_notebook("02")
    command = cli._resume_command(args, [second, runner.find_notebook("03")], True)
    assert shlex.split(command) == ["workbook", "run", "02", "03", "--lr", "3e-05", "--epochs", "2",
                                    "-p", "LABEL_NAMES", "a b,c", "--smoke", "--runs-dir", "/tmp/my runs", "--resume"]
    assert "--resume" not in cli._resume_command(args, [second], False)  # start over: the same command
    monkeypatch.setattr(sys, "argv", [str(ROOT / "workbook" / "__main__.py")])  # python -m workbook run ...
    assert shlex.split(cli._resume_command(args, [second], True))[:4] == [sys.executable, "-m", "workbook", "run"]


# --------------------------------------------------------------------------- a tiny notebook, a real kernel

def _tiny_notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("OUTPUT_DIR = None\nRESUME = False\nSMOKE = None\n")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_ctrl_c_twice_stops_a_cell_that_ignores_the_first_and_still_says_one_line(tmp_path):
    """A cell that swallows the interrupt (or a kernel stuck in C code): the second Ctrl-C stops the run at once,
    still without a traceback from this process or the kernel; no checkpoint, so the line says start over."""
    started = tmp_path / "started"
    notebook = _tiny_notebook(tmp_path / "99_sleepy.ipynb", (
        "import pathlib, time\n"
        "for i in range(2):\n"
        "    try:\n"
        f"        i or pathlib.Path({str(started)!r}).write_text('x')  # inside try: a Ctrl-C from now on is caught\n"
        "        time.sleep(600)\n"
        "    except KeyboardInterrupt:\n"
        f"        pathlib.Path({str(started)!r}).write_text('interrupted once')\n"))
    log, runs = tmp_path / "out.txt", tmp_path / "runs"
    proc = _start([str(WORKBOOK), "run", str(notebook), "--runs-dir", str(runs)], log)
    wait_for_process(started.exists, proc, log, timeout=300)
    os.killpg(proc.pid, signal.SIGINT)  # the kernel gets it, the cell carries on
    wait_for_process(lambda: started.read_text() == "interrupted once", proc, log, timeout=60)
    out = _ctrl_c(proc, log)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "Error" not in out, out
    assert f"interrupted: 99_sleepy before the first checkpoint; the run can only start over: {WORKBOOK} run " in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and last.endswith(f"--runs-dir {runs}"), out
    summary = json.loads((runs / "summary.json").read_text())["runs"]
    assert [r["status"] for r in summary] == ["interrupted"]
    assert "**interrupted** (Ctrl-C) before the first checkpoint" in (runs / "summary.md").read_text()


@pytest.mark.slow
def test_ctrl_c_mid_training_says_where_and_the_printed_command_resumes(tmp_path):
    """Notebook 01 at smoke sizes, 64 rows for 3 epochs (4 steps each, a checkpoint at the end of each); Ctrl-C
    once the first checkpoint exists."""
    runs, log = tmp_path / "runs", tmp_path / "out.txt"
    out_dir = runs / "smoke" / "01_finbert_financial_sentiment"
    proc = _start([str(WORKBOOK), "run", "01", "--smoke", "--epochs", "3", "-p", "MAX_TRAIN_SAMPLES", "64",
                   "-p", "TRACKING", "False", "--runs-dir", str(runs)], log)
    wait_for_process(lambda: hp.training._latest_checkpoint(out_dir / "checkpoints") is not None, proc, log,
                     timeout=900)
    first = hp.training._latest_checkpoint(out_dir / "checkpoints")
    out = _ctrl_c(proc, log)

    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    found = LINE.search(out)
    assert found, out
    notebook, _, step, total, checkpoint, resume = found.groups()
    assert notebook == "01_finbert_financial_sentiment" and total == "12"
    assert int(step) >= int(first.name.split("-")[1]) and Path(checkpoint).parent == out_dir / "checkpoints"
    assert (Path(checkpoint) / "state.json").exists()
    summary = (runs / "smoke" / "summary.md").read_text()
    assert f"| 01_finbert_financial_sentiment | **interrupted** (Ctrl-C) {found.group(2)} step {step} of 12" in summary
    assert json.loads((runs / "smoke" / "summary.json").read_text())["runs"][0]["status"] == "interrupted"

    words = shlex.split(resume)
    assert Path(shutil.which(words[0], path=os.environ.get("PATH")) or words[0]).resolve() == WORKBOOK.resolve()
    assert words[1:] == ["run", "01", "--epochs", "3", "-p", "MAX_TRAIN_SAMPLES", "64", "-p", "TRACKING", "False",
                         "--smoke", "--runs-dir", str(runs), "--resume"]
    done = subprocess.run(words, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert Path(metrics["train"]["resumed_from"]) == Path(checkpoint)
    assert "| 01_finbert_financial_sentiment | ok |" in (runs / "smoke" / "summary.md").read_text()
