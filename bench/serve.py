"""Serving benchmark: `workbook serve` with micro-batching on and off, on torch and on ONNX Runtime (fp32, int8),
at 1, 8 and 32 concurrent clients.

    python -m bench.serve                    # make bench-serve
    python -m bench.serve --requests 300 --clients 1,8,32

The classifier is the stand-in encoder (all-MiniLM-L6-v2) fine-tuned for a minute on real news (AG News, 3,000
rows of ../shared/data, where it is; else the generated PhraseBank sample, said) and exported with `workbook
export --quantize int8`; 400 other rows are its held-out check (int8's labels against torch's, both accuracies).
The summarizer is the tiny T5 stand-in (torch only: generation stays on torch). Each server runs in its own
process on 127.0.0.1; a bounded number of requests (one text each) is sent by N client threads. Reports
requests/s and p50 / p99 latency, and what the classifier alone costs per text on each runtime (no HTTP), and
judges the ONNX targets; writes bench/serve.json and bench/serve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
AG_NEWS = HERE.parent.parent / "shared" / "data" / "ag_news" / "test.csv"


def texts(n: int) -> list[str]:
    """Real news items where available (AG News: title + description), else the generated PhraseBank sample."""
    import helpers as hp

    if AG_NEWS.exists():
        rows = hp.data.load_labeled_data(AG_NEWS, text_col="title+description", label_col="label",
                                         label_names="World,Sports,Business,Sci/Tech").dataset["text"]
    else:
        rows = hp.data.load_labeled_data("auto", text_col="sentence", label_col="label", columns=["label", "sentence"],
                                         sample="financial_phrasebank").dataset["text"]
    return [rows[i % len(rows)] for i in range(n)]


def trained_classifier(rows: int = 3000, heldout: int = 400) -> tuple[Path, list[str], list[str]]:
    """The classifier the runtimes are compared on: MiniLM fine-tuned one epoch on real news (a weakly trained model
    has near-ties that int8 flips; a trained one is what users serve), exported in fp32 and int8, saved once under
    bench/work/; with the held-out texts and labels its agreement is measured on."""
    import helpers as hp
    from workbook import onnx

    labelled = hp.data.load_labeled_data(AG_NEWS, text_col="title+description", label_col="label",
                                         label_names="World,Sports,Business,Sci/Tech") if AG_NEWS.exists() else \
        hp.data.load_labeled_data("auto", text_col="sentence", label_col="label", columns=["label", "sentence"],
                                  sample="financial_phrasebank")
    data = labelled.dataset.shuffle(seed=0)
    test = data.select(range(min(heldout, len(data) // 4)))
    folder = WORK / "serve-classifier-trained"
    if not (folder / "workbook.json").exists() or "onnx" not in json.loads((folder / "workbook.json").read_text()):
        clf = hp.models.load_classifier("ProsusAI/finbert", labelled.label_names)
        train = data.select(range(len(test), min(len(data), len(test) + rows)))
        encoded = hp.data.tokenize(hp.data.to_label_ids(train, clf.label2id),
                                   lambda b: clf.tokenizer(b["text"], truncation=True, max_length=128))
        hp.train(clf.model, encoded, None, num_epochs=1, train_batch_size=32, lr=1e-4, eval_each_epoch=False,
                 progress=False)
        hp.artifacts._save_model(WORK, clf.model, clf.tokenizer, task="text-classification",
                                 info={"max_length": 128, "labels": clf.label_names}, subdir=folder.name)
        report = onnx.export(folder, quantize="int8", texts=list(test["text"]), labels=list(test["label"]))
        print(f"exported: int8 labels equal to fp32 on {report['int8']['labels_equal']:.1%}", flush=True)
    return folder, list(test["text"]), list(test["label"])


def model_folders() -> dict[str, Path]:
    """A classifier and a summarizer folder, saved once under bench/work/."""
    import helpers as hp

    folders = {"classifier": WORK / "serve-classifier", "summarizer": WORK / "serve-summarizer"}
    if not (folders["classifier"] / "workbook.json").exists():
        clf = hp.models.load_classifier("ProsusAI/finbert", ["negative", "neutral", "positive"])
        hp.artifacts._save_model(WORK, clf.model, clf.tokenizer, task="text-classification",
                                 info={"max_length": 128, "labels": clf.label_names}, subdir="serve-classifier")
    if not (folders["summarizer"] / "workbook.json").exists():
        gen = hp.models.load_generator("google-t5/t5-small", kind="seq2seq")
        hp.artifacts._save_model(WORK, gen.model, gen.tokenizer, task="summarization-seq2seq",
                                 info={"prefix": "summarize: ", "max_source_length": 256,
                                       "generation": {"max_new_tokens": 16, "min_new_tokens": 8}},
                                 subdir="serve-summarizer")
    return folders


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, batching: bool, device: str = "cpu", runtime: str = "torch") -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "workbook.cli", "serve", str(folder), "--port", str(port), "--device", device,
            "--runtime", runtime]
    if not batching:
        args.append("--no-batching")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server for {folder} did not start")


def post(url: str, text: str) -> float:
    body = json.dumps({"text": text}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return time.perf_counter() - start


def load(url: str, items: list[str], clients: int) -> dict:
    """`clients` threads share the requests; each sends its next one when the last one returned."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = sorted(pool.map(lambda t: post(url, t), items))
    wall = time.perf_counter() - start
    return {"requests": len(items), "clients": clients, "requests_per_s": round(len(items) / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}


def classifier_cost(folder: Path, items: list[str], n: int = 96, device: str = "cpu", runtime: str = "torch") -> dict:
    """What the classifier itself costs per text in this process, no HTTP: one text per call (as with
    batching off) and length-grouped batches of up to 32 (what batching can at best reach)."""
    import torch

    from workbook import onnx

    clf = onnx.load(folder, runtime, device=device if runtime == "torch" else None)
    sample = items[:n]
    clf.predict(sample[:8], batch_size=8)  # warm up
    cost = {}
    with torch.inference_mode():
        for size in (1, 32):
            start = time.perf_counter()
            clf.predict(sample, batch_size=size)
            cost[f"ms_per_text_batch_{size}"] = round(1000 * (time.perf_counter() - start) / len(sample), 2)
    return cost


def miss_reasons(results: dict, levels: list[int]) -> list[str]:
    """A plain reason for a missed 3x, from the model's own cost on this machine."""
    cost = results.get("classifier_cost")
    runs = results.get("classifier")
    if not cost or not runs:
        return []
    top = str(max(levels))
    off = runs["off"][top]["requests_per_s"]
    ceiling = 1000 / cost["ms_per_text_batch_32"]
    if runs["on"][top]["requests_per_s"] >= 3 * off:
        return []
    return [f"classifier: the model alone, without HTTP, costs {cost['ms_per_text_batch_1']} ms per text one at a "
            f"time and still {cost['ms_per_text_batch_32']} ms per text in length-grouped batches of 32 on this "
            f"machine ({ceiling:.0f} texts/s at most, {ceiling / off:.1f}x one-at-a-time's {off} requests/s): "
            "the encoder is compute-bound on these CPU cores, so batching saves only the per-call overhead; "
            "3x needs hardware where a batch costs far less per text than one text (a GPU)."]


# The classifier's servers: (runtime, micro-batching). torch both ways (what batching gains), ONNX batched.
CLASSIFIER_RUNS = [("torch", False), ("torch", True), ("onnx", True), ("onnx-int8", True)]


def run_servers(folder: Path, items: list[str], endpoint_path: str, runs, levels, device: str) -> dict:
    """{"<runtime> <on|off>": {clients: figures}} for each server of `runs`, every load level."""
    out: dict = {}
    for runtime, batching in runs:
        name = f"{runtime} {'on' if batching else 'off'}"
        proc, url = start(folder, batching, device, runtime)
        try:
            for item in items[:32]:  # warm up: ONNX Runtime's first run of each input shape is slow
                post(url + endpoint_path, item)
            for clients in levels:
                out.setdefault(name, {})[str(clients)] = r = load(url + endpoint_path, items, clients)
                print(f"{endpoint_path:<10} {name:<14} {clients:>3} clients: {r['requests_per_s']:>7.1f} req/s  "
                      f"p50 {r['p50_ms']:>7.1f} ms  p99 {r['p99_ms']:>8.1f} ms", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def agreement(folder: Path, texts: list[str], labels: list[str]) -> dict:
    """Held-out rows: each ONNX runtime's labels against torch's, and every runtime's accuracy."""
    from workbook import onnx

    answers = {rt: [r["label"] for r in onnx.load(folder, rt).predict(texts)] for rt in ("torch", "onnx", "onnx-int8")}
    out = {"rows": len(texts)}
    for rt, got in answers.items():
        out[f"{rt}_accuracy"] = round(sum(g == t for g, t in zip(got, labels)) / len(labels), 4)
        if rt != "torch":
            out[f"{rt}_labels_equal_torch"] = round(sum(g == t for g, t in zip(got, answers["torch"])) / len(got), 4)
    return out


def onnx_checks(results: dict, levels: list[int]) -> dict[str, bool]:
    """The ONNX targets, each a line with this run's figures."""
    runs, top, one = results["classifier"], str(max(levels)), str(min(levels))
    torch_on, torch_off = runs["torch on"][top]["requests_per_s"], runs["torch off"][top]["requests_per_s"]
    int8, fp32 = runs["onnx-int8 on"][top]["requests_per_s"], runs["onnx on"][top]["requests_per_s"]
    p50 = {rt: runs[f"{rt} on"][one]["p50_ms"] for rt in ("torch", "onnx", "onnx-int8")}
    agree = results["agreement"]
    return {
        f"int8, {top} clients: {int8 / torch_on:.2f}x torch's micro-batched req/s (>= 1.8x)": int8 >= 1.8 * torch_on,
        f"int8, {top} clients: {int8 / torch_off:.2f}x torch unbatched (>= 3x)": int8 >= 3 * torch_off,
        f"fp32 ONNX, {top} clients: {fp32 / torch_on:.2f}x torch's req/s (not slower)": fp32 >= torch_on,
        f"int8, 1 client: p50 {p50['onnx-int8']} ms = {p50['onnx-int8'] / p50['torch']:.2f}x torch's (<= 0.6x)":
            p50["onnx-int8"] <= 0.6 * p50["torch"],
        f"fp32 ONNX, 1 client: p50 {p50['onnx']} ms = {p50['onnx'] / p50['torch']:.2f}x torch's (<= 0.8x)":
            p50["onnx"] <= 0.8 * p50["torch"],
        f"int8 labels equal to torch's on {agree['onnx-int8_labels_equal_torch']:.1%} of {agree['rows']} held-out rows "
        "(>= 97%)": agree["onnx-int8_labels_equal_torch"] >= 0.97,
        f"int8 accuracy {agree['onnx-int8_accuracy']:.4f} vs torch {agree['torch_accuracy']:.4f} (within 1 pt)":
            agree["onnx-int8_accuracy"] >= agree["torch_accuracy"] - 0.01,
    }


def batching_checks(kind: str, runs: dict, levels: list[int]) -> dict[str, bool]:
    top, one = str(max(levels)), str(min(levels))
    off, on = runs["torch off"][top], runs["torch on"][top]
    return {f"{kind}: {top} clients, {on['requests_per_s'] / off['requests_per_s']:.2f}x the requests/s of "
            "one-at-a-time (>= 3x)": on["requests_per_s"] >= 3 * off["requests_per_s"],
            f"{kind}: {top} clients, p99 {on['p99_ms']} vs {off['p99_ms']} ms (no worse)":
                on["p99_ms"] <= off["p99_ms"],
            f"{kind}: 1 client, p50 {runs['torch on'][one]['p50_ms']} vs {runs['torch off'][one]['p50_ms']} ms "
            "(within 10%)": runs["torch on"][one]["p50_ms"] <= 1.1 * runs["torch off"][one]["p50_ms"]}


def report(results: dict, levels: list[int]) -> tuple[str, dict]:
    lines = ["| model | server | clients | req/s | p50 / p99 ms |", "|---|---|---|---|---|"]
    for kind in ("classifier", "summarizer"):
        for name, figures in results[kind].items():
            if name in ("on", "off"):  # the torch servers' figures again, under the names make gpu-check reads
                continue
            for clients in map(str, levels):
                r = figures[clients]
                lines.append(f"| {kind} | {name} | {clients} | {r['requests_per_s']} | {r['p50_ms']} / {r['p99_ms']} |")
    lines += ["", "| the classifier alone (no HTTP) | ms per text, one at a time | ms per text, batches of 32 |",
              "|---|---|---|"]
    lines += [f"| {rt} | {c['ms_per_text_batch_1']} | {c['ms_per_text_batch_32']} |"
              for rt, c in results["classifier_cost_by_runtime"].items()]
    checks = {**batching_checks("classifier (torch)", results["classifier"], levels),
              **batching_checks("summarizer", results["summarizer"], levels),
              **(onnx_checks(results, levels) if "onnx on" in results["classifier"] else {})}
    why = miss_reasons(results, levels)
    table = "\n".join(lines + [""] + [f"- {'PASS' if ok else 'MISS'}: {name}" for name, ok in checks.items()]
                      + (["", "Why the misses:"] + [f"- {line}" for line in why] if why else []))
    return table, checks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=256, help="requests per load level (classifier)")
    p.add_argument("--summarizer-requests", type=int, default=64)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--device", default="cpu", help="where the servers run: cpu (default), cuda (make gpu-check: "
                                                   "torch only, ONNX Runtime's build here is the CPU one)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levels = [int(c) for c in args.clients.split(",")]
    classifier, heldout, labels = trained_classifier()
    items = texts(args.requests)
    runs = CLASSIFIER_RUNS if args.device == "cpu" else CLASSIFIER_RUNS[:2]
    results: dict = {"classifier": run_servers(classifier, items, "/predict", runs, levels, args.device),
                     "summarizer": run_servers(model_folders()["summarizer"], texts(args.summarizer_requests),
                                               "/summarize", [("torch", False), ("torch", True)], levels, args.device)}
    results["classifier_cost_by_runtime"] = {rt: classifier_cost(classifier, items, device=args.device, runtime=rt)
                                             for rt, batching in runs if batching}
    results["classifier_cost"] = results["classifier_cost_by_runtime"]["torch"]
    results["agreement"] = agreement(classifier, heldout, labels) if args.device == "cpu" else {}
    # make gpu-check reads these two as before: torch micro-batching off and on
    for kind in ("classifier", "summarizer"):
        results[kind]["off"], results[kind]["on"] = results[kind]["torch off"], results[kind]["torch on"]
    table, checks = report(results, levels)
    results["checks"] = checks
    (HERE / "serve.json").write_text(json.dumps(results, indent=2))
    (HERE / "serve.md").write_text("# Serving benchmark\n\n" + table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
