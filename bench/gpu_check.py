"""The one-command GPU check: everything that only a GPU can show, in at most 8 minutes.

    python -m bench.gpu_check [--out DIR] [--budget-s 480]          # make gpu-check

On a GPU it runs, each step in its own process with its own time limit:
  1. every notebook at smoke size with PRECISION="auto", and 01 (encoder) and 04 (causal LM) again in
     fp16 and in bf16 where the GPU has them natively (a T4 refuses bf16: that refusal is checked);
  2. a tiny run killed with SIGKILL between checkpoints and resumed, in fp16 (the loss scaler's state
     is checkpointed), compared with the same run uninterrupted;
  3. notebook 05 with QLoRA (QUANTIZE_4BIT=True) where bitsandbytes is installed;
  4. two processes (torchrun) when two GPUs exist, against one;
  5. `make bench` with a BERT-base-sized encoder (`--model random:bert-base --max-length 128`): the
     loop's and the floor's samples/s, peak GPU memory and MFU;
  6. `make bench-serve`: micro-batching on the GPU.
It writes gpu-check.json (every figure) and gpu-check.md (a summary table) into --out (default
bench/results/). Without a GPU it says so and runs the same plumbing at the smallest size on the CPU,
so the test suite checks the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "scripts" / "train_tiny.py"
NOTEBOOKS = ("01", "02", "03", "04", "05")


class Check:
    """The steps' shared state: where results go, the time budget, the rows of the summary."""

    def __init__(self, out: Path, budget_s: float, gpu: dict | None):
        self.out, self.gpu, self.rows, self.last_output = out, gpu, [], ""
        self.deadline = time.monotonic() + budget_s
        self.work = out / "gpu-check-work"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, step: str, status: str, **figures) -> dict:
        row = {"step": step, "status": status, **figures}
        self.rows.append(row)
        shown = ", ".join(f"{k} {v}" for k, v in figures.items() if v is not None)
        print(f"[{status}] {step}" + (f": {shown}" if shown else ""), flush=True)
        return row

    def run(self, step: str, cmd: list[str], *, limit_s: float, env: dict | None = None):
        """A subprocess under the smaller of its own limit and what is left of the budget; None when
        the step could not run (recorded)."""
        limit = min(limit_s, self.left_s())
        if limit < 10:
            self.record(step, "not run", why="the 8-minute budget is spent")
            return None
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        env.pop("WORKBOOK_SMOKE", None)
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            self.record(step, "timed out", limit_s=round(limit))
            return None
        self.last_output = (proc.stdout or "") + (proc.stderr or "")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            self.record(step, "failed", exit=proc.returncode, error=" | ".join(tail)[-400:])
            return None
        proc.wall_s = round(time.monotonic() - start, 1)
        return proc


