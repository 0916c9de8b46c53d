"""`make bench`: fine-tune the same model on the same data three ways, side by side, in one run.

    python -m bench.run [--model M] [--data-source FILE] [--epochs N] [--device cuda] ...

(a) the seeds' way (`Trainer`, pad to MAX_LENGTH, fp32), (b) a well-tuned `Trainer` (dynamic padding,
length grouping, bf16 where supported), (c) the workbook's loop, (d) the plain PyTorch floor: the same
batches through forward, backward and AdamW only, the most a loop reaches without computing less. Each
run is its own process, so peak
resident memory is its own. (b) and (c) run `--repeats` times, alternating, and report their median
run: on a shared 2-core machine one run varies by about +-5%. Then the generation benchmark.
Writes bench/results.json and bench/results.md and prints the table. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from helpers._offline import samples

HERE = Path(__file__).resolve().parent
NAMES = {"seed_trainer": "(a) seeds' Trainer: pad to max, fp32", "tuned_trainer": "(b) tuned Trainer",
         "loop": "(c) workbook loop", "floor": "(d) plain PyTorch floor"}
# dense bf16 peak TFLOPS (no sparsity) of common GPUs, for model FLOPs utilization
# Dense tensor-core peaks (TFLOPS, no sparsity) from NVIDIA's data sheets, by the precision trained in.
# Names are matched longest first, so "H100 PCIe" (756) is not taken for an SXM H100 (989). T4 and V100
# have no bf16 tensor cores: fp16 only (a bf16 run there is emulated and gets no MFU).
PEAK_TFLOPS = {
    "bf16": {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200 NVL": 835.0, "H200": 989.0,
             "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0, "A6000": 155.0, "4090": 165.0,
             "3090": 71.0},
    "fp16": {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200 NVL": 835.0, "H200": 989.0,
             "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0, "A6000": 155.0, "4090": 165.0,
             "3090": 71.0, "V100": 125.0, "T4": 65.0},
}


# The workload when nothing is said. Real data: one epoch of 2,000 training rows, so that `make bench` (ten
# fine-tunings, each in its own process) takes about 15 minutes on 2 CPU cores; generated rows: the whole
# 1,120-row train split three times (every variant reaches accuracy 1.0 there).
REAL_DEFAULTS = {"epochs": 1.0, "max_train_samples": 2000, "eval_every": 20, "target_accuracy": 0.85}
GENERATED_DEFAULTS = {"epochs": 3.0, "max_train_samples": 0, "eval_every": 10, "target_accuracy": 0.9}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="standin", help='"standin", a folder / Hub id, or "random:bert-base"')
    p.add_argument("--data-source", default=None,
                   help="default: real AG News (../shared/data/ag_news/test.csv) where it exists, else a generated "
                        "PhraseBank-layout file; or your own file (PhraseBank layout, or give --text-col etc.)")
    p.add_argument("--text-col", default=None, help="text column(s) of --data-source (default: its layout's)")
    p.add_argument("--label-col", default="label")
    p.add_argument("--label-names", default=None, help="labels in order (default: its layout's)")
    p.add_argument("--max-train-samples", type=int, default=None,
                   help=f"cap on training rows (real data: {REAL_DEFAULTS['max_train_samples']:,} unless given; "
                        "0: all)")
    p.add_argument("--rows", type=int, default=1600, help="rows of the generated sample (default data only)")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"default: {REAL_DEFAULTS['epochs']:g} on real data, {GENERATED_DEFAULTS['epochs']:g} on "
                        "generated rows")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=None,
                   help=f"optimizer steps between evaluations (default: {REAL_DEFAULTS['eval_every']} on real data, "
                        f"{GENERATED_DEFAULTS['eval_every']} on generated rows)")
    p.add_argument("--test-size", type=float, default=0.2)
    p.add_argument("--target-accuracy", type=float, default=None,
                   help="validation accuracy for 'time to target' (default: "
                        f"{REAL_DEFAULTS['target_accuracy']} on real data, {GENERATED_DEFAULTS['target_accuracy']} "
                        "on generated rows)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default=None)
    p.add_argument("--variants", default="seed_trainer,tuned_trainer,loop,floor",
                   help="(d) floor: the same batches through forward, backward and AdamW only, in plain PyTorch")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of (b) and (c), interleaved, one seed each (seed, seed+1, ...): speed is the median "
                        "run, accuracy the mean and spread over the seeds (a is run once: it is slow)")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="GPU peak TFLOPS for MFU (default: by name and precision)")
    p.add_argument("--out", default=str(HERE / "results.json"))
    return p.parse_args(argv)


def machine(device: str | None) -> dict:
    import torch

    import helpers as hp

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "describe": hp.device.describe(), "cpu_bf16": hp.device._cpu_supports_bf16()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available() and (device or "cuda").startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def time_to_target(evals: list[dict], target: float) -> float | None:
    return next((e["elapsed_s"] for e in evals if (e.get("accuracy") or 0) >= target), None)


def peak_tflops(gpu: str, precision: str) -> float | None:
    """The GPU's dense peak for `precision` (bf16 / fp16), or None when unknown or not native."""
    table = PEAK_TFLOPS.get(precision, {})
    return next((table[k] for k in sorted(table, key=len, reverse=True) if k in gpu), None)


