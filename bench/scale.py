"""Scale benchmark: notebook 02's data path and first training steps on 10k to 3.6M reviews.

    python -m bench.scale                 # 10k, 100k, 1M rows (make bench-scale)
    python -m bench.scale --full          # and 3.6M, the whole of amazon_polarity's train split
    python -m bench.scale --sizes 10000   # any sizes

Generates amazon_polarity-layout parquet files (`label, title, content`, labels 0/1, reviews of the
real length distribution: title ~25 characters, text ~430) under bench/work/, then for each size runs,
each in its own process: the workbook loop fed by its `TokenStore`, and the `Trainer` fed the
tokenized Arrow dataset. Reports seconds per stage, peak RSS, RSS growth per million rows, the store's
build time against tokenization, and the rows/s the data side alone can feed. Writes
bench/scale.json, bench/scale.md and bench/scale.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
TARGETS = {"peak_1m_mb": 4096, "peak_full_mb": 10240, "growth_ratio": 1.2, "store_share": 0.05,
           "collate_rows_per_s": 20_000}


def write_reviews(path: Path, rows: int, seed: int = 0, chunk: int = 200_000) -> Path:
    """amazon_polarity's layout and lengths, written in row groups (memory stays flat whatever `rows`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from helpers.models import _standin_encoder_dir

    vocab = [w for w in (_standin_encoder_dir() / "vocab.txt").read_text().split("\n")
             if w.isalpha() and w.islower() and len(w) > 2][:8000]
    good, bad = vocab[:200], vocab[200:400]
    words = np.array(vocab)
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        labels = rng.integers(0, 2, n)
        lengths = np.clip(rng.lognormal(4.3, 0.5, n), 8, 250).astype(int)  # words per review: median ~74
        picks = rng.integers(0, len(words), int(lengths.sum()))
        cues = rng.integers(0, 200, n)
        titles, texts, at = [], [], 0
        for i in range(n):
            body = words[picks[at: at + lengths[i]]]
            at += lengths[i]
            cue = (good if labels[i] else bad)[cues[i]]
            titles.append(f"{cue} {body[0]} {body[1]}".capitalize())
            texts.append(" ".join(body) + f" {cue}.")
        table = pa.table({"label": pa.array(labels, pa.int64()), "title": titles, "content": texts})
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.replace(path)
    return path


def dataset_file(rows: int) -> Path:
    path = WORK / f"amazon_polarity_{rows}.parquet"
    if not path.exists():
        print(f"writing {path.name} ...", flush=True)
        write_reviews(path, rows)
    return path


def run(path: Path, variant: str, extra: list[str]) -> dict:
    out = WORK / f"scale_{path.stem}_{variant}.json"
    print(f"{path.stem} / {variant}:", flush=True)
    proc = subprocess.run([sys.executable, "-m", "bench.scale_run", "--parquet", str(path), "--variant", variant,
                           "--out", str(out), *extra], cwd=HERE.parent)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "variant": variant}
    return json.loads(out.read_text())


def growth_per_million(results: dict, variant: str, small: int, large: int) -> float | None:
    a, b = results.get(str(small), {}).get(variant), results.get(str(large), {}).get(variant)
    if large <= small or not a or not b or "peak_mb" not in a or "peak_mb" not in b:
        return None
    return (b["peak_mb"] - a["peak_mb"]) / ((large - small) / 1e6)


