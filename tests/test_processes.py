"""Several processes are one run: two gloo processes on the CPU train by epochs, on a row count that is not a
multiple of the batch, exactly as one process does; they checkpoint each epoch, resume exactly after a kill,
and stop the range test and early stopping at the same step. Notebook 01 under torchrun makes one report.
(helpers/_ranks.py, helpers/_batching.ProcessShare; docs/running.md#several-gpus-or-machines)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import helpers as hp
from helpers._batching import LengthGroupedBatchSampler, ProcessShare

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ROWS = 97  # 6 batches of 16 and a remainder of 1 row: one process gets no row of it
EPOCHS = ["--epochs", "3", "--train-rows", str(ROWS), "--patience", "1"]  # + "--find-lr" where it is compared


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORKBOOK_SMOKE", None)
    return env


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _train(out: Path, *args: str, processes: int = 2) -> dict:
    _run([*(TORCHRUN if processes == 2 else [sys.executable]), str(SCRIPT), str(out), *args])
    return json.loads(out.read_text())


def _rows_seen(out: Path, processes: int) -> list[list[int]]:
    """Per epoch, the training rows the processes were given (rows with loss weight 0 left out)."""
    per_rank = [json.loads(Path(f"{out}.rows-rank{r}.json").read_text()) for r in range(processes)]
    return [sorted(i for rank in per_rank for batch in rank[epoch] for i in batch) for epoch in range(len(per_rank[0]))]


def test_process_shares_cover_every_row_once_and_weigh_the_remainder():
    batches = LengthGroupedBatchSampler(list(range(5, 102)), 16, seed=3)  # 97 rows
    shares = [ProcessShare(batches, 2, rank) for rank in (0, 1)]
    given = [list(iter(share)) for share in shares]
    assert len(given[0]) == len(given[1]) == len(batches) == 7  # every process steps with the others
    real = sorted(i for share, batch_list in zip(shares, given) for b, w in zip(batch_list, share.weights) if w > 0
                  for i in b)
    assert real == list(range(97))
    short = shares[0].sizes.index(1)
    assert (shares[0].weights[short], shares[1].weights[short]) == (2.0, 0.0)  # 1 row: all of it on rank 0
    assert [w for i, w in enumerate(shares[0].weights) if i != short] == [1.0] * 6
    assert sum(shares[0].sizes) == 97


@pytest.mark.slow
def test_two_processes_by_epochs_train_every_row_like_one_and_resume_exactly(tmp_path):
    one = _train(tmp_path / "one.json", *EPOCHS, "--find-lr", "--checkpoint-dir", str(tmp_path / "ck1"), processes=1)
    two = _train(tmp_path / "two.json", *EPOCHS, "--find-lr", "--checkpoint-dir", str(tmp_path / "ck2"))

    # the same run: every row once per epoch, epochs that end, the same steps, losses and stopping
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["suggested_lr"] == pytest.approx(one["suggested_lr"], rel=1e-3)  # the range test stopped alike
    assert two["steps"] == one["steps"] and two["epoch"] == one["epoch"] == float(int(two["epoch"]))
    assert two["examples_seen"] == one["examples_seen"] == ROWS * int(two["epoch"])
    assert _rows_seen(tmp_path / "two.json", 2) == [list(range(ROWS))] * int(two["epoch"])
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4, abs=1e-5)
    assert [e["accuracy"] for e in two["evals"]] == [e["accuracy"] for e in one["evals"]]
    assert two["stopped_early"] == one["stopped_early"]
    epochs = int(two["epoch"])
    assert [p.name for p in hp.training._list_checkpoints(tmp_path / "ck2")] == [
        f"checkpoint-{7 * e}" for e in range(1, epochs + 1)]  # one per epoch (7 steps each)

    # killed between epoch 1's checkpoint and the next step (every process), then resumed: the same numbers
    out = tmp_path / "run.json"
    proc = subprocess.Popen([*TORCHRUN, str(SCRIPT), str(out), *EPOCHS, "--checkpoint-dir", str(tmp_path / "ck"),
                             "--pause-after-checkpoint", "7"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not Path(f"{out}.paused").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "timed out waiting for checkpoint-7"
        time.sleep(0.05)
    for child in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        child.kill()  # SIGKILL: the launcher and both processes, nothing said
    proc.wait()
    last = hp.training._latest_checkpoint(tmp_path / "ck")
    assert last.name == "checkpoint-7" and json.loads((last / "state.json").read_text())["num_processes"] == 2
    assert (last / "rng-rank0.pt").exists() and (last / "rng-rank1.pt").exists()  # each process's random state
    shutil.copytree(tmp_path / "ck", tmp_path / "ck-one")
    resumed = _train(out, *EPOCHS, "--checkpoint-dir", str(tmp_path / "ck"), "--resume")
    assert resumed["resumed_from"].endswith("checkpoint-7")
    assert resumed["losses"] == two["losses"] and resumed["evals"][-1]["loss"] == two["evals"][-1]["loss"]
    assert resumed["weights_sum"] == two["weights_sum"]

    # the same checkpoint resumed by one process: the data order is exact (no dropout here: nothing else differs)
    alone = _train(tmp_path / "alone.json", *EPOCHS, "--checkpoint-dir", str(tmp_path / "ck-one"), "--resume",
                   processes=1)
    assert alone["resumed_from"].endswith("checkpoint-7") and alone["num_processes"] == 1
    assert alone["losses"] == pytest.approx(two["losses"], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_notebook_01_under_torchrun_makes_one_report_and_trains_every_row_each_epoch(tmp_path):
    """Launched as docs/running.md says: a papermill-prepared copy under torchrun, two gloo processes on the CPU,
    100 training rows (a remainder of 4 at batch 16)."""
    bin_dir = Path(sys.executable).parent
    run_dir = tmp_path / "run"
    _run([sys.executable, "-m", "papermill", "--prepare-only", str(ROOT / "notebooks" /
                                                                   "01_finbert_financial_sentiment.ipynb"),
          str(tmp_path / "01-ddp.ipynb"), "-p", "MAX_TRAIN_SAMPLES", "100", "-p", "MAX_EVAL_SAMPLES", "32",
          "-p", "TRAIN_BATCH_SIZE", "16", "-p", "NUM_EPOCHS", "2", "-p", "FIND_LR", "False", "-p", "TRACKING", "False",
          "-p", "OUTPUT_DIR", str(run_dir)])
    proc = _run([str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python",
                 str(bin_dir / "ipython"), str(tmp_path / "01-ddp.ipynb")], timeout=900)
    output = proc.stdout + proc.stderr
    assert output.count("saved model to") == 1 and output.count("\ntest: {") == 1  # one report, rank 0's
    assert "2 processes: this one (rank 0) writes the files" in output and "[rank 1]" not in output
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    assert (train["num_processes"], train["epochs"], train["steps"]) == (2, 2.0, 14)  # 7 batches an epoch
    assert train["examples_seen"] == 2 * 100
    assert [p.name for p in hp.training._list_checkpoints(run_dir / "checkpoints")] == ["checkpoint-7", "checkpoint-14"]
