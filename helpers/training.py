"""One training loop for every notebook: batches are dicts, the loss is `model(**batch).loss`.

Built on HF Accelerate, so the same code runs on a CPU, one GPU, or several processes
(`accelerate launch` / `torchrun`). The loop owns precision, length-grouped dynamic padding,
gradient accumulation, warmup + linear decay, clipping, periodic evaluation, early stopping,
resumable checkpoints and a NaN/inf guard, and returns a `History`.

No host sync per step: losses stay on the device and are read every `log_every_steps` steps.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _ranks
from . import device as dev
from ._batching import LengthGroupedBatchSampler, PadCollator, ProcessShare, as_rows, sorted_batches
from ._fastpaths import PARTS, CpuFastPaths

__all__ = ["EvalResult", "History", "TrainConfig", "TrainingInterrupted", "evaluate", "train"]

_CHECKPOINT_PREFIX = "checkpoint-"


class _BatchTooLargeError(RuntimeError):
    """A training batch does not fit in memory; the message says how to make it fit."""


class _EvalBatchTooLargeError(_BatchTooLargeError):
    """An evaluation batch does not fit in memory: the message names EVAL_BATCH_SIZE, not the training batch."""

    def __init__(self, batch_size: int, rows: int, tokens: int):
        self.batch_size = batch_size
        super().__init__(
            f"EVAL_BATCH_SIZE={batch_size} does not fit in memory: evaluating a batch of {rows} rows x {tokens} tokens "
            f"ran out. Use EVAL_BATCH_SIZE={max(1, batch_size // 2)} (evaluation keeps no gradients; the training "
            "batch is not the problem), a smaller MAX_LENGTH, or AUTO_BATCH_BACKOFF=True to halve it when it happens.")


def _is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, a CPU allocation failure, or Python's MemoryError."""
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or Jupyter's Stop button) during `hp.train`: the message says the step reached, the last
    checkpoint and how to continue (`workbook run` reads it back for its one-line report)."""


_INTERRUPTED_AT = "Interrupted at step {step} of {total}."


class _NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the message names the step, likely causes and the last good checkpoint."""


@dataclass
class EvalResult:
    """Loss, metrics and raw outputs of one evaluation pass (outputs in dataset order)."""

    loss: float
    metrics: dict[str, float]
    logits: np.ndarray | None
    labels: np.ndarray | None
    num_samples: int
    wall_s: float

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(-1)

    @property
    def probabilities(self) -> np.ndarray:
        shifted = self.logits - self.logits.max(-1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(-1, keepdims=True)

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, **self.metrics}


@dataclass
class History:
    """Everything a run measured. `train_loss[i]` is the loss of optimizer step `steps[i]`."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    examples_seen: list[int] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)  # {"step", "epoch", "loss", metrics...}
    global_step: int = 0
    epoch: float = 0.0
    total_examples: int = 0
    train_wall_s: float = 0.0
    eval_wall_s: float = 0.0
    samples_per_s: float = 0.0
    peak_mem_mb: float = 0.0
    train_batch_size: int = 0
    grad_accum_steps: int = 1
    batch_backoffs: int = 0  # times AUTO_BATCH_BACKOFF halved the batch after running out of memory
    eval_batch_size: int | None = None  # the evaluation batch in the end (AUTO_BATCH_BACKOFF may have halved it)
    skipped_steps: int = 0  # fp16: optimizer steps the loss scaler skipped (gradients overflowed)
    loss_scale: float | None = None  # fp16: the loss scaler's scale at the end
    best_step: int | None = None
    best_metric: float | None = None
    metric_for_best: str = "loss"
    stopped_early: bool = False
    pruned_at_step: int | None = None  # a callback stopped this run (hp.train(callbacks=...): a sweep's pruner)
    resumed_from: str | None = None
    precision: str = "fp32"
    device: str = "cpu"
    num_processes: int = 1
    fast_paths: str = ""  # the CPU fast paths used (helpers/_fastpaths.py), "" when none
    plan: dict[str, Any] | None = None  # hp.plan's prediction for this run, with how the run compared (hp.train(plan=))

    @property
    def wall_s(self) -> float:
        return self.train_wall_s + self.eval_wall_s

    def metric(self, name: str) -> list[float]:
        return [e[name] for e in self.evals if name in e]

    def summary(self) -> dict[str, Any]:
        """The small dict `metrics.json` keeps under "train"."""
        return {"epochs": round(self.epoch, 3), "steps": self.global_step, "examples_seen": self.total_examples,
                "wall_s": round(self.wall_s, 2), "train_wall_s": round(self.train_wall_s, 2),
                "samples_per_s": round(self.samples_per_s, 2), "peak_mem_mb": round(self.peak_mem_mb, 1),
                "precision": self.precision, "device": self.device, "num_processes": self.num_processes,
                "best_step": self.best_step, "best_metric": self.best_metric, "metric_for_best": self.metric_for_best,
                "stopped_early": self.stopped_early, "pruned_at_step": self.pruned_at_step,
                "resumed_from": self.resumed_from,
                "train_batch_size": self.train_batch_size, "grad_accum_steps": self.grad_accum_steps,
                "batch_backoffs": self.batch_backoffs, "eval_batch_size": self.eval_batch_size,
                "fast_paths": self.fast_paths,
                "skipped_steps": self.skipped_steps, "loss_scale": self.loss_scale,
                "first_train_loss": self._window_mean(first=True), "final_train_loss": self._window_mean(first=False),
                **({"plan": self.plan} if self.plan else {})}

    def _window_mean(self, *, first: bool) -> float | None:
        """Mean loss over the first (or last) fifth of the steps: one step's loss is too noisy to compare."""
        if not self.train_loss:
            return None
        k = max(1, len(self.train_loss) // 5)
        window = self.train_loss[:k] if first else self.train_loss[-k:]
        return round(sum(window) / k, 5)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------- evaluation

def evaluate(model, data, *, collate_fn: Callable | None = None, pad_token_id: int | None = None,
             batch_size: int = 64, compute_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None,
             precision: str = "auto", allow_fp16: bool = True, device: torch.device | None = None,
             max_batches: int | None = None, keep_outputs: bool = True, progress: bool = True,
             desc: str = "eval") -> EvalResult:
    """Loss and metrics over `data`, batched large and sorted by length; outputs back in data order.

    `compute_metrics(logits, labels) -> dict`. `max_batches` caps the cost (None: all rows).
    The model is put on `device` (default: the best one, where `hp.train` trains), so a baseline
    before fine-tuning runs on the GPU too. `allow_fp16=False` for models that overflow in fp16 (T5).
    """
    from ._progress import progress_bar

    rows = as_rows(data)
    _require_rows(rows, "The data to evaluate")
    collate_fn = collate_fn or PadCollator(_pad_id(pad_token_id, model))
    device = dev._place_model(model, device)
    precision = dev.resolve_precision(precision, device, allow_fp16=allow_fp16)
    batches = sorted_batches(rows.lengths, batch_size)[:max_batches]
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    losses, logits_parts, label_parts, index = [], [], [], []
    with torch.inference_mode(), dev._autocast(device, precision):
        for ids in progress_bar(batches, desc=desc, leave=False, disable=not progress):
            batch = dev._to_device(collate_fn([rows[i] for i in ids]), device)
            try:
                out = model(**batch)
            except Exception as err:  # noqa: BLE001 - only out-of-memory errors are rewritten
                if not _is_out_of_memory(err):
                    raise
                shape = tuple(batch["input_ids"].shape)
                del batch
                _release_failed_step(err)
                model.train(was_training)
                raise _EvalBatchTooLargeError(batch_size, *shape) from None
            if getattr(out, "loss", None) is not None:
                losses.append(out.loss.float() * len(ids))
            if keep_outputs and out.logits.dim() == 2:  # classification; LM logits (batch x seq x vocab) are huge
                logits_parts.append(out.logits.float().cpu())
                if "labels" in batch:
                    label_parts.append(batch["labels"].cpu())
            index.extend(ids)
    model.train(was_training)
    n = len(index)
    loss = float(torch.stack(losses).sum() / n) if losses else float("nan")
    logits = labels = None
    if logits_parts:  # classification: restore data order
        order = np.argsort(np.asarray(index))
        logits = torch.cat(logits_parts).numpy()[order]
        labels = torch.cat(label_parts).numpy()[order] if label_parts else None
    metrics = compute_metrics(logits, labels) if (compute_metrics and logits is not None) else {}
    return EvalResult(loss=loss, metrics=metrics, logits=logits, labels=labels, num_samples=n,
                      wall_s=time.perf_counter() - start)


def _require_rows(rows, what: str) -> None:
    """Empty data is refused where it enters, saying where rows go missing (not a KeyError or a NaN later)."""
    if len(rows) == 0:
        raise ValueError(f"{what} is empty (0 rows); check the data caps (MAX_TRAIN_SAMPLES, MAX_EVAL_SAMPLES), the "
                         "filters and the cleaning report above (rows dropped as empty or duplicate).")


def _pad_id(pad_token_id: int | None, model) -> int:
    if pad_token_id is not None:
        return pad_token_id
    pid = getattr(model.config, "pad_token_id", None)
    return 0 if pid is None else pid


# --------------------------------------------------------------------------- checkpoints

def _list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its state.json exists)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{_CHECKPOINT_PREFIX}*") if p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(_CHECKPOINT_PREFIX):]))


