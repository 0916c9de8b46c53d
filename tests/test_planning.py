"""hp.plan: the estimate, the measurement on the real loop (nothing of the run changes), the verdict and its
advice, the record beside the run, the run's time left in the progress bar, and `workbook plan`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers as hp
from helpers import _batching as batching
from helpers import planning, training

LABELS = ["negative", "neutral", "positive"]
FAST = dict(train_batch_size=16, eval_batch_size=64, lr=1e-2, precision="fp32", progress=False, seed=3)


def _fresh(folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_plan_changes_nothing_of_the_run(tiny_encoder_dir, tiny_data):
    """Weights, gradients, mode and random state are put back: the run after a plan is bit-identical."""
    alone = hp.train(_fresh(tiny_encoder_dir), tiny_data["train"], tiny_data["validation"], num_epochs=1, **FAST)
    model = _fresh(tiny_encoder_dir)
    before, mode = _state(model), model.training
    torch.manual_seed(11)
    expected_draw = torch.rand(3)
    torch.manual_seed(11)
    plan = hp.plan(model, tiny_data["train"], tiny_data["validation"], num_epochs=1, **FAST)
    assert torch.equal(torch.rand(3), expected_draw)  # the random generators are where they were
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training == mode and all(p.grad is None for p in model.parameters())
    after = hp.train(model, tiny_data["train"], tiny_data["validation"], num_epochs=1, plan=plan, **FAST)
    assert after.train_loss == alone.train_loss and after.evals[-1]["loss"] == alone.evals[-1]["loss"]


def test_the_plan_predicts_the_run_and_is_recorded_beside_it(tiny_model, tiny_data, tmp_path):
    plan = hp.plan(tiny_model, tiny_data["train"], tiny_data["validation"], num_epochs=2, output_dir=tmp_path, **FAST)
    assert plan.fits and plan.in_time and plan.problem is None
    assert plan.config["total_steps"] == 32 and plan.evaluations == 2  # 256 rows / 16, two epochs; one eval each
    assert plan.peak_mem_mb > 0 and plan.step_s > 0 and plan.eval_pass_s > 0
    assert plan.wall_s == pytest.approx(plan.train_s + 2 * plan.eval_pass_s, abs=0.02)
    text = str(plan)
    assert "peak memory" in text and "whole run" in text and text.splitlines()[-1].startswith("verdict: fits")
    assert json.loads((tmp_path / "plan.json").read_text())["verdict"] == plan.verdict
    history = hp.train(tiny_model, tiny_data["train"], tiny_data["validation"], num_epochs=2, plan=plan, **FAST)
    record = history.summary()["plan"]
    assert record["same_run_as_planned"] and record["peak_mem_mb"] == plan.peak_mem_mb
    assert record["run_vs_plan"]["wall_s"] == pytest.approx(history.wall_s / plan.wall_s, abs=1e-3)
    json.dumps(history.summary())  # metrics.json can hold it
    other = hp.train(tiny_model, tiny_data["train"], num_epochs=1, plan=plan, **FAST)
    assert not other.plan["same_run_as_planned"] and "run_vs_plan" not in other.plan  # another run: not judged


def test_the_run_layout_is_the_loops_own(tiny_data):
    rows = batching.as_rows(tiny_data["train"])
    shape = {"hidden": 32, "heads": 2, "layers": 2, "decoder_layers": 0, "vocab": 0, "enc_dec": False,
             "lora": False, "checkpointing": False}
    cfg = hp.TrainConfig(train_batch_size=16, grad_accum_steps=3, num_epochs=2, seed=3)
    layout = planning._run_layout(rows, cfg, shape, pad_multiple=None, measure_steps=4)
    sampler = batching.LengthGroupedBatchSampler(rows.lengths, 16, seed=3)
    assert layout.steps_per_epoch == 6 and layout.total_steps == 12 and len(layout.step_costs) == 12
    assert layout.measured[0] == sampler.batches()[:3]  # the loop's first step, holding the longest row
    assert layout.longest[1] == int(rows.lengths.max()) and layout.measured[0] == layout.measured[2]
    assert len(layout.measured) == 4 and len(layout.measured_costs) == 4  # two warm-up steps, two timed


@pytest.mark.parametrize("options, expected", [
    (dict(num_epochs=2), [16, 32]),
    (dict(num_epochs=2, eval_every_steps=5), [5, 10, 15, 16, 20, 25, 30, 32]),
    (dict(max_steps=10), [10]),
    (dict(num_epochs=1, eval_every_steps=4, eval_each_epoch=False), [4, 8, 12, 16]),
])
def test_evaluation_steps_are_where_the_loop_evaluates(tiny_model, tiny_data, options, expected):
    cfg = hp.TrainConfig(**{**FAST, **options})
    history = hp.train(tiny_model, tiny_data["train"], tiny_data["validation"], cfg)
    assert [e["step"] for e in history.evals] == expected
    assert training._evaluation_steps(history.global_step, 16, cfg) == expected


def test_the_estimate_counts_what_the_run_holds(tiny_model, tiny_data):
    shape = planning._model_shape(tiny_model)
    assert (shape["hidden"], shape["layers"], shape["heads"]) == (32, 2, 2)
    trainable = sum(p.numel() for p in tiny_model.parameters()) * 4 / 2**20
    layout = planning._run_layout(batching.as_rows(tiny_data["train"]), hp.TrainConfig(**FAST), shape,
                                  pad_multiple=None, measure_steps=4)
    sizes = planning._estimate(tiny_model, layout, shape, device=torch.device("cpu"), precision="fp32",
                               lm_head=False, best_copy=True)
    assert sizes["gradients"] == pytest.approx(trainable, abs=0.1) and sizes["optimizer"] == pytest.approx(
        2 * trainable, abs=0.1)
    assert sizes["peak"] == pytest.approx(sum(v for k, v in sizes.items() if k not in ("peak", "weights")), abs=0.5)
    full = planning._activation_mb((16, 64, 0), shape, half=False, lm_head=False)
    assert planning._activation_mb((16, 64, 0), {**shape, "lora": True}, half=False, lm_head=False) < full
    assert planning._activation_mb((16, 64, 0), {**shape, "checkpointing": True}, half=False, lm_head=False) < full
    assert planning._activation_mb((16, 64, 0), shape, half=True, lm_head=False) == pytest.approx(full / 2)
    assert planning._activation_mb((16, 64, 0), {**shape, "vocab": 1000}, half=False, lm_head=True) > full


def test_fit_line_stays_sensible_under_noise():
    assert planning._fit_line([100, 200], [1.0, 2.0]) == pytest.approx((0.0, 0.01), abs=1e-9)
    fixed, per = planning._fit_line([100, 200, 150], [1.5, 2.5, 2.0])
    assert fixed == pytest.approx(0.5) and per == pytest.approx(0.01)
    assert planning._fit_line([100, 200], [2.0, 1.0]) == (1.5, 0.0)  # noise tilted it: a constant
    assert planning._fit_line([100, 100], [1.0, 3.0]) == (0.0, 0.02)  # one cost: proportional


# --------------------------------------------------------------------------- refusing, and advice that works

@pytest.fixture(scope="module")
def long_rows():
    """Rows long enough that a batch's activations are hundreds of MB: a memory limit between batch sizes."""
    import datasets

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=(192, 256)).tolist()
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": rng.integers(0, 3, 192).tolist()})


