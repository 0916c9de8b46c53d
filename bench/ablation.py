"""What each CPU fast path of the loop is worth: (c) with all, none, and all but one of them.

The paths are `helpers._fastpaths.PARTS` (dropout, attention; hp.train's default on a CPU is all of them).

    python -m bench.ablation [--repeats 2] [--epochs N] [--max-train-samples N]

Same workload as `make bench` (real AG News where ../shared/data has it, else --data-source, else the
generated sample, announced; the stand-in encoder); every run is its own process, the configurations
alternate, and each reports its median run. Writes bench/ablation.json and prints a markdown table
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from helpers._fastpaths import PARTS

HERE = Path(__file__).resolve().parent


def configurations() -> dict[str, str]:
    configs = {"all fast paths": ",".join(PARTS), "none": "none"}
    for part in PARTS:
        configs[f"all but {part}"] = ",".join(p for p in PARTS if p != part)
    return configs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=float, default=None, help="default: as make bench (1 on real data, 3 generated)")
    p.add_argument("--rows", type=int, default=1600, help="rows of the generated sample (when there is no real data)")
    p.add_argument("--data-source", default=None)
    p.add_argument("--text-col", default=None)
    p.add_argument("--label-col", default="label")
    p.add_argument("--label-names", default=None)
    p.add_argument("--max-train-samples", type=int, default=None,
                   help="default: as make bench (2,000 on real data; 0: all)")
    p.add_argument("--out", default=str(HERE / "ablation.json"))
    args = p.parse_args(argv)

    from bench.run import GENERATED_DEFAULTS, REAL_DEFAULTS, choose_data

    work = HERE / "work"
    work.mkdir(exist_ok=True)
    data, layout = choose_data(args, work)
    defaults = GENERATED_DEFAULTS if args.generated else REAL_DEFAULTS  # the workload of make bench
    args.epochs = defaults["epochs"] if args.epochs is None else args.epochs
    if args.max_train_samples is None:
        args.max_train_samples = defaults["max_train_samples"]
    if args.max_train_samples:
        layout += ["--max-train-samples", str(args.max_train_samples)]
    runs: dict[str, list[dict]] = {name: [] for name in configurations()}
    for _ in range(args.repeats):
        for name, parts in configurations().items():
            out = work / "ablation-run.json"
            cmd = [sys.executable, "-m", "bench.train", "--variant", "loop", "--out", str(out), "--data-source",
                   str(data), "--epochs", str(args.epochs), "--test-size", "0.2", "--fast-paths", parts, *layout]
            proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} failed (exit {proc.returncode})")
            r = json.loads(out.read_text())
            runs[name].append(r)
            print(f"{name}: {r['train_samples_per_s']:.1f} samples/s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    summary = {name: {"samples_per_s": statistics.median(r["train_samples_per_s"] for r in rs),
                      "runs": [round(r["train_samples_per_s"], 1) for r in rs],
                      "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                      "test_accuracy": statistics.median(r["test"]["accuracy"] for r in rs)}
               for name, rs in runs.items()}
    base = summary["none"]["samples_per_s"]
    lines = ["| loop configuration | train samples/s (median; runs) | vs none | peak RSS (MB) | test accuracy |",
             "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['samples_per_s']:.1f} ({', '.join(map(str, s['runs']))}) | "
                     f"{s['samples_per_s'] / base:.2f}x | {s['peak_rss_mb']:.0f} | {s['test_accuracy']:.4f} |")
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
