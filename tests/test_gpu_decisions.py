"""What the workbook decides on the GPUs users train on, checked on a CPU with the GPU simulated.

Each test patches what torch reports (CUDA present, the compute capability, the device count) or
gives the loop a CPU loss scaler (`torch.amp.GradScaler("cpu")` runs the same code as CUDA's) and
checks the decision: precision, where the baseline runs, the fp16 scaler and schedule, the model
given back, per-process random state, refusals. `make gpu-check` runs the real thing on a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers as hp
from helpers import device as dev
from helpers import training
from helpers.training import _list_checkpoints

LABELS = ["negative", "neutral", "positive"]
FAST = dict(train_batch_size=16, eval_batch_size=64, lr=1e-2, precision="fp32", progress=False, seed=3)
ROOT = Path(__file__).resolve().parents[1]


class _Props:
    def __init__(self, name, major, minor):
        self.name, self.major, self.minor, self.total_memory = name, major, minor, 16 * 2**30


def simulate_gpu(monkeypatch, name: str, capability: tuple[int, int], count: int = 1) -> None:
    """torch reports a CUDA GPU of this compute capability (only what the decisions read)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a, **k: _Props(name, *capability))
    # as torch answers: emulated bf16 (T4, V100) counts only when emulation is included
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability[0] >= 8)
    monkeypatch.setattr(torch.version, "hip", None)


# --------------------------------------------------------------------------- precision

def test_a_t4_gets_fp16_with_a_scaler_and_bf16_is_refused(monkeypatch):
    simulate_gpu(monkeypatch, "Tesla T4", (7, 5))
    cuda = dev.best_device()
    assert cuda.type == "cuda"
    assert dev.resolve_precision("auto", cuda) == "fp16"  # not emulated bf16
    with pytest.raises(ValueError, match=r"compute capability 7\.5.*emulates bf16.*PRECISION='fp16'"):
        dev.resolve_precision("bf16", cuda)
    assert "auto precision: fp16" in dev.describe() and "Tesla T4" in dev.describe()


def test_an_a100_gets_bf16_and_t5_on_a_t4_gets_fp32(monkeypatch):
    simulate_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    assert dev.resolve_precision("auto", dev.best_device()) == "bf16"
    assert dev.resolve_precision("bf16", dev.best_device()) == "bf16"
    simulate_gpu(monkeypatch, "Tesla T4", (7, 5))
    assert dev.resolve_precision("auto", dev.best_device(), allow_fp16=False) == "fp32"
    with pytest.raises(ValueError, match="overflows in fp16"):
        dev.resolve_precision("fp16", dev.best_device(), allow_fp16=False)


def test_serving_precision_is_checked_as_training_s(monkeypatch, tiny_classifier_dir, tiny_model):
    from helpers import inference

    with pytest.raises(ValueError, match=r"precision='fp16': fp16 needs a GPU"):
        hp.inference.load(tiny_classifier_dir, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match=r"precision='half': .*one of auto, bf16, fp16, fp32"):
        hp.inference.load(tiny_classifier_dir, device="cpu", precision="half")
    assert hp.inference.load(tiny_classifier_dir, device="cpu").precision == "fp32"  # the default: the notebook's
    simulate_gpu(monkeypatch, "Tesla T4", (7, 5))
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match=r"precision='bf16': .*only emulates bf16"):
        inference._serving_precision("bf16", cuda, tiny_model)
    assert inference._serving_precision("auto", cuda, tiny_model) == "fp16"
    t5 = type("T5", (), {"config": type("Config", (), {"model_type": "t5"})()})()
    with pytest.raises(ValueError, match="overflows in fp16"):
        inference._serving_precision("fp16", cuda, t5)
    assert inference._serving_precision("auto", cuda, t5) == "fp32"


def test_apple_gpu_memory_is_the_metal_driver_s_not_the_host_s(monkeypatch):
    from helpers import planning

    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 2**30)
    mps = torch.device("mps")
    assert dev._peak_memory_mb(mps) == training._peak_memory_mb(mps) == 3072.0
    assert planning._memory_now_mb(mps) == 1024.0


