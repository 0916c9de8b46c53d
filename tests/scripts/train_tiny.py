"""Train a tiny BERT on the generated PhraseBank sample; used by the tests as a separate process.

    python tests/scripts/train_tiny.py OUT.json [--checkpoint-dir D] [--resume] [--pause-at-step N]
                                                [--pause-after-checkpoint N] [--steps N] [--stop-after-steps N]
                                                [--epochs N --train-rows N --patience N --find-lr]
    torchrun --standalone --nproc_per_node 2 tests/scripts/train_tiny.py OUT.json     # 2 CPU processes (gloo)
    accelerate launch --cpu --num_processes 2 tests/scripts/train_tiny.py OUT.json

Deterministic on CPU in fp32 with dropout off (so 1 and 2 processes can be compared). With
`--pause-at-step N` the process stops for good in the middle of writing checkpoint N (after the
model file, before the rest), so a test can SIGKILL it there. With `--pause-after-checkpoint N` it
stops for good right after checkpoint N is complete, before step N+1, so a test's SIGKILL lands between
two checkpoints however fast or slow the machine is (no race with the steps that follow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import helpers as hp  # noqa: E402
from helpers._readers import sample_path  # noqa: E402

LABELS = ["negative", "neutral", "positive"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--checkpoint-dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--pause-at-step", type=int)
    p.add_argument("--pause-after-checkpoint", type=int, help="hang once checkpoint N is complete (for SIGKILL)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--epochs", type=int, default=None, help="train by epochs (a checkpoint at each epoch's end)")
    p.add_argument("--train-rows", type=int, default=192, help="not a multiple of 16: a remainder batch")
    p.add_argument("--patience", type=int, default=None, help="early stopping after N evaluations")
    p.add_argument("--find-lr", action="store_true", help="the learning-rate range test first, as notebooks do")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--precision", default="fp32", help="fp16 / bf16 on a GPU (make gpu-check)")
    p.add_argument("--stop-after-steps", type=int, default=None, help="end as an interruption would, at this step")
    args = p.parse_args()

    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if args.pause_at_step:
        real_save = torch.save

        def slow_save(obj, path, *a, **k):  # hang half-way through writing the chosen checkpoint
            real_save(obj, path, *a, **k)
            if f"checkpoint-{args.pause_at_step}" in str(path) and str(path).endswith("model.pt"):
                Path(args.out + ".paused").write_text("writing checkpoint")
                time.sleep(600)

        torch.save = slow_save
        hp.training.torch.save = slow_save

    if args.pause_after_checkpoint:
        real_checkpoint = hp.training._save_checkpoint

        def checkpoint_then_hang(root, step, **kwargs):  # hang once the chosen checkpoint is complete
            final = real_checkpoint(root, step, **kwargs)
            if step == args.pause_after_checkpoint:
                Path(args.out + ".paused").write_text(f"checkpoint-{step} complete")
                time.sleep(600)
            return final

        hp.training._save_checkpoint = checkpoint_then_hang

    tokenizer = AutoTokenizer.from_pretrained(hp.models._standin_encoder_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=3,
                        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    loaded = hp.data.load_labeled_data(sample_path("financial_phrasebank"), text_col="sentence",
                                       label_col="label", columns=["label", "sentence"], label_names=LABELS)
    splits = hp.data.stratified_split(loaded.dataset, seed=0)
    label2id = {n: i for i, n in enumerate(LABELS)}

    def encode(split, n):
        split = hp.data.to_label_ids(hp.data.cap_samples(split, n, seed=0), label2id)
        return split.map(lambda b: tokenizer(b["text"], truncation=True, max_length=48), batched=True,
                         remove_columns=["text"])

    train, val = encode(splits["train"], args.train_rows), encode(splits["validation"], 64)
    suggested = None
    if args.find_lr:  # each process stops where the others do, or the training after it hangs
        suggested = hp.find_lr(model, train, pad_token_id=tokenizer.pad_token_id, train_batch_size=16,
                               precision=args.precision, seed=0, progress=False, num_steps=60).suggested_lr
    shares = _record_shares()
    by_epochs = args.epochs is not None
    history = hp.train(model, train, val, pad_token_id=tokenizer.pad_token_id,
                       max_steps=None if by_epochs else args.steps, num_epochs=args.epochs or 1,
                       train_batch_size=16, lr=5e-3, precision=args.precision,
                       eval_every_steps=None if by_epochs else 8, log_every_steps=1,
                       compute_metrics=hp.metrics.classification_metrics_fn(LABELS), metric_for_best="accuracy",
                       checkpoint_dir=args.checkpoint_dir,
                       save_every_steps=4 if args.checkpoint_dir and not by_epochs else None,
                       keep_checkpoints=args.epochs or 2, resume=args.resume, seed=0, progress=False,
                       stop_after_steps=args.stop_after_steps, early_stopping_patience=args.patience)
    Path(f"{args.out}.rows-rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(shares))
    if int(os.environ.get("RANK", "0")) == 0:
        weights = torch.cat([v.flatten().float() for v in model.state_dict().values()])
        Path(args.out).write_text(json.dumps({"losses": history.train_loss, "evals": history.evals,
                                              "weights_sum": float(weights.double().sum()),
                                              "weights_abs": float(weights.double().abs().sum()),
                                              "num_processes": history.num_processes,
                                              "resumed_from": history.resumed_from,
                                              "loss_scale": history.loss_scale,
                                              "skipped_steps": history.skipped_steps,
                                              "epoch": history.epoch, "steps": history.global_step,
                                              "examples_seen": history.total_examples,
                                              "stopped_early": history.stopped_early,
                                              "train_rows": len(train), "suggested_lr": suggested}))


def _record_shares() -> list[list[list[int]]]:
    """The rows this process is given, epoch by epoch: each batch's rows with its loss weight > 0
    (a weight-0 row only keeps a process with no rows of a remainder batch in step)."""
    shares: list[list[list[int]]] = []
    from helpers import _batching

    real_iter = _batching.ProcessShare.__iter__

    def recording(self):
        batches = list(real_iter(self))
        shares.append([ids for ids, w in zip(batches, self.weights) if w > 0])
        return iter(batches)

    _batching.ProcessShare.__iter__ = recording
    return shares


if __name__ == "__main__":
    main()
