"""Before you train: will it fit, how long will it take, which learning rate.

`plan(...)` answers the first two for the run as configured, on the device it will use:
1. an estimate from sizes: weights, gradients, AdamW state and the activations of the run's longest
   batch at its real token count (LoRA and gradient checkpointing counted);
2. a measurement: a few real optimizer steps of the loop itself (`training._Loop`) on the longest
   batches, then on typical ones, and a few evaluation batches; the model's weights, gradients, mode
   and random generators are put back afterwards, so nothing of the run changes. It gives the peak
   memory (GPU: `max_memory_allocated`; CPU: the process's resident high-water mark, reset for the
   measurement) and the time per step, hence the whole run's time, evaluations included;
3. a verdict, and what to change when the run will not fit or will take too long.

`find_lr(...)` is the learning-rate range test (Smith 2017, "Cyclical learning rates"; fastai's
`lr_find`): a short run on the same kind of copy with the rate rising exponentially, and a suggested
rate with the reason. See docs/planning.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _ranks, training
from . import device as dev
from ._batching import LengthGroupedBatchSampler, as_rows, sorted_batches
from .training import TrainConfig

__all__ = ["LRRangeTest", "Plan", "find_lr", "plan"]

_MEASURE_STEPS = 5  # optimizer steps run: two to warm up (the first, a typical one), then the first and two typical
_WARMUP_STEPS = 2  # the first steps of a process are slower (fresh memory pages, kernels chosen): not timed
_FIT_SHARE = 0.85  # advice aims at this share of the memory or time limit: room for the allocator's slack


class _PlanError(RuntimeError):
    """The plan says the run will not fit in memory, or not in the time allowed; the message says what to change."""


# --------------------------------------------------------------------------- the model and the run's batches

def _model_shape(model) -> dict[str, Any]:
    """The sizes the estimates need, read from `model.config` (BERT, DistilBERT, T5, GPT-NeoX names)."""
    config = getattr(model, "config", None)

    def first(*names: str, default: int) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return default

    hidden = first("hidden_size", "d_model", "n_embd", "dim", default=768)
    layers = first("num_hidden_layers", "num_layers", "n_layer", "n_layers", default=12)
    enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    return {"hidden": hidden, "layers": layers, "heads": first("num_attention_heads", "num_heads", "n_head",
                                                               "n_heads", default=12),
            "decoder_layers": first("num_decoder_layers", default=layers) if enc_dec else 0,
            "vocab": first("vocab_size", default=0), "enc_dec": enc_dec,
            "lora": hasattr(model, "peft_config"), "checkpointing": _checkpointing(model)}


def _checkpointing(model) -> bool:
    """Is gradient (activation) checkpointing on? transformers 5 renamed the flag; the old name warns."""
    import warnings

    flag = getattr(model, "is_activation_checkpointing", None)
    if flag is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


def _batch_cost(rows: int, length: int, target: int, hidden: int) -> float:
    """The work of one micro-batch in token-equivalents: tokens x (1 + attention's share), attention's
    share per token being length / (6 x hidden) (its 4·L·d FLOPs beside the 24·d² of the projections).
    `target`: the decoder's length in an encoder-decoder (it also attends to the encoder's output)."""
    cost = rows * length * (1 + length / (6 * hidden))
    if target:
        cost += rows * target * (1 + (target + length) / (6 * hidden))
    return cost


@dataclass
class _RunLayout:
    """The run's optimizer steps as the loop will take them: each step's cost, the ones to measure."""

    total_steps: int
    steps_per_epoch: int
    step_costs: np.ndarray  # one per optimizer step, in token-equivalents
    longest: tuple[int, int, int]  # (rows, padded length, target length) of the longest micro-batch
    measured: list[list[list[int]]]  # the steps to measure (each a list of micro-batches of row indices)
    measured_costs: list[float]
    shapes: set = field(default_factory=set)  # every (rows, length, target) micro-batch shape of the run
    measured_shapes: list[set] = field(default_factory=list)  # those of each measured step


def _target_lengths(rows, enc_dec: bool) -> np.ndarray | None:
    ragged = getattr(rows, "ragged", {})
    return ragged["labels"].lengths() if enc_dec and "labels" in ragged else None


def _padded(length: int, multiple: int | None) -> int:
    return int(math.ceil(length / multiple) * multiple) if multiple else int(length)


def _run_layout(rows, cfg: TrainConfig, shape: dict, *, pad_multiple: int | None, measure_steps: int) -> _RunLayout:
    """Every optimizer step of the run, from the loop's own sampler (seeded: the batches are known in
    advance), reduced to its cost; kept whole only for the steps to measure: the run's first (it holds
    the longest row, as the loop runs it) and steps at evenly spread cost quantiles of the first epoch.
    Several processes: each runs its share of every batch (`ProcessShare`): the plan is one process's, the
    first share (the largest when the batch does not split evenly)."""
    processes = dev._num_processes()
    sampler = LengthGroupedBatchSampler(rows.lengths, cfg.train_batch_size, seed=cfg.seed,
                                        group_by_length=cfg.group_by_length)
    accum = cfg.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(len(sampler) / accum))
    total = cfg.max_steps if cfg.max_steps is not None else math.ceil(steps_per_epoch * cfg.num_epochs)
    targets = _target_lengths(rows, shape["enc_dec"])
    costs, first_epoch, longest, epoch, shapes, first_shapes = [], [], (0, 0, 0), 0, set(), []
    while len(costs) < total:
        sampler.set_epoch(epoch)
        batches = [ids[: math.ceil(len(ids) / processes)] for ids in sampler.batches()]
        for start in range(0, len(batches), accum):
            step, cost, step_shapes = batches[start: start + accum], 0.0, set()
            for ids in step:
                length = _padded(int(rows.lengths[ids].max()), pad_multiple)
                target = _padded(int(targets[ids].max()), pad_multiple) if targets is not None else 0
                cost += _batch_cost(len(ids), length, target, shape["hidden"])
                longest = max(longest, (len(ids), length, target), key=lambda b: b[0] * (b[1] + b[2]))
                step_shapes.add((len(ids), length, target))
            costs.append(cost)
            shapes |= step_shapes
            if epoch == 0:
                first_epoch.append(step)
                first_shapes.append(step_shapes)
            if len(costs) == total:
                break
        epoch += 1
    step_costs = np.asarray(costs)
    picks = _measured_steps(step_costs[: len(first_epoch)], measure_steps)
    return _RunLayout(total, steps_per_epoch, step_costs, longest, [first_epoch[i] for i in picks],
                      [float(step_costs[i]) for i in picks], shapes, [first_shapes[i] for i in picks])


def _measured_steps(costs: np.ndarray, count: int) -> list[int]:
    """The warm-up (the run's first step, then a median one), then step 0 again (timed, with the optimizer
    state in place: the memory peak) and steps at cost quantiles from 0.2 to 0.8 (the typical steps that
    set the run's time)."""
    order = np.argsort(costs, kind="stable")

    def at(q: float) -> int:
        return int(order[min(len(order) - 1, int(q * len(order)))])

    typical = max(1, count - _WARMUP_STEPS - 1)
    quantiles = [0.5] if typical == 1 else np.linspace(0.2, 0.8, typical)
    return [0, at(0.5), 0, *[at(q) for q in quantiles]]


# --------------------------------------------------------------------------- the estimate from sizes

def _tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _activation_mb(longest: tuple[int, int, int], shape: dict, *, half: bool, lm_head: bool) -> float:
    """Activations kept for the backward pass of the longest micro-batch. Per layer, Korthikanti et al.
    (2022): s·b·h·(34 + 5·a·s/h) bytes in 16-bit, i.e. (17 + 2.5·a·s/h) elements. A frozen base (LoRA)
    keeps about 0.7 of them; gradient checkpointing only each layer's input plus one layer's worth. A
    language-model head adds the logits, their log-softmax and its gradient in fp32."""
    rows, length, target = longest
    hidden, heads, elem = shape["hidden"], shape["heads"], 2 if half else 4

    def layer(s: int, also_attends: int = 0) -> float:
        return rows * s * hidden * (17 + 2.5 * heads * (s + also_attends) / hidden) * elem

    if shape["checkpointing"]:
        kept = shape["layers"] * rows * length * hidden * elem + layer(length)
        kept += shape["decoder_layers"] * rows * target * hidden * elem
    else:
        kept = shape["layers"] * layer(length) + shape["decoder_layers"] * 1.3 * layer(target, length)
    if shape["lora"]:
        kept *= 0.7
    head = rows * (target or length) * shape["vocab"] * 4 * 3 if lm_head else 0
    return (kept + head) / 2**20


def _estimate(model, layout: _RunLayout, shape: dict, *, device: torch.device, precision: str, lm_head: bool,
              best_copy: bool) -> dict[str, float]:
    """Peak memory from sizes (MB): what is in memory now (the process on a CPU; what torch holds on a GPU,
    plus the weights if they are not there yet), gradients and AdamW's two moments of every trainable
    weight, the longest batch's activations and, on a CPU, the loop's copy of the best model."""
    params = list(model.parameters())
    weights = _tensor_mb([*params, *model.buffers()])
    trainable = _tensor_mb([p for p in params if p.requires_grad])
    if device.type == "cpu":
        training._free_memory()
        training._trim_host_memory()  # freed heap is not in use: the loop gives it back too before it starts
        now = training._resident_memory_mb("VmRSS") or dev._peak_memory_mb(device)
    elif device.type == "cuda":
        on_device = dev._model_device(model).type == "cuda"
        now = torch.cuda.memory_allocated(device) / 2**20 + (0 if on_device else weights)
    else:
        now = weights
    parts = {"in_memory_now": now, "gradients": trainable, "optimizer": 2 * trainable,
             "activations": _activation_mb(layout.longest, shape, half=precision in ("bf16", "fp16"), lm_head=lm_head),
             "best_model_copy": weights if best_copy and device.type == "cpu" else 0.0}
    parts = {k: round(v, 1) for k, v in parts.items()}
    return {"weights": round(weights, 1), **parts, "peak": round(sum(parts.values()), 1)}


# --------------------------------------------------------------------------- measuring on the real loop

def _changeable(model):
    """What an optimizer step or a forward pass can change: trainable weights and buffers."""
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield "p:" + name, param
    for name, buffer in model.named_buffers():
        yield "b:" + name, buffer


@contextlib.contextmanager
def _weights_kept(model):
    """Run something on `model`, then put back everything it could change: trainable weights and buffers
    (kept on the CPU meanwhile; yields their MB), gradients, train/eval mode and the random generators.
    The run that follows then starts exactly as if nothing had happened (tests/test_planning.py checks)."""
    saved = {name: tensor.detach().to("cpu", copy=True) for name, tensor in _changeable(model)}
    rng, mode = training._rng_state(), model.training
    try:
        yield _tensor_mb(saved.values())
    finally:
        with torch.no_grad():
            for name, tensor in _changeable(model):
                tensor.copy_(saved[name])
        model.zero_grad(set_to_none=True)
        model.train(mode)
        training._set_rng_state(rng)


def _quiet_config(cfg: TrainConfig, **changes) -> TrainConfig:
    """The run's settings for a measurement: no checkpoints, evaluations, bars, back-off or early stop."""
    return cfg.replace(checkpoint_dir=None, resume=False, progress=False, eval_each_epoch=False,
                       eval_every_steps=None, load_best_at_end=False, early_stopping_patience=None,
                       auto_batch_backoff=False, stop_after_steps=None, log_every_steps=10**9, **changes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_now_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    if device.type == "mps":  # tensors on the Apple GPU (its memory is not in the process's resident size)
        return torch.mps.current_allocated_memory() / 2**20
    return training._resident_memory_mb("VmRSS") or 0.0


_MALLINFO2 = None


def _live_heap_mb() -> float | None:
    """C heap in use (glibc `mallinfo2`: in-use chunks plus mmapped ones), MB; None off glibc (2.33+).
    Unlike the resident size it does not count freed-but-kept blocks, so it shows what a step leaves."""
    global _MALLINFO2
    if _MALLINFO2 is None:
        import ctypes

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                        "fsmblks", "uordblks", "fordblks", "keepcost")]
        try:
            _MALLINFO2 = ctypes.CDLL("libc.so.6").mallinfo2
            _MALLINFO2.restype = Info
        except (OSError, AttributeError):
            _MALLINFO2 = False
    if not _MALLINFO2:
        return None
    info = _MALLINFO2()
    return (info.uordblks + info.hblkhd) / 2**20


