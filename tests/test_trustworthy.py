"""Runs that survive interruption, reproduce, scale to several processes, and refuse bad input early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import helpers as hp

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORKBOOK_SMOKE", None)
    return env


def _train(out: Path, *args: str, launcher: list[str] | None = None) -> dict:
    cmd = [*(launcher or [sys.executable]), str(SCRIPT), str(out), *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 600):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"training ended early: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out waiting for the training process"
        time.sleep(0.05)


def _comparable(result: dict) -> dict:
    evals = [{k: v for k, v in e.items() if k != "elapsed_s"} for e in result["evals"]]
    return {"losses": result["losses"], "evals": evals, "weights_sum": result["weights_sum"],
            "weights_abs": result["weights_abs"]}


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_and_mid_run_then_resume_is_bit_identical(tmp_path):
    reference = _train(tmp_path / "ref.json", "--checkpoint-dir", str(tmp_path / "ref-ckpt"), "--dropout", "0.1")
    ckpt = tmp_path / "ckpt"
    out = tmp_path / "run.json"

    # 1. killed in the middle of writing checkpoint-12: its model file is written, the rest is not
    proc = _start(out, "--checkpoint-dir", str(ckpt), "--pause-at-step", "12", "--dropout", "0.1")
    _wait_for(lambda: Path(str(out) + ".paused").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (ckpt / ".tmp-checkpoint-12" / "model.pt").exists()  # the half-written one ...
    assert hp.training._latest_checkpoint(ckpt).name == "checkpoint-8"  # ... is not taken for a checkpoint

    # 2. resumed, then killed mid-run: between checkpoints, as checkpoint-16 is complete (the process hangs
    #    there, so the kill cannot race the next steps and land after a later checkpoint or the end)
    Path(str(out) + ".paused").unlink()
    proc = _start(out, "--checkpoint-dir", str(ckpt), "--resume", "--dropout", "0.1", "--pause-after-checkpoint", "16")
    _wait_for(lambda: Path(str(out) + ".paused").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hp.training._latest_checkpoint(ckpt).name == "checkpoint-16"

    # 3. resumed again: finishes with exactly the numbers of the uninterrupted run
    final = _train(out, "--checkpoint-dir", str(ckpt), "--resume", "--dropout", "0.1")
    assert final["resumed_from"].endswith("checkpoint-16")
    assert _comparable(final) == _comparable(reference)
    assert not list(ckpt.glob(".tmp-*")) and len(hp.training._list_checkpoints(ckpt)) == 2  # rotated, cleaned


# --------------------------------------------------------------------------- bad input, refused early

def test_output_dir_guard(tmp_path):
    out = tmp_path / "run"
    params = {"LR": 5e-5, "SEED": 42, "OUTPUT_DIR": str(out), "RESUME": False}
    hp.artifacts._prepare_output_dir(out, notebook="01_x", params=params)
    (out / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(hp.artifacts._OutputDirInUseError, match="unfinished run with checkpoints; set RESUME=True"):
        hp.artifacts._prepare_output_dir(out, notebook="01_x", params=params)  # would lose work
    hp.artifacts._prepare_output_dir(out, notebook="01_x", params={**params, "RESUME": True}, resume=True)
    assert (out / "checkpoints" / "checkpoint-4").exists()
    hp.artifacts.write_metrics(out, notebook="01_x", test={"accuracy": 0.9}, params=params)
    with pytest.raises(hp.artifacts._OutputDirInUseError, match=r"other parameters \(LR: 5e-05 -> 0.0001\)"):
        hp.artifacts._prepare_output_dir(out, notebook="01_x", params={**params, "LR": 1e-4})
    with pytest.raises(hp.artifacts._OutputDirInUseError, match="holds a run of 01_x"):
        hp.artifacts._prepare_output_dir(out, notebook="02_y", params=params)
    assert hp.artifacts._read_metrics(out)["test"] == {"accuracy": 0.9}  # refusing lost nothing
    hp.artifacts._prepare_output_dir(out, notebook="01_x", params=params)  # finished, same parameters: rerun
    assert not (out / "checkpoints").exists()
    hp.artifacts._prepare_output_dir(out, notebook="02_y", params=params, overwrite=True)
    assert json.loads((out / "run.json").read_text())["notebook"] == "02_y"


def test_unknown_injected_parameter_is_refused_with_a_suggestion():
    names = ["LR", "NUM_EPOCHS", "SEED"]
    with pytest.raises(hp.notebook._UnknownParameterError, match=r"LRR \(did you mean LR\?\)"):
        hp.notebook._params_snapshot({"LR": 1, "LRR": 3e-5, "NUM_EPOCHS": 1, "SEED": 0, "NOTEBOOK": "x"}, names)
    snapshot = hp.notebook._params_snapshot({"LR": 1, "SEED": 0, "NOTEBOOK": "x", "pd": None}, names)
    assert snapshot == {"LR": 1, "SEED": 0}


def test_max_length_beyond_the_model_is_refused(tiny_model):
    assert hp.models.check_max_length(64, tiny_model) == 128
    with pytest.raises(ValueError, match=r"MAX_LENGTH=512 is beyond the model's limit of 128 tokens.*<= 128"):
        hp.models.check_max_length(512, tiny_model)


class _OutOfMemoryAbove(torch.nn.Module):
    """Wraps a model; a batch larger than `limit` rows raises the error a real allocator would."""

    def __init__(self, model, limit, *, evaluation_only=False):
        super().__init__()
        self.model, self.limit, self.config = model, limit, model.config
        self.evaluation_only = evaluation_only  # True: training batches of any size fit
        self.sizes = []

    def forward(self, **batch):
        self.sizes.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > self.limit and not (self.evaluation_only and self.training):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9437184000 bytes.")
        return self.model(**batch)


def test_a_batch_too_large_says_what_to_do_or_backs_off(tiny_model, tiny_data, tmp_path):
    wrapped = _OutOfMemoryAbove(tiny_model, limit=8)
    common = dict(max_steps=3, lr=1e-3, precision="fp32", progress=False, eval_each_epoch=False)
    with pytest.raises(hp.training._BatchTooLargeError,
                       match=r"TRAIN_BATCH_SIZE=32 does not fit.*TRAIN_BATCH_SIZE=16 with GRAD_ACCUM_STEPS=2.*"
                             r"AUTO_BATCH_BACKOFF=True"):
        hp.train(wrapped, tiny_data["train"], train_batch_size=32, **common)
    history = hp.train(wrapped, tiny_data["train"], train_batch_size=32, auto_batch_backoff=True, **common)
    assert (history.train_batch_size, history.grad_accum_steps, history.batch_backoffs) == (8, 4, 2)
    assert history.global_step == 3 and max(wrapped.sizes[-12:]) == 8
    assert history.summary()["train_batch_size"] == 8


def test_out_of_memory_in_an_evaluation_names_the_evaluation_batch_and_backs_it_off(tiny_model, tiny_data):
    wrapped = _OutOfMemoryAbove(tiny_model, limit=8, evaluation_only=True)
    common = dict(max_steps=2, lr=1e-3, precision="fp32", progress=False, train_batch_size=16, eval_batch_size=32)
    with pytest.raises(hp.training._EvalBatchTooLargeError,
                       match=r"EVAL_BATCH_SIZE=32 does not fit.*Use EVAL_BATCH_SIZE=16 .*the training batch is not"):
        hp.train(wrapped, tiny_data["train"], tiny_data["validation"], **common)
    with pytest.raises(hp.training._EvalBatchTooLargeError, match="EVAL_BATCH_SIZE=32"):  # the baseline's too
        hp.evaluate(wrapped, tiny_data["validation"], batch_size=32, precision="fp32", progress=False)
    history = hp.train(wrapped, tiny_data["train"], tiny_data["validation"], auto_batch_backoff=True, **common)
    assert (history.train_batch_size, history.grad_accum_steps, history.batch_backoffs) == (16, 1, 0)  # untouched
    assert history.summary()["eval_batch_size"] == 8 and len(history.evals) == 1 and history.global_step == 2