def report(results: dict, sizes: list[int]) -> tuple[str, dict]:
    lines = ["| rows | variant | read s | clean s | split s | tokenize s | store s | first steps s | peak RSS MB "
             "| tokenizer processes' peak MB | store MB | data side rows/s |", "|---" * 12 + "|"]
    for rows in sizes:
        for variant in ("loop", "trainer"):
            r = results.get(str(rows), {}).get(variant)
            if not r or "stages" not in r:
                lines.append(f"| {rows:,} | {variant} | failed: {r and r.get('error')} |")
                continue
            st = r["stages"]
            cells = [st.get(k, {}).get("s", "-") for k in ("read", "clean", "split", "tokenize", "store", "steps")]
            lines.append(f"| {rows:,} | {variant} | " + " | ".join(str(c) for c in cells)
                         + f" | {r['peak_mb']:,.0f} | {r.get('children_peak_mb', 0):,.0f} | {r.get('store_mb', '-')} "
                         f"| {r.get('collate_rows_per_s', '-')} |")
    checks = {}
    big = max(sizes)
    if 10**6 in sizes:
        checks["peak RSS at 1M rows <= 4 GB"] = results["1000000"]["loop"].get("peak_mb", 1e9) <= TARGETS["peak_1m_mb"]
    if 3_600_000 in sizes:
        checks["peak RSS at 3.6M rows <= 10 GB"] = (results["3600000"]["loop"].get("peak_mb", 1e9)
                                                     <= TARGETS["peak_full_mb"])
    small = 100_000 if 100_000 in sizes and big > 100_000 else min(sizes)
    loop_growth = growth_per_million(results, "loop", small, big)
    trainer_growth = growth_per_million(results, "trainer", small, big)
    if loop_growth is not None and trainer_growth:
        ratio = loop_growth / trainer_growth
        checks[f"RSS growth {small:,} -> {big:,} rows: loop {loop_growth:,.0f} vs Trainer {trainer_growth:,.0f} "
               f"MB per million rows ({ratio:.2f}x) <= 1.2x"] = ratio <= TARGETS["growth_ratio"]
    r = results[str(big)]["loop"]
    if "stages" in r:
        share = r["stages"]["store"]["s"] / max(r["stages"]["tokenize"]["s"], 1e-9)
        checks[f"store build at {big:,} rows: {share:.1%} of tokenization time (< 5%)"] = share < TARGETS["store_share"]
        checks[f"data side feeds {r['collate_rows_per_s']:,.0f} rows/s (>= 20,000)"] = (
            r["collate_rows_per_s"] >= TARGETS["collate_rows_per_s"])
    lines += [""] + [f"- {'PASS' if ok else 'MISS'}: {name}" for name, ok in checks.items()]
    return "\n".join(lines), checks


def plot(results: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for variant, marker in (("loop", "o"), ("trainer", "s")):
        xs = [n for n in sizes if "stages" in results.get(str(n), {}).get(variant, {})]
        if not xs:
            continue
        runs = [results[str(n)][variant] for n in xs]
        axes[0].plot(xs, [r["peak_mb"] for r in runs], marker=marker, label=variant)
        axes[1].plot(xs, [sum(s["s"] for s in r["stages"].values()) for r in runs], marker=marker, label=variant)
    for ax, title, unit in ((axes[0], "Peak RSS", "MB"), (axes[1], "Data path + first steps", "seconds")):
        ax.set(xscale="log", yscale="log", xlabel="rows", ylabel=unit, title=title)
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated row counts")
    p.add_argument("--full", action="store_true", help="add 3,600,000 rows (all of amazon_polarity's train split)")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")] + ([3_600_000] if args.full else [])
    import platform

    import torch

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
                                 "torch": torch.__version__}}
    for rows in sizes:
        path = dataset_file(rows)
        results[str(rows)] = {v: run(path, v, ["--steps", str(args.steps)]) for v in ("loop", "trainer")}
    table, checks = report(results, sizes)
    results["checks"] = checks
    (HERE / "scale.json").write_text(json.dumps(results, indent=2))
    (HERE / "scale.md").write_text("# Scale benchmark (notebook 02's data path)\n\n" + table + "\n")
    plot(results, sizes, HERE / "scale.png")
    print("\n" + table)
    print(f"\nwrote {HERE / 'scale.json'}, {HERE / 'scale.md'}, {HERE / 'scale.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