def test_several_processes_share_one_plan_verdict(monkeypatch):
    """Each GPU has its own free memory: the plan's refusal is the first refusing process's, for every process."""
    from helpers import _ranks, planning

    mine = (True, True, "fits", [])
    monkeypatch.setattr(_ranks, "gather", lambda value: [value, (False, True, "needs 30.2 GB, 24.0 GB free",
                                                                 ["TRAIN_BATCH_SIZE=8"])])
    assert planning._one_verdict(*mine) == (False, True, "needs 30.2 GB, 24.0 GB free (process 1 of 2)",
                                            ["TRAIN_BATCH_SIZE=8"])
    monkeypatch.setattr(_ranks, "gather", lambda value: [value, (True, True, "fits", [])])
    assert planning._one_verdict(*mine) == mine


def test_the_plan_of_several_processes_is_one_process_s_share(monkeypatch, tiny_data):
    from helpers import planning

    shape = {"enc_dec": False, "hidden": 32}
    config = hp.TrainConfig(train_batch_size=16, max_steps=4)
    rows = hp.training.as_rows(tiny_data["train"])
    alone = planning._run_layout(rows, config, shape, pad_multiple=None, measure_steps=3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    shared = planning._run_layout(rows, config, shape, pad_multiple=None, measure_steps=3)
    assert (alone.longest[0], shared.longest[0]) == (16, 8)  # what one process's memory and time depend on
    assert all(len(ids) == 8 for step in shared.measured for ids in step)


def test_evaluate_and_generate_pass_allow_fp16_through(monkeypatch, tiny_model, tiny_data):
    seen = []
    real = dev.resolve_precision

    def spy(precision="auto", device=None, *, allow_fp16=True):
        seen.append(allow_fp16)
        return real(precision, device, allow_fp16=allow_fp16)

    monkeypatch.setattr(dev, "resolve_precision", spy)
    hp.evaluate(tiny_model, tiny_data["validation"], precision="fp32", allow_fp16=False, progress=False,
                max_batches=1)
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from helpers import textgen

    folder = hp.models.resolve_model("google-t5/t5-small", kind="seq2seq").used  # offline: the T5 stand-in
    t5, tok = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    textgen.generate(t5, tok, ["summarize: profits rose"], precision="fp32", allow_fp16=False, progress=False,
                     max_new_tokens=2)
    assert seen == [False, False]


# --------------------------------------------------------------------------- the baseline's device

def _pretend_cuda_runs_on_cpu(monkeypatch):
    """A simulated T4 whose 'cuda' work really runs on the CPU: moves are recorded, not made."""
    simulate_gpu(monkeypatch, "Tesla T4", (7, 5))
    moves = []
    real_to = torch.nn.Module.to

    def record_to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device) and target.type == "cuda":
            moves.append(target)
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", record_to)
    monkeypatch.setattr(dev, "_to_device", lambda batch, device: batch)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(dev, "_autocast", lambda device, precision: torch.autocast("cpu", enabled=False))
    return moves


def test_the_baseline_runs_on_the_gpu_and_fp16_is_accepted_there(monkeypatch, tiny_model, tiny_data):
    """Notebooks evaluate the freshly loaded model (still on the CPU) before training: the baseline
    must run on the GPU, and PRECISION='fp16' must not fail there as 'fp16 needs a GPU'."""
    moves = _pretend_cuda_runs_on_cpu(monkeypatch)
    result = hp.evaluate(tiny_model, tiny_data["validation"], precision="fp16", progress=False,
                         compute_metrics=hp.metrics.classification_metrics_fn(LABELS))
    assert moves and moves[0].type == "cuda"
    assert result.num_samples == 64 and 0 <= result.metrics["accuracy"] <= 1


def test_generation_baseline_runs_on_the_gpu(monkeypatch):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from helpers import textgen

    folder = hp.models.resolve_model("google-t5/t5-small", kind="seq2seq").used
    t5, tok = AutoModelForSeq2SeqLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    moves = _pretend_cuda_runs_on_cpu(monkeypatch)
    out = textgen.generate(t5, tok, ["summarize: profits rose"], precision="auto", allow_fp16=False,
                           progress=False, max_new_tokens=2)
    assert moves and len(out) == 1


