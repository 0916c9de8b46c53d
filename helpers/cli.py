"""`workbook`: the command line of the workbook.

    workbook list                                   the notebooks and their parameters
    workbook run [NOTEBOOK ...] [options]           papermill runs into runs/, with runs/summary.md
    workbook run 02 --lr 3e-5 --epochs 2 --model distilbert-base-uncased -p MAX_LENGTH 256
    workbook predict DIR "text" ...                 score or summarize texts with a saved model folder
    echo "text" | workbook predict DIR --json       texts from stdin (one per line), JSON out
    workbook serve DIR [--host H --port P]          a web page + JSON API for a saved model
    workbook samples                                regenerate the offline samples under data/samples/
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Options of the seeds' finetune.py job, mapped onto notebook parameters. Both spellings accepted.
JOB_OPTIONS = [
    (("--lr", "--learning-rate", "--learning_rate"), "LR", float),
    (("--epochs", "--num-epochs", "--num_epochs"), "NUM_EPOCHS", float),
    (("--max-steps", "--max_steps"), "MAX_STEPS", int),
    (("--train-batch-size", "--train_batch_size"), "TRAIN_BATCH_SIZE", int),
    (("--eval-batch-size", "--eval_batch_size"), "EVAL_BATCH_SIZE", int),
    (("--data-source", "--data_source", "--dataset-name", "--dataset_name"), "DATA_SOURCE", str),
    (("--text-col", "--text_col"), "TEXT_COL", str),
    (("--label-col", "--label_col"), "LABEL_COL", str),
    (("--model", "--model-name", "--model_name", "--distilbert-model", "--distilbert_model"), "MODEL_NAME", str),
    (("--max-train-samples", "--max_train_samples"), "MAX_TRAIN_SAMPLES", int),
    (("--max-eval-samples", "--max_eval_samples"), "MAX_EVAL_SAMPLES", int),
    (("--seed",), "SEED", int),
    (("--precision",), "PRECISION", str),
]


def _epochs(text: str):
    value = float(text)
    return int(value) if value.is_integer() else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbook", description="Finetune Workbook: run, score and serve.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute notebooks headless with papermill into runs/")
    run.add_argument("notebooks", nargs="*", help="numbers or names (01, 02_distilbert...); none: all")
    for flags, param, kind in JOB_OPTIONS:
        run.add_argument(*flags, dest=param, type=_epochs if param == "NUM_EPOCHS" else kind, default=None,
                         help=f"sets {param}")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="any parameter of the notebook's parameters cell (repeatable)")
    run.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE=True), as CI runs them")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint (RESUME=True)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run with other parameters in the output folder (OVERWRITE=True)")
    run.add_argument("--runs-dir", default=None, help="where executed notebooks and artifacts go (default runs/)")
    run.add_argument("-v", "--log-output", action="store_true", help="stream the notebooks' output")

    sub.add_parser("list", help="list the notebooks and their parameters")
    sub.add_parser("samples", help="regenerate the offline samples under data/samples/")

    predict = sub.add_parser("predict", help="score texts with a saved model folder")
    predict.add_argument("folder", help="a notebook's OUTPUT_DIR or its model/ folder")
    predict.add_argument("texts", nargs="*", help="texts to score; none: one per line from stdin")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--base-model", default=None,
                         help="base model (folder or Hub id) for a LoRA adapter folder, if not the one it names")
    serve = sub.add_parser("serve", help="serve a saved model: a web page and a JSON API")
    serve.add_argument("folder", help="a notebook's OUTPUT_DIR or a saved model folder (model/ or adapter/)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the best available)")
    serve.add_argument("--base-model", default=None,
                       help="base model (folder or Hub id) for a LoRA adapter folder, if not the one it names")
    serve.add_argument("--max-batch", type=int, default=32,
                       help="micro-batching: texts scored together at most (default 32)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="micro-batching: how long a request waits for others to join its batch (default 5)")
    serve.add_argument("--no-batching", action="store_true", help="one request per model call")
    return parser


def _cmd_run(args) -> int:
    from . import runner

    params = {param: getattr(args, param) for _, param, _ in JOB_OPTIONS if getattr(args, param) is not None}
    for name, value in args.parameter:
        params[name] = runner.parse_value(value)
    if args.smoke:
        params["SMOKE"] = True
    if args.resume:
        params["RESUME"] = True
    if args.overwrite:
        params["OVERWRITE"] = True
    if args.log_output:  # papermill reports cells and their output through logging, at INFO
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs = {"log_output": args.log_output}
    if args.runs_dir:
        from pathlib import Path

        kwargs["runs_dir"] = Path(args.runs_dir).expanduser().resolve()
    try:
        results = runner.run_many(args.notebooks, params, **kwargs)
    except runner.RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [r.notebook for r in results if r.status != "ok"]
    if failed:
        print(f"{len(failed)} of {len(results)} notebooks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_list() -> int:
    from . import runner

    for path in runner.list_notebooks():
        params = runner.notebook_parameters(path)
        print(path.stem)
        for name, info in params.items():
            print(f"    {name:<22} = {info['default']:<28} {info.get('help', '')}")
    return 0


def _cmd_predict(args) -> int:
    from . import inference

    texts = [t for t in args.texts if t != "-"]
    if not texts or "-" in args.texts:
        texts += [line.rstrip("\n") for line in sys.stdin if line.strip()]
    texts = [t for t in texts if t.strip()]
    if not texts:
        print("error: no text given; pass texts as arguments or one per line on stdin", file=sys.stderr)
        return 2
    try:
        model = inference.load(args.folder, base_model=args.base_model)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if model.task == "text-classification":
        inputs = texts
        if getattr(model, "takes_pairs", False):
            inputs = [inference.parse_pair_text(t) for t in texts]
            if any(p is None for p in inputs):
                print("error: this model reads sentence pairs; give each as 'first text ||| second text' "
                      "(or with a TAB between them on stdin)", file=sys.stderr)
                return 2
        results = model.predict(inputs)
    else:
        results = model.summarize(texts)
    if args.json:
        print(json.dumps([{"text": t, **r} for t, r in zip(texts, results)], indent=2, ensure_ascii=False))
        return 0
    for text, r in zip(texts, results):
        cut = "  (text cut to fit)" if r["truncated"] else ""
        if "label" in r:
            probs = " ".join(f"{k}={v:.2f}" for k, v in r["probabilities"].items())
            print(f"{r['label']:<10} {r['score']:.3f}  [{probs}]  {text[:70]}{cut}")
        else:
            print(f"{text[:70]}{cut}\n  -> {r['summary']}")
    return 0


def _cmd_serve(args) -> int:
    from . import serve

    try:
        batching = {"max_batch": 1, "max_wait_ms": 0} if args.no_batching else {
            "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}
        serve.serve(args.folder, host=args.host, port=args.port, device=args.device, base_model=args.base_model,
                    **batching)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "predict" and not any(e.startswith("-") and e != "-" for e in extra):
        args.texts += extra  # texts after an option: `workbook predict DIR --base-model B "text"`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "list":
        return _cmd_list()
    if args.command == "samples":
        from . import data, samples

        for path in samples.write_all(data.SAMPLES_DIR):
            print(f"wrote {path}")
        return 0
    if args.command == "predict":
        return _cmd_predict(args)
    if args.command == "serve":
        return _cmd_serve(args)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