def gpu_info() -> dict | None:
    import torch

    import helpers as hp

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    device = torch.device("cuda", 0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
            "memory_gib": round(props.total_memory / 2**30, 1), "bf16_native": hp.device._supports_bf16(device),
            "auto_precision": hp.device.resolve_precision("auto", device), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def precisions_for(notebook: str, gpu: dict | None) -> list[str]:
    """auto for every notebook; 01 and 04 also in each half precision the GPU has (T5 never in fp16)."""
    if gpu is None or notebook not in ("01", "04"):
        return ["auto"]
    return ["auto", "fp16", "bf16"]


def notebook_step(check: Check, notebook: str, precision: str, extra: tuple[str, ...] = ()) -> None:
    step = f"notebook {notebook} ({precision}{', ' + ' '.join(extra) if extra else ''})"
    runs = check.work / f"runs-{notebook}-{precision}{'-x' if extra else ''}"
    cmd = [sys.executable, "-m", "workbook.cli", "run", notebook, "--smoke", "--precision", precision,
           "--runs-dir", str(runs), "-p", "TRACKING", "False", *extra]
    if check.gpu is None:  # the plumbing only: the smallest sizes
        cmd += ["--max-train-samples", "32", "--max-eval-samples", "16"]
    proc = check.run(step, cmd, limit_s=150)
    if proc is None:
        last = check.rows[-1]
        if (precision == "bf16" and check.gpu and not check.gpu["bf16_native"] and last["status"] == "failed"
                and "only emulates bf16" in check.last_output):
            last["status"] = "refused as expected"  # a T4 / V100 only emulates bf16: the refusal is the check
        return
    metrics = json.loads(next(runs.rglob("metrics.json")).read_text())  # smoke runs: runs/smoke/<notebook>/
    train, test = metrics.get("train", {}), metrics.get("test", {})
    headline = {k: test[k] for k in ("accuracy", "macro_f1", "rougeL") if k in test}
    check.record(step, "ok", wall_s=proc.wall_s, precision=train.get("precision"), device=train.get("device"),
                 samples_per_s=train.get("samples_per_s"), peak_mem_mb=train.get("peak_mem_mb"),
                 skipped_steps=train.get("skipped_steps"), **headline)


def _tiny(check: Check, name: str, *args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    precision = "fp16" if check.gpu else "fp32"
    return [*(launcher or (sys.executable,)), str(TINY), str(check.work / f"{name}.json"), "--steps", "16",
            "--dropout", "0.1", "--precision", precision, *args]


def kill_and_resume_step(check: Check) -> None:
    """Uninterrupted vs SIGKILLed after checkpoint-8 and resumed: the same losses (fp16 on a GPU)."""
    step = f"kill and resume ({'fp16' if check.gpu else 'fp32'})"
    if check.run(step, _tiny(check, "whole"), limit_s=120) is None:
        return
    ckpt = check.work / "kill-ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    # it hangs once checkpoint-8 is complete, so the kill cannot land after a later checkpoint or the end
    proc = subprocess.Popen(_tiny(check, "killed", "--checkpoint-dir", str(ckpt), "--pause-after-checkpoint", "8"),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    paused = check.work / "killed.json.paused"
    deadline = time.monotonic() + min(120, check.left_s())
    while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if check.run(step, _tiny(check, "resumed", "--checkpoint-dir", str(ckpt), "--resume"), limit_s=120) is None:
        return
    whole = json.loads((check.work / "whole.json").read_text())
    resumed = json.loads((check.work / "resumed.json").read_text())
    diff = max(abs(a - b) for a, b in zip(whole["losses"], resumed["losses"]))
    same = len(whole["losses"]) == len(resumed["losses"]) and diff <= 1e-3
    check.record(step, "ok" if same and resumed["resumed_from"] else "differs",
                 resumed_from=Path(resumed["resumed_from"] or "-").name, max_loss_diff=f"{diff:.2e}",
                 loss_scale=resumed.get("loss_scale"), skipped_steps=resumed.get("skipped_steps"))


def qlora_step(check: Check) -> None:
    import importlib.util

    if check.gpu is None:
        check.record("notebook 05 (QLoRA)", "skipped", why="4-bit kernels need a CUDA GPU")
    elif importlib.util.find_spec("bitsandbytes") is None:
        check.record("notebook 05 (QLoRA)", "skipped", why="bitsandbytes is not installed")
    else:
        notebook_step(check, "05", "auto", ("-p", "QUANTIZE_4BIT", "True"))


def two_process_step(check: Check) -> None:
    if check.gpu is None or check.gpu["count"] < 2:
        check.record("two processes (torchrun)", "skipped", why="needs two GPUs" if check.gpu else "no GPU")
        return
    one = check.run("two processes (torchrun)", _tiny(check, "one"), limit_s=120)
    two = one and check.run("two processes (torchrun)", _tiny(check, "two", launcher=(
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")), limit_s=180)
    if two is None:
        return
    a, b = (json.loads((check.work / f"{n}.json").read_text())["losses"] for n in ("one", "two"))
    check.record("two processes (torchrun)", "ok", wall_s=two.wall_s,
                 max_loss_diff=f"{max(abs(x - y) for x, y in zip(a, b)):.2e}")


def bench_step(check: Check) -> None:
    out = check.work / "bench.json"
    size = (["--model", "random:bert-base", "--max-length", "128", "--max-train-samples", "2000", "--repeats", "1"]
            if check.gpu else ["--model", "random:tiny", "--rows", "200", "--repeats", "1", "--max-length", "64"])
    cmd = [sys.executable, "-m", "bench.run", *size, "--epochs", "1", "--variants", "loop,floor",
           "--skip-generation", "--out", str(out)]
    if check.run("make bench (loop vs floor)", cmd, limit_s=240) is None:
        return
    results = json.loads(out.read_text())
    for key in ("loop", "floor"):
        r = results.get("results", results).get(key, {})
        mfu = r.get("mfu")
        check.record(f"make bench: {key}", "ok", device=r.get("device"), precision=r.get("precision"),
                     samples_per_s=round(r.get("train_samples_per_s", 0), 1),
                     peak_gpu_mb=round(r["peak_gpu_mb"]) if r.get("peak_gpu_mb") else None,
                     mfu=f"{mfu:.1%}" if mfu else None)


def serve_step(check: Check) -> None:
    size = ["--requests", "256", "--summarizer-requests", "64", "--device", "cuda"] if check.gpu else [
        "--requests", "8", "--summarizer-requests", "4", "--clients", "1,2"]
    if check.run("make bench-serve", [sys.executable, "-m", "bench.serve", *size], limit_s=150) is None:
        return
    results = json.loads((ROOT / "bench" / "serve.json").read_text())
    for kind in ("classifier", "summarizer"):
        runs = results.get(kind, {})
        top = max(runs.get("on", {"0": None}), key=int)
        on, off = runs.get("on", {}).get(top), runs.get("off", {}).get(top)
        if on and off:
            check.record(f"make bench-serve: {kind}", "ok", clients=top, requests_per_s=on["requests_per_s"],
                         batching_gain=f"{on['requests_per_s'] / off['requests_per_s']:.2f}x")


def notebooks_step(check: Check) -> None:
    for notebook in NOTEBOOKS if check.gpu else ("01",):
        for precision in precisions_for(notebook, check.gpu):
            notebook_step(check, notebook, precision)


STEPS = {"notebooks": notebooks_step, "resume": kill_and_resume_step, "qlora": qlora_step,
         "processes": two_process_step, "bench": bench_step, "serve": serve_step}


def summary(check: Check) -> str:
    gpu = check.gpu
    head = (f"GPU: {gpu['name']} x{gpu['count']} (compute capability {gpu['capability']}, {gpu['memory_gib']} GiB, "
            f"auto precision {gpu['auto_precision']}; torch {gpu['torch']}, CUDA {gpu['cuda']})" if gpu else
            "No GPU here (torch.cuda.is_available() is False): the plumbing ran at the smallest size on the CPU.")
    lines = ["# GPU check", "", head, "", "| step | status | figures |", "|---|---|---|"]
    for row in check.rows:
        figures = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("step", "status") and v is not None)
        lines.append(f"| {row['step']} | {row['status']} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for gpu-check.json / .md")
    p.add_argument("--budget-s", type=float, default=480, help="the whole check's time budget (default 8 minutes)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"which steps, comma-separated (default all: "
                   f"{','.join(STEPS)})")
    args = p.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; choose from {','.join(STEPS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gpu = gpu_info()
    print(f"GPU: {gpu}" if gpu else "No GPU here: running the plumbing at the smallest size on the CPU.", flush=True)
    check = Check(Path(args.out), args.budget_s, gpu)
    for name in args.steps.split(","):
        STEPS[name](check)
    (check.out / "gpu-check.json").write_text(json.dumps({"gpu": gpu, "steps": check.rows}, indent=2))
    text = summary(check)
    (check.out / "gpu-check.md").write_text(text)
    print("\n" + text)
    failed = [r["step"] for r in check.rows if r["status"] in ("failed", "differs")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
