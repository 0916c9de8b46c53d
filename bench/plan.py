"""How good is the plan? Its predicted peak memory and wall time against the real run's, and the range test's
suggested learning rate against a grid.

    python -m bench.plan                                  # notebooks 01, 02 and 05 at their defaults
    python -m bench.plan --notebooks 01 -p DATA_SOURCE ../shared/data/all-data.csv
    python -m bench.plan --lr-check PATH/all-data.csv     # the range test on the real Financial PhraseBank

Part one runs each notebook headless (papermill, its plan cell included; no range test, no MLflow) and reads
its metrics.json, where `train.plan` holds the plan's figures beside what the run really used: the
targets are the measured peak within 15% of the run's and the predicted wall time (training and
evaluations, as History.wall_s counts them) within 20%. Part two loads the PhraseBank file as notebook 01
does, runs `hp.find_lr` with notebook 01's settings, then trains with the suggested LR and with each LR of
{1e-5, 3e-5, 5e-5, 1e-4} (4 epochs, validation macro-F1 each epoch, the best kept); the target is the
suggested LR within 0.01 of the best of the four. Both write bench/plan_results.json and .md; the
machine's load average is recorded beside every figure, since a busy machine moves the times.
Run it on a quiet machine (`uptime`: load below the core count).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "plan"
RESULTS = HERE / "plan_results.json"
GRID = (1e-5, 3e-5, 5e-5, 1e-4)
TARGETS = {"peak_mem": 0.15, "wall": 0.20, "macro_f1": 0.01}


def run_notebook(name: str, extra: dict) -> dict:
    """The notebook at its defaults (plus `extra`), and its plan beside the run."""
    from workbook import runner

    path = runner.find_notebook(name)
    known = runner.notebook_parameters(path)
    own = {"TRACKING": False, "OVERWRITE": True, "FIND_LR": False, "OUTPUT_DIR": str(WORK / path.stem)}
    params = {**{k: v for k, v in own.items() if k in known}, **extra}
    load_before = os.getloadavg()[0]
    result = runner.run_notebook(path, params, runs_dir=WORK)
    row = {"notebook": path.stem, "status": result.status, "error": result.error, "params": extra,
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    train = result.metrics.get("train", {})
    plan = train.get("plan")
    if plan is None:
        return {**row, "error": row["error"] or "no plan in metrics.json (run tests/scripts/add_plan_cells.py)"}
    row.update(device=plan["device"], precision=plan["precision"], steps=train["steps"],
               peak_predicted_mb=plan["peak_mem_mb"], peak_estimate_mb=plan["estimate_peak_mb"],
               peak_real_mb=train["peak_mem_mb"], wall_predicted_s=plan["wall_s"], wall_real_s=train["wall_s"],
               evaluations=plan["evaluations"], same_run=plan["same_run_as_planned"])
    row["peak_ratio"] = round(row["peak_real_mb"] / row["peak_predicted_mb"], 3)
    row["wall_ratio"] = round(row["wall_real_s"] / row["wall_predicted_s"], 3)
    row["peak_ok"] = abs(row["peak_ratio"] - 1) <= TARGETS["peak_mem"]
    row["wall_ok"] = abs(row["wall_ratio"] - 1) <= TARGETS["wall"]
    return row


def phrasebank(data_source: str, seed: int = 42):
    """Notebook 01's data path and model: the file read and cleaned, split 80/10/10, tokenized (128 tokens)."""
    import helpers as hp

    loaded = hp.data.load_labeled_data(data_source, text_col="sentence", label_col="label", allow_standin=False,
                                       columns=["label", "sentence"], sample="financial_phrasebank")
    splits = hp.data.stratified_split(loaded.dataset, seed=seed)
    source = hp.models.resolve_model("ProsusAI/finbert", allow_standin=True)
    clf = hp.models.load_classifier(source.used, loaded.label_names, source=source, seed=seed)

    def tokenize(batch):
        return clf.tokenizer(batch["text"], truncation=True, max_length=128)

    encoded = {name: hp.data.to_label_ids(split, clf.label2id).map(tokenize, batched=True, remove_columns=["text"])
               for name, split in splits.items() if name in ("train", "validation")}
    return loaded, source, clf, encoded


