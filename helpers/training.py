"""One training loop for every notebook: batches are dicts, the loss is `model(**batch).loss`.

Built on HF Accelerate, so the same code runs on a CPU, one GPU, or several processes
(`accelerate launch` / `torchrun`). The loop owns precision, length-grouped dynamic padding,
gradient accumulation, warmup + linear decay, clipping, periodic evaluation, early stopping,
resumable checkpoints and a NaN/inf guard, and returns a `History`.

No host sync per step: losses stay on the device and are read every `log_every_steps` steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import device as dev
from .batching import LengthGroupedBatchSampler, PadCollator, as_rows, sorted_batches
from .speedups import PARTS, CpuFastPaths

CHECKPOINT_PREFIX = "checkpoint-"


class BatchTooLargeError(RuntimeError):
    """A training batch does not fit in memory; the message says how to make it fit."""


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, a CPU allocation failure, or Python's MemoryError."""
    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


class NonFiniteLossError(RuntimeError):
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
    best_step: int | None = None
    best_metric: float | None = None
    metric_for_best: str = "loss"
    stopped_early: bool = False
    resumed_from: str | None = None
    precision: str = "fp32"
    device: str = "cpu"
    num_processes: int = 1
    fast_paths: str = ""  # the CPU fast paths used (helpers.speedups), "" when none

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
                "stopped_early": self.stopped_early, "resumed_from": self.resumed_from,
                "train_batch_size": self.train_batch_size, "grad_accum_steps": self.grad_accum_steps,
                "batch_backoffs": self.batch_backoffs, "fast_paths": self.fast_paths,
                "first_train_loss": self._window_mean(first=True), "final_train_loss": self._window_mean(first=False)}

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

def _move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(model, data, *, collate_fn: Callable | None = None, pad_token_id: int | None = None,
             batch_size: int = 64, compute_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None,
             precision: str = "auto", device: torch.device | None = None, max_batches: int | None = None,
             keep_outputs: bool = True, progress: bool = True, desc: str = "eval") -> EvalResult:
    """Loss and metrics over `data`, batched large and sorted by length; outputs back in data order.

    `compute_metrics(logits, labels) -> dict`. `max_batches` caps the cost (None: all rows).
    """
    from tqdm.auto import tqdm

    rows = as_rows(data)
    collate_fn = collate_fn or PadCollator(_pad_id(pad_token_id, model))
    device = device or next(model.parameters()).device
    precision = dev.resolve_precision(precision, device)
    batches = sorted_batches(rows.lengths, batch_size)[:max_batches]
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    losses, logits_parts, label_parts, index = [], [], [], []
    with torch.inference_mode(), dev.autocast(device, precision):
        for ids in tqdm(batches, desc=desc, leave=False, disable=not progress):
            batch = _move(collate_fn([rows[i] for i in ids]), device)
            out = model(**batch)
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


def _pad_id(pad_token_id: int | None, model) -> int:
    if pad_token_id is not None:
        return pad_token_id
    pid = getattr(model.config, "pad_token_id", None)
    return 0 if pid is None else pid


# --------------------------------------------------------------------------- checkpoints