@pytest.fixture
def wide_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=128,
                                                    max_position_embeddings=256, num_labels=3))


@pytest.mark.skipif(training._resident_memory_mb("VmHWM") is None, reason="needs /proc (Linux) for the CPU peak")
def test_a_run_over_the_memory_limit_is_refused_and_the_advice_fits(wide_model, long_rows):
    big = dict(num_epochs=1, precision="fp32", progress=False, seed=0, eval_batch_size=64)
    small = hp.plan(wide_model, long_rows, train_batch_size=8, **big)
    large = hp.plan(wide_model, long_rows, train_batch_size=64, **big)
    assert large.peak_mem_mb > small.peak_mem_mb + 150  # the activations of 64 x 256 tokens show
    limit = small.peak_mem_mb + (large.peak_mem_mb - small.peak_mem_mb) / 3
    params = {"TRAIN_BATCH_SIZE": 64, "GRAD_ACCUM_STEPS": 1, "MAX_LENGTH": 256, "PRECISION": "fp32"}
    refused = hp.plan(wide_model, long_rows, train_batch_size=64, memory_limit_mb=limit, params=params, **big)
    assert not refused.fits and "does NOT fit" in refused.verdict
    with pytest.raises(planning._PlanError, match="TRAIN_BATCH_SIZE=") as err:
        refused.check()
    batch, accum = map(int, re.search(r"TRAIN_BATCH_SIZE=(\d+) with GRAD_ACCUM_STEPS=(\d+)", str(err.value)).groups())
    assert batch * accum == 64 and batch < 64
    followed = hp.plan(wide_model, long_rows, train_batch_size=batch, grad_accum_steps=accum,
                       memory_limit_mb=limit, params=params, **big)
    assert followed.fits and followed.check() is followed
    assert followed.peak_mem_mb <= limit