def lr_check(data_source: str, epochs: float, results: dict, lrs: list[float] | None = None) -> dict:
    """The range test's suggestion on notebook 01's run, then a run per LR (the suggestion, both rules' rates
    and the grid), each saved as it ends; runs already in `results` are kept, and so is the range test's
    curve (the suggestion is taken from it again, by the current rule)."""
    import helpers as hp
    from helpers import planning

    loaded, source, clf, encoded = phrasebank(data_source)
    config = hp.TrainConfig(num_epochs=epochs, train_batch_size=32, eval_batch_size=128, lr=5e-5, warmup_ratio=0.1,
                            weight_decay=0.01, metric_for_best="macro_f1", seed=42, progress=False)
    out = results.setdefault("lr_check", {})
    if out.get("curve") and out.get("epochs") == epochs:
        found = planning._suggest_lr(out["curve"]["lrs"], out["curve"]["losses"], current_lr=config.lr)
    else:
        start, load = time.perf_counter(), os.getloadavg()[0]
        found = hp.find_lr(clf.model, encoded["train"], config, pad_token_id=clf.tokenizer.pad_token_id)
        out.update(range_test_s=round(time.perf_counter() - start, 1), range_test_steps=len(found.lrs),
                   range_test_load=round(load, 2), curve={"lrs": found.lrs, "losses": found.losses}, runs={})
    out.update(data=str(loaded.source.used), rows={k: len(v) for k, v in encoded.items()}, model=source.used,
               standin=source.standin, epochs=epochs, suggested_lr=found.suggested_lr, reason=found.reason,
               steepest_lr=found.steepest_lr, minimum_lr=found.minimum_lr)
    hp.plots.lr_find(found, path=WORK / "lr_find_phrasebank.png")
    save(results)
    metrics = hp.metrics.classification_metrics_fn(clf.label_names)
    wanted = lrs or [c for c in (found.suggested_lr, found.steepest_lr, found.minimum_lr / 10) if c] + list(GRID)
    for lr in dict.fromkeys(wanted):
        if f"{lr:.3g}" in out["runs"]:
            continue
        model = hp.models.load_classifier(source.used, clf.label_names, source=source, seed=42).model
        load = os.getloadavg()[0]
        history = hp.train(model, encoded["train"], encoded["validation"], config, lr=lr, compute_metrics=metrics,
                           pad_token_id=clf.tokenizer.pad_token_id)
        out["runs"][f"{lr:.3g}"] = {"best_val_macro_f1": round(history.best_metric, 4),
                                    "final_val_macro_f1": round(history.metric("macro_f1")[-1], 4),
                                    "wall_s": round(history.wall_s, 1), "load": round(load, 2)}
        print(f"LR {lr:.3g}: {out['runs'][f'{lr:.3g}']}", flush=True)
        save(results)
    grid = [out["runs"][f"{lr:.3g}"]["best_val_macro_f1"] for lr in GRID if f"{lr:.3g}" in out["runs"]]
    suggested = out["runs"].get(f"{found.suggested_lr:.3g}")
    if grid and suggested:
        out["best_of_grid"] = max(grid)
        out["suggested_gap"] = round(max(grid) - suggested["best_val_macro_f1"], 4)
        out["ok"] = out["suggested_gap"] <= TARGETS["macro_f1"] and len(grid) == len(GRID)
    return out


def save(results: dict) -> None:
    results["cpu_count"] = os.cpu_count()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS.with_suffix(".md").write_text(markdown(results))


def markdown(results: dict) -> str:
    lines = ["| notebook | device | steps | peak predicted | peak real | real/pred | wall predicted | wall real | "
             "real/pred | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("notebooks", []):
        if "peak_ratio" not in r:
            lines.append(f"| {r['notebook']} | {r['status']}: {r['error']} |||||||||")
            continue
        peak_miss, wall_miss = ("" if r[k] else " (miss)" for k in ("peak_ok", "wall_ok"))
        lines.append(f"| {r['notebook']} | {r['device']} ({r['precision']}) | {r['steps']} | "
                     f"{r['peak_predicted_mb']:,.0f} MB | {r['peak_real_mb']:,.0f} MB | "
                     f"{r['peak_ratio']:.3f}{peak_miss} | "
                     f"{r['wall_predicted_s']:.1f} s | {r['wall_real_s']:.1f} s | {r['wall_ratio']:.3f}{wall_miss} | "
                     f"{r['load_before']}-{r['load_after']} |")
    check = results.get("lr_check")
    if check and "suggested_lr" in check:
        lines += ["", f"Range test on {check['data']} ({check['rows']}), {check['model']}: suggested "
                  f"{check['suggested_lr']:.2g} ({check['reason']}), {check.get('range_test_steps')} steps in "
                  f"{check.get('range_test_s')} s.", "", "| LR | best validation macro-F1 | final | wall |",
                  "|---|---|---|---|"]
        lines += [f"| {lr} | {r['best_val_macro_f1']:.4f} | {r['final_val_macro_f1']:.4f} | {r['wall_s']} s |"
                  for lr, r in check.get("runs", {}).items()]
        if "best_of_grid" in check:
            gap = check["suggested_gap"]
            lines.append(f"\nBest of the grid {check['best_of_grid']:.4f}; the suggestion scores {abs(gap):.4f} "
                         f"{'above' if gap < 0 else 'below'} it (target: at most 0.01 below: "
                         f"{'met' if check['ok'] else 'missed'}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", default="01,02,05", help="comma-separated; '' skips part one")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter for every notebook run (e.g. DATA_SOURCE for 01)")
    parser.add_argument("--lr-check", default=None, metavar="FILE", help="a Financial PhraseBank all-data.csv")
    parser.add_argument("--epochs", type=float, default=4, help="epochs of each LR run (notebook 01: 4)")
    parser.add_argument("--lrs", default=None, help="comma-separated rates to train (default: the suggestion, both "
                                                    "rules' rates and the grid); runs already saved are kept")
    args = parser.parse_args(argv)
    from workbook import runner

    WORK.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    extra = {name: runner.parse_value(value) for name, value in args.parameter}
    if args.notebooks:
        results["notebooks"] = []
        for name in args.notebooks.split(","):
            results["notebooks"].append(run_notebook(name, extra))
            print(json.dumps(results["notebooks"][-1]), flush=True)
            save(results)
    if args.lr_check:
        lr_check(args.lr_check, args.epochs, results, [float(x) for x in args.lrs.split(",")] if args.lrs else None)
    save(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