def test_each_process_takes_its_own_gpu(monkeypatch):
    simulate_gpu(monkeypatch, "NVIDIA A10G", (8, 6), count=4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert dev.best_device() == torch.device("cuda", 2)


def test_batches_are_copied_asynchronously_only_to_cuda():
    calls = []

    class Fake:
        def to(self, device, non_blocking=False):
            calls.append((device.type, non_blocking))
            return self

    for kind in ("cuda", "mps", "cpu"):
        dev._to_device({"input_ids": Fake()}, torch.device(kind))
    assert calls == [("cuda", True), ("mps", False), ("cpu", False)]


# --------------------------------------------------------------------------- the model given back

def test_train_gives_the_model_back_unwrapped_after_mixed_precision(tiny_model, tiny_data):
    ids = torch.tensor([tiny_data["train"][0]["input_ids"]])
    hp.train(tiny_model, tiny_data["train"], max_steps=2, **{**FAST, "precision": "bf16"})
    assert "forward" not in tiny_model.__dict__ and "_original_forward" not in tiny_model.__dict__
    out = tiny_model(ids, return_dict=False)  # raised TypeError (transformers' decorators stripped)
    assert isinstance(out, tuple) and out[0].dtype == torch.float32


def test_train_gives_the_model_back_when_it_raises(tiny_model, tiny_data):
    def failing_metrics(logits, labels):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        hp.train(tiny_model, tiny_data["train"], tiny_data["validation"], max_steps=2, eval_every_steps=1,
                 compute_metrics=failing_metrics, **{**FAST, "precision": "bf16"})
    assert "forward" not in tiny_model.__dict__  # no autocast left for the next (fp32) run
    with torch.no_grad():
        logits = tiny_model(torch.tensor([tiny_data["train"][0]["input_ids"]])).logits
    assert logits.dtype == torch.float32


# --------------------------------------------------------------------------- fp16: the loss scaler

@pytest.fixture
def cpu_fp16(monkeypatch):
    """fp16 training as on a GPU: the loop gets a 'cuda' device decision and a CPU GradScaler, with
    fp16 autocast on the CPU. Returns the scaler settings to use (tests change them)."""
    settings = {"init_scale": 2.0**16, "growth_interval": 2}
    real = training._fresh_accelerator

    def with_cpu_scaler(**kwargs):
        acc = real(**kwargs)
        if kwargs.get("mixed_precision") == "fp16":
            acc.native_amp = True  # prepare() wraps forward in fp16 autocast, as on CUDA
            acc.scaler = torch.amp.GradScaler("cpu", **settings)
        return acc

    real_resolve = dev.resolve_precision

    def fp16_as_on_a_gpu(precision="auto", device=None, *, allow_fp16=True):  # fp16 is refused on a CPU device
        return "fp16" if precision == "fp16" else real_resolve(precision, device, allow_fp16=allow_fp16)

    monkeypatch.setattr(training, "_fresh_accelerator", with_cpu_scaler)
    monkeypatch.setattr(dev, "resolve_precision", fp16_as_on_a_gpu)
    return settings


def test_overflow_steps_do_not_advance_the_schedule_and_are_counted(cpu_fp16, tiny_model, tiny_data, capsys):
    cpu_fp16["init_scale"] = 2.0**40  # far too high: the first steps overflow until the scale backs off
    history = hp.train(tiny_model, tiny_data["train"], max_steps=40, log_every_steps=1,
                       **{**FAST, "precision": "fp16", "progress": True, "lr": 1e-3})
    assert history.precision == "fp16"
    assert 10 <= history.skipped_steps < 40
    assert history.loss_scale < 2.0**40
    # the schedule advanced only on the steps that updated weights: after n of them, linear decay from
    # the peak (1e-3) over the 36 steps after the 4 of warmup stands at 1e-3 * (40 - n) / 36, not at 0
    updates = 40 - history.skipped_steps
    assert updates >= 4 and history.learning_rate[-1] == pytest.approx(1e-3 * (40 - updates) / 36)
    out = capsys.readouterr()
    assert "overflowed 10 optimizer steps in a row" in out.err + out.out
    assert f"skipped {history.skipped_steps} of 40" in out.err + out.out
    assert history.summary()["skipped_steps"] == history.skipped_steps


def _fresh(tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir)


def test_fp16_resume_is_exact_with_the_scaler_checkpointed(cpu_fp16, tmp_path, tiny_encoder_dir, tiny_data):
    """The scale starts too high and backs off over the first steps, so a resume that restarted the
    scaler at its initial scale would skip steps the uninterrupted run took."""
    cpu_fp16["init_scale"] = 2.0**24
    kwargs = dict(max_steps=12, save_every_steps=4, log_every_steps=1, **{**FAST, "precision": "fp16", "lr": 1e-3})
    full_model = _fresh(tiny_encoder_dir)
    full = hp.train(full_model, tiny_data["train"], checkpoint_dir=tmp_path / "full", **kwargs)

    hp.train(_fresh(tiny_encoder_dir), tiny_data["train"], checkpoint_dir=tmp_path / "cut", stop_after_steps=9,
             **kwargs)
    state = json.loads((_list_checkpoints(tmp_path / "cut")[-1] / "state.json").read_text())
    assert state["scaler"]["scale"] < cpu_fp16["init_scale"]  # it backed off: the state is worth keeping
    resumed_model = _fresh(tiny_encoder_dir)
    resumed = hp.train(resumed_model, tiny_data["train"], checkpoint_dir=tmp_path / "cut", resume=True, **kwargs)
    assert resumed.resumed_from.endswith("checkpoint-8")
    assert resumed.train_loss == full.train_loss and resumed.loss_scale == full.loss_scale
    for name, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


# --------------------------------------------------------------------------- checkpoints and processes

def test_checkpoints_hold_one_random_state_per_process_and_load_without_pickled_code(tmp_path, tiny_model,
                                                                                      tiny_data):
    hp.train(tiny_model, tiny_data["train"], max_steps=4, save_every_steps=2, checkpoint_dir=tmp_path, **FAST)
    ckpt = _list_checkpoints(tmp_path)[-1]
    assert (ckpt / "rng-rank0.pt").exists() and not (ckpt / "rng.pt").exists()
    for part in ("model.pt", "optimizer.pt", "scheduler.pt", "rng-rank0.pt"):
        torch.load(ckpt / part, weights_only=True)  # tensors and plain values only


def test_a_checkpoint_from_more_processes_resumes(tmp_path, tiny_encoder_dir, tiny_data):
    """Written by 4 processes (rng-rank0..3), resumed by one: it takes rank 0's state, exactly. Before,
    every rank restored all GPUs' states from one file and a bigger machine's file raised IndexError."""
    kwargs = dict(max_steps=8, save_every_steps=4, **FAST)
    full_model = _fresh(tiny_encoder_dir)
    hp.train(full_model, tiny_data["train"], **kwargs)
    hp.train(_fresh(tiny_encoder_dir), tiny_data["train"], checkpoint_dir=tmp_path, stop_after_steps=4, **kwargs)
    ckpt = _list_checkpoints(tmp_path)[-1]
    for rank in (1, 2, 3):  # the other processes' generators (different states)
        torch.save({**torch.load(ckpt / "rng-rank0.pt", weights_only=True),
                    "torch": torch.Generator().manual_seed(rank).get_state()}, ckpt / f"rng-rank{rank}.pt")
    resumed_model = _fresh(tiny_encoder_dir)
    hp.train(resumed_model, tiny_data["train"], checkpoint_dir=tmp_path, resume=True, **kwargs)
    for name, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


def test_a_process_the_checkpoint_did_not_have_is_seeded_and_says_so(tmp_path, tiny_encoder_dir, tiny_data,
                                                                     monkeypatch, capsys):
    kwargs = dict(max_steps=8, save_every_steps=4, **FAST)
    hp.train(_fresh(tiny_encoder_dir), tiny_data["train"], checkpoint_dir=tmp_path, stop_after_steps=4, **kwargs)
    ckpt = _list_checkpoints(tmp_path)[-1]
    (ckpt / "rng-rank0.pt").rename(ckpt / "rng-rank1.pt")  # as if this process were rank 1 of a bigger run...
    monkeypatch.setattr(training._Loop, "_read_rng",
                        lambda self, c, s: None if (c / "rng-rank1.pt").exists() else {})  # ...that had no rank 0
    history = hp.train(_fresh(tiny_encoder_dir), tiny_data["train"], checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert history.global_step == 8
    assert "no saved random state and is seeded" in capsys.readouterr().out


def test_an_older_checkpoint_with_numpy_random_state_still_resumes(tmp_path, tiny_encoder_dir, tiny_data):
    kwargs = dict(max_steps=8, save_every_steps=4, **FAST)
    full_model = _fresh(tiny_encoder_dir)
    hp.train(full_model, tiny_data["train"], **kwargs)
    hp.train(_fresh(tiny_encoder_dir), tiny_data["train"], checkpoint_dir=tmp_path, stop_after_steps=4, **kwargs)
    ckpt = _list_checkpoints(tmp_path)[-1]
    new = torch.load(ckpt / "rng-rank0.pt", weights_only=True)
    n = new["numpy"]
    legacy = {"python": new["python"], "torch": new["torch"],
              "numpy": ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])}
    (ckpt / "rng-rank0.pt").unlink()
    torch.save(legacy, ckpt / "rng.pt")  # the format before per-process files
    resumed_model = _fresh(tiny_encoder_dir)
    hp.train(resumed_model, tiny_data["train"], checkpoint_dir=tmp_path, resume=True, **kwargs)
    for name, value in full_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