def test_a_run_over_the_time_limit_is_refused_with_what_to_change(tiny_model, tiny_data):
    params = {"NUM_EPOCHS": 3, "MAX_TRAIN_SAMPLES": None, "MAX_LENGTH": 64, "TRAIN_BATCH_SIZE": 16}
    plan = hp.plan(tiny_model, tiny_data["train"], tiny_data["validation"], num_epochs=3, params=params,
                   time_limit_min=1e-4, **FAST)
    assert plan.fits and not plan.in_time and "over the time limit" in plan.verdict
    with pytest.raises(planning._PlanError, match="over the time limit"):
        plan.check()
    estimate_only = hp.plan(tiny_model, tiny_data["train"], num_epochs=3, time_limit_min=1e-4, measure_steps=0,
                            **FAST)
    assert estimate_only.in_time and estimate_only.wall_s is None and estimate_only.peak_mem_mb is None


def test_the_time_advice_names_changes_that_end_in_time():
    names = planning._advice_names({"NUM_EPOCHS": 3, "MAX_TRAIN_SAMPLES": None, "MAX_LENGTH": 128,
                                    "EVAL_EVERY_STEPS": 10})
    cfg = hp.TrainConfig(num_epochs=3, eval_every_steps=10)
    advice = planning._time_advice(wall=300, train_s=240, eval_total=60, limit_s=150, cfg=cfg, rows=3000, names=names,
                                   length_share=(64, 0.02, 0.8), eval_pass_s=5, epoch_evals=3)
    assert advice == ["NUM_EPOCHS=1: about 1 min 40 s", "MAX_TRAIN_SAMPLES=843: about 2 min 07 s"]  # fewer evals
    # (4 min 15 s) or MAX_LENGTH=64 (4 min 12 s) would still take too long: not offered
    nothing = planning._time_advice(wall=300, train_s=240, eval_total=60, limit_s=10, cfg=cfg, rows=3000,
                                    names=names, length_share=None)
    assert nothing[0].startswith("no single change ends it within 8.5 s")


def test_running_out_of_memory_in_the_measurement_is_the_answer(tiny_model, tiny_data, monkeypatch):
    before = _state(tiny_model)

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny_model, "forward", no_memory)
    plan = hp.plan(tiny_model, tiny_data["train"], **FAST)
    assert not plan.fits and plan.problem.startswith("CUDA out of memory") and plan.peak_mem_mb is None
    assert plan.advice and "ran out of memory" in plan.verdict
    monkeypatch.undo()
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())


def test_limits_are_checked():
    with pytest.raises(ValueError, match="memory_limit_mb"):
        planning._check_limit("memory_limit_mb", -5)
    with pytest.raises(ValueError, match="time_limit_min"):
        planning._check_limit("time_limit_min", True)


# --------------------------------------------------------------------------- the loop: peak and time left

