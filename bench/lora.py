"""LoRA vs full fine-tuning of a t5-small-sized model: samples/s and peak memory, each in its own process.

    python -m bench.lora [--device cuda] [--steps 30] [--batch-size 16]

The model is built from t5-small's configuration with random weights (speed and memory do not depend
on the weights), so it runs anywhere, Hub or not. Inputs: random token ids, 512 source and 64 target
tokens per row (XSum-like). Prints a table and writes bench/lora_results.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(mode: str, args) -> dict:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    import helpers as hp

    device = torch.device(args.device) if args.device else hp.device.best_device()
    precision = hp.device.resolve_precision("auto", device, allow_fp16=False)
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,  # t5-small
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(config)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_2_SEQ_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=["q", "v"]))
    counts = hp.models._count_parameters(model)
    model.to(device).train()
    optimizer = hp.training._make_optimizer(model, 1e-3, 0.0, device)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(2, 32000, (args.batch_size, args.source_length), generator=g),
                "labels": torch.randint(2, 32000, (args.batch_size, args.target_length), generator=g)}
               for _ in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        with hp.device._autocast(device, precision):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for i in range(args.warmup):
        step(batches[i % 4])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[i % 4])
    float(loss)  # wait for the device
    seconds = time.perf_counter() - start
    return {"mode": mode, "device": str(device), "precision": precision, "trainable": counts.trainable,
            "total": counts.total, "samples_per_s": args.steps * args.batch_size / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--source-length", type=int, default=512)
    p.add_argument("--target-length", type=int, default=64)
    p.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode:  # the child process
        Path(args.out).write_text(json.dumps(one(args.mode, args)))
        return 0
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {}
    for mode in ("full", "lora"):
        out = HERE / "work" / f"lora-{mode}.json"
        out.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "bench.lora", "--mode", mode, "--out", str(out), *forwarded],
                       cwd=HERE.parent, check=True)
        results[mode] = json.loads(out.read_text())
    full, lora = results["full"], results["lora"]
    memory = "peak_gpu_mb" if full["peak_gpu_mb"] else "peak_rss_mb"
    print(f"t5-small-sized model, batch {args.batch_size} x {args.source_length}/{args.target_length} tokens, "
          f"{full['device']}, {full['precision']}")
    print("| | trainable parameters | samples/s | peak memory (MB) |\n|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['trainable']:,} of {r['total']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
              f"{r['samples_per_s']:.1f} | {r[memory]:.0f} ({memory}) |")
    print(f"LoRA/full: samples/s x{lora['samples_per_s'] / full['samples_per_s']:.2f}, "
          f"memory x{lora[memory] / full[memory]:.2f}")
    (HERE / "lora_results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