# --------------------------------------------------------------------------- refusals and options

def test_batch_backoff_is_refused_with_several_processes(monkeypatch, tiny_model, tiny_data):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="one process only.*2 processes"):
        hp.train(tiny_model, tiny_data["train"], max_steps=2, auto_batch_backoff=True, **FAST)


def test_the_device_option_is_honoured_and_a_missing_device_refused(tiny_model, tiny_data):
    history = hp.train(tiny_model, tiny_data["train"], max_steps=2, device="cpu", **FAST)
    assert history.device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no cuda device"):
            hp.train(tiny_model, tiny_data["train"], max_steps=2, device="cuda", **FAST)


def test_half_precision_checkpoints_load_in_fp32(tmp_path, tiny_encoder_dir):
    """transformers 5 loads with dtype='auto': an fp16 checkpoint would train in fp16 weights
    ("Attempting to unscale FP16 gradients"). The kit loads in fp32 (the loop adds autocast)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "half"
    AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir).half().save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(folder)
    clf = hp.models.load_classifier(folder, LABELS)
    assert {p.dtype for p in clf.model.parameters()} == {torch.float32}


def test_qlora_places_each_process_on_its_own_gpu_and_computes_in_a_native_dtype(monkeypatch):
    pytest.importorskip("transformers.utils.quantization_config")
    simulate_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0), count=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    kwargs = hp.models.quantization_kwargs("bf16")
    assert kwargs["device_map"] == {"": 1}
    simulate_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0), count=1)  # one visible GPU per process
    assert hp.models.quantization_kwargs("bf16")["device_map"] == {"": 0}
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    t4 = hp.models.quantization_kwargs("fp32")  # T5 on a T4: no native bf16, and fp16 overflows
    assert t4["quantization_config"].bnb_4bit_compute_dtype == torch.float32


def test_bench_floor_and_loop_honour_the_device(monkeypatch):
    from bench import train as bench_train

    moves = _pretend_cuda_runs_on_cpu(monkeypatch)
    args = bench_train.parse_args(["--variant", "floor", "--out", "x.json", "--max-train-samples", "32",
                                   "--epochs", "1", "--batch-size", "16", "--model", "random:tiny"])
    result = bench_train.run_floor(args)
    assert moves and moves[0].type == "cuda" and result["device"].startswith("cuda")


def test_mfu_counts_non_embedding_weights_against_the_right_peak():
    from bench import run as bench_run

    result = {"parameters": 110e6, "embedding_parameters": 24e6, "tokens_per_s": 1e5, "precision": "bf16"}
    h100_pcie = bench_run.mfu(result, "NVIDIA H100 PCIe", None)
    h100_sxm = bench_run.mfu(result, "NVIDIA H100 80GB HBM3", None)
    assert h100_pcie == pytest.approx(6 * 86e6 * 1e5 / 756e12)
    assert h100_sxm == pytest.approx(6 * 86e6 * 1e5 / 989e12)
    t4 = bench_run.mfu({**result, "precision": "fp16"}, "Tesla T4", None)
    assert t4 == pytest.approx(6 * 86e6 * 1e5 / 65e12)
    assert bench_run.mfu({**result, "precision": "bf16"}, "Tesla T4", None) is None  # no bf16 peak on a T4


# --------------------------------------------------------------------------- make gpu-check, on a CPU

@pytest.mark.slow
def test_gpu_check_runs_its_plumbing_on_a_cpu_in_order_with_a_verdict_per_row(tmp_path):
    """Without a GPU, `make gpu-check` says so and runs each step at the smallest size, most valuable first (the
    notebook steps are left to the suite's own notebook runs, and serving to test_bench: they cost minutes)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run make gpu-check itself")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--steps", "qlora,processes,speed,resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "No GPU here" in proc.stdout
    report = json.loads((tmp_path / "gpu-check.json").read_text())  # $OUT, as the device tool sets it
    rows = report["steps"]
    assert report["gpu"] is None
    assert [r["step"].split(":")[0].split(" (")[0] for r in rows] == [
        "kill and resume", "speed", "speed", "two processes", "notebook 05"]  # the value order, not the asked one
    assert rows[0]["step"] == "kill and resume (fp32)" and rows[0]["verdict"] == "pass"
    assert rows[0]["resumed_from"] == "checkpoint-8"
    for row in rows[1:3]:  # a row per shape: MFU of each variant (none on a CPU) and the two ratios
        assert row["status"] == "ok" and row["verdict"] in ("pass", "fail")
        assert row["loop_over_floor"].endswith("x") and row["loop_over_trainer"].endswith("x")
        assert row["mfu"] == "loop - / floor - / Trainer -" and row["loop_samples_per_s"] > 0
    shapes = {rows[1]["step"].split(" x")[0], rows[2]["step"].split(" x")[0]}
    assert shapes == {"speed: 128 tokens", "speed: 512 tokens"}
    assert rows[3]["why"] == "no GPU" and rows[4]["status"] == "skipped" and rows[4]["verdict"] == "-"
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| kill and resume (fp32) | pass | ok |" in table and "No GPU here" in table


def test_gpu_check_fails_on_correctness_not_on_a_missed_speed_target():
    from bench import gpu_check

    rows = [{"step": "speed: 128 tokens x 32 rows (bf16)", "status": "ok", "verdict": "fail"},
            {"step": "make bench-serve: classifier", "status": "ok", "verdict": "fail"},
            {"step": "kill and resume (fp16)", "status": "ok", "verdict": "pass"}]
    assert gpu_check.correctness_failures(rows) == []
    rows += [{"step": "speed (loop, floor, Trainer)", "status": "failed", "verdict": "fail"},
             {"step": "notebook 01 (auto)", "status": "ok", "verdict": "fail"}]
    assert gpu_check.correctness_failures(rows) == ["speed (loop, floor, Trainer)", "notebook 01 (auto)"]


def test_gpu_check_plans_each_precision_once():
    from bench import gpu_check

    h100 = {"bf16_native": True, "auto_precision": "bf16"}
    t4 = {"bf16_native": False, "auto_precision": "fp16"}
    assert gpu_check.precisions_for("01", h100) == ["auto", "fp16"]  # bf16 is what auto runs
    assert gpu_check.precisions_for("04", t4) == ["auto", "bf16"]  # fp16 is auto's; bf16 must be refused
    assert gpu_check.precisions_for("05", h100) == ["auto"]  # T5: never fp16
    assert gpu_check.precisions_for("01", None) == ["auto"]


def test_a_second_run_on_the_same_model_is_prepared_again(tiny_model, tiny_data):
    """Accelerate marks a prepared model and would not wrap it (autocast, device) a second time: a rerun
    of the training cell, or AUTO_BATCH_BACKOFF's retry, would train without mixed precision."""
    hp.train(tiny_model, tiny_data["train"], max_steps=1, **{**FAST, "precision": "bf16"})
    assert "_is_accelerate_prepared" not in tiny_model.__dict__
    wrapped = []
    real = training._fresh_accelerator

    def spy(**kwargs):
        acc = real(**kwargs)
        prepare = acc.prepare

        def checking_prepare(*objects):
            out = prepare(*objects)
            wrapped.append("forward" in tiny_model.__dict__)  # the autocast wrapper went on again
            return out

        acc.prepare = checking_prepare
        return acc

    training._fresh_accelerator = spy
    try:
        hp.train(tiny_model, tiny_data["train"], max_steps=1, **{**FAST, "precision": "bf16"})
    finally:
        training._fresh_accelerator = real
    assert wrapped == [True]


def test_each_run_in_one_process_chooses_its_device_again(monkeypatch):
    from accelerate.state import PartialState

    resets = []
    real = PartialState._reset_state
    monkeypatch.setattr(PartialState, "_reset_state", staticmethod(lambda: (resets.append(1), real())[1]))
    training._fresh_accelerator(cpu=True)
    assert resets  # else the first run's device sticks: device="cpu" after a GPU run trained on the GPU


def test_a_gpu_index_is_refused_with_the_way_to_pick_one():
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        training._train_device("cuda:1")