def _latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    found = _list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


class _CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


class _UnsafeCheckpointError(_CheckpointError):
    """A checkpoint file holding more than tensors and plain values: reading it could run code."""


_RNG_FILE = "rng-rank{}.pt"  # one file per process: each GPU has its own generator
_LEGACY_RNG_FILE = "rng.pt"  # written before per-process files (numpy arrays inside)


def _rng_state() -> dict[str, Any]:
    """This process's random generators as tensors and plain values (loadable with weights_only=True)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's own GPU (accelerate sets it current)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()  # Apple GPUs draw dropout masks from their own generator
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state.get("mps") is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        # one generator (this process's); a legacy file held every GPU's: take this process's own
        torch.cuda.set_rng_state(cuda[dev._local_rank() % len(cuda)] if isinstance(cuda, (list, tuple)) else cuda)


def _load_checkpoint_file(path: Path, *, map_location=None, legacy_numpy: bool = False) -> Any:
    """A checkpoint file read with `weights_only=True`: tensors and plain values only, so a run folder
    someone handed you can never run code when resumed. Anything else is refused, naming the file.
    `legacy_numpy` also admits numpy arrays (data only), which older `rng.pt` files hold."""
    import pickle

    allowed = ([np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
               if legacy_numpy else [])
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        what = str(err).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:120]
        raise _UnsafeCheckpointError(
            f"{path} holds more than tensors and plain values ({what}): loading it could run code, so it is not "
            "read. Resume only checkpoints this workbook wrote, or start fresh (OVERWRITE=True).") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise _CheckpointError(f"{path} cannot be read ({str(err).splitlines()[0][:100]}): the file is damaged or "
                               "incomplete.") from None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(path.parent, err, _state_mb(obj)) from None
    os.replace(tmp, path)


def _state_mb(*objects) -> float:
    """The bytes of the tensors in (nested) state dicts, in MB: what a checkpoint needs on disk."""
    def size(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    return sum(size(o) for o in objects) / 2**20


def _write_error(folder: Path, err: BaseException, needed_mb: float) -> _CheckpointError:
    """A failed checkpoint write, in words: a full disk says so, with the space it needed."""
    import errno

    free_mb = shutil.disk_usage(folder if folder.exists() else folder.parent).free / 2**20
    full = getattr(err, "errno", None) == errno.ENOSPC or "unexpected pos" in str(err) or free_mb < needed_mb
    kept = _latest_checkpoint(folder)
    tail = f" The last complete checkpoint, {kept}, is kept." if kept else ""
    if full:
        return _CheckpointError(f"no space left on the disk of {folder} (needed about {needed_mb:.0f} MB, "
                                f"{free_mb:.0f} MB free): free some space, or set OUTPUT_DIR on a larger disk, "
                                f"then resume.{tail}")
    return _CheckpointError(f"could not write a checkpoint in {folder} ({str(err).splitlines()[0][:120]}).{tail}")


def _save_checkpoint(root: Path, step: int, *, model_state, optimizer, scheduler, state: dict, keep: int,
                     rng_states: list[dict]) -> Path:
    """Write into a temporary folder, then rename: a killed write never looks like a checkpoint.
    Every part loads with `weights_only=True` (tensors and plain values; the rest in state.json)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{_CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    optimizer_state = optimizer.state_dict()
    try:
        tmp.mkdir()
        torch.save(model_state, tmp / "model.pt")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for rank, rng in enumerate(rng_states):
            torch.save(rng, tmp / _RNG_FILE.format(rank))
        (tmp / "state.json").write_text(json.dumps(state))  # written last: marks the checkpoint complete
    except (OSError, RuntimeError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(root, err, _state_mb(model_state, optimizer_state)) from None
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


_LIBC_TRIM = None
_TRIM_EVERY_STEPS = 100  # on CPUs, also give freed heap memory back at least this often


def _trim_host_memory() -> None:
    """Give freed heap memory back to the OS (glibc `malloc_trim`). Dynamic padding allocates tensors
    of ever-different sizes; without this the resident memory of a CPU run creeps up by hundreds of MB
    of freed-but-kept blocks. Not free: the freed pages are faulted back in by the next steps (about 4%
    of a step's time when done every 10 steps), so the loop trims just before the largest batches,
    which set the peak, and every `_TRIM_EVERY_STEPS` steps. A no-op off glibc."""
    global _LIBC_TRIM
    if _LIBC_TRIM is None:
        try:
            import ctypes

            _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC_TRIM = False
    if _LIBC_TRIM:
        _LIBC_TRIM(0)


def _reset_peak_memory(device: torch.device) -> None:
    """Start measuring peak memory from now, so a run's peak is its own: CUDA's allocator statistics, and
    on a Linux CPU the process's resident high-water mark (VmHWM, reset by writing 5 to
    /proc/self/clear_refs, Linux 4.0+); on Apple's MPS the cached blocks are freed. Elsewhere the CPU peak stays
    the process's lifetime peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if device.type == "mps":
        torch.mps.empty_cache()  # the driver's figure (dev._peak_memory_mb) then starts from what is in use
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory since `_reset_peak_memory`: GPU memory allocated, or the process's resident high-water
    mark on a CPU (VmHWM; `ru_maxrss` where /proc is missing, which cannot be reset)."""
    if device.type == "cpu":
        hwm = _resident_memory_mb("VmHWM")
        if hwm is not None:
            return hwm
    return dev._peak_memory_mb(device)


def _resident_memory_mb(field_name: str = "VmRSS") -> float | None:
    """This process's resident memory now ("VmRSS") or its high-water mark ("VmHWM"), from /proc (Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return None


def _evaluation_steps(total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> list[int]:
    """The optimizer steps after which the loop evaluates, as `evaluate_and_checkpoint_if_due`, `end_epoch`
    and `finish` decide (every `eval_every_steps`, each epoch's end, and the last step), early stopping aside."""
    steps: set[int] = set()
    if cfg.eval_every_steps:
        steps.update(range(cfg.eval_every_steps, total_steps + 1, cfg.eval_every_steps))
    if cfg.eval_each_epoch:
        steps.update(range(steps_per_epoch, total_steps + 1, steps_per_epoch))
        steps.add(total_steps)
    return sorted(steps)


def _run_bar(run_left: Callable[[], float | None], *, tqdm_class=None, **kwargs):
    """The training bar (tqdm.auto): optimizer steps, and the time left of the whole run, evaluations
    included, from `run_left()` (tqdm's own estimate counts only the steps)."""
    from tqdm.auto import tqdm

    class RunBar(tqdm_class or tqdm):
        @property
        def format_dict(self):
            values = super().format_dict
            left = run_left()
            values["run_left"] = "?" if left is None else self.format_interval(left)
            return values

    bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {run_left} left with evaluations, {rate_fmt}{postfix}]"
    return RunBar(bar_format=bar_format, unit="step", **kwargs)


# --------------------------------------------------------------------------- the loop

def _train_device(name: str | None) -> torch.device:
    """The device `TrainConfig.device` asks for (None: the best available), refused when absent."""
    if name is None:
        return dev.best_device()
    device = torch.device(name)
    if device.index is not None:
        raise ValueError(f"device={name!r}: give the kind only ('cuda'); pick the GPU with CUDA_VISIBLE_DEVICES=1, "
                         "and several GPUs with torchrun / accelerate launch.")
    present = {"cpu": True, "cuda": torch.cuda.is_available(),
               "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if device.type not in present:
        raise ValueError(f"device={name!r}: use 'cuda', 'mps', 'cpu' or None (the best available).")
    if not present[device.type]:
        raise ValueError(f"device={name!r}, but this machine has no {device.type} device visible to torch; "
                         "use device=None (the best available) or 'cpu'.")
    return device


def _fresh_accelerator(**kwargs):
    """A new Accelerator; its state is a per-process singleton, so reset it first (keeping the
    process group) to allow several runs with different settings in one kernel."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # In one process the device is chosen again too (PartialState keeps the first run's otherwise: a run
    # asking for the CPU after a GPU run would train on the GPU); a multi-process group is kept.
    AcceleratorState._reset_state(reset_partial_state=dev._num_processes() == 1)
    GradientState._reset_state()
    return Accelerator(**kwargs)


class _NoFastPaths(contextlib.nullcontext):
    """The CPU fast paths when they are off (or on a GPU): nothing to switch on."""

    def describe(self) -> str:
        return ""


def _is_better(value: float, best: float | None, greater_is_better: bool) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if greater_is_better else value < best


def _make_optimizer(model, lr: float, weight_decay: float, device: torch.device):
    """AdamW without decay on biases and LayerNorm weights; the fused kernel where torch has one."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _opt(default, doc: str):
    """A `TrainConfig` field with its one-line documentation (shown by help(hp.train) and Shift-Tab)."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class TrainConfig:
    """Every option of `hp.train`, with its default. Pass one (`hp.train(model, train, val, config)`),
    keywords (`hp.train(model, train, val, lr=3e-5)`), or both: keywords override the config."""

    num_epochs: float = _opt(1, "passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps instead of num_epochs")
    train_batch_size: int = _opt(16, "rows per micro-batch, over all processes")
    eval_batch_size: int = _opt(64, "rows per evaluation batch (no gradients: can be larger)")
    grad_accum_steps: int = _opt(1, "micro-batches per optimizer step (effective batch = batch x this)")
    lr: float = _opt(5e-5, "peak learning rate of AdamW")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not on biases and LayerNorm weights)")
    warmup_ratio: float = _opt(0.1, "share of the steps with a linearly rising learning rate, then linear decay")
    max_grad_norm: float | None = _opt(1.0, "clip the gradient norm to this (None: no clipping)")
    precision: str = _opt("auto", '"auto" (bf16 where the hardware has it), "bf16", "fp16" (GPU) or "fp32"')
    allow_fp16: bool = _opt(True, "False refuses fp16 (T5 overflows in it)")
    device: str | None = _opt(None, '"cuda", "mps" or "cpu"; None: the best available (each process its own GPU)')
    group_by_length: bool = _opt(True, "batch rows of similar length together (less padding)")
    eval_every_steps: int | None = _opt(None, "also evaluate every N optimizer steps")
    eval_each_epoch: bool = _opt(True, "evaluate at the end of each epoch (and of the run)")
    max_eval_batches: int | None = _opt(None, "cap the evaluation cost (None: every row)")
    metric_for_best: str = _opt("loss", '"loss" or a key of compute_metrics: picks the best model')
    greater_is_better: bool | None = _opt(None, "None: True for every metric but loss")
    early_stopping_patience: int | None = _opt(None, "stop after N evaluations without improvement")
    load_best_at_end: bool = _opt(True, "restore the best evaluated model when training ends")
    checkpoint_dir: str | Path | None = _opt(None, "where resumable checkpoints go (None: none)")
    save_every_steps: int | None = _opt(None, "also checkpoint every N steps (always at each epoch end)")
    keep_checkpoints: int = _opt(2, "newest complete checkpoints kept")
    resume: bool | str | Path = _opt(False, "True: continue from the newest checkpoint in checkpoint_dir (or a path)")
    log_every_steps: int = _opt(10, "read the loss from the device every N steps (the loop's one host sync)")
    seed: int = _opt(42, "seeds initialization, dropout and the data order")
    progress: bool = _opt(True, "tqdm bars and a line per evaluation")
    cpu_fast_paths: bool | Collection[str] = _opt(
        True, 'on a CPU: integer dropout masks and bf16 attention with dropout (True: both; False: neither; or a '
              'subset of "dropout", "attention"); never on GPUs/MPS. Same math, equal accuracy, 1.25x on an AMX CPU '
              '(attention ~1.16x, dropout ~1.07x); 1.09x on an fp32-only CPU, measured with a since-removed third '
              'path (docs/benchmarks.md, helpers/_fastpaths.py)')
    auto_batch_backoff: bool = _opt(False, "out of memory: halve the batch, double grad_accum_steps, start over")
    stop_after_steps: int | None = _opt(None, "end the run at this step as an interruption would (for tests)")

    def replace(self, **changes) -> TrainConfig:
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            import difflib

            hints = [f"{u} (did you mean {difflib.get_close_matches(u, self.__dataclass_fields__, 1)[0]}?)"
                     if difflib.get_close_matches(u, self.__dataclass_fields__, 1) else u for u in unknown]
            raise TypeError(f"hp.train got unknown options {', '.join(hints)}; see help(hp.TrainConfig).")
        return replace(self, **changes)

    @classmethod
    def describe(cls) -> str:
        return "\n".join(f"    {f.name} = {f.default!r}: {f.metadata['doc']}" for f in fields(cls))


def train(model, train_data, eval_data=None, config: TrainConfig | None = None, *,
          compute_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None,
          pad_token_id: int | None = None, collate_fn: Callable | None = None, plan=None,
          callbacks: list[Callable[[int, dict, bool], bool | None]] | None = None, **options) -> History:
    """Fine-tune `model` on tokenized `train_data` (evaluating on `eval_data`); returns a `History`.

    The loop (notebook 01 shows it plainly first): for each batch, `model(**batch).loss`, backward,
    clip, optimizer step, scheduler step. What this function adds: length-grouped dynamic padding,
    gradient accumulation, bf16/fp16 where the hardware runs it, evaluation, best-model restore and
    early stopping, atomic resumable checkpoints, a NaN/inf guard, out-of-memory advice or back-off,
    and the CPU fast paths. See docs/architecture.md.

    `train_data` / `eval_data`: tokenized `datasets.Dataset`s (or `TokenStore`s) with `input_ids` and
    `label(s)`. `compute_metrics(logits, labels) -> dict` for classification; `pad_token_id` the
    tokenizer's; `collate_fn` replaces the padding collator. Options: a `TrainConfig`, keywords, or both.
    `plan`: what `hp.plan` predicted for this run; the History keeps it beside what the run really used
    (metrics.json "train" -> "plan"), and the progress bar's time left uses its evaluation time.
    `callbacks`: functions `f(step, record, last)` called on the main process after each evaluation (`record`:
    the evaluation's metrics, `last`: the final evaluation), e.g. `run.on_evaluation` (MLflow, a sweep's
    pruner); any that returns True stops training there (`history.pruned_at_step`).
    """
    cfg = (config or TrainConfig()).replace(**options)
    record = plan.to_dict() if hasattr(plan, "to_dict") else (dict(plan) if plan else None)
    history = _train_checked(model, train_data, eval_data, cfg, compute_metrics=compute_metrics,
                             pad_token_id=pad_token_id, collate_fn=collate_fn,
                             eval_pass_s=(record or {}).get("eval_pass_s"), callbacks=callbacks)
    if record is not None:
        history.plan = _plan_versus_run(record, history)
    _ranks.leave_after_training()  # a notebook run in several processes: what follows is rank 0's
    return history


def _train_checked(model, train_data, eval_data, cfg: TrainConfig, **data_options) -> History:
    """One run, or runs with out-of-memory back-off; an out-of-memory error becomes `_BatchTooLargeError`."""
    if cfg.auto_batch_backoff and dev._num_processes() > 1:
        raise ValueError(f"AUTO_BATCH_BACKOFF works in one process only: with {dev._num_processes()} processes one "
                         "rank would retry alone while the others wait for it forever. Set TRAIN_BATCH_SIZE and "
                         "GRAD_ACCUM_STEPS yourself (find them in one process first), or AUTO_BATCH_BACKOFF=False.")
    if not cfg.auto_batch_backoff:
        try:
            return _train_once(model, train_data, eval_data, cfg, **data_options)
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are rewritten
            if isinstance(err, _BatchTooLargeError) or not _is_out_of_memory(err):
                raise  # an evaluation batch's comes with its own advice
            advice = _oom_advice(cfg, err)
            model.zero_grad(set_to_none=True)  # the failed step's gradients live on the model itself
            _release_failed_step(err)
            raise _BatchTooLargeError(advice) from err
    return _train_with_backoff(model, train_data, eval_data, cfg, **data_options)


def _plan_versus_run(plan: dict[str, Any], history: History) -> dict[str, Any]:
    """The plan's figures (plan.json has them all) with how the run compared: real / predicted peak memory
    and wall time, judged only when the run did what was planned (the same batch, all the planned steps,
    not resumed)."""
    made_for = plan.get("config", {})
    same = (made_for.get("train_batch_size") == history.train_batch_size
            and made_for.get("grad_accum_steps") == history.grad_accum_steps
            and made_for.get("total_steps") == history.global_step and not history.resumed_from)
    out = {key: plan.get(key) for key in ("device", "precision", "peak_mem_mb", "limit_mb", "step_s", "eval_pass_s",
                                          "evaluations", "wall_s", "fits", "in_time")}
    out.update(estimate_peak_mb=plan.get("estimate_mb", {}).get("peak"), same_run_as_planned=bool(same))
    if same and plan.get("peak_mem_mb") and plan.get("wall_s"):
        out["run_vs_plan"] = {"peak_mem_mb": round(history.peak_mem_mb / plan["peak_mem_mb"], 3),
                              "wall_s": round(history.wall_s / plan["wall_s"], 3)}
    return out


def _oom_advice(cfg: TrainConfig, err: BaseException) -> str:
    batch, accum, where = cfg.train_batch_size, cfg.grad_accum_steps, cfg.checkpoint_dir
    return (f"TRAIN_BATCH_SIZE={batch} does not fit in memory ({str(err).splitlines()[0][:120]}). Use "
            f"TRAIN_BATCH_SIZE={max(1, batch // 2)} with GRAD_ACCUM_STEPS={accum * 2} (the same effective batch), "
            f"a smaller MAX_LENGTH, or AUTO_BATCH_BACKOFF=True to let the loop find a size."
            + (f" Checkpoints written so far stay in {where}." if where else ""))


def _train_with_backoff(model, train_data, eval_data, cfg: TrainConfig, **data_options) -> History:
    """Accelerate's `find_executable_batch_size` halves the batch on out-of-memory errors; here the
    accumulation doubles with it (same effective batch) and each try starts from the initial weights."""
    import traceback

    from accelerate.utils import find_executable_batch_size

    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    first = cfg.train_batch_size
    tries = []
    size = {"now": first}

    def halve() -> int:  # accelerate's default is x0.9; halving keeps the effective batch exact
        size["now"] //= 2
        return size["now"]

    @find_executable_batch_size(starting_batch_size=first, reduce_batch_size_fn=halve)
    def attempt(batch_size: int) -> History:
        if tries:
            model.load_state_dict(initial)
            print(f"out of memory: retrying from the start with train_batch_size={batch_size}, "
                  f"grad_accum_steps={cfg.grad_accum_steps * first // batch_size} (same effective batch)")
        tries.append(batch_size)
        run = cfg.replace(train_batch_size=batch_size, grad_accum_steps=cfg.grad_accum_steps * first // batch_size)
        try:
            return _train_once(model, train_data, eval_data, run, **data_options)
        except MemoryError as err:  # Python's own: in the words accelerate recognises
            raise RuntimeError(f"DefaultCPUAllocator: can't allocate memory ({err})") from err
        except Exception as err:  # noqa: BLE001 - free the failed try's memory before the next one
            if _is_out_of_memory(err):
                model.zero_grad(set_to_none=True)
                traceback.clear_frames(err.__traceback__)
            raise

    try:
        history = attempt()
    except RuntimeError as err:
        if "No executable batch size found" in str(err):
            raise _BatchTooLargeError("Not even TRAIN_BATCH_SIZE=1 fits in memory; use a smaller MAX_LENGTH or "
                                      "a smaller model.") from err
        raise
    history.batch_backoffs = len(tries) - 1
    return history


train.__signature__ = inspect.Signature(  # Shift-Tab / help(hp.train) list every option, not **options
    [p for p in inspect.signature(train).parameters.values() if p.kind != p.VAR_KEYWORD]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
       for f in fields(TrainConfig)], return_annotation="History")
train.__doc__ += "\n    Options (TrainConfig):\n" + TrainConfig.describe() + "\n"


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _release_failed_step(err: BaseException) -> None:
    """Free what the failed step held. The traceback keeps every frame's locals (activations,
    gradients) alive, and Jupyter keeps the last traceback: clear those frames, then free memory."""
    import traceback

    traceback.clear_frames(err.__traceback__)
    _free_memory()


def _train_once(model, train_data, eval_data, cfg: TrainConfig, *,
                compute_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None,
                pad_token_id: int | None = None, collate_fn: Callable | None = None,
                eval_pass_s: float | None = None, callbacks: list[Callable] | None = None) -> History:
    """The loop, step by step (each step a method of `_Loop` below). `eval_pass_s`: a planned evaluation's
    time, for the progress bar's time left until the first evaluation has been timed."""
    with _model_kept_as_given(model):                                   # forward restored, even on errors
        loop = _Loop(model, train_data, eval_data, cfg, compute_metrics=compute_metrics,
                     pad_token_id=pad_token_id, collate_fn=collate_fn)  # prepare: device, data, optimizer
        loop.eval_pass_hint = eval_pass_s
        loop.callbacks = list(callbacks or [])                         # after each evaluation (main process)
        loop.resume()                                                  # from the newest checkpoint, if asked
        with loop.fast_paths, loop.interruptible():                    # CPU fast paths; Ctrl-C said plainly
            while not loop.stop:
                for batch in loop.epoch_batches():                     # length-grouped, padded batches
                    loop.trim_heap(batch)
                    if not loop.train_step(batch):                     # forward, backward, clip, step
                        continue                                       # (accumulating: no optimizer step yet)
                    loop.log()                                         # read losses every log_every_steps
                    loop.evaluate_and_checkpoint_if_due()
                    if loop.stop:
                        break
                if loop.end_epoch():                                   # evaluate + checkpoint at epoch end
                    break
        return loop.finish()                                           # final eval, best model, timings


@contextlib.contextmanager
def _model_kept_as_given(model):
    """Give the model back as it came. With mixed precision, Accelerate wraps `model.forward` in an
    autocast (an instance attribute); its `unwrap_model(keep_fp32_wrapper=False)` also strips
    transformers' own forward decorators (then `model(ids, return_dict=False)` raises TypeError), and
    nothing removes the wrapper when the run raises (NaN guard, out of memory, Ctrl-C), so a later
    fp32 run in the same kernel would still autocast. Here the instance's own attributes are put back
    exactly, whatever happens."""
    names = ("forward", "_original_forward", "_is_accelerate_prepared")  # the flag: a second run must wrap it again
    saved = {name: model.__dict__[name] for name in names if name in model.__dict__}
    try:
        yield model
    finally:
        for name in names:
            if name in saved:
                model.__dict__[name] = saved[name]
            else:
                model.__dict__.pop(name, None)


class _Loop:
    """The state of one training run and its steps. `_train_once` reads as the algorithm; the details of
    each step live in the method of the same name."""

    def __init__(self, model, train_data, eval_data, cfg: TrainConfig, *, compute_metrics, pad_token_id, collate_fn):
        from accelerate.data_loader import prepare_data_loader
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        if cfg.max_steps is None and not cfg.num_epochs > 0:
            raise ValueError(f"num_epochs must be positive (got {cfg.num_epochs}), or give max_steps.")
        if cfg.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be at least 1, got {cfg.grad_accum_steps}.")
        self.cfg, self.compute_metrics = cfg, compute_metrics
        self.greater_is_better = cfg.greater_is_better if cfg.greater_is_better is not None else (
            cfg.metric_for_best != "loss")
        device_guess = _train_device(cfg.device)
        self.precision = dev.resolve_precision(cfg.precision, device_guess, allow_fp16=cfg.allow_fp16)
        self.accelerator = acc = _fresh_accelerator(
            mixed_precision={"fp32": "no"}.get(self.precision, self.precision),
            gradient_accumulation_steps=cfg.grad_accum_steps, step_scheduler_with_optimizer=False,
            cpu=device_guess.type == "cpu")  # on CPUs, torchrun / accelerate launch give several gloo processes
        self.device = acc.device
        if self.device.type != device_guess.type:  # precision was decided for device_guess
            raise RuntimeError(f"Accelerate chose {self.device} where {device_guess} was expected (ACCELERATE_USE_CPU "
                               "or a launcher setting?); pass device= to match it.")
        self.skips_in_a_row, self.last_scale = 0, None
        if cfg.train_batch_size % acc.num_processes:
            raise ValueError(f"train_batch_size {cfg.train_batch_size} is split across {acc.num_processes} "
                             "processes; make it a multiple of that.")
        set_seed(cfg.seed)
        self._prepare_data(model, train_data, eval_data, pad_token_id, collate_fn)
        model.train()
        optimizer = _make_optimizer(model, cfg.lr, cfg.weight_decay, self.device)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # Each process's share of each global batch is cut by ProcessShare (why not Accelerate's sharding: its
        # docstring); Accelerate's loader wrapper only places batches on the device and says when the epoch ends.
        self.loader = prepare_data_loader(self.loader, self.device, num_processes=1, process_index=0,
                                          put_on_device=True)
        self.steps_per_epoch = steps_per_epoch = max(1, math.ceil(len(self.loader) / cfg.grad_accum_steps))
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else math.ceil(steps_per_epoch * cfg.num_epochs)
        self.scheduler = get_scheduler("linear", self.optimizer.optimizer, num_training_steps=self.total_steps,
                                       num_warmup_steps=int(cfg.warmup_ratio * self.total_steps))
        self.history = History(metric_for_best=cfg.metric_for_best, precision=self.precision,
                               device=str(self.device), num_processes=acc.num_processes,
                               eval_batch_size=cfg.eval_batch_size,
                               train_batch_size=cfg.train_batch_size, grad_accum_steps=cfg.grad_accum_steps)
        self.unwrapped = acc.unwrap_model(self.model)
        self.ckpt_root = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evals_without_improvement = 0
        self.epoch, self.skip_batches, self.batches_done = 0, 0, 0
        self.epoch_done = False  # Accelerate's loader has said its last batch of this epoch
        self.eval_batch_size = cfg.eval_batch_size  # halved on out-of-memory with auto_batch_backoff
        self.loss_buffer: list[torch.Tensor] = []
        self.lr_buffer: list[float] = []
        self.pending_steps: list[int] = []
        self.step_loss, self.micro = torch.zeros((), device=self.device), 0
        self.stop = self.interrupted = False
        self.largest_batch, self.last_trim = 0, 0
        self.fast_paths = _NoFastPaths()  # the CPU fast paths are set up when the clock starts (after resume)
        self.eval_pass_hint: float | None = None  # a planned evaluation's seconds (hp.plan), for the time left
        self.callbacks: list[Callable] = []  # hp.train(callbacks=...): called after each evaluation

    def _prepare_data(self, model, train_data, eval_data, pad_token_id, collate_fn) -> None:
        """Rows as a `TokenStore`, a length-grouped sampler, a padding collator, a DataLoader."""
        self.train_rows = as_rows(train_data)
        self.eval_rows = as_rows(eval_data) if eval_data is not None else None
        _require_rows(self.train_rows, "The training split")
        if self.eval_rows is not None:
            _require_rows(self.eval_rows, "The validation split")  # refused now, not after the first epoch
        self.collate_fn = collate_fn or PadCollator(_pad_id(pad_token_id, model),
                                                    pad_to_multiple_of=8 if self.device.type == "cuda" else None)
        self.sampler = LengthGroupedBatchSampler(self.train_rows.lengths, self.cfg.train_batch_size,
                                                 seed=self.cfg.seed, group_by_length=self.cfg.group_by_length)
        self.share = ProcessShare(self.sampler, self.accelerator.num_processes, self.accelerator.process_index)
        # A private generator: creating the DataLoader iterator must not consume the global RNG,
        # or a resumed run would draw different dropout masks than an uninterrupted one.
        self.loader = torch.utils.data.DataLoader(self.train_rows, batch_sampler=self.share,
                                                  collate_fn=self.collate_fn,
                                                  generator=torch.Generator().manual_seed(self.cfg.seed))

    def _fast_paths(self):
        """The CPU fast paths (helpers/_fastpaths.py): on by default on a CPU, never on a GPU or MPS."""
        wanted = self.cfg.cpu_fast_paths
        if wanted and self.device.type == "cpu":
            parts = PARTS if wanted is True else (wanted,) if isinstance(wanted, str) else tuple(wanted)
            return CpuFastPaths(self.unwrapped, parts=parts)
        return _NoFastPaths()

    # ---- resume
    def resume(self) -> None:
        """Continue from a checkpoint: model, optimizer, scheduler, RNG, history and the data position.

        Not `accelerator.save_state` / `load_state`: checkpoints here are written atomically (a run
        killed mid-write never leaves a checkpoint that looks complete), carry the optimizer state (the
        same with or without the CPU fast paths), and record the history and data position; the SIGKILL test checks
        that a resumed run is bit-identical to an uninterrupted one."""
        cfg, acc = self.cfg, self.accelerator
        if not cfg.resume:
            self._start_clock()
            return
        if isinstance(cfg.resume, bool) and self.ckpt_root is None:
            raise ValueError("resume=True needs checkpoint_dir (where the checkpoints are).")
        asked = isinstance(cfg.resume, bool)
        candidates = list(reversed(_list_checkpoints(self.ckpt_root))) if asked else [Path(cfg.resume)]
        if not candidates:
            acc.print(f"resume: no complete checkpoint in {self.ckpt_root}; starting from scratch")
            self._start_clock()
            return
        for ckpt in candidates:
            try:
                parts = self._read_checkpoint(ckpt)
                break
            except _UnsafeCheckpointError:
                raise
            except _CheckpointError as err:  # damaged (truncated, disk trouble): fall back to the one before
                if ckpt == candidates[-1]:
                    raise _CheckpointError(f"{err} No earlier complete checkpoint to fall back on: start fresh "
                                           "(OVERWRITE=True).") from None
                acc.print(f"resume: {err} Falling back to the previous complete checkpoint.")
        self._apply_checkpoint(ckpt, parts)
        acc.print(f"resumed from {ckpt} at step {self.history.global_step}")
        self._start_clock()

    def _read_checkpoint(self, ckpt: Path) -> dict[str, Any]:
        """Every part of a checkpoint, read (weights_only) and checked before anything is changed."""
        if not (ckpt / "state.json").exists():
            raise ValueError(f"{ckpt} is not a complete checkpoint (no state.json); pick another or start fresh.")
        try:
            state = json.loads((ckpt / "state.json").read_text())
        except (OSError, ValueError) as err:
            raise _CheckpointError(f"{ckpt / 'state.json'} cannot be read ({err}).") from None
        if state.get("total_steps") != self.total_steps or state.get("train_rows") != len(self.train_rows):
            raise ValueError(
                f"Checkpoint {ckpt} belongs to a different run (steps {state.get('total_steps')} vs "
                f"{self.total_steps}, rows {state.get('train_rows')} vs {len(self.train_rows)}); resume with the "
                "same parameters, or start fresh in a new OUTPUT_DIR.")
        # Several CPU processes run on device "cpu:N", which torch.load cannot map to: the CPU is "cpu".
        where = "cpu" if self.device.type == "cpu" else self.device
        return {"state": state, "model": _load_checkpoint_file(ckpt / "model.pt", map_location=where),
                "optimizer": _load_checkpoint_file(ckpt / "optimizer.pt", map_location=where),
                "scheduler": _load_checkpoint_file(ckpt / "scheduler.pt"), "rng": self._read_rng(ckpt, state)}

    def _read_rng(self, ckpt: Path, state: dict) -> dict[str, Any] | None:
        """This process's saved generators: its own file (one per process), or an older checkpoint's
        single rng.pt. A process the checkpoint did not have (it came from fewer GPUs) gets None."""
        own = ckpt / _RNG_FILE.format(self.accelerator.process_index)
        if own.exists():
            return _load_checkpoint_file(own)
        if (ckpt / _LEGACY_RNG_FILE).exists():
            return _load_checkpoint_file(ckpt / _LEGACY_RNG_FILE, legacy_numpy=True)
        if not list(ckpt.glob(_RNG_FILE.format("*"))):
            raise _CheckpointError(f"{ckpt} has no random-generator state ({_RNG_FILE.format(0)}): it is incomplete.")
        return None

    def _apply_checkpoint(self, ckpt: Path, parts: dict[str, Any]) -> None:
        acc, state = self.accelerator, parts["state"]
        self.unwrapped.load_state_dict(parts["model"])
        self.optimizer.optimizer.load_state_dict(parts["optimizer"])
        self.scheduler.load_state_dict(parts["scheduler"])
        if acc.scaler is not None and state.get("scaler"):
            acc.scaler.load_state_dict(state["scaler"])  # fp16: the loss scale it had, not 65,536 again
        if parts["rng"] is not None:
            _set_rng_state(parts["rng"])
        else:
            seed = self.cfg.seed + acc.process_index + self.history.global_step
            torch.manual_seed(seed)
            print(f"resume: {ckpt} was written by {state.get('num_processes', 1)} process(es); process "
                  f"{acc.process_index} has no saved random state and is seeded with {seed} (the data order is "
                  "exact; its dropout masks differ from an uninterrupted run)")
        self.history = History.from_dict(state["history"])
        self.history.resumed_from = str(ckpt)
        # what this run is, not what the checkpoint's was (a checkpoint of 2 processes resumes in 1)
        self.history.num_processes, self.history.device = acc.num_processes, str(self.device)
        self.evals_without_improvement = state["evals_without_improvement"]
        self.epoch, self.skip_batches = state["epoch"], state["batches_done_in_epoch"]
        best_path = self.ckpt_root / "best_model.pt" if self.ckpt_root else None
        if best_path is not None and best_path.exists() and self.history.best_step is not None:
            try:
                self.best_state = _load_checkpoint_file(best_path, map_location="cpu")
            except _UnsafeCheckpointError:
                raise
            except _CheckpointError as err:
                acc.print(f"resume: {err} The best model so far is forgotten; the next evaluation sets a new one.")
                self.history.best_step = self.history.best_metric = None

    def _start_clock(self) -> None:
        from tqdm.auto import tqdm

        self.first_step, self.evals_before = self.history.global_step, len(self.history.evals)
        self.run_start, self.eval_s_before, self.ckpt_s = time.perf_counter(), self.history.eval_wall_s, 0.0
        self.eval_at = _evaluation_steps(self.total_steps, self.steps_per_epoch, self.cfg) if self.eval_rows else []
        self.bar = _run_bar(self.run_left_s, total=self.total_steps, initial=self.history.global_step, desc="train",
                            disable=not (self.cfg.progress and self.accelerator.is_main_process), mininterval=1.0,
                            dynamic_ncols=True)
        if self.device.type == "cpu":
            _trim_host_memory()  # heap freed by earlier cells is not this run's memory: give it back first
        _reset_peak_memory(self.device)
        self.stop = self.history.global_step >= self.total_steps
        self.last_trim = self.history.global_step
        self.fast_paths = self._fast_paths()
        self.history.fast_paths = self.fast_paths.describe()
        if self.history.fast_paths and self.cfg.progress and self.accelerator.is_main_process:
            tqdm.write(f"CPU fast paths (on by default on a CPU; cpu_fast_paths=False turns them off): "
                       f"{self.history.fast_paths}")
        self.optimizer.zero_grad(set_to_none=True)  # start clean: no gradients left from before the run
        if self.accelerator.scaler is not None:  # fp16: the scale a skipped step would back off from
            self.last_scale = self.accelerator.scaler.get_scale()

    def run_left_s(self) -> float | None:
        """Seconds left in the whole run, evaluations included: the steps left at this session's pace, and
        each evaluation still due at the pace of those done (before the first: the plan's figure, else a
        forward pass costing a third of a training step per row). None before the first step."""
        history = self.history
        steps = history.global_step - self.first_step
        if steps <= 0:
            return None
        evals, eval_s = len(history.evals) - self.evals_before, history.eval_wall_s - self.eval_s_before
        step_s = (time.perf_counter() - self.run_start - eval_s - self.ckpt_s) / steps
        if evals:
            pass_s = eval_s / evals
        elif self.eval_pass_hint:
            pass_s = self.eval_pass_hint
        else:
            rows = len(self.eval_rows) if self.eval_rows is not None else 0
            if self.cfg.max_eval_batches is not None:
                rows = min(rows, self.cfg.max_eval_batches * self.cfg.eval_batch_size)
            pass_s = rows * step_s / (3 * self.cfg.train_batch_size * self.cfg.grad_accum_steps)
        done_now = self._evaluated_now()
        due = sum(1 for s in self.eval_at if s > history.global_step or (s == history.global_step and not done_now))
        return (self.total_steps - history.global_step) * step_s + due * pass_s

    # ---- the epoch and the step
    def epoch_batches(self):
        """This epoch's batches, skipping those a resumed run already trained on."""
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        batches = (self.accelerator.skip_first_batches(self.loader, self.skip_batches) if self.skip_batches
                   else self.loader)
        self.epoch_done = self.skip_batches >= len(self.loader)  # resumed after the epoch's last batch
        self.batches_done, self.skip_batches = self.skip_batches, 0
        return batches

    def trim_heap(self, batch) -> None:
        """CPU: give freed heap back to the OS just before the largest batches (they set the peak RSS)."""
        if self.device.type != "cpu":
            return
        tokens = batch["input_ids"].numel()
        if tokens >= self.largest_batch or self.history.global_step - self.last_trim >= _TRIM_EVERY_STEPS:
            self.largest_batch, self.last_trim = max(self.largest_batch, tokens), self.history.global_step
            _trim_host_memory()

    def train_step(self, batch) -> bool:
        """Forward, backward, clip, optimizer and scheduler step; True when an optimizer step happened."""
        acc, history = self.accelerator, self.history
        weight, global_rows = self._share_of(batch)  # 1.0 but for a remainder batch split across processes
        with acc.accumulate(self.model):
            loss = self.model(**batch).loss
            if weight != 1.0:
                loss = loss * weight
            acc.backward(loss)
            self.step_loss += loss.detach()
            self.micro += 1
            if acc.sync_gradients and self.cfg.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        history.total_examples += global_rows
        self.batches_done += 1
        self.epoch_done = acc.gradient_state.end_of_dataloader  # never by counting batches
        if not acc.sync_gradients:
            return False
        if self.step_was_skipped():  # fp16: the scaler found inf/NaN gradients, no weight moved
            self.note_skipped_step()
        else:
            self.step_scheduler()  # the schedule follows the updates really made
        history.global_step += 1
        self.loss_buffer.append(self.step_loss / self.micro)  # stays on the device: no sync per step
        self.lr_buffer.append(self.scheduler.get_last_lr()[0])
        self.pending_steps.append(history.global_step)
        self.step_loss, self.micro = torch.zeros((), device=self.device), 0
        self.bar.update(1)
        history.epoch = self.epoch + self.batches_done / len(self.loader)
        return True

    def _share_of(self, batch) -> tuple[float, int]:
        """This batch's loss weight and its global batch's rows (`ProcessShare`); a batch that did not come from
        the loader (hp.plan's timed steps) is a full one."""
        i = self.batches_done
        if i < len(self.share.weights):
            return self.share.weights[i], self.share.sizes[i]
        return 1.0, batch["input_ids"].shape[0] * self.accelerator.num_processes

    def step_was_skipped(self) -> bool:
        """fp16: did the loss scaler skip this optimizer step? It backs its scale off exactly then.
        Not `optimizer.step_was_skipped`: with a fused AdamW (the default on GPUs) the scaler hands the
        inf check to the optimizer's kernel, and Accelerate then always reports the step as taken.
        Costs one read of the scale per optimizer step, in fp16 only."""
        scaler = self.accelerator.scaler
        if scaler is None:
            return False
        scale, before = scaler.get_scale(), self.last_scale
        self.last_scale = scale
        return before is not None and scale < before

    def step_scheduler(self) -> None:
        self.skips_in_a_row = 0
        if self.accelerator.scaler is None:
            self.scheduler.step()
            return
        with warnings.catch_warnings():  # Accelerate's scaler swaps optimizer.step during each step, which
            warnings.filterwarnings(   # torch's scheduler mistakes for "step() overridden": not the case
                "ignore", message="Seems like `optimizer.step\\(\\)` has been overridden", category=UserWarning)
            self.scheduler.step()

    SKIPS_TO_WARN = 10  # steps in a row: the loss scale fell 1,000-fold, well past the usual first few skips

    def note_skipped_step(self) -> None:
        """Count an fp16 step the loss scaler skipped; say so once when they keep coming in a row
        (the run is then training nothing), instead of letting it go on in silence."""
        from tqdm.auto import tqdm

        self.history.skipped_steps += 1
        self.skips_in_a_row += 1
        if self.skips_in_a_row == self.SKIPS_TO_WARN and self.accelerator.is_main_process:
            scale = self.accelerator.scaler.get_scale() if self.accelerator.scaler is not None else float("nan")
            tqdm.write(f"WARNING: fp16 gradients overflowed {self.skips_in_a_row} optimizer steps in a row (loss scale "
                       f"now {scale:g}): no weights were updated in them. If it goes on, use PRECISION='bf16' "
                       "(a GPU of compute capability 8+) or 'fp32', or a lower LR.")

    def log(self) -> None:
        if self.history.global_step % self.cfg.log_every_steps == 0:
            self.flush_losses()
            self.bar.set_postfix(loss=f"{self.history.train_loss[-1]:.4f}", refresh=False)

    def evaluate_and_checkpoint_if_due(self) -> None:
        cfg, history = self.cfg, self.history
        if cfg.eval_every_steps and history.global_step % cfg.eval_every_steps == 0:
            self.stop = self.run_eval(history.epoch)
        if cfg.save_every_steps and history.global_step % cfg.save_every_steps == 0:
            self.save_checkpoint(self.epoch, self.batches_done)
        self.stop = self.stop or history.global_step >= self.total_steps
        if cfg.stop_after_steps is not None and history.global_step >= cfg.stop_after_steps:
            self.stop = self.interrupted = True

    def end_epoch(self) -> bool:
        """At the end of an epoch: evaluate and checkpoint. True when the run must end now."""
        if not self.epoch_done:  # left mid-epoch (max_steps, early stop, interruption)
            return self.stop
        self.epoch += 1
        self.history.epoch = float(self.epoch)
        if self.interrupted:
            return True
        if self.cfg.eval_each_epoch and not self._evaluated_now():
            self.stop = self.run_eval(float(self.epoch)) or self.stop
        if self.ckpt_root is not None:
            self.save_checkpoint(self.epoch, 0)
        return self.stop

    def _evaluated_now(self) -> bool:
        return bool(self.history.evals and self.history.evals[-1]["step"] == self.history.global_step)

    # ---- losses, evaluation, checkpoints
    def flush_losses(self) -> None:
        """The one host sync: read the buffered per-step losses, check they are finite (NaN/inf guard)."""
        if not self.loss_buffer:
            return
        stacked = torch.stack(self.loss_buffer).float()
        if self.accelerator.num_processes > 1:
            stacked = self.accelerator.reduce(stacked, reduction="mean")
        for step, value, lr_value in zip(self.pending_steps, stacked.cpu().tolist(), self.lr_buffer):
            if not math.isfinite(value):
                raise _NonFiniteLossError(self._nan_message(step, value))
            self.history.steps.append(step)
            self.history.train_loss.append(value)
            self.history.learning_rate.append(lr_value)
            self.history.examples_seen.append(self.history.total_examples)
        self.loss_buffer.clear()
        self.lr_buffer.clear()
        self.pending_steps.clear()

    def _nan_message(self, step: int, value: float) -> str:
        lr = self.cfg.lr
        last = _latest_checkpoint(self.ckpt_root) if self.ckpt_root else None
        kept = f" The last good checkpoint, {last}, stays on disk." if last else ""
        return (f"Loss became {value} at step {step}. Likely causes: learning rate too high (LR={lr}), fp16 "
                f"overflow (use PRECISION='bf16' or 'fp32'), or bad inputs (labels out of range). Fix: start over "
                f"with a lower learning rate, e.g. LR={lr / 10:g} with OVERWRITE=True (a resumed run keeps its "
                f"parameters, so it cannot change LR).{kept} The model in memory is not usable and was not saved.")

    def run_eval(self, epoch_float: float) -> bool:
        """Evaluate, record, track the best model; True when early stopping says stop."""
        from tqdm.auto import tqdm

        cfg, history, acc = self.cfg, self.history, self.accelerator
        if self.eval_rows is None:
            return False
        result = self.evaluate_backing_off()
        history.eval_wall_s += result.wall_s
        record = {"step": history.global_step, "epoch": round(epoch_float, 3),
                  "elapsed_s": round(time.perf_counter() - self.run_start, 3), **result.to_dict()}
        record = _ranks.agree(record)  # several processes: rank 0's numbers decide best and early stopping for all
        history.evals.append(record)
        if cfg.metric_for_best not in record:
            raise KeyError(f"metric_for_best={cfg.metric_for_best!r} is not among the evaluation metrics "
                           f"{sorted(record)}; pick one of them.")
        if acc.is_main_process and cfg.progress:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in record.items()
                              if k not in ("step", "epoch", "elapsed_s") and isinstance(v, float))
            tqdm.write(f"step {history.global_step} (epoch {epoch_float:.2f}): {shown}")
        if not _is_better(float(record[cfg.metric_for_best]), history.best_metric, self.greater_is_better):
            self.evals_without_improvement += 1
            stop = (cfg.early_stopping_patience is not None
                    and self.evals_without_improvement >= cfg.early_stopping_patience)
        else:
            history.best_metric, history.best_step = float(record[cfg.metric_for_best]), history.global_step
            self.evals_without_improvement, stop = 0, False
            if cfg.load_best_at_end:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.unwrapped.state_dict().items()}
                if self.ckpt_root is not None and acc.is_main_process:
                    self.ckpt_root.mkdir(parents=True, exist_ok=True)
                    _atomic_torch_save(self.best_state, self.ckpt_root / "best_model.pt")
        return self.tracked(record) or stop

    def evaluate_backing_off(self) -> EvalResult:
        """`evaluate` on the validation rows. Out of memory: with AUTO_BATCH_BACKOFF the evaluation batch is halved
        and the evaluation runs again (training goes on as it was); without, `_EvalBatchTooLargeError` says
        which EVAL_BATCH_SIZE to use. The training batch is never blamed for an evaluation's memory."""
        cfg = self.cfg
        while True:
            try:
                return evaluate(self.unwrapped, self.eval_rows, collate_fn=self.collate_fn,
                                batch_size=self.eval_batch_size, compute_metrics=self.compute_metrics,
                                precision=self.precision, device=self.device, max_batches=cfg.max_eval_batches,
                                progress=cfg.progress and self.accelerator.is_main_process)
            except _EvalBatchTooLargeError as err:
                if not cfg.auto_batch_backoff or self.eval_batch_size == 1:
                    raise
                self.eval_batch_size = max(1, err.batch_size // 2)
                self.history.eval_batch_size = self.eval_batch_size
                print(f"out of memory in evaluation: evaluating again with eval_batch_size={self.eval_batch_size}")

    def tracked(self, record: dict) -> bool:
        """The evaluation to `hp.train(callbacks=...)`, called on the main process only: True when any of them
        says stop (e.g. a sweep's pruner through `run.on_evaluation`), shared with the other processes."""
        last = self.history.global_step >= self.total_steps  # stopping then would save nothing
        stop = False
        if self.accelerator.is_main_process:
            for callback in self.callbacks:  # every one sees every evaluation, even after one said stop
                stop = bool(callback(record["step"], dict(record), last)) or stop
        stop = bool(_ranks.agree(stop))
        if stop:
            self.history.pruned_at_step = record["step"]
        return stop

    def save_checkpoint(self, epoch: int, batches_done: int) -> None:
        start = time.perf_counter()
        self.flush_losses()  # never checkpoint a model that has already gone non-finite
        acc = self.accelerator
        rng_states = self.gather_rng_states() if self.ckpt_root is not None else []  # every process takes part
        if self.ckpt_root is not None and acc.is_main_process:
            state = {"history": self.history.to_dict(), "epoch": epoch, "batches_done_in_epoch": batches_done,
                     "evals_without_improvement": self.evals_without_improvement, "total_steps": self.total_steps,
                     "train_rows": len(self.train_rows), "seed": self.cfg.seed, "num_processes": acc.num_processes,
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
            _save_checkpoint(self.ckpt_root, self.history.global_step, model_state=self.unwrapped.state_dict(),
                             optimizer=self.optimizer, scheduler=self.scheduler, state=state,
                             keep=self.cfg.keep_checkpoints, rng_states=rng_states)
        self.ckpt_s += time.perf_counter() - start

    @contextlib.contextmanager
    def interruptible(self):
        """Ctrl-C becomes `TrainingInterrupted`, whose one line says the step, the last checkpoint and
        how to continue (in place of a bare KeyboardInterrupt deep in a forward pass)."""
        try:
            yield
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            self.bar.close()
            line = _INTERRUPTED_AT.format(step=self.history.global_step, total=self.total_steps)
            last = _latest_checkpoint(self.ckpt_root) if self.ckpt_root is not None else None
            if self.ckpt_root is None:
                line += " No checkpoints are kept (checkpoint_dir=None): running again starts over."
            elif last is None:
                line += " No checkpoint was written yet: running again starts over."
            else:
                line += f" The last checkpoint is {last}: run again with RESUME=True to continue from it."
            raise TrainingInterrupted(line) from None

    def gather_rng_states(self) -> list[dict[str, Any]]:
        """Every process's random generators, in process order (each GPU has its own), for rank 0 to save."""
        mine = _rng_state()
        if self.accelerator.num_processes == 1:
            return [mine]
        from accelerate.utils import gather_object

        return gather_object([mine])

    # ---- the end
    def finish(self) -> History:
        """Final losses and evaluation, timings, the best model restored, the model in eval mode."""
        cfg, history, acc = self.cfg, self.history, self.accelerator
        self.flush_losses()
        self.bar.close()
        if not self.interrupted and cfg.eval_each_epoch and not self._evaluated_now():
            self.run_eval(history.epoch)  # stopped mid-epoch (max_steps): evaluate the final model too
        history.train_wall_s += (time.perf_counter() - self.run_start - (history.eval_wall_s - self.eval_s_before)
                                 - self.ckpt_s)
        history.stopped_early = bool(cfg.early_stopping_patience is not None
                                     and self.evals_without_improvement >= cfg.early_stopping_patience)
        history.samples_per_s = history.total_examples / history.train_wall_s if history.train_wall_s > 0 else 0.0
        history.peak_mem_mb = _peak_memory_mb(self.device)
        if acc.scaler is not None:
            history.loss_scale = float(acc.scaler.get_scale())
        if history.skipped_steps:
            acc.print(f"fp16: the loss scaler skipped {history.skipped_steps} of {history.global_step} optimizer steps "
                      f"(overflowing gradients; final loss scale {history.loss_scale:g})"
                      + (": a few at the start are normal." if history.skipped_steps * 10 < history.global_step
                         else ": many; prefer PRECISION='bf16' or 'fp32'."))
        unwrapped = acc.unwrap_model(self.model)  # the autocast wrapper goes in model_kept_as_given
        best = self.best_state if (cfg.load_best_at_end and not self.interrupted) else None
        if best is not None and history.best_step is not None and history.best_step != history.global_step:
            unwrapped.load_state_dict(best)
            acc.print(f"restored the best model (step {history.best_step}, "
                      f"{history.metric_for_best}={history.best_metric:.4f})")
        unwrapped.eval()
        acc.wait_for_everyone()
        return history
