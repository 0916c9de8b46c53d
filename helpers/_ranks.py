"""Several processes (`torchrun` / `accelerate launch`) are one run, not several.

- Every decision that changes what the processes do next (stop the range test, early stopping, the best
  model, the plan's refusal) is taken on numbers every process shares: a loss averaged over the processes
  (`mean`), or rank 0's value sent to all (`agree`). A decision taken on one process's own numbers lets
  that process leave a loop the others are still in, and they wait for it forever in the next all-reduce.
- A notebook run in several processes prints one report, rank 0's: `one_report()` (called by
  `Run.claim_output_dir`) silences the other processes' output; once `hp.train` is done they end
  (`leave_after_training`), because what follows (saving, metrics.json, tracking, plots, printed
  predictions) is rank 0's, and reading files only rank 0 writes would fail. Their errors still show,
  on stderr with their rank.

In one process every function here is a no-op that returns its input.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from .device import _is_main_process, _num_processes

_leave_after_training = False  # set by one_report(): a notebook run, whose other ranks end after hp.train


def _group() -> bool:
    """A process group of several processes is up (Accelerate starts it with the first training loop)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(value: Any) -> Any:
    """Rank 0's `value` on every process (plain values, pickled); `value` itself in one process."""
    if not _group():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every process's `value`, in rank order; `[value]` in one process."""
    if not _group():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over the processes (a loss every process then judges alike)."""
    if not _group():
        return tensor
    import torch.distributed as dist

    total = tensor.detach().clone().float()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def one_report() -> str:
    """In a notebook run of several processes: the non-zero ranks print nothing from here on (no prints, no
    warnings, no library logs or progress bars; their tracebacks go to stderr with their rank) and end once
    `hp.train` is done. Returns the line rank 0 prints about it ("" in one process)."""
    global _leave_after_training
    n = _num_processes()
    if n == 1:
        return ""
    _leave_after_training = True
    if _is_main_process():
        return (f"{n} processes: this one (rank 0) writes the files and the report; the other {n - 1} train with it "
                "and end when training is done, without output unless they fail.")
    _silence(int(os.environ.get("RANK", "0")))
    return ""


def _silence(rank: int) -> None:
    import logging
    import warnings

    # For the rest of this process's life: prints, warnings and progress bars (tqdm writes to sys.stderr) go
    # nowhere; what is already running keeps its streams. Errors still reach the real stderr (sys.__stderr__).
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # transformers, datasets, accelerate: their handlers hold the real stderr

    def show(text: str) -> None:
        sys.__stderr__.write(f"[rank {rank}] {text}\n")
        sys.__stderr__.flush()

    sys.excepthook = lambda etype, value, tb: show("".join(__import__("traceback").format_exception(etype, value, tb)))
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:  # `ipython NB.ipynb` prints a cell's traceback to stdout
        shell._showtraceback = lambda etype, value, stb: show(shell.InteractiveTB.stb2text(stb))


def leave_after_training() -> None:
    """After `hp.train` (every process has passed its final barrier): a notebook run's non-zero ranks end here,
    with exit status 0, so the launcher reports the run by rank 0's outcome."""
    if _leave_after_training and _num_processes() > 1 and not _is_main_process():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