@pytest.mark.skipif(training._resident_memory_mb("VmHWM") is None, reason="needs /proc (Linux)")
def test_the_cpu_peak_is_the_runs_own():
    block = np.ones(300 * 2**20 // 8)  # 300 MB, then freed: an earlier peak
    del block
    training._trim_host_memory()
    training._reset_peak_memory(torch.device("cpu"))
    now = training._resident_memory_mb("VmRSS")
    if training._peak_memory_mb(torch.device("cpu")) > now + 100:
        pytest.skip("this kernel cannot reset the resident high-water mark (/proc/self/clear_refs)")
    assert training._peak_memory_mb(torch.device("cpu")) < now + 50


def test_the_bar_shows_the_time_left_with_evaluations(tiny_model, tiny_data):
    cfg = hp.TrainConfig(**{**FAST, "num_epochs": 2})
    loop = training._Loop(tiny_model, tiny_data["train"], tiny_data["validation"], cfg, compute_metrics=None,
                          pad_token_id=None, collate_fn=None)
    loop.resume()
    assert loop.run_left_s() is None  # no step timed yet
    loop.eval_pass_hint = 100.0  # a plan's figure: two evaluations still due
    for batch in loop.epoch_batches():
        if loop.train_step(batch) and loop.history.global_step == 4:
            break
    left = loop.run_left_s()
    assert 200 < left < 200 + 28 * 5  # 28 steps left of a tiny model, plus two passes of 100 s
    loop.bar.close()
    import io

    from tqdm import tqdm

    bar = training._run_bar(lambda: 125.0, total=10, file=io.StringIO(), tqdm_class=tqdm)
    bar.update(3)
    assert "3/10 [00:00, 02:05 left with evaluations" in str(bar)
    bar.close()


# --------------------------------------------------------------------------- workbook plan

def test_workbook_plan_runs_the_notebook_up_to_its_plan_cell(tmp_path, monkeypatch):
    """The CLI cuts the notebook after the cell tagged "plan", runs it with the job's parameters, prints the plan."""
    from workbook import cli

    calls = {}

    def fake_execute(source, executed, parameters, **kwargs):
        nb = json.loads(Path(source).read_text())
        calls["tags"] = [c["metadata"].get("tags", []) for c in nb["cells"]]
        calls["parameters"] = parameters
        record = {**_plan_record(), "fits": False, "verdict": "does NOT fit: peak about 900 MB, over the 500 MB limit"}
        (Path(parameters["OUTPUT_DIR"]) / "plan.json").parent.mkdir(parents=True, exist_ok=True)
        (Path(parameters["OUTPUT_DIR"]) / "plan.json").write_text(json.dumps(record))

    notebook = _notebook_with_plan_cell(tmp_path / "09_demo.ipynb")
    monkeypatch.setattr("papermill.execute_notebook", fake_execute)
    code = cli.main(["plan", str(notebook), "--train-batch-size", "64", "--plan-memory-limit", "500",
                     "--runs-dir", str(tmp_path / "runs")])
    assert code == 1  # does not fit
    assert calls["tags"][-1] == ["plan"] and len(calls["tags"]) == 3  # nothing after the plan cell
    assert calls["parameters"]["TRAIN_BATCH_SIZE"] == 64 and calls["parameters"]["PLAN_MEMORY_LIMIT"] == 500
    assert calls["parameters"]["OVERWRITE"] is True and calls["parameters"]["TRACKING"] is False


def _notebook_with_plan_cell(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("TRAIN_BATCH_SIZE = 16  # rows\nPLAN_MEMORY_LIMIT = None  # MB\n"
                                       "OVERWRITE = False  # x\nTRACKING = True  # x\nOUTPUT_DIR = None  # x")
    params.metadata["tags"] = ["parameters"]
    plan_cell = nbformat.v4.new_code_cell("plan = 1")
    plan_cell.metadata["tags"] = ["plan"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), plan_cell, nbformat.v4.new_code_cell("train = 1")]
    nbformat.write(nb, path)
    return path


def _plan_record() -> dict:
    return {"device": "cpu", "precision": "fp32", "config": {"train_rows": 10, "eval_rows": 0, "train_batch_size": 64,
            "grad_accum_steps": 1, "total_steps": 1, "steps_per_epoch": 1, "longest_batch": [10, 8, 0], "lora": False,
            "gradient_checkpointing": False},
            "estimate_mb": {"weights": 1, "in_memory_now": 1, "gradients": 1, "optimizer": 2, "activations": 1,
                            "best_model_copy": 0, "peak": 5},
            "peak_mem_mb": 900.0, "limit_mb": 500.0, "limit_source": "PLAN_MEMORY_LIMIT", "step_s": 0.1,
            "longest_step_s": 0.1, "eval_pass_s": None, "evaluations": 0, "train_s": 0.1, "wall_s": 0.1,
            "time_limit_s": None, "fits": True, "in_time": True, "verdict": "fits", "advice": ["TRAIN_BATCH_SIZE=8"],
            "plan_s": 1.0, "problem": None}


# --------------------------------------------------------------------------- the notebooks' cells

def test_the_script_puts_the_plan_and_range_test_cells_before_training(tmp_path):
    """tests/scripts/add_plan_cells.py on copies of the notebooks (already applied: it leaves them as they are)."""
    import ast
    import importlib.util
    import shutil

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("add_plan_cells", root / "tests" / "scripts" / "add_plan_cells.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for original in sorted((root / "notebooks").glob("0[1-5]_*.ipynb")):
        path = shutil.copy(original, tmp_path / original.name)
        script.convert(Path(path))
        assert not script.convert(Path(path))  # once only
        text = Path(path).read_text(encoding="utf-8")
        nb = json.loads(text)
        assert text == json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        cells = nb["cells"]
        assert len({c["id"] for c in cells}) == len(cells)
        sources = ["".join(c["source"]) for c in cells]
        for cell, source in zip(cells, sources):
            if cell["cell_type"] == "code":
                ast.parse(source)
                assert cell["outputs"] == [] and cell["execution_count"] is None
        plan = [i for i, c in enumerate(cells) if "plan" in c["metadata"].get("tags", [])]
        train = [i for i, s in enumerate(sources) if "hp.train(" in s and cells[i]["cell_type"] == "code"]
        assert len(plan) == 1 and len(train) == 1 and plan[0] < train[0]
        assert "plan.check()" in sources[plan[0]] and "plan=plan" in sources[train[0]]
        ranged = [i for i, s in enumerate(sources) if "hp.find_lr(" in s]
        assert len(ranged) == (0 if original.name.startswith("04") else 1)
        assert all(plan[0] < i < train[0] for i in ranged)
        parameters = next(s for c, s in zip(cells, sources) if "parameters" in c["metadata"].get("tags", []))
        assert "PLAN_MEMORY_LIMIT = None  #" in parameters and "PLAN_TIME_LIMIT = None  #" in parameters
        assert ("FIND_LR = None  #" in parameters) == (not original.name.startswith("04"))


def test_batch_shapes_the_plan_did_not_run_are_counted_in_memory_and_time():
    """On a CPU each new batch shape leaves its kernels in the heap and its first step is slower: the plan
    measures both on the shapes it ran and adds them for the run's other shapes (real data: dozens)."""
    per_shape, seen = planning._per_new_shape([100.0, 116.0, 124.0], [{(32, 40, 0)}, {(32, 40, 0), (32, 50, 0)}],
                                              set())
    assert per_shape == pytest.approx(12.0) and seen == {(32, 40, 0), (32, 50, 0)}  # 24 MB over two new shapes
    layout = planning._RunLayout(total_steps=10, steps_per_epoch=10, step_costs=np.full(10, 100.0),
                                 longest=(32, 50, 0), measured=[], measured_costs=[])
    sizes = {"weights": 80.0, "gradients": 80.0, "optimizer": 160.0, "best_model_copy": 0.0, "peak": 900.0,
             "activations": 100.0}
    found = planning._Measurement(peak_mb=800.0, base_mb=400.0, step_costs=[50.0, 100.0], step_s=[0.5, 1.0])
    plain = planning._predict(found, layout, [], sizes, "bf16")
    found.shape_cache_mb, found.new_shape_s, found.new_shapes = 40.0, 0.25, 4
    counted = planning._predict(found, layout, [], sizes, "bf16")
    assert counted["peak"] == pytest.approx(plain["peak"] + 40.0)
    assert counted["train_s"] == pytest.approx(plain["train_s"] + 4 * 0.25)
