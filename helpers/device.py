"""Which device and precision to use: asked for, never hard-coded (no probing at import).

The decisions (docs/architecture.md, "Precision"):
- a GPU of compute capability 8+ (A10, A100, L4, H100) runs bf16 natively: `auto` takes bf16;
- a T4 or V100 (capability 7.x) only *emulates* bf16, slowly: `auto` takes fp16 with a loss scaler
  there, and an explicit `bf16` is refused (torch's `is_bf16_supported` says True on them, because
  by default it counts emulation);
- models that overflow in fp16 (T5) pass `allow_fp16=False`: bf16 where native, else fp32;
- a CPU with AVX512-BF16 / AMX runs bf16 natively; other CPUs run fp32; fp16 needs a GPU;
- Apple MPS: `auto` takes fp32 (fp16 / bf16 when asked for explicitly).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys

import torch

__all__ = ["best_device", "describe", "resolve_precision"]

_PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _local_rank() -> int:
    """This process's GPU index on its machine under torchrun / accelerate launch (LOCAL_RANK), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _num_processes() -> int:
    """How many processes this run has (WORLD_SIZE under torchrun / accelerate launch), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def best_device() -> torch.device:
    """This process's best device: its own GPU under torchrun (cuda:LOCAL_RANK), else cuda, mps or cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", _local_rank() % max(1, torch.cuda.device_count()))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX), where bf16 autocast is fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _gpu_capability(device: torch.device | None = None) -> tuple[int, int]:
    """The CUDA compute capability of `device` (e.g. (7, 5) for a T4, (8, 0) for an A100)."""
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index))


def _gpu_supports_bf16(device: torch.device | None = None) -> bool:
    """Native bf16 on this GPU (compute capability 8+, or ROCm). `torch.cuda.is_bf16_supported` with no argument
    also says True where bf16 is only emulated (T4, V100), which is slow: hence
    `including_emulation=False`."""
    index = device.index if device is not None else None
    if index is None or index == torch.cuda.current_device():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    with torch.cuda.device(index):  # the library asks the current device
        return torch.cuda.is_bf16_supported(including_emulation=False)


def _supports_bf16(device: torch.device) -> bool:
    """Native bf16 on `device` (a CUDA GPU of capability 8+, or a CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return _gpu_supports_bf16(device)
    if device.type == "cpu":
        return _cpu_supports_bf16()
    return False


def resolve_precision(precision: str = "auto", device: torch.device | None = None, *,
                      allow_fp16: bool = True) -> str:
    """'auto' -> bf16 where the hardware runs it natively, else fp16 (GPU, if allowed) or fp32.

    `allow_fp16=False` for models that overflow in fp16 (T5): they get bf16 or fp32.
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"PRECISION must be one of {', '.join(_PRECISIONS)}, got {precision!r}.")
    device = device or best_device()
    if precision == "fp16" and not allow_fp16:
        raise ValueError("This model overflows in fp16 (T5 does); use PRECISION='bf16' (where the hardware "
                         "has it) or 'fp32'.")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 needs a GPU; on a CPU use PRECISION='bf16' (if supported) or 'fp32'.")
    if precision == "bf16" and device.type == "cuda" and not _supports_bf16(device):
        capability = ".".join(map(str, _gpu_capability(device)))
        raise ValueError(f"PRECISION='bf16': this GPU (compute capability {capability}) only emulates bf16, slowly; "
                         + ("use PRECISION='fp16' (loss-scaled) or 'fp32'." if allow_fp16 else
                            "use PRECISION='fp32' (this model overflows in fp16)."))
    if precision != "auto":
        return precision
    if _supports_bf16(device):
        return "bf16"
    if device.type == "cuda" and allow_fp16:
        return "fp16"
    return "fp32"


def _autocast(device: torch.device, precision: str):
    """An autocast context for bf16/fp16, a no-op for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on `device`. Asynchronous copies only on CUDA: on MPS `non_blocking` copies have
    corrupted data in several torch releases, and on a CPU there is nothing to overlap."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def _model_device(model) -> torch.device:
    """Where the model's weights are (the first parameter's device)."""
    return next(model.parameters()).device


def _place_model(model, device: torch.device | None = None) -> torch.device:
    """Put a freshly loaded model on `device` (default: the best one) before using it, as `hp.train`
    does, so a baseline is computed where the training runs, not on the CPU it was loaded to. Models
    placed by `device_map` (4-bit QLoRA bases) stay where they are."""
    if getattr(model, "hf_device_map", None) or getattr(getattr(model, "base_model", None), "hf_device_map", None):
        return _model_device(model)
    device = device or best_device()
    if _model_device(model) != device:
        model.to(device)
    return device


def describe() -> str:
    """One line about the hardware, for the top of a notebook."""
    device = best_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        count = torch.cuda.device_count()
        what = (f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}."
                f"{props.minor}){f' x{count}' if count > 1 else ''}")
    elif device.type == "mps":
        what = "Apple GPU (mps)"
    else:
        what = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return (f"device: {device.type} | {what} | auto precision: {resolve_precision('auto', device)} | "
            f"torch {torch.__version__} | python {sys.version.split()[0]}")


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on `device`; on Apple's MPS the memory the Metal driver holds for this process
    (torch keeps no MPS peak: this is the allocator's high-water mark, cached blocks included, since the run
    emptied the cache); the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _is_main_process() -> bool:
    """False in the non-zero ranks of a multi-process run (torchrun / accelerate launch set RANK):
    files are written once, by rank 0."""
    return int(os.environ.get("RANK", "0")) == 0
