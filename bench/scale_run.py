"""One size of the scale benchmark, in its own process (so its peak memory is its own).

    python -m bench.scale_run --parquet bench/work/amazon_1000000.parquet --variant loop --out r.json

Runs notebook 02's data path on an amazon_polarity-layout parquet file, stage by stage (read, clean,
split, tokenize, build the token store), then a few training steps with the stand-in encoder:
`loop` feeds the workbook's loop from the `TokenStore`; `trainer` feeds the `Trainer` the tokenized
Arrow dataset (its own way, no store). Records seconds and peak RSS after each stage, and for `loop`
how many rows per second the data side alone (sampling + collation) can feed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from helpers import _batching as batching
from helpers import _readers


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_mb() -> float:
    """The largest peak RSS among finished child processes (Dataset.map's tokenizer processes)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parquet", required=True)
    p.add_argument("--variant", choices=("loop", "trainer"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="training steps after the data path")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--collate-batches", type=int, default=300, help="batches timed for the data side alone")
    p.add_argument("--num-proc", type=int, default=None, help="tokenization processes (default: from the CPUs)")
    return p.parse_args(argv)


class Stages:
    """Seconds, resident and peak memory at the end of each stage, printed as they end."""

    def __init__(self):
        self.stages: dict[str, dict[str, float]] = {}

    def end(self, name: str, since: float) -> None:
        self.stages[name] = row = {"s": round(time.perf_counter() - since, 2), "rss_mb": round(rss_mb(), 1),
                                   "peak_mb": round(peak_mb(), 1)}
        print(f"  {name:<10} {row['s']:>8.2f} s   rss {row['rss_mb']:>8.1f} MB   peak {row['peak_mb']:>8.1f} MB",
              flush=True)


def prepare(args, stages: Stages):
    """Notebook 02's data path, stage by stage: read, clean, split, tokenize. (rows read, loaded, tokenizer,
    classifier, encoded splits)."""
    import helpers as hp

    t = time.perf_counter()
    frame, used = _readers.read_table(args.parquet)
    rows_read = len(frame)
    stages.end("read", t)
    t = time.perf_counter()
    loaded = hp.data._labeled_from_frame(frame, used, text_col="title+content", label_col="label",
                                         label_names="negative,positive")
    del frame
    stages.end("clean", t)
    t = time.perf_counter()
    splits = hp.data.stratified_split(loaded.dataset, seed=42)
    stages.end("split", t)
    source = hp.models.resolve_model("distilbert-base-uncased")
    clf = hp.models.load_classifier(source.used, loaded.label_names, source=source, seed=42)

    def tokenize(batch):
        return clf.tokenizer(batch["text"], truncation=True, max_length=args.max_length)

    t = time.perf_counter()
    encoded = {name: hp.data.tokenize(hp.data.to_label_ids(split, clf.label2id), tokenize, num_proc=args.num_proc)
               for name, split in splits.items()}
    stages.end("tokenize", t)
    return rows_read, loaded, clf, encoded


def loop_steps(args, clf, train, stages: Stages, result: dict) -> None:
    """The workbook's path: the token store, its collation speed, then a few steps of hp.train."""
    import helpers as hp

    t = time.perf_counter()
    store = batching.TokenStore(train)
    stages.end("store", t)
    result["store_mb"] = round(store.nbytes() / 2**20, 1)
    sampler = batching.LengthGroupedBatchSampler(store.lengths, 32, seed=0)
    collate = batching.PadCollator(clf.tokenizer.pad_token_id)
    t, rows = time.perf_counter(), 0
    for ids in sampler.batches()[: args.collate_batches]:
        collate([store[i] for i in ids])
        rows += len(ids)
    result["collate_rows_per_s"] = round(rows / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    hp.train(clf.model, store, None, pad_token_id=clf.tokenizer.pad_token_id, max_steps=args.steps,
             train_batch_size=args.batch_size, lr=5e-5, eval_each_epoch=False, progress=False,
             device="cpu")  # the data path on a lab machine's CPU, as the Trainer's below (use_cpu)
    stages.end("steps", t)


def trainer_steps(args, clf, train, stages: Stages) -> None:
    """The same steps with the Hugging Face Trainer reading the tokenized Arrow dataset."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    import helpers as hp

    t = time.perf_counter()
    targs = TrainingArguments(output_dir=str(Path(args.out).with_suffix(".trainer")), max_steps=args.steps,
                              per_device_train_batch_size=args.batch_size, learning_rate=5e-5,
                              save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1000,
                              train_sampling_strategy="group_by_length", use_cpu=True,
                              bf16=hp.device.resolve_precision("auto", torch.device("cpu")) == "bf16")
    trainer = Trainer(model=clf.model, args=targs, train_dataset=train.remove_columns(["text"])
                      if "text" in train.column_names else train,
                      data_collator=DataCollatorWithPadding(clf.tokenizer))
    trainer.train()
    stages.end("steps", t)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stages, start_rss = Stages(), rss_mb()
    rows_read, loaded, clf, encoded = prepare(args, stages)
    train = encoded["train"]
    sample = min(2000, len(train))
    tokens = int(sum(len(ids) for ids in train.select(range(sample))["input_ids"]) / sample * len(train))
    result = {"rows": rows_read, "rows_kept": loaded.report.rows_kept, "train_rows": len(train),
              "train_tokens_est": tokens, "variant": args.variant, "start_rss_mb": round(start_rss, 1)}
    if args.variant == "loop":
        loop_steps(args, clf, train, stages, result)
    else:
        trainer_steps(args, clf, train, stages)
    result["stages"] = stages.stages
    result["peak_mb"] = round(peak_mb(), 1)
    result["children_peak_mb"] = round(children_peak_mb(), 1)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