def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its state.json exists)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_checkpoint(root: Path, step: int, *, model_state, optimizer, scheduler, state: dict, keep: int) -> Path:
    """Write into a temporary folder, then rename: a killed write never looks like a checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model_state, tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state))  # written last: marks the checkpoint complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


_LIBC_TRIM = None
TRIM_EVERY_STEPS = 100  # on CPUs, also give freed heap memory back at least this often


def trim_host_memory() -> None:
    """Give freed heap memory back to the OS (glibc `malloc_trim`). Dynamic padding allocates tensors
    of ever-different sizes; without this the resident memory of a CPU run creeps up by hundreds of MB
    of freed-but-kept blocks. Not free: the freed pages are faulted back in by the next steps (about 4%
    of a step's time when done every 10 steps), so the loop trims just before the largest batches,
    which set the peak, and every `TRIM_EVERY_STEPS` steps. A no-op off glibc."""
    global _LIBC_TRIM
    if _LIBC_TRIM is None:
        try:
            import ctypes

            _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC_TRIM = False
    if _LIBC_TRIM:
        _LIBC_TRIM(0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the loop

def _fresh_accelerator(**kwargs):
    """A new Accelerator; its state is a per-process singleton, so reset it first (keeping the
    process group) to allow several runs with different settings in one kernel."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(**kwargs)


class _NoFastPaths(contextlib.nullcontext):
    """What the loop calls when the CPU fast paths are off: the accelerator's clipping."""

    def __init__(self, accelerator):
        super().__init__()
        self.accelerator = accelerator

    def clip_grad_norm_(self, parameters, max_norm: float):
        return self.accelerator.clip_grad_norm_(parameters, max_norm)

    def describe(self) -> str:
        return ""

    def step(self, optimizer, *, sync: bool = True) -> None:
        optimizer.step()

    def dense_optimizer_state(self):
        return contextlib.nullcontext()


def _is_better(value: float, best: float | None, greater_is_better: bool) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if greater_is_better else value < best


def make_optimizer(model, lr: float, weight_decay: float, device: torch.device):
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


def train(model, train_data, eval_data=None, *, auto_batch_backoff: bool = False, **options) -> History:
    """Fine-tune `model`; see `train_once` for every option. Returns a `History`.

    When a batch does not fit in memory (the longest batch comes first, so this shows at step 1),
    the error says to halve `train_batch_size` and double `grad_accum_steps` (same effective
    batch); with `auto_batch_backoff=True` the loop does exactly that itself, restarting from the
    initial weights, until the batch fits.
    """
    batch = int(options.pop("train_batch_size", 16))
    accum = int(options.pop("grad_accum_steps", 1))
    initial = ({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
               if auto_batch_backoff else None)
    backoffs = 0
    while True:
        try:
            history = train_once(model, train_data, eval_data, train_batch_size=batch, grad_accum_steps=accum,
                                 **options)
            history.batch_backoffs = backoffs
            return history
        except Exception as err:  # noqa: BLE001 - only out-of-memory errors are handled
            if not is_out_of_memory(err):
                raise
            _free_memory()
            where = options.get("checkpoint_dir")
            if not auto_batch_backoff or batch < 2:
                raise BatchTooLargeError(
                    f"TRAIN_BATCH_SIZE={batch} does not fit in memory ({str(err).splitlines()[0][:120]}). Use "
                    f"TRAIN_BATCH_SIZE={max(1, batch // 2)} with GRAD_ACCUM_STEPS={accum * 2} (the same effective "
                    f"batch), a smaller MAX_LENGTH, or AUTO_BATCH_BACKOFF=True to let the loop find a size."
                    + (f" Checkpoints written so far stay in {where}." if where else "")) from err
            batch, accum, backoffs = batch // 2, accum * 2, backoffs + 1
            model.load_state_dict(initial)
            print(f"out of memory: retrying from the start with train_batch_size={batch}, "
                  f"grad_accum_steps={accum} (same effective batch)")


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_once(model, train_data, eval_data=None, *, collate_fn: Callable | None = None,
          pad_token_id: int | None = None, num_epochs: float = 1, max_steps: int | None = None,
          train_batch_size: int = 16, eval_batch_size: int = 64, lr: float = 5e-5, weight_decay: float = 0.01,
          warmup_ratio: float = 0.1, grad_accum_steps: int = 1, max_grad_norm: float | None = 1.0,
          precision: str = "auto", allow_fp16: bool = True, group_by_length: bool = True,
          eval_every_steps: int | None = None, eval_each_epoch: bool = True, max_eval_batches: int | None = None,
          compute_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None,
          metric_for_best: str = "loss", greater_is_better: bool | None = None,
          early_stopping_patience: int | None = None, load_best_at_end: bool = True,
          checkpoint_dir: str | Path | None = None, save_every_steps: int | None = None, keep_checkpoints: int = 2,
          resume: bool | str | Path = False, log_every_steps: int = 10, seed: int = 42, progress: bool = True,
          cpu_fast_paths: bool | Collection[str] = True, stop_after_steps: int | None = None) -> History:
    """Fine-tune `model` on tokenized `train_data`; returns a `History`.

    `train_data` / `eval_data`: `datasets.Dataset` (or `TokenizedRows`) with `input_ids` and
    `labels` (or `label`). Training length is `num_epochs`, or `max_steps` optimizer steps when
    given. `train_batch_size` is the global batch per micro-step (split across processes);
    the effective batch is `train_batch_size * grad_accum_steps`.

    Evaluation runs every `eval_every_steps` and at each epoch end; `metric_for_best`
    ("loss" or a key of `compute_metrics`) picks the best model, which is restored at the end
    when `load_best_at_end`; `early_stopping_patience` evaluations without improvement stop.

    With `checkpoint_dir`, checkpoints are written every `save_every_steps` and at each epoch
    end (atomically, the newest `keep_checkpoints` kept); `resume=True` continues from the
    newest complete one (or a path), restoring model, optimizer, scheduler, RNG and data order.
    `cpu_fast_paths` (CPU only): cheaper dropout masks, bf16 attention with dropout and row-sparse
    input-embedding gradients while training (`helpers.speedups`; the model is restored afterwards);
    False turns them off, a subset of ("dropout", "attention", "embedding") picks some.
    `stop_after_steps` ends the run early at that step (as an interruption would), for tests.
    """
    from accelerate.utils import DataLoaderConfiguration
    from tqdm.auto import tqdm

    if greater_is_better is None:
        greater_is_better = metric_for_best != "loss"
    if max_steps is None and not num_epochs > 0:
        raise ValueError(f"num_epochs must be positive (got {num_epochs}), or give max_steps.")
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be at least 1, got {grad_accum_steps}.")

    device_guess = dev.best_device()
    precision = dev.resolve_precision(precision, device_guess, allow_fp16=allow_fp16)
    accelerator = _fresh_accelerator(
        mixed_precision={"fp32": "no"}.get(precision, precision), gradient_accumulation_steps=grad_accum_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True), step_scheduler_with_optimizer=False,
        cpu=device_guess.type == "cpu")  # on CPUs, torchrun / accelerate launch give several gloo processes
    device = accelerator.device
    if train_batch_size % accelerator.num_processes:
        raise ValueError(f"train_batch_size {train_batch_size} is split across {accelerator.num_processes} "
                         "processes; make it a multiple of that.")
    seed_everything(seed)

    train_rows = as_rows(train_data)
    eval_rows = as_rows(eval_data) if eval_data is not None else None
    if len(train_rows) == 0:
        raise ValueError("The training split is empty; check the data caps (MAX_TRAIN_SAMPLES) and filters.")
    collate_fn = collate_fn or PadCollator(_pad_id(pad_token_id, model),
                                           pad_to_multiple_of=8 if device.type == "cuda" else None)
    sampler = LengthGroupedBatchSampler(train_rows.lengths, train_batch_size, seed=seed,
                                        group_by_length=group_by_length)
    # A private generator: creating the DataLoader iterator must not consume the global RNG,
    # or a resumed run would draw different dropout masks than an uninterrupted one.
    loader = torch.utils.data.DataLoader(train_rows, batch_sampler=sampler, collate_fn=collate_fn,
                                         generator=torch.Generator().manual_seed(seed))

    model.train()
    optimizer = make_optimizer(model, lr, weight_decay, device)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, math.ceil(len(loader) / grad_accum_steps))
    total_steps = max_steps if max_steps is not None else math.ceil(steps_per_epoch * num_epochs)
    warmup_steps = int(warmup_ratio * total_steps)

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lr_lambda)

    history = History(metric_for_best=metric_for_best, precision=precision, device=str(device),
                      num_processes=accelerator.num_processes, train_batch_size=train_batch_size,
                      grad_accum_steps=grad_accum_steps)
    best_state: dict[str, torch.Tensor] | None = None
    evals_without_improvement = 0
    start_epoch, skip_batches = 0, 0
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else None
    unwrapped = accelerator.unwrap_model(model)

    # ---- resume
    if resume:
        ckpt = Path(resume) if not isinstance(resume, bool) else (latest_checkpoint(ckpt_root) if ckpt_root else None)
        if isinstance(resume, bool) and ckpt_root is None:
            raise ValueError("resume=True needs checkpoint_dir (where the checkpoints are).")
        if ckpt is None:
            accelerator.print(f"resume: no complete checkpoint in {ckpt_root}; starting from scratch")
        else:
            if not (ckpt / "state.json").exists():
                raise ValueError(f"{ckpt} is not a complete checkpoint (no state.json); pick another or start fresh.")
            state = json.loads((ckpt / "state.json").read_text())
            if state.get("total_steps") != total_steps or state.get("train_rows") != len(train_rows):
                raise ValueError(
                    f"Checkpoint {ckpt} belongs to a different run (steps {state.get('total_steps')} vs {total_steps}, "
                    f"rows {state.get('train_rows')} vs {len(train_rows)}); resume with the same parameters, or "
                    "start fresh in a new OUTPUT_DIR.")
            unwrapped.load_state_dict(torch.load(ckpt / "model.pt", map_location=device, weights_only=True))
            optimizer.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device,
                                                           weights_only=False))
            scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
            _set_rng_state(torch.load(ckpt / "rng.pt", weights_only=False))
            history = History.from_dict(state["history"])
            history.resumed_from = str(ckpt)
            evals_without_improvement = state["evals_without_improvement"]
            start_epoch, skip_batches = state["epoch"], state["batches_done_in_epoch"]
            best_path = ckpt_root / "best_model.pt" if ckpt_root else None
            if best_path is not None and best_path.exists() and history.best_step is not None:
                best_state = torch.load(best_path, map_location="cpu", weights_only=True)
            accelerator.print(f"resumed from {ckpt} at step {history.global_step}")

    def run_eval(epoch_float: float) -> bool:
        """Evaluate, record, track the best model; True when early stopping says stop."""
        nonlocal best_state, evals_without_improvement
        if eval_rows is None:
            return False
        result = evaluate(unwrapped, eval_rows, collate_fn=collate_fn, batch_size=eval_batch_size,
                          compute_metrics=compute_metrics, precision=precision, device=device,
                          max_batches=max_eval_batches, progress=progress and accelerator.is_main_process)
        history.eval_wall_s += result.wall_s
        record = {"step": history.global_step, "epoch": round(epoch_float, 3),
                  "elapsed_s": round(time.perf_counter() - run_start, 3), **result.to_dict()}
        history.evals.append(record)
        if metric_for_best not in record:
            raise KeyError(f"metric_for_best={metric_for_best!r} is not among the evaluation metrics "
                           f"{sorted(record)}; pick one of them.")
        value = float(record[metric_for_best])
        shown = ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("step", "epoch", "elapsed_s")
                          and isinstance(v, float))
        if accelerator.is_main_process:
            tqdm.write(f"step {history.global_step} (epoch {epoch_float:.2f}): {shown}")
        if _is_better(value, history.best_metric, greater_is_better):
            history.best_metric, history.best_step = value, history.global_step
            evals_without_improvement = 0
            if load_best_at_end:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}
                if ckpt_root is not None and accelerator.is_main_process:
                    ckpt_root.mkdir(parents=True, exist_ok=True)
                    _atomic_torch_save(best_state, ckpt_root / "best_model.pt")
        else:
            evals_without_improvement += 1
        return early_stopping_patience is not None and evals_without_improvement >= early_stopping_patience

    loss_buffer: list[torch.Tensor] = []
    lr_buffer: list[float] = []
    pending_steps: list[int] = []

    def flush_losses() -> None:
        """The one host sync: read the buffered per-step losses, check they are finite."""
        if not loss_buffer:
            return
        stacked = torch.stack(loss_buffer).float()
        if accelerator.num_processes > 1:
            stacked = accelerator.reduce(stacked, reduction="mean")
        values = stacked.cpu().tolist()
        for step, value, lr_value in zip(pending_steps, values, lr_buffer):
            if not math.isfinite(value):
                last = latest_checkpoint(ckpt_root) if ckpt_root else None
                kept = f" The last good checkpoint, {last}, stays on disk." if last else ""
                raise NonFiniteLossError(
                    f"Loss became {value} at step {step}. Likely causes: learning rate too high (LR={lr}), "
                    f"fp16 overflow (use PRECISION='bf16' or 'fp32'), or bad inputs (labels out of range). "
                    f"Fix: start over with a lower learning rate, e.g. LR={lr / 10:g} with OVERWRITE=True (a "
                    f"resumed run keeps its parameters, so it cannot change LR).{kept} "
                    "The model in memory is not usable and was not saved.")
            history.steps.append(step)
            history.train_loss.append(value)
            history.learning_rate.append(lr_value)
            history.examples_seen.append(history.total_examples)
        loss_buffer.clear()
        lr_buffer.clear()
        pending_steps.clear()

    def save_checkpoint(epoch: int, batches_done: int) -> None:
        flush_losses()  # never checkpoint a model that has already gone non-finite
        if ckpt_root is None or not accelerator.is_main_process:
            return
        state = {"history": history.to_dict(), "epoch": epoch, "batches_done_in_epoch": batches_done,
                 "evals_without_improvement": evals_without_improvement, "total_steps": total_steps,
                 "train_rows": len(train_rows), "seed": seed}
        with fast_paths.dense_optimizer_state():  # checkpoints look the same with or without the fast paths
            _save_checkpoint(ckpt_root, history.global_step, model_state=unwrapped.state_dict(),
                             optimizer=optimizer, scheduler=scheduler, state=state, keep=keep_checkpoints)

    bar = tqdm(total=total_steps, initial=history.global_step, desc="train",
               disable=not (progress and accelerator.is_main_process), mininterval=1.0, dynamic_ncols=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    stop = history.global_step >= total_steps
    interrupted = False
    epoch = start_epoch
    step_loss = torch.zeros((), device=device)
    micro = 0
    run_start, eval_s_before, ckpt_s = time.perf_counter(), history.eval_wall_s, 0.0
    if cpu_fast_paths and device.type == "cpu":
        parts = PARTS if cpu_fast_paths is True else tuple(cpu_fast_paths)
        fast_paths = CpuFastPaths(unwrapped, optimizer.optimizer, parts=parts,
                                  sparse_embedding=accelerator.num_processes == 1, clip=accelerator.clip_grad_norm_)
    else:
        fast_paths = _NoFastPaths(accelerator)
    history.fast_paths = fast_paths.describe()
    if history.fast_paths and progress and accelerator.is_main_process:
        tqdm.write(f"CPU fast paths (cpu_fast_paths=False turns them off): {history.fast_paths}")
    optimizer.zero_grad(set_to_none=True)  # start clean: no gradients left from before the run
    largest_batch, last_trim = 0, history.global_step
    with fast_paths:
        while not stop:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
            batches_done, skip_batches = skip_batches, 0
            for batch in epoch_loader:
                if device.type == "cpu":
                    tokens = batch["input_ids"].numel()
                    if tokens >= largest_batch or history.global_step - last_trim >= TRIM_EVERY_STEPS:
                        # the peak resident memory is set by the largest batches: free the heap just before
                        largest_batch, last_trim = max(largest_batch, tokens), history.global_step
                        trim_host_memory()
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    step_loss += loss.detach()
                    micro += 1
                    if accelerator.sync_gradients and max_grad_norm:
                        fast_paths.clip_grad_norm_(model.parameters(), max_grad_norm)
                    fast_paths.step(optimizer, sync=accelerator.sync_gradients)
                    optimizer.zero_grad(set_to_none=True)
                batches_done += 1
                history.total_examples += batch["input_ids"].shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                history.global_step += 1
                loss_buffer.append(step_loss / micro)
                lr_buffer.append(scheduler.get_last_lr()[0])
                pending_steps.append(history.global_step)
                step_loss, micro = torch.zeros((), device=device), 0
                bar.update(1)
                history.epoch = epoch + batches_done / len(loader)
                if history.global_step % log_every_steps == 0:
                    flush_losses()
                    bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", refresh=False)
                if eval_every_steps and history.global_step % eval_every_steps == 0:
                    stop = run_eval(history.epoch)
                if save_every_steps and history.global_step % save_every_steps == 0:
                    t = time.perf_counter()
                    save_checkpoint(epoch, batches_done)
                    ckpt_s += time.perf_counter() - t
                stop = stop or history.global_step >= total_steps
                if stop_after_steps is not None and history.global_step >= stop_after_steps:
                    stop = interrupted = True
                if stop:
                    break
            if batches_done >= len(loader):  # the epoch ran to its end
                epoch += 1
                history.epoch = float(epoch)
                if interrupted:
                    break
                if eval_each_epoch and not (history.evals and history.evals[-1]["step"] == history.global_step):
                    stop = run_eval(float(epoch)) or stop
                if ckpt_root is not None:
                    t = time.perf_counter()
                    save_checkpoint(epoch, 0)
                    ckpt_s += time.perf_counter() - t
    flush_losses()
    bar.close()
    if not interrupted and eval_each_epoch and not (history.evals and history.evals[-1]["step"] == history.global_step):
        run_eval(history.epoch)  # stopped mid-epoch (max_steps): evaluate the final model too
    history.train_wall_s += time.perf_counter() - run_start - (history.eval_wall_s - eval_s_before) - ckpt_s
    history.stopped_early = bool(early_stopping_patience is not None
                                 and evals_without_improvement >= early_stopping_patience)
    if interrupted:
        return _finish(history, accelerator, model, device, None)
    return _finish(history, accelerator, model, device, best_state if load_best_at_end else None)


def _finish(history: History, accelerator, model, device, best_state) -> History:
    history.samples_per_s = history.total_examples / history.train_wall_s if history.train_wall_s > 0 else 0.0
    history.peak_mem_mb = dev.peak_memory_mb(device)
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if best_state is not None and history.best_step is not None and history.best_step != history.global_step:
        unwrapped.load_state_dict(best_state)
        accelerator.print(f"restored the best model (step {history.best_step}, "
                          f"{history.metric_for_best}={history.best_metric:.4f})")
    unwrapped.eval()
    accelerator.wait_for_everyone()
    return history