def mfu(result: dict, gpu: str | None, peak: float | None) -> float | None:
    """Model FLOPs utilization of training: 6 x non-embedding parameters x tokens/s (the 6N rule: an
    embedding lookup does no matmul) against the GPU's peak in the precision the run used."""
    if not gpu or "tokens_per_s" not in result:
        return None
    peak = peak or peak_tflops(gpu, result.get("precision", "bf16"))
    if not peak:
        return None
    matmul_params = result["parameters"] - result.get("embedding_parameters", 0)
    return 6 * matmul_params * result["tokens_per_s"] / (peak * 1e12)


def median_run(runs: list[dict]) -> dict:
    """The run with the median train samples/s (its own accuracy, timings and memory), plus every run's
    samples/s and the median peak RSS of all runs."""
    ranked = sorted(runs, key=lambda r: r["train_samples_per_s"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    rss = sorted(r["peak_rss_mb"] for r in runs)
    reached = sorted(r["time_to_target_s"] for r in runs if r.get("time_to_target_s") is not None)
    chosen.update(runs=len(runs), samples_per_s_runs=[round(r["train_samples_per_s"], 1) for r in runs],
                  peak_rss_mb_runs=[round(r["peak_rss_mb"]) for r in runs],
                  peak_rss_mb=(rss[(len(rss) - 1) // 2] + rss[len(rss) // 2]) / 2,
                  # time to the target: every seed's, and the median of the seeds that reached it (not the
                  # median-speed run's own, which may be the one seed that did not)
                  time_to_target_s_runs=[r.get("time_to_target_s") for r in runs], reached_target=len(reached),
                  time_to_target_s=(reached[(len(reached) - 1) // 2] + reached[len(reached) // 2]) / 2
                  if reached else None)
    return chosen


def time_to_target_text(r: dict) -> str:
    """"29.5 (2 of 3 seeds: 29.5, 31.0, not reached)": the median of the seeds that reached it, and each seed's."""
    if not r.get("evals"):
        return "- (no evaluations)"
    every = r.get("time_to_target_s_runs", [r.get("time_to_target_s")])
    ttt = r.get("time_to_target_s")
    head = f"{ttt:.1f}" if ttt is not None else "not reached"
    if len(every) < 2:
        return head
    seeds = ", ".join("not reached" if t is None else f"{t:.1f}" for t in every)
    return f"{head} ({r.get('reached_target', 0)} of {len(every)} seeds: {seeds})"


def table(results: dict, target: float) -> str:
    rows = [f"| run | precision | train samples/s (median; all runs) | wall to val acc >= {target:.2f} (s, median of "
            "the seeds that reached it) "
            "| test accuracy | test macro-F1 | peak RSS (MB, median) |", "|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        every = r.get("samples_per_s_runs", [])
        ttt_text = time_to_target_text(r)
        speed = f"{r['train_samples_per_s']:.1f}" + (f" ({', '.join(f'{x:.1f}' for x in every)})"
                                                    if len(every) > 1 else "")
        rows.append(f"| {NAMES[key]} | {r['precision']} | {speed} | "
                    f"{ttt_text} | {r['test']['accuracy']:.4f} | "
                    f"{r['test']['macro_f1']:.4f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(rows)


AG_NEWS = HERE.parent.parent / "shared" / "data" / "ag_news" / "test.csv"


def choose_data(args, work: Path) -> tuple[str, list[str]]:
    """Real data by default: AG News (7,600 news items, 4 topics) where it exists; else the file the user
    names (PhraseBank layout unless told otherwise); else a generated PhraseBank-layout file, announced."""

    if args.data_source:
        layout = ["--label-col", args.label_col]
        if args.text_col:
            layout += ["--text-col", args.text_col]
        if args.label_names:
            layout += ["--label-names", args.label_names]
        args.generated = False
        return args.data_source, layout
    args.generated = not AG_NEWS.exists()
    if AG_NEWS.exists():
        print(f"data: real AG News, {AG_NEWS}")
        return str(AG_NEWS), ["--text-col", "title+description", "--label-names",
                              args.label_names or "World,Sports,Business,Sci/Tech"]
    print("data: no real data found (../shared/data/ag_news/test.csv, or --data-source): using GENERATED rows, on "
          "which every variant reaches the same accuracy; the accuracy column says nothing there")
    return str(samples.write_phrasebank_csv(work / f"all-data-{args.rows}.csv", n=args.rows, seed=1)), []


def apply_defaults(args) -> None:
    """Fill the workload options left unsaid: REAL_DEFAULTS unless the data is the generated sample."""
    for name, value in (GENERATED_DEFAULTS if args.generated else REAL_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def seed_spread(runs: list[dict]) -> dict:
    accuracy = [r["test"]["accuracy"] for r in runs]
    f1 = [r["test"].get("macro_f1", float("nan")) for r in runs]
    return {"seeds": len(runs), "accuracy_mean": sum(accuracy) / len(accuracy),
            "accuracy_spread": max(accuracy) - min(accuracy), "macro_f1_mean": sum(f1) / len(f1),
            "macro_f1_spread": max(f1) - min(f1)}


def miss_reasons(args, info: dict, results: dict, ratios: dict, targets: dict) -> list[str]:
    """Plain reasons for the training-speed misses, from this run's own figures."""
    loop = results.get("loop")
    if not loop or info.get("gpu") or loop.get("precision") != "fp32":
        return []
    missed = {name.split(" train")[0] for name, ok in targets.items() if not ok}
    lines = []
    where = "this CPU has no native bf16 (AVX-512 bf16 / AMX) and there is no GPU, so every variant trains in fp32"
    if "(c)/(b) >= 1.3x" in missed:
        line = f"(c)/(b) = {ratios['c_over_b']:.2f}x: {where}"
        if "d_over_b" in ratios:
            line += (f"; (d)/(b) = {ratios['d_over_b']:.2f}x says the tuned Trainer already runs within "
                     f"{abs(ratios['d_over_b'] - 1):.0%} of plain forward/backward/AdamW on the same batches, so no "
                     "loop computing the same things gets 1.3x here (bf16 hardware does; see docs/benchmarks.md)")
        lines.append(line + ".")
    if "(c)/(a) >= 8x" in missed and loop.get("tokens_per_s"):
        per_sample = loop["tokens_per_s"] / loop["train_samples_per_s"]
        lines.append(f"(c)/(a) = {ratios['c_over_a']:.2f}x: these texts average {per_sample:.0f} tokens, so padding "
                     f"every one to {args.max_length} makes (a) process only {args.max_length / per_sample:.1f}x the "
                     "tokens of (c); the rest of an 8x needed bf16, which (a) does not use and this CPU lacks.")
    return lines


def train_args(args, data: str, layout: list[str]) -> list[str]:
    """The options every `bench.train` run gets: the workload, the same for each variant."""
    common = ["--model", args.model, "--data-source", data, "--epochs", str(args.epochs), "--batch-size",
              str(args.batch_size), "--lr", str(args.lr), "--max-length", str(args.max_length), "--eval-every",
              str(args.eval_every), "--test-size", str(args.test_size), *layout]
    if args.max_train_samples:
        common += ["--max-train-samples", str(args.max_train_samples)]
    if args.device:
        common += ["--device", args.device]
    return common


def run_variants(args, common: list[str], info: dict, work: Path) -> dict[str, list[dict]]:
    """Every variant in its own process: (a) once, then the others alternating, so a slow spell of the
    machine hits them alike; each run's record with its time to the target accuracy and MFU."""
    variants = args.variants.split(",")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    order = [(v, args.seed) for v in variants if v == "seed_trainer"]
    order += [(v, args.seed + i) for i in range(args.repeats) for v in variants if v != "seed_trainer"]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for variant, seed in order:
        out = work / f"{variant}.json"
        print(f"running {NAMES[variant]} (seed {seed}) ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "bench.train", "--variant", variant, "--out", str(out), *common,
                               "--seed", str(seed)], cwd=HERE.parent, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{variant} failed (exit {proc.returncode})")
        r = json.loads(out.read_text())
        r["time_to_target_s"] = time_to_target(r["evals"], args.target_accuracy)
        r["mfu"] = mfu(r, info.get("gpu"), args.peak_tflops)
        runs[variant].append(r)
        print(f"  {r['train_samples_per_s']:.1f} samples/s, test accuracy {r['test']['accuracy']:.4f}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    return runs


def judge(results: dict, spread: dict) -> tuple[dict, dict]:
    """(the speed ratios between the variants, each target with whether it is met)."""
    ratios, targets = {}, {}
    if {"seed_trainer", "loop"} <= set(results):
        ratios["c_over_a"] = results["loop"]["train_samples_per_s"] / results["seed_trainer"]["train_samples_per_s"]
        targets["(c)/(a) >= 8x train samples/s"] = ratios["c_over_a"] >= 8
    if {"tuned_trainer", "loop"} <= set(results):
        b, c = results["tuned_trainer"], results["loop"]
        ratios["c_over_b"] = c["train_samples_per_s"] / b["train_samples_per_s"]
        targets["(c)/(b) >= 1.3x train samples/s"] = ratios["c_over_b"] >= 1.3
        sb, sc = spread["tuned_trainer"], spread["loop"]
        within = max(0.01, sb["accuracy_spread"], sc["accuracy_spread"])
        targets[f"(c) mean test accuracy {sc['accuracy_mean']:.4f} within the seed spread ({within:.4f}) of (b) "
                f"{sb['accuracy_mean']:.4f}"] = sc["accuracy_mean"] >= sb["accuracy_mean"] - within
        targets["(c) peak memory <= (b)"] = c["peak_rss_mb"] <= b["peak_rss_mb"]
        if c.get("peak_gpu_mb") and b.get("peak_gpu_mb"):
            targets["(c) peak GPU memory <= (b)"] = c["peak_gpu_mb"] <= b["peak_gpu_mb"]
    if {"tuned_trainer", "floor"} <= set(results):
        ratios["d_over_b"] = results["floor"]["train_samples_per_s"] / results["tuned_trainer"]["train_samples_per_s"]
    if {"loop", "floor"} <= set(results):
        ratios["c_over_d"] = results["loop"]["train_samples_per_s"] / results["floor"]["train_samples_per_s"]
    return ratios, targets


def run_generation(args, targets: dict) -> dict:
    """Batched generation against one prompt at a time (causal LM and T5), its targets added to `targets`."""
    generation = {}
    if not args.skip_generation:
        from bench import generation as gen

        for kind in ("causal-lm", "seq2seq"):
            print(f"generation benchmark ({kind}) ...", flush=True)
            generation[kind] = g = gen.run(kind, device=args.device)
            targets[f"generate >= 3x naive ({kind}), identical outputs"] = (
                g["speedup"] >= 3 and g["identical_outputs"] == g["prompts"])
    return generation


def report(args, info: dict, data: str, results: dict, spread: dict, ratios: dict, targets: dict,
           generation: dict) -> str:
    """bench/results.md: the workload, the table, the seeds' spread, the ratios, generation, the targets."""
    rows = f" (at most {args.max_train_samples:,} training rows)" if args.max_train_samples else ""
    md = [f"# Benchmark results ({dt.date.today().isoformat()})", "",
          f"Machine: {info['cpu']}, {info['cpu_count']} cores; {info['describe']}", "",
          f"Workload: model `{args.model}`, data `{Path(data).name}`{rows}, {args.epochs:g} epochs, batch "
          f"{args.batch_size}, lr {args.lr:g}, MAX_LENGTH {args.max_length}, seeds from {args.seed}.", "",
          table(results, args.target_accuracy), "",
          "Accuracy / macro-F1 over the seeds (mean, max - min): " + "; ".join(
              f"{NAMES[v]} {sp['accuracy_mean']:.4f} ({sp['accuracy_spread']:.4f}) / {sp['macro_f1_mean']:.4f} "
              f"({sp['macro_f1_spread']:.4f}), {sp['seeds']} seeds" for v, sp in spread.items()), ""]
    if ratios:
        md.append("Ratios: " + ", ".join(f"{k.replace('_over_', '/')} = {v:.2f}x" for k, v in ratios.items()))
        if "d_over_b" in ratios:
            md.append("(d) is forward, backward and AdamW in plain PyTorch on the same batches and nothing else: "
                      "(d)/(b) is the most a loop can gain over the tuned Trainer without computing less (in this "
                      "precision); (c)/(d) above 1 is what the loop's CPU fast paths compute less.")
        md.append("")
    if any(r.get("mfu") for r in results.values()):
        md += [f"GPU: {info.get('gpu')}; model FLOPs utilization (6 x non-embedding params x tokens/s vs the "
               "GPU's peak in the run's precision): "
               + ", ".join(f"{NAMES[k]} {r['mfu']:.1%}" for k, r in results.items() if r.get("mfu")), ""]
    if generation:
        md += ["| generation | naive summaries/s | batched summaries/s | speedup | identical outputs |",
               "|---|---|---|---|---|"]
        md += [f"| {k} ({g['model']['used'].split('/')[-1]}) | {g['naive_summaries_per_s']:.1f} | "
               f"{g['batched_summaries_per_s']:.1f} | {g['speedup']:.1f}x | {g['identical_outputs']}/{g['prompts']} |"
               for k, g in generation.items()]
        md.append("")
    md += ["Targets:"] + [f"- {'PASS' if ok else 'MISS'}: {name}" for name, ok in targets.items()]
    why = miss_reasons(args, info, results, ratios, targets)
    if why:
        md += ["", "Why the misses:"] + [f"- {line}" for line in why]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = HERE / "work"
    work.mkdir(exist_ok=True)
    data, layout = choose_data(args, work)
    apply_defaults(args)
    info = machine(args.device)
    print(f"machine: {info['describe']}\ncpu: {info['cpu']} ({info['cpu_count']} cores)\n")
    runs = run_variants(args, train_args(args, data, layout), info, work)
    results = {v: median_run(rs) for v, rs in runs.items()}
    spread = {v: seed_spread(rs) for v, rs in runs.items()}
    ratios, targets = judge(results, spread)
    generation = run_generation(args, targets)
    text = report(args, info, data, results, spread, ratios, targets, generation)
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": info,
              "args": vars(args), "data": data, "results": results, "spread": spread, "ratios": ratios,
              "generation": generation, "targets": targets}
    Path(args.out).write_text(json.dumps(record, indent=2))
    Path(args.out).with_suffix(".md").write_text(text)
    print("\n" + text)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
