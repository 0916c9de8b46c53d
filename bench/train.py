"""One fine-tuning run of the benchmark, in its own process (so its peak memory is its own).

    python -m bench.train --variant loop --out result.json [options]

Variants, all on the same model, data, split, hyperparameters and seed:
    seed_trainer   (a) the seeds' way: `Trainer`, `padding="max_length"` to MAX_LENGTH, fp32
    tuned_trainer  (b) a well-tuned `Trainer`: dynamic padding, length grouping, bf16 where supported
    loop           (c) the workbook's loop (`hp.train`)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

from helpers import _batching as batching

VARIANTS = ("seed_trainer", "tuned_trainer", "loop", "floor")
LABELS = ["negative", "neutral", "positive"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--out", required=True, help="where to write this run's JSON result")
    p.add_argument("--model", default="standin", help='"standin" (all-MiniLM-L6-v2), a folder or Hub id, '
                   'or "random:bert-base" (BERT-base config, random weights; "random:tiny" for tests)')
    p.add_argument("--data-source", default="auto", help='"auto": the generated all-data.csv sample; or a file')
    p.add_argument("--text-col", default="sentence", help='text column(s), e.g. "title+description"')
    p.add_argument("--label-col", default="label")
    p.add_argument("--label-names", default="negative,neutral,positive",
                   help="labels in order (integer labels: positions, 0- or 1-based)")
    p.add_argument("--columns", default="label,sentence", help="column names of a headerless file")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--test-size", type=float, default=0.1, help="share of rows in the test split")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=10, help="evaluate every N optimizer steps (time to target)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default=None, help="cpu / cuda (default: best available)")
    p.add_argument("--compile", action="store_true", help="loop only: torch.compile the model")
    p.add_argument("--fast-paths", default="dropout,attention",
                   help='loop only: the CPU fast paths to use (default: all, as hp.train), comma-separated, or "none"')
    return p.parse_args(argv)


def load_data(args, tokenizer, *, pad_to_max: bool):
    import helpers as hp

    loaded = hp.data.load_labeled_data(
        None if args.data_source == "auto" else args.data_source, text_col=args.text_col, label_col=args.label_col,
        columns=args.columns.split(","), label_names=LABELS, sample="financial_phrasebank")
    splits = hp.data.stratified_split(loaded.dataset, seed=args.seed, test_size=args.test_size)
    splits["train"] = hp.data.cap_samples(splits["train"], args.max_train_samples, seed=args.seed)
    label2id = {n: i for i, n in enumerate(LABELS)}

    def tok(batch):
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length,
                         padding="max_length" if pad_to_max else False)

    return {k: hp.data.to_label_ids(v, label2id).map(tok, batched=True, remove_columns=["text"])
            for k, v in splits.items()}


def load_model(args):
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    import helpers as hp

    id2label = dict(enumerate(LABELS))
    if args.model.startswith("random:"):
        # speed and memory do not depend on the weights: a BERT-base-sized encoder from its config
        tokenizer = AutoTokenizer.from_pretrained(hp.models._standin_encoder_dir())
        torch.manual_seed(args.seed)
        size = {} if args.model == "random:bert-base" else dict(hidden_size=32, num_hidden_layers=2,
                                                                 num_attention_heads=2, intermediate_size=64)
        config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=len(LABELS), id2label=id2label,
                            label2id={v: k for k, v in id2label.items()}, **size)
        return BertForSequenceClassification(config), tokenizer
    name = hp.models._standin_encoder_dir() if args.model == "standin" else args.model
    torch.manual_seed(args.seed)  # the new classification head is initialized while loading
    clf = hp.models.load_classifier(name, LABELS, seed=args.seed)
    return clf.model, clf.tokenizer


def _device(args):
    import torch

    import helpers as hp

    return torch.device(args.device) if args.device else hp.device.best_device()


def _sizes(model) -> dict:
    """Parameters, and those in embedding tables (a lookup, no matmul: MFU's 6N rule leaves them out)."""
    import torch

    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return {"parameters": sum(p.numel() for p in model.parameters()), "embedding_parameters": embedding}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _metrics(logits, labels):
    import helpers as hp

    return hp.metrics.headline(hp.metrics.classification_report(labels, logits.argmax(-1), LABELS))


def run_trainer(args, *, tuned: bool) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, default_data_collator

    import helpers as hp

    model, tokenizer = load_model(args)
    data = load_data(args, tokenizer, pad_to_max=not tuned)
    device = _device(args)
    precision = hp.device.resolve_precision("auto", device) if tuned else "fp32"
    evals, marks = [], {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            marks["rss_before_train_mb"] = _rss_mb()
            self.start = time.perf_counter()

        def on_evaluate(self, _args, state, _control, metrics=None, **__):
            evals.append({"step": state.global_step, "elapsed_s": time.perf_counter() - self.start,
                          "accuracy": metrics.get("eval_accuracy"), "eval_s": metrics.get("eval_runtime", 0.0)})

    def compute(eval_pred):
        return _metrics(eval_pred.predictions, eval_pred.label_ids)

    targs = TrainingArguments(
        output_dir=str(Path(args.out).with_suffix("")) + "-trainer", num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup_ratio, weight_decay=0.01, lr_scheduler_type="linear",
        eval_strategy="steps", eval_steps=args.eval_every, save_strategy="no", logging_steps=args.eval_every,
        report_to="none", seed=args.seed, disable_tqdm=True, use_cpu=device.type == "cpu",
        bf16=precision == "bf16", fp16=precision == "fp16",
        train_sampling_strategy="group_by_length" if tuned else "random")
    # The same global batch as the loop and the floor: the Trainer's is per device, and in one process it spreads
    # over every visible GPU (DataParallel), under torchrun over the processes.
    replicas = max(1, targs.n_gpu) * targs.world_size
    targs.per_device_train_batch_size = args.batch_size // replicas
    targs.per_device_eval_batch_size = max(1, args.eval_batch_size // replicas)
    collator = DataCollatorWithPadding(tokenizer) if tuned else default_data_collator
    trainer = Trainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=collator, compute_metrics=compute, callbacks=[Clock()])
    start = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - start
    eval_s = sum(e["eval_s"] for e in evals)
    pred = trainer.predict(data["test"])
    test = _metrics(pred.predictions, pred.label_ids)  # label_ids travel with the predictions' order
    samples = round(out.metrics["train_samples_per_second"] * out.metrics["train_runtime"])
    train_s = out.metrics["train_runtime"] - eval_s  # the Trainer's runtime includes its evaluations
    return {"precision": precision, "device": str(device), "train_s": train_s, "eval_s": eval_s, "wall_s": wall,
            "samples": samples, "train_samples_per_s": samples / train_s, "evals": evals, "test": test, **marks}


def run_loop(args) -> dict:
    import torch

    import helpers as hp

    model, tokenizer = load_model(args)
    data = load_data(args, tokenizer, pad_to_max=False)
    if args.compile:
        model = torch.compile(model, dynamic=True)
    rss_before = _rss_mb()
    start = time.perf_counter()
    history = hp.train(model, data["train"], data["validation"], pad_token_id=tokenizer.pad_token_id,
                       num_epochs=args.epochs, train_batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                       lr=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=0.01, eval_every_steps=args.eval_every,
                       eval_each_epoch=False, compute_metrics=_metrics, metric_for_best="accuracy",
                       load_best_at_end=False, log_every_steps=args.eval_every, seed=args.seed, progress=False,
                       device=args.device,
                       cpu_fast_paths=[] if args.fast_paths == "none" else args.fast_paths.split(","))
    wall = time.perf_counter() - start
    result = hp.evaluate(model, data["test"], compute_metrics=_metrics, batch_size=args.eval_batch_size,
                         pad_token_id=tokenizer.pad_token_id, progress=False)
    evals = [{"step": e["step"], "elapsed_s": e["elapsed_s"], "accuracy": e.get("accuracy")} for e in history.evals]
    tokens = sum(len(x) for x in data["train"]["input_ids"]) * args.epochs
    return {"precision": history.precision, "device": history.device, "train_s": history.train_wall_s,
            "eval_s": history.eval_wall_s, "tokens_per_s": tokens / history.train_wall_s, **_sizes(model),
            "wall_s": wall, "samples": history.total_examples, "train_samples_per_s": history.samples_per_s,
            "evals": evals, "test": result.metrics, "rss_before_train_mb": rss_before}


def run_floor(args) -> dict:
    """(d) The plain PyTorch floor: forward, backward, AdamW and the schedule on the same length-grouped
    batches as (c), and nothing else (no evaluation, loss logging, clipping, checkpoints or fast
    paths). A loop that computes the same things cannot be much faster on this machine in this
    precision; only computing less (the loop's CPU fast paths) or cheaper (bf16 hardware) can."""
    import torch
    from transformers import get_scheduler

    import helpers as hp

    model, tokenizer = load_model(args)
    data = load_data(args, tokenizer, pad_to_max=False)
    rows = batching.as_rows(data["train"])
    torch.manual_seed(args.seed)
    sampler = batching.LengthGroupedBatchSampler(rows.lengths, args.batch_size, seed=args.seed)
    device = _device(args)  # where (c) trains: the same device, or the comparison means nothing
    precision = hp.device.resolve_precision("auto", device)  # what (c) uses on this machine
    model.to(device)
    collate = batching.PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if device.type == "cuda" else None)
    optimizer = hp.training._make_optimizer(model, args.lr, 0.01, device)  # the fused AdamW (c) and (b) use
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None  # as (c) on a T4
    steps = math.ceil(len(sampler) * args.epochs)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(args.warmup_ratio * steps),
                              num_training_steps=steps)
    rss_before = _rss_mb()
    model.train()
    done, samples, start = 0, 0, time.perf_counter()
    while done < steps:
        for ids in sampler:
            batch = hp.device._to_device(collate([rows[i] for i in ids]), device)
            with hp.device._autocast(device, precision):
                loss = model(**batch).loss
            if scaler is not None:
                scale = scaler.get_scale()
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scaler.get_scale() >= scale:  # a skipped (overflowing) step does not advance the schedule
                    scheduler.step()
            else:
                loss.backward()
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done, samples = done + 1, samples + len(ids)
            if done == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    result = hp.evaluate(model, data["test"], compute_metrics=_metrics, batch_size=args.eval_batch_size,
                         pad_token_id=tokenizer.pad_token_id, progress=False, device=device)
    return {"precision": precision, "device": str(device), "train_s": train_s, "eval_s": 0.0, "wall_s": train_s,
            "samples": samples,
            "train_samples_per_s": samples / train_s, "evals": [], "test": result.metrics,
            "rss_before_train_mb": rss_before}


def main(argv=None) -> int:
    global LABELS
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from helpers import _readers

    LABELS = _readers.parse_label_names(args.label_names)[0]
    import torch

    if args.variant == "loop":
        result = run_loop(args)
    elif args.variant == "floor":
        result = run_floor(args)
    else:
        result = run_trainer(args, tuned=args.variant == "tuned_trainer")
    result.update(variant=args.variant, peak_rss_mb=_rss_mb(),
                  peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
