"""Checkpoints someone handed you, damaged ones and a full disk: no code runs, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import helpers as hp
from helpers import training
from helpers.training import _CheckpointError, _list_checkpoints, _UnsafeCheckpointError

FAST = dict(train_batch_size=16, eval_batch_size=64, lr=1e-2, precision="fp32", progress=False, seed=3)
MARKER = Path("/tmp/finetune-workbook-planted-code-ran")


class _Planted:
    """What an attacker puts in a checkpoint: unpickling it runs code (here: writes a marker file)."""

    def __reduce__(self):
        return (MARKER.write_text, ("ran",))


def _cut_run(tmp_path, tiny_encoder_dir, tiny_data, steps=8):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)
    hp.train(model, tiny_data["train"], max_steps=12, save_every_steps=4, checkpoint_dir=tmp_path,
             stop_after_steps=steps, **FAST)
    return _list_checkpoints(tmp_path)


def _resume(tmp_path, tiny_encoder_dir, tiny_data):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)
    return hp.train(model, tiny_data["train"], max_steps=12, save_every_steps=4, checkpoint_dir=tmp_path,
                    resume=True, **FAST)


@pytest.mark.parametrize("part", ["rng-rank0.pt", "optimizer.pt", "scheduler.pt", "model.pt"])
def test_a_planted_object_in_a_checkpoint_never_runs(part, tmp_path, tiny_encoder_dir, tiny_data):
    MARKER.unlink(missing_ok=True)
    last = _cut_run(tmp_path, tiny_encoder_dir, tiny_data)[-1]
    torch.save({"state": _Planted()}, last / part)
    with pytest.raises(_UnsafeCheckpointError) as err:
        _resume(tmp_path, tiny_encoder_dir, tiny_data)
    message = str(err.value)
    assert str(last / part) in message and "could run code" in message and "\n" not in message
    assert "weights_only=False" not in message  # never the advice that would run it
    assert not MARKER.exists()


def test_a_truncated_checkpoint_falls_back_to_the_one_before(tmp_path, tiny_encoder_dir, tiny_data, capsys):
    checkpoints = _cut_run(tmp_path, tiny_encoder_dir, tiny_data)
    assert [c.name for c in checkpoints] == ["checkpoint-4", "checkpoint-8"]
    damaged = checkpoints[-1] / "optimizer.pt"
    damaged.write_bytes(damaged.read_bytes()[:200])  # cut short, as by a full disk or a copy broken off
    history = _resume(tmp_path, tiny_encoder_dir, tiny_data)
    out = capsys.readouterr().out
    assert f"{damaged} cannot be read" in out and "previous complete checkpoint" in out
    assert history.resumed_from.endswith("checkpoint-4") and history.global_step == 12


def test_the_only_checkpoint_damaged_says_which_file_and_what_to_do(tmp_path, tiny_encoder_dir, tiny_data):
    checkpoints = _cut_run(tmp_path, tiny_encoder_dir, tiny_data, steps=5)
    assert [c.name for c in checkpoints] == ["checkpoint-4"]
    (checkpoints[0] / "model.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(_CheckpointError, match=r"model\.pt cannot be read .*damaged or incomplete.*OVERWRITE=True"):
        _resume(tmp_path, tiny_encoder_dir, tiny_data)


def test_a_full_disk_is_named_and_leaves_no_partial_files(tmp_path, tiny_encoder_dir, tiny_data, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    checkpoints = _cut_run(tmp_path, tiny_encoder_dir, tiny_data, steps=4)
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):  # what torch says when the disk fills mid-write
        Path(path).write_bytes(b"\0" * 1024)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 20971520")

    monkeypatch.setattr(training.torch, "save", disk_full)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)
    with pytest.raises(_CheckpointError) as err:
        hp.train(model, tiny_data["train"], max_steps=12, save_every_steps=4, checkpoint_dir=tmp_path, resume=True,
                 **FAST)
    monkeypatch.setattr(training.torch, "save", real_save)
    message = str(err.value)
    assert "no space left" in message and "needed about" in message and "checkpoint-4" in message
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert _list_checkpoints(tmp_path) == checkpoints  # the last complete one is kept


def test_best_model_write_failure_removes_its_partial_file(tmp_path, monkeypatch):
    def disk_full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 64)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training.torch, "save", disk_full)
    with pytest.raises(_CheckpointError, match="no space left"):
        training._atomic_torch_save({"w": torch.zeros(4)}, tmp_path / "best_model.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_resume_of_a_finished_run_keeps_it_finished(tmp_path):
    params = {"LR": 1e-3, "RESUME": False}
    hp.artifacts._prepare_output_dir(tmp_path, notebook="01_x", params=params)
    (tmp_path / "metrics.json").write_text("{}")
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "finished": True}))
    hp.artifacts._prepare_output_dir(tmp_path, notebook="01_x", params={**params, "RESUME": True}, resume=True)
    assert json.loads(run_file.read_text())["finished"] is True  # until the resumed run writes new results
