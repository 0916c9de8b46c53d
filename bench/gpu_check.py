"""The one-command GPU check: what only a GPU can show, the most valuable first, in at most 8 minutes.

    python -m bench.gpu_check [--out DIR] [--budget-s 480]          # make gpu-check

On a GPU it runs, each step in its own process with its own time limit, in this order (when the budget
runs out, what is cut is what matters least):
  1. kill and resume: a tiny run SIGKILLed between checkpoints and resumed, in fp16 (the loss scaler's
     state is checkpointed), against the same run uninterrupted: pass when the losses are the same;
  2. speed (bench/speed.py): a BERT-base-sized encoder on fixed 128- and 512-token batches, 100 timed steps
     after warm-up, no evaluation inside the timing: the loop, the plain PyTorch floor and the `Trainer`,
     each with its MFU; pass when loop/floor >= 0.9 and loop/Trainer >= 1.0;
  3. serving: `make bench-serve` on the GPU (micro-batching on against off: pass when it gains), and the
     served answers against `workbook predict`'s: pass when the labels are equal and the probabilities
     within 1e-4;
  4. two processes (torchrun) when two GPUs exist, by epochs with a remainder batch, against one process:
     pass when they see the same rows and their losses agree within 1e-3;
  5. notebook 05 with QLoRA (QUANTIZE_4BIT=True) where bitsandbytes is installed;
  6. every notebook at smoke size with PRECISION="auto", and 01 (encoder) and 04 (causal LM) again in
     each other precision (not again the one "auto" chose; a GPU that only emulates bf16 must refuse it):
     pass when the training loss fell.
Every row says pass or fail. The exit status is 1 when a correctness row fails (an error, a resume or two
processes that differ, a loss that did not fall, served answers unlike predict's), not for a speed target
missed (speed, micro-batching's gain). It writes gpu-check.json (every figure) and gpu-check.md (the table)
into --out (default: $OUT when the device tool runs it, else bench/results/). Without a GPU it says so and runs
the same plumbing at the smallest size on the CPU, so the test suite checks the script itself.
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

    def record(self, step: str, status: str, verdict: str | None = None, **figures) -> dict:
        """One row: its status (ok, failed, differs, timed out, not run, skipped, refused as expected), its
        verdict (pass / fail; a row that could not run fails, a skipped one is "-") and its figures."""
        if verdict is None:
            verdict = {"ok": "pass", "refused as expected": "pass", "skipped": "-"}.get(status, "fail")
        row = {"step": step, "status": status, "verdict": verdict, **figures}
        self.rows.append(row)
        shown = ", ".join(f"{k} {v}" for k, v in figures.items() if v is not None)
        print(f"[{verdict}] {step} ({status})" + (f": {shown}" if shown else ""), flush=True)
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
    """auto for every notebook; 01 and 04 also in each other half precision (not again the one auto chose; on a
    GPU without native bf16 the bf16 run checks its refusal)."""
    if gpu is None or notebook not in ("01", "04"):
        return ["auto"]
    return ["auto", *(p for p in ("fp16", "bf16") if p != gpu.get("auto_precision"))]


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
    first, final = train.get("first_train_loss"), train.get("final_train_loss")
    fell = first is not None and final is not None and final < first
    check.record(step, "ok", "pass" if fell else "fail", wall_s=proc.wall_s, precision=train.get("precision"),
                 device=train.get("device"), loss=f"{first} -> {final}", samples_per_s=train.get("samples_per_s"),
                 peak_mem_mb=train.get("peak_mem_mb"), skipped_steps=train.get("skipped_steps"), **headline)


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
    exact = same and bool(resumed["resumed_from"])
    check.record(step, "ok" if exact else "differs", "pass" if exact else "fail",
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


def speed_step(check: Check) -> None:
    """bench/speed.py: loop, floor and Trainer at 128 and 512 tokens; a row per shape with the MFUs and ratios."""
    out = check.work / "speed.json"
    size = [] if check.gpu else ["--tiny", "--steps", "4", "--warmup", "2"]
    if check.run("speed (loop, floor, Trainer)", [sys.executable, "-m", "bench.speed", *size, "--out", str(out)],
                 limit_s=300) is None:
        return
    result = json.loads(out.read_text())
    for length, shape in result["shapes"].items():
        met = shape["loop_over_floor"] >= 0.9 and shape["loop_over_trainer"] >= 1.0
        mfu = {name: f"{shape[name]['mfu']:.1%}" if shape[name]["mfu"] is not None else "-"
               for name in ("loop", "floor", "trainer")}
        check.record(f"speed: {length} tokens x {shape['rows_per_batch']} rows ({result['precision']})", "ok",
                     "pass" if met else "fail", loop_samples_per_s=shape["loop"]["samples_per_s"],
                     loop_over_floor=f"{shape['loop_over_floor']:.2f}x",
                     loop_over_trainer=f"{shape['loop_over_trainer']:.2f}x",
                     mfu=f"loop {mfu['loop']} / floor {mfu['floor']} / Trainer {mfu['trainer']}")


def serve_step(check: Check) -> None:
    size = ["--requests", "256", "--summarizer-requests", "64", "--device", "cuda"] if check.gpu else [
        "--requests", "8", "--summarizer-requests", "4", "--clients", "1,2"]
    if check.run("make bench-serve", [sys.executable, "-m", "bench.serve", *size], limit_s=150) is not None:
        results = json.loads((ROOT / "bench" / "serve.json").read_text())
        for kind in ("classifier", "summarizer"):
            runs = results.get(kind, {})
            top = max(runs.get("on", {"0": None}), key=int)
            on, off = runs.get("on", {}).get(top), runs.get("off", {}).get(top)
            if on and off:
                gain = on["requests_per_s"] / off["requests_per_s"]
                check.record(f"make bench-serve: {kind}", "ok", "pass" if gain >= 1.0 else "fail", clients=top,
                             requests_per_s=on["requests_per_s"], batching_gain=f"{gain:.2f}x")
    served_equals_predict(check)


def served_equals_predict(check: Check, n: int = 16) -> None:
    """The web API's answers for `n` texts against `workbook predict --json`'s, same folder, same device."""
    import urllib.request

    from bench import serve

    step = "served answers = workbook predict"
    folder, texts = serve.model_folders()["classifier"], serve.texts(n)
    proc, url = serve.start(folder, batching=True, device="cuda" if check.gpu else "cpu")
    try:
        served = []
        for text in texts:
            request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                served.append(json.loads(response.read()))
    finally:
        proc.kill()
        proc.wait()
    predicted = check.run(step, [sys.executable, "-m", "workbook.cli", "predict", str(folder), "--json", *texts],
                          limit_s=120)
    if predicted is None:
        return
    predicted = json.loads(predicted.stdout)
    labels_equal = [s["label"] for s in served] == [p["label"] for p in predicted]
    gap = max(abs(s["probabilities"][k] - v) for s, p in zip(served, predicted) for k, v in p["probabilities"].items())
    check.record(step, "ok", "pass" if labels_equal and gap <= 1e-4 else "fail", texts=n, labels_equal=labels_equal,
                 max_probability_diff=f"{gap:.1e}")


def two_process_step(check: Check) -> None:
    """By epochs on 97 rows (a remainder batch of one row), one process against two."""
    step = "two processes (torchrun)"
    if check.gpu is None or check.gpu["count"] < 2:
        check.record(step, "skipped", why="needs two GPUs" if check.gpu else "no GPU")
        return
    by_epochs = ("--epochs", "2", "--train-rows", "97")
    one = check.run(step, _tiny(check, "one", *by_epochs), limit_s=120)
    two = one and check.run(step, _tiny(check, "two", *by_epochs, launcher=(
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")), limit_s=180)
    if two is None:
        return
    a, b = (json.loads((check.work / f"{n}.json").read_text()) for n in ("one", "two"))
    diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
    same = len(a["losses"]) == len(b["losses"]) and diff <= 1e-3 and a["examples_seen"] == b["examples_seen"]
    check.record(step, "ok", "pass" if same else "fail", wall_s=two.wall_s, max_loss_diff=f"{diff:.2e}",
                 steps=len(b["losses"]), examples_seen=b["examples_seen"])


def notebooks_step(check: Check) -> None:
    for notebook in NOTEBOOKS if check.gpu else ("01",):
        for precision in precisions_for(notebook, check.gpu):
            notebook_step(check, notebook, precision)


# In the order they run: the most valuable first (what the budget cuts comes last).
STEPS = {"resume": kill_and_resume_step, "speed": speed_step, "serve": serve_step, "processes": two_process_step,
         "qlora": qlora_step, "notebooks": notebooks_step}


def summary(check: Check) -> str:
    gpu = check.gpu
    head = (f"GPU: {gpu['name']} x{gpu['count']} (compute capability {gpu['capability']}, {gpu['memory_gib']} GiB, "
            f"auto precision {gpu['auto_precision']}; torch {gpu['torch']}, CUDA {gpu['cuda']})" if gpu else
            "No GPU here (torch.cuda.is_available() is False): the plumbing ran at the smallest size on the CPU.")
    lines = ["# GPU check", "", head, "", "| step | pass/fail | status | figures |", "|---|---|---|---|"]
    for row in check.rows:
        figures = ", ".join(f"{k} {v}" for k, v in row.items()
                            if k not in ("step", "status", "verdict") and v is not None)
        lines.append(f"| {row['step']} | {row['verdict']} | {row['status']} | {figures} |")
    return "\n".join(lines) + "\n"


TARGETS = ("speed:", "make bench-serve:")  # rows that judge speed: a miss is reported, not a failed check


def correctness_failures(rows: list[dict]) -> list[str]:
    """The rows that make the check fail: every failing row but a speed target missed."""
    return [r["step"] for r in rows if r["verdict"] == "fail" and not (r["step"].startswith(TARGETS) and
                                                                        r["status"] == "ok")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"),
                   help="folder for gpu-check.json / .md (default: $OUT, else bench/results)")
    p.add_argument("--budget-s", type=float, default=480, help="the whole check's time budget (default 8 minutes)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"which steps, comma-separated, run in this order "
                   f"whatever the order given (default all: {','.join(STEPS)})")
    args = p.parse_args(argv)
    asked = set(args.steps.split(","))
    if asked - set(STEPS):
        p.error(f"unknown steps {sorted(asked - set(STEPS))}; choose from {','.join(STEPS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gpu = gpu_info()
    print(f"GPU: {gpu}" if gpu else "No GPU here: running the plumbing at the smallest size on the CPU.", flush=True)
    check = Check(Path(args.out), args.budget_s, gpu)
    for name, step in STEPS.items():
        if name in asked:
            step(check)
    (check.out / "gpu-check.json").write_text(json.dumps({"gpu": gpu, "steps": check.rows}, indent=2))
    text = summary(check)
    (check.out / "gpu-check.md").write_text(text)
    print("\n" + text)
    return 1 if correctness_failures(check.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
