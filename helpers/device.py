"""Which device and precision to use: asked for, never hard-coded (no probing at import)."""

from __future__ import annotations

import contextlib
import platform
import resource
import sys

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def best_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels (AVX512-BF16 / AMX), where bf16 autocast is fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str = "auto", device: torch.device | None = None, *,
                      allow_fp16: bool = True) -> str:
    """'auto' -> bf16 where the hardware runs it natively, else fp16 (GPU, if allowed) or fp32.

    `allow_fp16=False` for models that overflow in fp16 (T5): they get bf16 or fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"PRECISION must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    device = device or best_device()
    if precision == "fp16" and not allow_fp16:
        raise ValueError("This model overflows in fp16 (T5 does); use PRECISION='bf16' or 'fp32'.")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 needs a GPU; on a CPU use PRECISION='bf16' (if supported) or 'fp32'.")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("This GPU has no bf16 support; use PRECISION='fp16' or 'fp32'.")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16" if allow_fp16 else "fp32"
    if device.type == "cpu" and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """An autocast context for bf16/fp16, a no-op for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def describe() -> str:
    """One line about the hardware, for the top of a notebook."""
    device = best_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        what = f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    elif device.type == "mps":
        what = "Apple GPU (mps)"
    else:
        import os

        what = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return (f"device: {device.type} | {what} | auto precision: {resolve_precision('auto', device)} | "
            f"torch {torch.__version__} | python {sys.version.split()[0]}")


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on `device`, or the process's peak resident memory on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def is_main_process() -> bool:
    """False in the non-zero ranks of a multi-process run (torchrun / accelerate launch set RANK):
    files are written once, by rank 0."""
    import os

    return int(os.environ.get("RANK", "0")) == 0
