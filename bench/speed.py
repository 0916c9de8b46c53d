"""Training speed at fixed shapes: the workbook's loop, the plain PyTorch floor and the Hugging Face `Trainer`.

    python -m bench.speed [--device cuda] [--steps 100] [--warmup 10] [--out speed.json]   # make gpu-check's
    python -m bench.speed --tiny                                                            # the plumbing, on a CPU

A BERT-base-sized encoder (random weights: speed does not depend on them) trains on rows of exactly 128 and
of 512 tokens (no padding, so every variant computes the same), in batches large enough to keep a GPU busy:
`--steps` timed optimizer steps after `--warmup` untimed ones, no evaluation. Each variant's seconds cover
only the timed steps:
- the loop: `hp.train` run twice, for warmup and for warmup + steps; the difference of their training
  times (`History.train_wall_s`, which leaves set-up and evaluation out) is the timed steps';
- the floor: the same model, AdamW and precision, forward + backward + step on batches already on the
  device, timed from the end of the warm-up (what a loop costs without its data path or bookkeeping);
- the `Trainer`: the same batch (its per-device batch times the devices it uses), timed by a callback from
  the end of step `--warmup` to the end of training.
Model FLOPs utilization: 6 x non-embedding parameters x tokens/s against the GPU's dense peak in the
precision used (bench.run.mfu; attention's own FLOPs, ~25% more at 512 tokens, are not counted).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {128: 32, 512: 8}  # tokens per row -> rows per batch on a GPU
TINY_SHAPES = {128: 4, 512: 2}


def model_config(tiny: bool):
    from transformers import BertConfig

    if tiny:
        return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                          max_position_embeddings=512, num_labels=2)
    return BertConfig(num_labels=2)  # bert-base-uncased's shape: 12 layers, 768 wide, 110M parameters


def new_model(config, seed: int = 0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def rows(n: int, length: int, vocab: int, seed: int = 0):
    """`n` rows of exactly `length` random token ids with a binary label, as a tokenized `datasets.Dataset`."""
    import datasets

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (n, length), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": torch.randint(0, 2, (n,), generator=g)})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loop_seconds(config, data, batch: int, warmup: int, steps: int, device: torch.device, precision: str) -> float:
    import helpers as hp

    def train_s(total: int) -> float:
        return hp.train(new_model(config), data, None, max_steps=total, train_batch_size=batch, lr=1e-5,
                        precision=precision, device=device.type, eval_each_epoch=False, progress=False,
                        group_by_length=False, seed=0).train_wall_s

    return train_s(warmup + steps) - train_s(warmup)


def floor_seconds(config, data, batch: int, warmup: int, steps: int, device: torch.device, precision: str) -> float:
    import helpers as hp

    model = new_model(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ids = torch.tensor(data["input_ids"][: batch * (warmup + steps)], device=device).view(warmup + steps, batch, -1)
    labels = torch.tensor(data["labels"][: batch * (warmup + steps)], device=device).view(warmup + steps, batch)
    start = None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        with hp.device._autocast(device, precision):
            loss = model(input_ids=ids[i], labels=labels[i]).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return time.perf_counter() - start


def trainer_seconds(config, data, batch: int, warmup: int, steps: int, device: torch.device, precision: str) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        start = end = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                _sync(device)
                Clock.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            _sync(device)
            Clock.end = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=warmup + steps, per_device_train_batch_size=batch,
                                 learning_rate=1e-5, warmup_steps=0, logging_steps=10**6, save_strategy="no",
                                 eval_strategy="no", report_to="none", disable_tqdm=True, seed=0,
                                 bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device.type == "cpu")
        replicas = max(1, args.n_gpu) * args.world_size  # the same global batch as the loop and the floor
        args.per_device_train_batch_size = max(1, batch // replicas)
        Trainer(model=new_model(config), args=args, train_dataset=data, callbacks=[Clock()]).train()
    return Clock.end - Clock.start


VARIANTS = {"loop": loop_seconds, "floor": floor_seconds, "trainer": trainer_seconds}


def measure(args) -> dict:
    import helpers as hp
    from bench import run

    device = torch.device(args.device) if args.device else hp.device.best_device()
    precision = hp.device.resolve_precision(args.precision, device)
    config = model_config(args.tiny)
    probe = new_model(config)
    parameters = probe.num_parameters()
    embedding = sum(p.numel() for n, p in probe.named_parameters() if "embeddings" in n)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result = {"device": str(device), "gpu": gpu, "precision": precision, "parameters": parameters,
              "embedding_parameters": embedding, "warmup": args.warmup, "steps": args.steps, "shapes": {}}
    for length, batch in (TINY_SHAPES if args.tiny else SHAPES).items():
        data = rows(batch * (args.warmup + args.steps), length, config.vocab_size)
        shape = {"rows_per_batch": batch, "tokens_per_row": length}
        for name, seconds_of in VARIANTS.items():
            seconds = seconds_of(config, data, batch, args.warmup, args.steps, device, precision)
            figures = {"seconds": round(seconds, 3), "samples_per_s": round(batch * args.steps / seconds, 1),
                       "tokens_per_s": round(batch * length * args.steps / seconds)}
            mfu = run.mfu({**figures, "parameters": parameters, "embedding_parameters": embedding,
                           "precision": precision}, gpu, args.peak_tflops)
            shape[name] = {**figures, "mfu": round(mfu, 4) if mfu is not None else None}
            print(f"{length} tokens x {batch} rows, {name}: {figures['samples_per_s']} samples/s"
                  + (f", MFU {mfu:.1%}" if mfu is not None else ""), flush=True)
        shape["loop_over_floor"] = round(shape["floor"]["seconds"] / shape["loop"]["seconds"], 3)
        shape["loop_over_trainer"] = round(shape["trainer"]["seconds"] / shape["loop"]["seconds"], 3)
        result["shapes"][str(length)] = shape
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda / mps / cpu (default: the best there is)")
    p.add_argument("--precision", default="auto",
                   help="auto (bf16 where native, else fp16 on a GPU), bf16, fp16, fp32")
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps per variant and shape")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model and small batches: the plumbing, on a CPU")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU dense peak, if bench.run lacks it")
    p.add_argument("--out", default=None, help="write the figures here as JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be at least 1")
    result = measure(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