def _per_new_shape(heap: list, steps_shapes: list[set], seen: set) -> tuple[float, set]:
    """(MB the live heap grew per batch shape not run before, the shapes now run): CPU kernels (oneDNN's
    bf16 matmuls) are compiled and cached once per input shape and kept for the process's life."""
    new = 0
    for shapes in steps_shapes:
        new += len(shapes - seen)
        seen = seen | shapes
    grown = heap[-1] - heap[0] if None not in heap else 0.0
    return (max(0.0, grown) / new if new else 0.0), seen


def _timed_steps(loop, steps: list[list[list[int]]]) -> list[float]:
    """Seconds of each optimizer step (collation included, as the loop's DataLoader does it)."""
    times = []
    for step in steps:
        _sync(loop.device)
        start = time.perf_counter()
        for ids in step:
            batch = dev._to_device(loop.collate_fn([loop.train_rows[i] for i in ids]), loop.device)
            loop.trim_heap(batch)
            loop.train_step(batch)
        if loop.loss_buffer:
            loop.loss_buffer[-1].item()  # wait for the device
        _sync(loop.device)
        times.append(time.perf_counter() - start)
        loop.loss_buffer.clear()
        loop.lr_buffer.clear()
        loop.pending_steps.clear()
    return times


def _timed_eval(loop, eval_rows, cfg: TrainConfig, shape: dict, pad_multiple) -> tuple[list, list, list, list]:
    """(costs of every evaluation batch, costs and seconds of the timed ones, every batch's shape): the
    longest batch twice (a warm-up, then timed) and the median one, run as `training.evaluate` runs them."""
    batches = sorted_batches(eval_rows.lengths, cfg.eval_batch_size)[: cfg.max_eval_batches]
    targets = _target_lengths(eval_rows, shape["enc_dec"])

    def dims(ids) -> tuple[int, int, int]:
        length = _padded(int(eval_rows.lengths[ids].max()), pad_multiple)
        target = _padded(int(targets[ids].max()), pad_multiple) if targets is not None else 0
        return len(ids), length, target

    def cost(ids) -> float:
        return _batch_cost(*dims(ids), shape["hidden"])

    model, picks, seconds = loop.unwrapped, [0, 0, len(batches) // 2], []
    model.eval()
    with torch.inference_mode(), dev._autocast(loop.device, loop.precision):
        for i in picks:
            _sync(loop.device)
            start = time.perf_counter()
            out = model(**dev._to_device(loop.collate_fn([eval_rows[j] for j in batches[i]]), loop.device))
            if getattr(out, "logits", None) is not None and out.logits.dim() == 2:
                out.logits.float().cpu()
            _sync(loop.device)
            seconds.append(time.perf_counter() - start)
    model.train()
    return ([cost(ids) for ids in batches], [cost(batches[i]) for i in picks[1:]], seconds[1:],
            [dims(ids) for ids in batches])


@dataclass
class _Measurement:
    """What the measured steps gave: memory (MB) as the run will have it, and timings with their costs."""

    peak_mb: float  # the run's peak as predicted from the measured one (the kept weights subtracted)
    base_mb: float  # in memory when the steps began (weights, data, the process)
    step_costs: list[float]
    step_s: list[float]
    eval_costs: list[float] = field(default_factory=list)  # every evaluation batch of one pass
    eval_timed_costs: list[float] = field(default_factory=list)
    eval_s: list[float] = field(default_factory=list)
    shape_cache_mb: float = 0.0  # CPU: what the run's batch shapes not measured will add (kernels cached per shape)
    new_shape_s: float = 0.0  # a step's extra seconds the first time its batch shape runs (kernels chosen, built)
    new_shapes: int = 0  # the run's batch shapes the measured steps did not run


def _measure(model, train_data, eval_data, cfg: TrainConfig, layout: _RunLayout, shape: dict, *,
             pad_token_id=None, collate_fn=None) -> _Measurement:
    """A few real optimizer steps of the loop on the chosen batches, then a few evaluation batches, with
    everything of the model put back afterwards. Peak memory is reset when the loop's clock starts, as
    in a real run; on a CPU the weights kept meanwhile are part of the resident memory, so they are
    subtracted (on a GPU they sit in host memory and do not count)."""
    with training._model_kept_as_given(model), _weights_kept(model) as kept_mb:
        loop = training._Loop(model, train_data, None, _quiet_config(cfg), compute_metrics=None,
                              pad_token_id=pad_token_id, collate_fn=collate_fn)
        loop.resume()  # starts the clock: peak memory reset, gradients cleared
        try:
            cpu = loop.device.type == "cpu"
            kept = kept_mb if cpu else 0.0
            base = _memory_now_mb(loop.device) - kept
            seconds, heap = [], []
            first_runs, ran = [], set()  # a typical step's first run (a new shape) minus its second (known)
            with loop.fast_paths:
                for i, step in enumerate(layout.measured):  # the live heap read after each step, outside its timing
                    if i > _WARMUP_STEPS:  # a typical step: run twice, the second time timed as the run's steps
                        first, again = _timed_steps(loop, [step, step])
                        seconds.append(again)
                        if layout.measured_shapes[i] - ran:
                            first_runs.append(max(0.0, first - again))
                    else:
                        seconds += _timed_steps(loop, [step])
                    ran |= layout.measured_shapes[i]
                    heap.append(_live_heap_mb() if cpu else None)
            found = _Measurement(training._peak_memory_mb(loop.device) - kept, base,
                                 layout.measured_costs[_WARMUP_STEPS:], seconds[_WARMUP_STEPS:])
            per_shape, seen = _per_new_shape(heap, layout.measured_shapes[1:], set(layout.measured_shapes[0]))
            found.new_shapes = len(layout.shapes - seen)
            found.shape_cache_mb = per_shape * found.new_shapes
            found.new_shape_s = float(np.median(first_runs)) if first_runs else 0.0
            eval_rows = as_rows(eval_data) if eval_data is not None else None
            if eval_rows is not None and len(eval_rows):
                pad = 8 if loop.device.type == "cuda" else None
                before = _live_heap_mb() if cpu else None
                found.eval_costs, found.eval_timed_costs, found.eval_s, shapes = _timed_eval(
                    loop, eval_rows, cfg, shape, pad)
                found.peak_mb = max(found.peak_mb, training._peak_memory_mb(loop.device) - kept)
                timed = {shapes[0], shapes[len(shapes) // 2]}  # the batches _timed_eval ran
                per_shape, _ = _per_new_shape([before, _live_heap_mb() if cpu else None], [timed], set())
                found.shape_cache_mb += per_shape * len(set(shapes) - timed)
        finally:
            loop.bar.close()
            loop.accelerator.free_memory()  # the accelerator holds the optimizer and its state
            del loop
            training._free_memory()
            training._trim_host_memory()
    return found


def _fit_line(costs: list[float], seconds: list[float]) -> tuple[float, float]:
    """seconds ~ fixed + per_cost x cost, by least squares, both kept >= 0 (noise on a busy machine can
    tilt two points either way): through the origin when the fixed part comes out negative."""
    x, y = np.asarray(costs, float), np.asarray(seconds, float)
    if len(x) >= 2 and np.ptp(x) > 0.05 * x.mean():
        slope, fixed = np.polyfit(x, y, 1)
        if slope >= 0 and fixed >= 0:
            return float(fixed), float(slope)
        if slope < 0:
            return float(y.mean()), 0.0
    return 0.0, float((x * y).sum() / max((x * x).sum(), 1e-12))


# --------------------------------------------------------------------------- limits, verdict and advice

def _memory_limit(device: torch.device, limit_mb: float | None) -> tuple[float, str]:
    """The memory the run may use (MB) and where the figure comes from: the stated limit, else what this
    process can reach: free GPU memory plus what torch already holds, or available RAM plus its own."""
    if limit_mb is not None:
        return float(limit_mb), "PLAN_MEMORY_LIMIT"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return (free + torch.cuda.memory_reserved(device)) / 2**20, "free GPU memory"
    import psutil

    return (psutil.virtual_memory().available + psutil.Process().memory_info().rss) / 2**20, "available RAM"


def _advice_names(params: dict | None) -> dict[str, str | None]:
    """The settings the advice names: the notebook's parameters when `params` (its PARAMS) is given, only
    those it has, else `hp.train`'s options."""
    if params is None:
        return {"batch": "train_batch_size", "accum": "grad_accum_steps", "length": "the tokenizer's max_length",
                "precision": "precision", "checkpointing": "model.gradient_checkpointing_enable()",
                "lora": "LoRA (hp.models.add_lora)", "rows": "fewer training rows", "epochs": "num_epochs",
                "eval_every": "eval_every_steps"}
    have = {name for name in params}
    pick = {"batch": "TRAIN_BATCH_SIZE", "accum": "GRAD_ACCUM_STEPS", "precision": "PRECISION",
            "checkpointing": "GRADIENT_CHECKPOINTING", "lora": "USE_LORA", "rows": "MAX_TRAIN_SAMPLES",
            "epochs": "NUM_EPOCHS", "eval_every": "EVAL_EVERY_STEPS"}
    names = {key: (name if name in have else None) for key, name in pick.items()}
    names["length"] = next((n for n in ("MAX_LENGTH", "MAX_SOURCE_LENGTH") if n in have), None)
    return names


def _layer_cost(length: float, shape: dict) -> float:
    return length * (17 + 2.5 * shape["heads"] * length / shape["hidden"])


def _shorter_lengths(lengths: np.ndarray, longest: int) -> list[tuple[int, float]]:
    """Candidate length limits below the longest batch's: the 99th, 95th and 90th percentiles of the
    rows' token counts (multiples of 8), each with the share of rows it would cut short."""
    out = []
    for q in (99, 95, 90):
        limit = int(math.ceil(np.percentile(lengths, q) / 8) * 8)
        if 8 <= limit < longest and all(limit != seen for seen, _ in out):
            out.append((limit, float((lengths > limit).mean())))
    return out


def _memory_advice(*, peak: float, persistent: float, activations: float, limit: float, cfg: TrainConfig,
                   shape: dict, longest: tuple[int, int, int], lengths: np.ndarray, names: dict,
                   precision: str, half_ok: bool, trainable_mb: float) -> list[str]:
    """What to change so the run fits (each change alone, with the peak it would have; the first is the
    one to try): batch and accumulation (the same effective batch), a shorter length (with the share of
    rows it cuts), gradient checkpointing, bf16/fp16 where the device has it, LoRA. The peaks scale the
    measured activations; they aim at FIT_SHARE of the limit, which leaves room for the allocator."""
    target, batch, accum, options = _FIT_SHARE * limit, cfg.train_batch_size, cfg.grad_accum_steps, []
    k = 2
    while batch % k == 0 and batch // k >= 1:
        smaller = persistent + activations / k
        if smaller <= target:
            options.append((f"{names['batch']}={batch // k} with {names['accum']}={accum * k} (the same effective "
                            f"batch of {batch * accum})", smaller))
            break
        k *= 2
    for cut, share in _shorter_lengths(lengths, longest[1]):
        shorter = persistent + activations * _layer_cost(cut, shape) / _layer_cost(longest[1], shape)
        if shorter <= target and names["length"]:
            options.append((f"{names['length']}={cut} (cuts {share:.1%} of the training rows short)", shorter))
            break
    if not shape["checkpointing"] and names["checkpointing"]:
        options.append((f"{names['checkpointing']}{'=True' if names['checkpointing'].isupper() else ''} "
                        "(about 30% slower)", persistent + activations * min(1.0, 2 / shape["layers"] + 0.05)))
    if precision == "fp32" and half_ok and names["precision"]:
        options.append((f"{names['precision']}='bf16'", persistent + activations * 0.6))
    if not shape["lora"] and names["lora"]:
        options.append((f"{names['lora']}{'=True' if names['lora'].isupper() else ''}",
                        persistent - 3 * trainable_mb + activations * 0.7))
    fitting = [f"{what}: peak about {mb:,.0f} MB" for what, mb in options if mb <= target]
    if fitting:
        return fitting
    return [f"no single change fits under {target:,.0f} MB (peak now {peak:,.0f} MB): combine a smaller "
            f"{names['batch']} with the changes above, or use a smaller model"]


def _time_advice(*, wall: float, train_s: float, eval_total: float, limit_s: float, cfg: TrainConfig,
                 rows: int, names: dict, length_share: tuple[int, float, float] | None,
                 eval_pass_s: float = 0.0, epoch_evals: int = 0) -> list[str]:
    """What to change so the run ends within the limit (each change alone, with the time it would take):
    fewer epochs, fewer rows, fewer evaluations, a shorter length (with the share of rows it cuts)."""
    target, options = _FIT_SHARE * limit_s, []
    if cfg.max_steps is None and cfg.num_epochs > 1 and names["epochs"]:
        epochs = int(target // (wall / cfg.num_epochs))
        if epochs >= 1:
            options.append((f"{names['epochs']}={epochs}", wall * epochs / cfg.num_epochs))
    if train_s > 0 and target > eval_total and names["rows"]:
        keep = int(rows * (target - eval_total) / train_s)
        if 0 < keep < rows:
            options.append((f"{names['rows']}={keep}", eval_total + train_s * keep / rows))
    if cfg.eval_every_steps and names["eval_every"]:
        options.append((f"{names['eval_every']}=None (evaluate once per epoch)", train_s + eval_pass_s * epoch_evals))
    if length_share is not None and names["length"]:
        cut, share, factor = length_share
        options.append((f"{names['length']}={cut} (cuts {share:.1%} of the rows short)", train_s * factor + eval_total))
    fitting = [f"{what}: about {_duration(seconds)}" for what, seconds in options if seconds <= target]
    return fitting or [f"no single change ends it within {_duration(target)}: combine fewer rows and epochs, or use "
                       "a GPU or a smaller model"]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


# --------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    """Will the run fit, how long will it take: the estimate from sizes, the measurement, the verdict.
    `print(plan)` shows the table; `plan.check()` refuses a run that will not fit (or not in time);
    `hp.train(..., plan=plan)` records it in metrics.json beside what the run really used."""

    device: str
    precision: str
    config: dict[str, Any]  # the run as configured: batch, accumulation, steps, rows, evaluations, longest batch
    estimate_mb: dict[str, float]  # from sizes
    peak_mem_mb: float | None  # measured, as the run will have it; None when not measured
    limit_mb: float
    limit_source: str
    step_s: float | None  # mean seconds per optimizer step over the whole run
    longest_step_s: float | None
    eval_pass_s: float | None
    evaluations: int
    train_s: float | None
    wall_s: float | None  # training + evaluations, as History.wall_s counts them (checkpoint writes aside)
    time_limit_s: float | None
    fits: bool
    in_time: bool
    verdict: str
    advice: list[str]
    plan_s: float
    problem: str | None = None  # the out-of-memory error the measurement met
    shape_cache_mb: float | None = None  # CPU, in peak_mem_mb: kernels cached per batch shape the plan did not run

    def check(self) -> Plan:
        """Raise `_PlanError` with the verdict and the advice when the run will not fit or not in time."""
        if not (self.fits and self.in_time):
            raise _PlanError(f"{self.verdict}. Change one of:\n" + "\n".join(f"  - {a}" for a in self.advice))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def __str__(self) -> str:
        return "\n".join(_table(self))

    __repr__ = __str__


def _table(p: Plan) -> list[str]:
    c, e = p.config, p.estimate_mb

    def row(label: str, sized: float | None = None, measured: str = "", note: str = "") -> str:
        return (f"  {label:<34}{f'{sized:,.0f} MB' if sized is not None else '':>11}   {measured:<12}{note}").rstrip()

    rows, target = c["longest_batch"][0], c["longest_batch"][2]
    tokens = f"{c['longest_batch'][1]}" + (f" + {target}" if target else "")
    lines = [f"Plan on {p.device} ({p.precision}): {c['train_rows']:,} rows, {c['total_steps']:,} optimizer steps of "
             f"{c['train_batch_size']} x {c['grad_accum_steps']} rows; {_count(p.evaluations, 'evaluation')} of "
             f"{c['eval_rows']:,} rows; longest batch {rows} rows x {tokens} tokens",
             f"  {'':<34}{'from sizes':>11}   {'measured':<12}",
             row("in memory before training", e["in_memory_now"], note=f"(weights {e['weights']:,.0f} MB)"),
             row("+ gradients", e["gradients"]), row("+ optimizer state (AdamW)", e["optimizer"]),
             row("+ activations (longest batch)", e["activations"])]
    if e["best_model_copy"]:
        lines.append(row("+ copy of the best model (CPU)", e["best_model_copy"]))
    if p.shape_cache_mb:
        lines.append(row("+ kernels cached per batch shape", None, f"{p.shape_cache_mb:,.0f} MB",
                         f"({c.get('batch_shapes', '?')} shapes in the run)"))
    measured = f"{p.peak_mem_mb:,.0f} MB" if p.peak_mem_mb is not None else "-"
    lines.append(row("= peak memory", e["peak"], measured, f"limit {p.limit_mb:,.0f} MB ({p.limit_source})"))
    if p.wall_s is not None:
        lines += [row("time per optimizer step", None, f"{p.step_s:.2f} s", f"longest {p.longest_step_s:.2f} s"),
                  row("one evaluation pass", None, _duration(p.eval_pass_s or 0)),
                  row("whole run", None, _duration(p.wall_s), f"training {_duration(p.train_s)} + "
                      f"{_count(p.evaluations, 'evaluation')} {_duration(p.wall_s - p.train_s)} "
                      f"(plan took {p.plan_s:.0f} s)")]
    lines.append(f"verdict: {p.verdict}")
    lines += [f"  - {a}" for a in p.advice]
    return lines


def plan(model, train_data, eval_data=None, config: TrainConfig | None = None, *, pad_token_id: int | None = None,
         collate_fn=None, memory_limit_mb: float | None = None, time_limit_min: float | None = None,
         params: dict | None = None, lengths=None, measure_steps: int = _MEASURE_STEPS,
         output_dir: str | Path | None = None, **options) -> Plan:
    """Will this run fit, and how long will it take? For the run as `hp.train` would make it (the same
    arguments: a `TrainConfig` and/or keywords), on the device it will use: an estimate from sizes, a
    measurement of a few real optimizer steps (nothing of the model changes), and a verdict with what to
    change. `memory_limit_mb` (else what the device has free) and `time_limit_min` (else none) are the
    limits; `params` (the notebook's PARAMS) makes the advice name its parameters; `lengths` the rows'
    untruncated token counts (else the tokenized ones); `output_dir` gets plan.json. Then
    `plan.check()` refuses a run that will not fit, and `hp.train(..., plan=plan)` records it.
    `measure_steps`: optimizer steps the measurement runs (two of them warm up); 0 for the estimate alone."""
    started = time.perf_counter()
    cfg = (config or TrainConfig()).replace(**options)
    _check_limit("memory_limit_mb", memory_limit_mb)
    _check_limit("time_limit_min", time_limit_min)
    device = training._train_device(cfg.device)
    precision = dev.resolve_precision(cfg.precision, device, allow_fp16=cfg.allow_fp16)
    rows = as_rows(train_data)
    training._require_rows(rows, "The training split")
    eval_rows = as_rows(eval_data) if eval_data is not None else None
    shape = _model_shape(model)
    layout = _run_layout(rows, cfg, shape, pad_multiple=8 if device.type == "cuda" else None,
                         measure_steps=measure_steps)
    eval_at = (training._evaluation_steps(layout.total_steps, layout.steps_per_epoch, cfg)
               if eval_rows is not None and len(eval_rows) else [])
    sizes = _estimate(model, layout, shape, device=device, precision=precision,
                      lm_head="labels" in getattr(rows, "ragged", {}), best_copy=cfg.load_best_at_end and bool(eval_at))
    found, problem = _measured(model, train_data, eval_data, cfg, layout, shape, measure_steps,
                               pad_token_id=pad_token_id, collate_fn=collate_fn)
    predicted = _predict(found, layout, eval_at, sizes, precision)
    limit, source = _memory_limit(device, memory_limit_mb)
    time_limit_s = time_limit_min * 60 if time_limit_min else None
    fits, in_time, verdict, advice = _judge(
        predicted, limit=limit, source=source, problem=problem, cfg=cfg, shape=shape, layout=layout,
        lengths=np.asarray(lengths if lengths is not None else rows.lengths), precision=precision, device=device,
        names=_advice_names(params), sizes=sizes, rows=len(rows), time_limit_s=time_limit_s)
    fits, in_time, verdict, advice = _one_verdict(fits, in_time, verdict, advice)
    run = {"train_rows": len(rows), "eval_rows": len(eval_rows) if eval_rows is not None else 0,
           "train_batch_size": cfg.train_batch_size, "grad_accum_steps": cfg.grad_accum_steps,
           "total_steps": layout.total_steps, "steps_per_epoch": layout.steps_per_epoch,
           "longest_batch": list(layout.longest), "batch_shapes": len(layout.shapes), "lora": shape["lora"],
           "gradient_checkpointing": shape["checkpointing"]}
    result = Plan(str(device), precision, run, sizes, _rounded(predicted["peak"]) if found else None, round(limit, 1),
                  source, _rounded(predicted["step_s"], 3), _rounded(predicted["longest_step_s"], 3),
                  _rounded(predicted["eval_pass_s"], 3), len(eval_at), _rounded(predicted["train_s"], 2),
                  _rounded(predicted["wall_s"], 2), time_limit_s, fits, in_time, verdict, advice,
                  round(time.perf_counter() - started, 1), problem, _rounded(predicted["shape_cache"]))
    if output_dir is not None:
        result.save(Path(output_dir) / "plan.json")
    return result


def _one_verdict(fits: bool, in_time: bool, verdict: str, advice: list[str]) -> tuple[bool, bool, str, list[str]]:
    """Several processes: one verdict for all, the first process's that will not fit (or not in time), else rank
    0's. Each GPU has its own free memory; if one process refused the run alone, the others would wait for it
    in their first all-reduce forever."""
    verdicts = _ranks.gather((fits, in_time, verdict, advice))
    failing = [(rank, v) for rank, v in enumerate(verdicts) if not (v[0] and v[1])]
    if not failing:
        return verdicts[0]
    rank, (fits, in_time, verdict, advice) = failing[0]
    return fits, in_time, (f"{verdict} (process {rank} of {len(verdicts)})" if len(verdicts) > 1 else verdict), advice


def _check_limit(name: str, value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"{name}={value!r}: give a positive number, or None for no limit.")


def _measured(model, train_data, eval_data, cfg: TrainConfig, layout: _RunLayout, shape: dict, measure_steps: int,
              **data_options) -> tuple[_Measurement | None, str | None]:
    """(the measurement, None), or (None, the error) when its first step ran out of memory: that is the
    answer to "will it fit"; or (None, None) when `measure_steps` leaves no step to time (the estimate alone)."""
    if measure_steps <= _WARMUP_STEPS:
        return None, None
    try:
        return _measure(model, train_data, eval_data, cfg, layout, shape, **data_options), None
    except Exception as err:  # noqa: BLE001 - only running out of memory is an answer here
        if not training._is_out_of_memory(err):
            raise
        problem = str(err).splitlines()[0][:160]
        model.zero_grad(set_to_none=True)
        training._release_failed_step(err)
        return None, problem


def _rounded(value, digits: int = 1):
    return None if value is None else round(float(value), digits)


def _predict(found: _Measurement | None, layout: _RunLayout, eval_at: list[int], sizes: dict,
             precision: str) -> dict[str, Any]:
    """The run's peak memory and times from the measurement (from sizes alone when there is none). On a
    CPU the loop keeps a copy of the best model from the first evaluation on: added to the peak when
    training goes on beside it, else compared with what is left at the end. What does not grow with
    the batch (the part the advice keeps): what was in memory, gradients, AdamW's state and, in bf16 or
    fp16, autocast's half-precision copies of the weights, kept for the backward pass."""
    casts = sizes["weights"] / 2 if precision in ("bf16", "fp16") else 0.0
    grads_and_state, copy = sizes["gradients"] + sizes["optimizer"] + casts, sizes["best_model_copy"]
    if found is None:
        return {"peak": sizes["peak"], "persistent": sizes["peak"] - sizes["activations"],
                "activations": sizes["activations"], "step_s": None, "longest_step_s": None,
                "eval_pass_s": None, "train_s": None, "wall_s": None, "shape_cache": None}
    during = copy if copy and eval_at and eval_at[0] < layout.total_steps else 0.0
    cache = found.shape_cache_mb  # CPU: kernels cached for each batch shape the measured steps did not run
    peak = max(found.peak_mb + during, found.base_mb + sizes["optimizer"] + copy) + cache
    persistent = found.base_mb + grads_and_state + during + cache
    activations = peak - persistent if peak > persistent else sizes["activations"]
    fixed, per_cost = _fit_line(found.step_costs, found.step_s)
    # Each batch shape the run meets first costs once more (measured: a typical step run twice, new then known):
    # on a CPU, real data's varied lengths give dozens of shapes (real PhraseBank: 61 in 484 steps).
    train_s = layout.total_steps * fixed + per_cost * float(layout.step_costs.sum())
    train_s += found.new_shape_s * found.new_shapes
    eval_pass = None
    if found.eval_s:
        eval_fixed, eval_per = _fit_line(found.eval_timed_costs, found.eval_s)
        eval_pass = len(found.eval_costs) * eval_fixed + eval_per * sum(found.eval_costs)
    return {"peak": peak, "persistent": persistent, "activations": activations,
            "step_s": train_s / layout.total_steps, "longest_step_s": fixed + per_cost * layout.step_costs[0],
            "eval_pass_s": eval_pass, "train_s": train_s, "wall_s": train_s + len(eval_at) * (eval_pass or 0.0),
            "shape_cache": cache}


def _judge(predicted: dict, *, limit: float, source: str, problem: str | None, cfg: TrainConfig, shape: dict,
           layout: _RunLayout, lengths: np.ndarray, precision: str, device: torch.device, names: dict,
           sizes: dict, rows: int, time_limit_s: float | None) -> tuple[bool, bool, str, list[str]]:
    """(fits, in time, the verdict in words, the advice)."""
    peak, advice = predicted["peak"], []
    fits = problem is None and peak <= limit
    if problem is not None:
        verdict = f"does NOT fit: the measured step ran out of memory ({problem})"
    elif not fits:
        verdict = f"does NOT fit: peak about {peak:,.0f} MB, over the {limit:,.0f} MB limit ({source})"
    else:
        verdict = (f"fits: peak about {peak:,.0f} MB, {peak / limit:.0%} of the {limit:,.0f} MB limit ({source})"
                   + (" - tight: little room left" if peak > _FIT_SHARE * limit else ""))
    if not fits:
        half_ok = dev._supports_bf16(device) or (device.type == "cuda" and cfg.allow_fp16)
        advice += _memory_advice(peak=peak, persistent=predicted["persistent"], activations=predicted["activations"],
                                 limit=limit, cfg=cfg, shape=shape, longest=layout.longest, lengths=lengths,
                                 names=names, precision=precision, half_ok=half_ok, trainable_mb=sizes["gradients"])
    wall, in_time = predicted["wall_s"], True
    if wall is not None:
        verdict += f"; the run takes about {_duration(wall)}"
        if time_limit_s is not None and wall > time_limit_s:
            in_time = False
            verdict += f", over the time limit of {_duration(time_limit_s)}"
            eval_total = wall - predicted["train_s"]
            epoch_evals = len(training._evaluation_steps(layout.total_steps, layout.steps_per_epoch,
                                                         cfg.replace(eval_every_steps=None)))
            advice += _time_advice(wall=wall, train_s=predicted["train_s"], eval_total=eval_total,
                                   limit_s=time_limit_s, cfg=cfg, rows=rows, names=names,
                                   length_share=_length_saving(lengths, layout.longest[1], shape),
                                   eval_pass_s=predicted["eval_pass_s"] or 0.0, epoch_evals=epoch_evals)
    return fits, in_time, verdict, advice


def _length_saving(lengths: np.ndarray, longest: int, shape: dict) -> tuple[int, float, float] | None:
    """(limit, share of rows cut, share of the training time left) for the 95th-percentile length."""
    candidates = [c for c in _shorter_lengths(lengths, longest) if c[1] <= 0.06]
    if not candidates:
        return None
    cut, share = candidates[-1]
    work = lengths * (1 + lengths / (6 * shape["hidden"]))
    clipped = np.minimum(lengths, cut)
    return cut, share, float((clipped * (1 + clipped / (6 * shape["hidden"]))).sum() / work.sum())


# --------------------------------------------------------------------------- the learning-rate range test

@dataclass
class LRRangeTest:
    """The learning-rate range test (`hp.find_lr`): the loss at each rate, and the rate it suggests, with why."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    reason: str
    steepest_lr: float | None  # where the smoothed loss fell fastest (per decade of rate)
    minimum_lr: float  # where the smoothed loss was lowest
    stopped: str  # why the test ended
    current_lr: float | None = None  # the rate the run is configured with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        now = f"; the run is set to LR={self.current_lr:g}" if self.current_lr is not None else ""
        return (f"suggested LR={self.suggested_lr:.1e}: {self.reason}. The smoothed loss was lowest at "
                f"{self.minimum_lr:.1e}" + (f" and fell fastest at {self.steepest_lr:.1e}" if self.steepest_lr else "")
                + f"; {len(self.lrs)} steps from {self.lrs[0]:.0e}" + (f", {self.stopped}" if self.stopped else "")
                + f"{now}. Nothing of the run changed: set LR to use it.")

    __repr__ = __str__


def find_lr(model, train_data, config: TrainConfig | None = None, *, pad_token_id: int | None = None, collate_fn=None,
            start_lr: float = 1e-7, end_lr: float = 1.0, num_steps: int = 100, diverge: float = 4.0,
            **options) -> LRRangeTest:
    """The learning-rate range test (Smith 2017; fastai's `lr_find`): `num_steps` optimizer steps of the
    run as configured (batch, accumulation, precision, clipping, weight decay) with the rate rising
    exponentially from `start_lr` to `end_lr`, stopping once the loss passes `diverge` times its lowest.
    Runs on the model and puts everything back (as `plan` does): nothing of the real run changes. Returns
    the curve and a suggested rate with the reason (`hp.plots.lr_find` draws it)."""
    cfg = (config or TrainConfig()).replace(**options)
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr={start_lr:g}, end_lr={end_lr:g}: need 0 < start_lr < end_lr.")
    quiet = _quiet_config(cfg, lr=start_lr, max_steps=num_steps, warmup_ratio=0.0)
    with training._model_kept_as_given(model), _weights_kept(model):
        loop = training._Loop(model, train_data, None, quiet, compute_metrics=None, pad_token_id=pad_token_id,
                              collate_fn=collate_fn)
        loop.resume()
        try:
            lrs, losses, stopped = _range_steps(loop, start_lr, end_lr, num_steps, diverge, cfg.progress)
        finally:
            loop.bar.close()
            loop.accelerator.free_memory()
            del loop
            training._free_memory()
            training._trim_host_memory()  # the run that follows starts from the memory it would have had
    if len(lrs) < 5:
        raise ValueError(f"The range test ran only {len(lrs)} steps ({stopped}); use a lower start_lr or more rows.")
    return _suggest_lr(lrs, losses, stopped=stopped, current_lr=cfg.lr)


def _range_steps(loop, start_lr: float, end_lr: float, num_steps: int, diverge: float, progress: bool):
    """The test's steps on the loop's own batches (epoch after epoch), the rate multiplied by a constant
    factor each optimizer step; (rates, losses, why it stopped). One host sync per step: the test is short."""
    from ._progress import progress_bar

    factor = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    loop.scheduler = torch.optim.lr_scheduler.LambdaLR(loop.optimizer.optimizer, lambda i: factor ** i)
    lrs, losses, ema, lowest = [], [], None, math.inf
    stopped = f"reaching {end_lr:g}"
    bar = progress_bar(total=num_steps, desc="LR range test", leave=False, disable=not progress)
    with loop.fast_paths:
        while len(lrs) < num_steps and stopped.startswith("reaching"):
            for batch in loop.epoch_batches():
                rate = loop.optimizer.optimizer.param_groups[0]["lr"]
                loop.trim_heap(batch)
                if not loop.train_step(batch):
                    continue
                loss = float(_ranks.mean(loop.loss_buffer.pop()))  # every process stops at the same step
                loop.lr_buffer.clear()
                loop.pending_steps.clear()
                lrs.append(rate)
                losses.append(loss)
                bar.update(1)
                ema = loss if ema is None else 0.8 * ema + 0.2 * loss
                lowest = min(lowest, ema)
                if not math.isfinite(loss) or (len(losses) > 5 and ema > diverge * lowest):
                    stopped = f"stopping when the loss passed {diverge:g}x its lowest (at {rate:.1e})"
                    break
                if len(lrs) >= num_steps:
                    break
            loop.epoch += 1
    bar.close()
    return lrs, losses, stopped


def _smooth(values, window: int) -> np.ndarray:
    """A centred moving average (shorter windows at the ends): no lag, unlike an exponential average,
    which would shift the curve's features towards higher rates."""
    values = np.asarray(values, dtype=float)
    kernel = np.ones(window)
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones_like(values), kernel, mode="same")


def _suggest_lr(lrs, losses, *, stopped: str = "", current_lr: float | None = None) -> LRRangeTest:
    """The suggestion from the curve, by the two classic rules: the steepest descent (where the smoothed
    loss falls fastest per decade of rate, before its lowest point, when it clearly descends there) and a
    tenth of the rate where the smoothed loss is lowest; the lower of the two. Pre-trained weights suffer
    more from a rate too high than too low, and when the loss only drops just before it blows up (common
    when fine-tuning) the steepest point sits next to the divergence."""
    keep = np.isfinite(np.asarray(losses, dtype=float))
    rates, loss = np.asarray(lrs, dtype=float)[keep], np.asarray(losses, dtype=float)[keep]
    window = max(5, len(loss) // 10) | 1
    smoothed = _smooth(loss, window)
    low = int(np.argmin(smoothed))
    slopes = np.gradient(smoothed, np.log10(rates))
    edge = window // 2  # the first points' average is one-sided
    steep = edge + int(np.argmin(slopes[edge:low])) if low > edge + 1 else None
    descends = steep is not None and slopes[steep] < 0 and smoothed[:low + 1].max() - smoothed[low] > 0.02 * smoothed[0]
    tenth = rates[low] / 10
    if descends and rates[steep] <= tenth:
        suggested, reason = rates[steep], "where the smoothed loss falls fastest (steepest descent)"
    elif descends:
        suggested, reason = tenth, (f"a tenth of the rate where the smoothed loss is lowest (the steepest descent, at "
                                    f"{rates[steep]:.1e}, is too close to where the loss blows up)")
    else:
        suggested, reason = tenth, "a tenth of the rate where the smoothed loss is lowest (no clear descent)"
    return LRRangeTest([float(r) for r in rates], [float(v) for v in loss], [float(v) for v in smoothed],
                       float(suggested), reason, float(rates[steep]) if steep is not None else None, float(rates[low]),
                       stopped, current_lr)
