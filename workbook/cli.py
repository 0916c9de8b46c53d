"""`workbook`: the command line of the workbook.

    workbook list                                   the notebooks and their parameters
    workbook run [NOTEBOOK ...] [options]           papermill runs into runs/, with runs/summary.md
    workbook run 02 --lr 3e-5 --epochs 2 --model distilbert-base-uncased -p MAX_LENGTH 256
    workbook plan 01 --train-batch-size 64          will it fit, how long: the notebook up to its plan cell
    workbook predict DIR "text" ...                 score or summarize texts with a saved model folder
    echo "text" | workbook predict DIR --json       texts from stdin (one per line), JSON out
    workbook serve DIR [--host H --port P]          a web page + JSON API for a saved model
    workbook export DIR [--quantize int8]           a classifier as ONNX: serve / predict run it on ONNX Runtime
    workbook sweep 01 --lr 3e-5,1e-4 --epochs 1,2   a grid of runs, tracked in MLflow, with a report
    workbook sweep 01 --lr 3e-5,1e-4 --seeds 3      each configuration on 3 seeds: mean, spread, is it real?
    workbook sweep 01 --trials 8 --lr 1e-5:1e-4:log an Optuna search (TPE, median pruner), resumable
    workbook compare RUN_DIR ...                    the comparison report for any runs
    workbook ui                                     the MLflow UI over runs/mlflow.db on 127.0.0.1
    workbook samples                                regenerate the offline samples under data/samples/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
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


# Parameters whose one value is comma-separated: `workbook sweep` keeps them fixed.
LIST_PARAMS = {"LABEL_NAMES"}


def _epochs(text: str):
    value = float(text)
    return int(value) if value.is_integer() else value


def _run_parser(sub) -> argparse.ArgumentParser:
    run = sub.add_parser("run", help="execute notebooks headless with papermill into runs/")
    run.add_argument("notebooks", nargs="*", help="numbers or names (01, 02_distilbert...); none: all")
    for flags, param, kind in JOB_OPTIONS:
        run.add_argument(*flags, dest=param, type=_epochs if param == "NUM_EPOCHS" else kind, default=None,
                         help=f"sets {param}")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="any parameter of the notebook's parameters cell (repeatable); also as --name VALUE, "
                          "e.g. --label-names a,b for LABEL_NAMES")
    run.add_argument("-f", "--parameters-file", default=None, metavar="FILE",
                     help="parameters from a YAML or JSON file (as papermill's -f); options given here win")
    run.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE=True), as CI runs them")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint (RESUME=True)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run with other parameters in the output folder (OVERWRITE=True)")
    run.add_argument("--runs-dir", default=None, help="where executed notebooks and artifacts go (default runs/)")
    run.add_argument("-v", "--log-output", action="store_true", help="stream the notebooks' output")
    return run


def _sweep_parser(sub) -> argparse.ArgumentParser:
    sweep = sub.add_parser("sweep", help="run a notebook over a grid of parameters, or an Optuna search",
                           description="Values with commas are swept (a grid, or Optuna's choices); LOW:HIGH or "
                                       "LOW:HIGH:log is a range (with --trials); one value is fixed for every run, and "
                                       "so is LABEL_NAMES (its commas separate labels). Any parameter can be given "
                                       "as --name VALUES or -p NAME VALUES.")
    sweep.add_argument("notebook", help="number or name (01, 02_distilbert...)")
    for flags, param, _ in JOB_OPTIONS:
        sweep.add_argument(*flags, dest=param, default=None, metavar="VALUES", help=f"values of {param}")
    sweep.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
                       help="any parameter: values (a,b,c), a range (LOW:HIGH[:log]) or one fixed value")
    sweep.add_argument("--trials", type=int, default=None, help="Optuna: this many trials (default: the grid)")
    sweep.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="run every configuration on N seeds (SEED, SEED+1, ...); the report ranks configurations "
                            "by the mean, shows the spread and marks differences within it")
    sweep.add_argument("--name", default=None, help="the sweep's name: runs/sweep-<name>/, MLflow experiment, study")
    sweep.add_argument("--metric", default=None,
                       help="validation metric to rank runs by (default macro_f1 for classifiers, loss otherwise)")
    sweep.add_argument("--direction", choices=("maximize", "minimize"), default=None)
    sweep.add_argument("--storage", default=None,
                       help="Optuna storage URL shared by several machines (default sqlite:///runs/optuna.db)")
    sweep.add_argument("--sampler-seed", type=int, default=42, help="seed of Optuna's TPE sampler")
    sweep.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE=True) for every run")
    sweep.add_argument("--runs-dir", default=None, help="where runs, mlflow.db and optuna.db go (default runs/)")
    sweep.add_argument("-v", "--log-output", action="store_true", help="stream the notebooks' output")
    return sweep


def _compare_ui_and_list_parsers(sub) -> None:
    comp = sub.add_parser("compare", help="a comparison report (table + plots) for run folders",
                          description="Runs that differ only by SEED are grouped: configurations are ranked by the "
                                      "mean over seeds, with their spread, and differences within it are marked.")
    comp.add_argument("runs", nargs="+", help="run folders (OUTPUT_DIRs, each with a metrics.json)")
    comp.add_argument("--out", default=None, help="where report.md/.html go (default runs/compare/)")
    comp.add_argument("--metric", default=None, help="validation metric to rank by (default as sweep)")
    comp.add_argument("--direction", choices=("maximize", "minimize"), default=None)

    ui = sub.add_parser("ui", help="the MLflow UI over the local tracking store (runs/mlflow.db)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")

    sub.add_parser("list", help="list the notebooks and their parameters")
    sub.add_parser("samples", help="regenerate the offline samples under data/samples/")


def _predict_parser(sub) -> None:
    predict = sub.add_parser("predict", help="score texts with a saved model folder")
    predict.add_argument("folder", help="a notebook's OUTPUT_DIR or its model/ folder")
    predict.add_argument("texts", nargs="*", help="texts to score; none: one per line from stdin")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--runtime", choices=("torch", "onnx", "onnx-int8"), default=None,
                         help="what runs the model (default: onnx when the folder has a fresh export, else torch)")
    predict.add_argument("--input", default=None, metavar="FILE",
                         help="score every row of a data file or folder (CSV, TSV, JSON lines, parquet, .xlsx) "
                              "instead of texts; its columns are kept")
    predict.add_argument("--text-col", default="text",
                         help='with --input: the column to score (default text), or columns joined: "title+content"')
    predict.add_argument("--text-join", default=". ", help='with --input: between joined columns (default ". ")')
    predict.add_argument("--text-pair-col", default=None, help="with --input: the second text of sentence pairs")
    predict.add_argument("--output", default=None, metavar="FILE",
                         help="with --input: where the scored table goes (.csv .tsv .jsonl .parquet .xlsx; "
                              "default CSV on stdout)")
    predict.add_argument("--label-col", default=None,
                         help="with --input: the truth to compare with: true labels (classifiers: accuracy, "
                              "macro-F1) or reference summaries (summarizers: ROUGE)")
    predict.add_argument("--batch-size", type=int, default=None, help="texts per model call (default 32; 8 for "
                                                                      "summarizers)")
    predict.add_argument("--raw", action="store_true",
                         help="classifiers: also the raw probabilities, before the temperature saved with the model "
                              "(raw_probabilities in --json, raw_prob_<label> columns with --input)")
    predict.add_argument("--base-model", default=None,
                         help="base model (folder or Hub id) for a LoRA adapter folder, if not the one it names")


def _serve_parser(sub) -> None:
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
    serve.add_argument("--runtime", choices=("torch", "onnx", "onnx-int8"), default=None,
                       help="what runs the model (default: onnx when the folder has a fresh export, else torch)")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name to answer besides localhost, 127.0.0.1, [::1] and --host (repeatable): the "
                            "public name of a proxy in front of it; other Host headers get 403 (DNS rebinding)")


def _export_parser(sub) -> None:
    export = sub.add_parser("export", help="a saved classifier as ONNX (fp32, and int8) for ONNX Runtime",
                            description="Writes the classifier of FOLDER as ONNX into FOLDER/model/onnx/, checks it "
                                        "against torch on real rows (--data, else the run's own data file, else the "
                                        "generated sample) and records it in workbook.json; then workbook serve / "
                                        "predict run it (--runtime onnx, the default once exported).")
    export.add_argument("folder", help="a notebook's OUTPUT_DIR or a saved classifier folder (01-03)")
    export.add_argument("--quantize", choices=("int8",), default=None,
                        help="also model_int8.onnx (dynamic int8: smaller, faster; its agreement with fp32 is printed)")
    export.add_argument("--data", default=None, metavar="FILE", help="rows to check on: your validation split "
                        "(CSV, TSV, JSON lines, parquet, .xlsx); with --label-col, accuracy too")
    export.add_argument("--text-col", default="text", help="with --data: the text column (default text)")
    export.add_argument("--label-col", default=None, help="with --data: the true labels (names as the model's)")
    export.add_argument("--rows", type=int, default=400, help="rows of --data to check on (default 400)")


def _plan_parser(sub) -> argparse.ArgumentParser:
    plan = sub.add_parser("plan", help="will a run fit, how long will it take: the notebook up to its plan cell",
                          description="Runs the notebook headless up to its plan cell (data, model, a few measured "
                                      "steps; no training) with the parameters given as for `workbook run`, prints "
                                      "the plan, and exits 0 when the run fits (and ends within PLAN_TIME_LIMIT), "
                                      "1 when it does not, 2 when the plan could not be made.")
    plan.add_argument("notebook", help="number or name (01, 02_distilbert...)")
    for flags, param, kind in JOB_OPTIONS:
        plan.add_argument(*flags, dest=param, type=_epochs if param == "NUM_EPOCHS" else kind, default=None,
                          help=f"sets {param}")
    plan.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                      help="any parameter (repeatable); also as --name VALUE, e.g. --plan-memory-limit 4000")
    plan.add_argument("-f", "--parameters-file", default=None, metavar="FILE", help="parameters from YAML/JSON")
    plan.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE=True)")
    plan.add_argument("--runs-dir", default=None, help="where the plan goes: RUNS_DIR/plan/ (default runs/plan/)")
    plan.add_argument("-v", "--log-output", action="store_true", help="stream the notebook's output")
    return plan


def _plan_job(args, path) -> dict:
    """The job's parameters as `workbook run` reads them, plus the plan's own: its own folder (replaced each
    time), no MLflow run, no range test; only names the notebook has."""
    from . import runner

    params = parameters_file(args.parameters_file) if args.parameters_file else {}
    params.update({p: getattr(args, p) for _, p, _ in JOB_OPTIONS if getattr(args, p) is not None})
    params.update({name: runner.parse_value(value) for name, value in args.parameter})
    params.update({"SMOKE": True} if args.smoke else {})
    runner.check_parameters(path, params)
    home = runner.writable_folder(args.runs_dir, "--runs-dir") if args.runs_dir else runner.RUNS_DIR
    known = runner.notebook_parameters(path)
    own = {"OUTPUT_DIR": str(home / "plan" / path.stem), "OVERWRITE": True, "TRACKING": False, "FIND_LR": False}
    return runner.resolve_paths({**params, **{k: v for k, v in own.items() if k in known}})


def _cmd_plan(args) -> int:
    """`workbook plan NN`: the notebook up to its cell tagged "plan", headless; the plan printed from plan.json."""
    import tempfile
    from pathlib import Path

    import nbformat
    import papermill

    from helpers.planning import Plan

    from . import runner

    try:
        path = runner.find_notebook(args.notebook)
        params = _plan_job(args, path)
    except runner.RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    nb = nbformat.read(path, as_version=4)
    cut = next((i for i, c in enumerate(nb.cells) if "plan" in c.metadata.get("tags", [])), None)
    if cut is None:
        print(f"error: {path.stem} has no plan cell (a code cell tagged 'plan')", file=sys.stderr)
        return 2
    nb.cells = nb.cells[: cut + 1]
    out = Path(params["OUTPUT_DIR"])
    (out / "plan.json").unlink(missing_ok=True)
    executed = out.parent / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    error = None
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / path.name
        nbformat.write(nb, source)
        try:
            papermill.execute_notebook(str(source), str(executed), parameters=params, cwd=str(path.parent),
                                       log_output=args.log_output, progress_bar=False, start_timeout=600,
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except papermill.PapermillExecutionError as err:
            error = f"{err.ename}: {err.evalue}".splitlines()[0]
    if not (out / "plan.json").exists():
        print(f"error: the notebook stopped before its plan ({error}); see {executed}", file=sys.stderr)
        return 2
    plan = Plan(**json.loads((out / "plan.json").read_text()))
    print(plan)
    print(f"plan: {out / 'plan.json'}; notebook: {executed}")
    return 0 if plan.fits and plan.in_time else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbook", description="Finetune Workbook: run, score and serve.")
    sub = parser.add_subparsers(dest="command", required=True)
    run, sweep, plan = _run_parser(sub), _sweep_parser(sub), _plan_parser(sub)
    _compare_ui_and_list_parsers(sub)
    _predict_parser(sub)
    _serve_parser(sub)
    _export_parser(sub)
    parser.parameter_commands = {"run": run, "sweep": sweep, "plan": plan}  # any --NAME VALUE is a parameter there
    return parser


def parameters_file(path: str) -> dict:
    """NAME: value pairs from a YAML (or JSON) file, the way papermill's `-f params.yaml` reads them."""
    import yaml

    from .runner import RunnerError

    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except OSError as err:
        raise RunnerError(f"Cannot read the parameters file {path} ({err.strerror or err}).") from err
    except yaml.YAMLError as err:
        raise RunnerError(f"The parameters file {path} is not valid YAML or JSON ({err}).") from err
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise RunnerError(f"The parameters file {path} must hold NAME: value pairs (a mapping), e.g. 'LR: 3e-5'.")
    # YAML 1.1 reads 3e-5 (no dot) as a string; it is the number everyone means
    exponent = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
    return {k: float(v) if isinstance(v, str) and exponent.fullmatch(v.strip()) else v for k, v in values.items()}


def _cmd_run(args) -> int:
    from . import runner

    try:
        params = parameters_file(args.parameters_file) if args.parameters_file else {}
    except runner.RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    params.update({param: getattr(args, param) for _, param, _ in JOB_OPTIONS if getattr(args, param) is not None})
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
        try:
            kwargs["runs_dir"] = runner.writable_folder(args.runs_dir, "--runs-dir")
        except runner.RunnerError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    before = os.environ.get("WORKBOOK_RUNS_DIR")
    if args.runs_dir:  # the MLflow store goes with the runs, for these runs only
        os.environ["WORKBOOK_RUNS_DIR"] = str(kwargs["runs_dir"])
    try:
        results = runner.run_many(args.notebooks, params, resume_command=lambda paths, resume: _resume_command(
            args, paths, resume), **kwargs)
    except runner.RunnerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a notebook started
        print("interrupted before any notebook ran; nothing was changed", file=sys.stderr)
        return 130
    finally:
        if before is None:
            os.environ.pop("WORKBOOK_RUNS_DIR", None)
        else:
            os.environ["WORKBOOK_RUNS_DIR"] = before
    stopped = [r for r in results if r.status == "interrupted"]
    if stopped:  # one line: where it stopped, the last checkpoint, the command that continues
        print(stopped[0].interruption.line(stopped[0].notebook), file=sys.stderr)
        return 130
    failed = [r.notebook for r in results if r.status != "ok"]
    if failed:
        print(f"{len(failed)} of {len(results)} notebooks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _resume_command(args, paths, resume: bool) -> str:
    """The `workbook run` that continues an interrupted run (resume=True) or starts it over: the same options,
    for the interrupted notebook and those after it, with --resume."""
    import shlex
    import shutil

    from . import runner

    typed = {}
    for name in args.notebooks:
        with contextlib.suppress(runner.RunnerError):
            typed.setdefault(runner.find_notebook(name).resolve(), name)
    program = [sys.argv[0] if sys.argv else ""]
    if program[0].endswith((os.path.join("workbook", "cli.py"), os.path.join("workbook", "__main__.py"))):
        program = [sys.executable, "-m", "workbook"]
    elif os.path.basename(program[0]).removesuffix(".exe") != "workbook":
        program = ["workbook"]  # called as a function (tests)
    elif shutil.which("workbook") and os.path.realpath(shutil.which("workbook")) == os.path.realpath(program[0]):
        program = ["workbook"]  # on PATH: the short name
    words = [*program, "run", *(typed.get(p.resolve(), p.stem.split("_")[0]) for p in paths)]
    words += [w for flags, param, _ in JOB_OPTIONS if getattr(args, param) is not None
              for w in (flags[0], str(getattr(args, param)))]
    words += [w for name, value in args.parameter for w in ("-p", name, value)]
    words += ["-f", args.parameters_file] if args.parameters_file else []
    words += (["--smoke"] if args.smoke else []) + (["--runs-dir", args.runs_dir] if args.runs_dir else [])
    words += (["-v"] if args.log_output else []) + (["--resume"] if resume or args.resume else [])
    return shlex.join(words)


def _sweep_axes(args) -> tuple[list, dict]:
    """(axes, fixed parameters) from the sweep's options: commas or a numeric range sweep, one value is fixed."""
    from . import runner, sweep

    given = [(param, getattr(args, param)) for _, param, _ in JOB_OPTIONS if getattr(args, param) is not None]
    given += [(name, value) for name, value in args.parameter]
    axes, fixed = [], {}
    for name, text in given:
        if name.upper() in LIST_PARAMS:  # a list by nature (LABEL_NAMES=a,b,c): one value, never an axis
            fixed[name] = runner.parse_value(text)
        elif "," in text or re.fullmatch(r"[-+0-9.eE]+:[-+0-9.eE]+(:log)?", text.strip()):
            axes.append(sweep.parse_axis(name, text))
        else:
            fixed[name] = runner.parse_value(text)
    if args.smoke:
        fixed["SMOKE"] = True
    return axes, fixed


def _cmd_sweep(args) -> int:
    from . import runner, sweep

    try:
        path = runner.find_notebook(args.notebook)
        axes, fixed = _sweep_axes(args)
        runs_dir = runner.writable_folder(args.runs_dir, "--runs-dir") if args.runs_dir else None
        name = args.name or sweep.default_name(path, axes, args.trials)
        job = sweep.Sweep(path, axes, runner.resolve_paths(fixed), name, trials=args.trials, metric=args.metric,
                          direction=args.direction, storage=args.storage, seed=args.sampler_seed, runs_dir=runs_dir,
                          seeds=args.seeds)
        if args.trials is not None and args.trials < 1:
            raise sweep.SweepError("--trials must be 1 or more")
        if args.log_output:
            import logging

            logging.basicConfig(level=logging.INFO, format="%(message)s")
        with _terminate_as_interrupt():
            results = sweep.run(job, log_output=args.log_output)
    except (runner.RunnerError, sweep.SweepError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1 if results and all(r.status != "ok" for r in results) else 0


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler stopping the job, `kill`) ends the sweep as a second Ctrl-C does: the trial's kernel
    is stopped, its MLflow run ended as KILLED and the study told, instead of dying with the trial RUNNING."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _cmd_compare(args) -> int:
    from pathlib import Path

    from . import compare, runner, tracking

    folders = [Path(r) for r in args.runs if Path(r).is_dir()]
    if not folders:
        print("error: none of those is a run folder; give OUTPUT_DIRs (each with a metrics.json)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else tracking.runs_dir() / "compare"
    try:
        report = compare.report(folders, runner.writable_folder(out, "--out"), metric=args.metric,
                                direction=args.direction)
    except (runner.RunnerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.read_text().split("\n\n")[1])
    print(f"report: {report} (and report.html)")
    return 0


def _cmd_ui(args) -> int:
    import subprocess

    from . import tracking

    uri = tracking.tracking_uri()
    if not tracking.is_local(uri):
        print(f"MLFLOW_TRACKING_URI points at {uri}: open that server's own UI (unset it for the local store)")
        return 2
    tracking.client(uri)  # creates the store if no run was tracked yet
    print(f"MLflow UI on http://{args.host}:{args.port} over {uri} (Ctrl+C stops it)")
    try:
        return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                "--host", args.host, "--port", str(args.port)])
    except KeyboardInterrupt:
        return 0


def _cmd_list() -> int:
    from . import runner

    for path in runner.list_notebooks():
        params = runner.notebook_parameters(path)
        print(path.stem)
        for name, info in params.items():
            print(f"    {name:<22} = {info['default']:<28} {info.get('help', '')}")
    return 0


def _read_input(args):
    """The table of `--input`, read (and `--output` checked) before the model loads: a wrong path, column or
    output costs seconds, not the scoring of the whole file."""
    from pathlib import Path

    from helpers import _readers, inference

    source = Path(args.input).expanduser()
    if not source.exists():
        raise _readers.DataError(f"Input not found: {args.input} (looked in {Path.cwd()}).")
    if args.output is not None:
        inference._check_output(args.output, source)
    read = (_readers.read_folder if source.is_dir() else _readers.read_archive if _readers.is_archive(source)
            else _readers.read_table)
    wanted = _readers.text_columns(args.text_col)
    wanted += _readers.text_columns(args.text_pair_col) if args.text_pair_col else []
    with contextlib.redirect_stdout(sys.stderr):  # the reader's notes must not mix into CSV on stdout
        frame, used = read(source, wanted=wanted)
        for reason, lines in (used.skipped or {}).items():  # lines the reader set aside: said, never silent
            print(f"note: {len(lines):,} input lines not scored ({reason}), e.g. {lines[0]}")
    return frame


def _predict_file(args, model, frame) -> int:
    """`workbook predict DIR --input FILE [--output FILE]`: every row scored, its columns kept (new columns whose
    names the input already uses get a suffix, said on stderr); the input itself is never written."""
    from pathlib import Path

    from helpers import data, inference

    existed = args.output is not None and Path(args.output).expanduser().exists()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            scored = inference._score_table(model, frame, text_col=args.text_col, text_pair_col=args.text_pair_col,
                                            text_join=args.text_join, batch_size=args.batch_size,
                                            raw=args.raw and model.task == "text-classification")
        inference._write_table(scored, args.output)
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    given = scored.attrs.get("predicted_columns", {})  # the new columns' names, suffixed where the input had them
    name = {k: given.get(k, k) for k in ("truncated", "predicted_label", "predicted_summary")}
    unscored = int(scored[name["truncated"]].isna().sum())
    where = (args.output + (" (the file that was there is replaced)" if existed else "")) if args.output else "stdout"
    print(f"scored {len(scored) - unscored:,} of {len(scored):,} rows -> {where}"
          + (f" ({unscored:,} without text left unscored)" if unscored else ""), file=sys.stderr)
    if args.label_col:  # the scored table is written already: a label problem loses nothing
        try:
            versus = (_against_labels(scored, args.label_col, model.labels, name["predicted_label"])
                      if model.task == "text-classification"
                      else _against_references(scored, args.label_col, name["predicted_summary"]))
            print(versus, file=sys.stderr)
        except data.DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


def _against_labels(scored, label_col: str, labels: list[str], predicted: str = "predicted_label") -> str:
    """Accuracy and macro-F1 of the predictions against a column of true labels (names, or 0-/1-based
    positions in the model's labels, as the notebooks read them)."""
    from helpers import _readers, data, metrics

    _readers.check_columns(scored, [label_col], "the input")
    rows = scored[scored[predicted].notna() & scored[label_col].notna()]
    if rows.empty:
        raise data.DataError(f"No scored row has a value in {label_col!r}; nothing to compare.")
    truth, _, rule = data._encode_label_names(rows, label_col, labels, where="the input")
    index = {name: i for i, name in enumerate(labels)}
    report = metrics.classification_report([index[t] for t in truth], [index[p] for p in rows[predicted]], labels)
    return (f"against {label_col!r} ({rule}): accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} "
            f"on {len(rows):,} rows")


def _against_references(scored, reference_col: str, predicted: str = "predicted_summary") -> str:
    """ROUGE-1/2/L (0-100) of the generated summaries against a column of reference summaries."""
    from helpers import _readers, data, metrics

    _readers.check_columns(scored, [reference_col], "the input")
    refs = scored[reference_col].fillna("").astype(str).str.strip()
    rows = scored[scored[predicted].notna() & (refs != "")]
    if rows.empty:
        raise data.DataError(f"No scored row has a reference summary in {reference_col!r}; nothing to compare.")
    score = metrics._rouge(rows[predicted].tolist(), refs[rows.index].tolist())
    return (f"against {reference_col!r}: " + ", ".join(f"{k} {v:.2f}" for k, v in score.items())
            + f" on {len(rows):,} rows")


def _cmd_predict(args) -> int:
    from helpers import data

    if args.input is None and (args.output or args.text_pair_col or args.label_col):
        print("error: --output, --text-pair-col and --label-col go with --input FILE (a table to score)",
              file=sys.stderr)
        return 2
    if args.input is not None and args.texts:
        print("error: give texts or --input FILE, not both", file=sys.stderr)
        return 2
    texts = [t for t in args.texts if t != "-"]
    if args.input is None and (not texts or "-" in args.texts):
        texts += [line.rstrip("\n") for line in sys.stdin if line.strip()]
    texts = [t for t in texts if t.strip()]
    if not texts and args.input is None:
        print("error: no text given; pass texts as arguments or one per line on stdin", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    from . import onnx
    from .serve import check_saved_lengths, describe_model

    try:
        frame = _read_input(args) if args.input is not None else None  # before the model: mistakes cost seconds
    except (data.DataError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    hf_logging.disable_progress_bar()  # "Loading weights" bars on a command's stderr are noise
    try:
        model = onnx.load(args.folder, args.runtime, base_model=args.base_model)
        config = getattr(model, "config", None) or model.model.config
        check_saved_lengths(model.info, config, f"workbook.json in {args.folder}")  # as serve does
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if model.runtime != "torch" or args.runtime:
        print(f"runtime: {model.runtime} ({model.runtime_why})", file=sys.stderr)
    notice = describe_model(model.info, str(args.folder))[2]
    if notice:  # on stderr, so --json output stays plain JSON
        print(f"note: {notice}", file=sys.stderr)
    if args.input is not None:
        return _predict_file(args, model, frame)
    return _predict_texts(args, model, texts)


def _predict_texts(args, model, texts: list[str]) -> int:
    """`workbook predict DIR TEXT ...` (or texts on stdin): a line per text, or JSON."""
    from helpers import inference

    if model.task == "text-classification":
        inputs = texts
        if getattr(model, "takes_pairs", False):
            inputs = [inference.parse_pair_text(t) for t in texts]
            if any(p is None for p in inputs):
                print("error: this model reads sentence pairs; give each as 'first text ||| second text' "
                      "(or with a TAB between them on stdin)", file=sys.stderr)
                return 2
        results = model.predict(inputs, raw=args.raw)
    else:
        results = model.summarize(texts)
    if args.json:
        print(json.dumps([{"text": t, **r} for t, r in zip(texts, results)], indent=2, ensure_ascii=False))
        return 0
    for text, r in zip(texts, results):
        cut = "  (text cut to fit)" if r["truncated"] else ""
        if "label" in r:
            probs = " ".join(f"{k}={v:.2f}" for k, v in r["probabilities"].items())
            raw = " ".join(f"{k}={v:.2f}" for k, v in r.get("raw_probabilities", {}).items())
            print(f"{r['label']:<10} {r['score']:.3f}  [{probs}]" + (f"  raw [{raw}]" if raw else "")
                  + f"  {text[:70]}{cut}")
        else:
            print(f"{text[:70]}{cut}\n  -> {r['summary']}")
    return 0


def _cmd_export(args) -> int:
    from . import onnx

    try:
        texts, labels, where = _export_rows(args)
        print(f"checking the export on {len(texts)} rows of {where}", file=sys.stderr)
        report = onnx.export(args.folder, quantize=args.quantize, texts=texts, labels=labels)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fp32 = report["fp32"]
    print(f"exported {report['folder']}/onnx/model.onnx: labels equal to torch's on {fp32['labels_equal']:.1%} of "
          f"{report['rows']} rows, probabilities within {fp32['max_probability_diff']:.1e}")
    if "int8" in report:
        int8 = report["int8"]
        accuracy = (f"; accuracy {int8['accuracy']:.4f} (fp32 {fp32['accuracy']:.4f})" if "accuracy" in int8 else "")
        print(f"exported {report['folder']}/onnx/model_int8.onnx: labels equal to fp32's on {int8['labels_equal']:.1%}"
              f" of {report['rows']} rows, probabilities within {int8['max_probability_diff']:.2f}{accuracy}")
    print(f"serve it: workbook serve {args.folder}   (--runtime onnx is the default now; --runtime torch, onnx-int8)")
    return 0


def _export_rows(args) -> tuple[list, list | None, str]:
    """(texts, labels or None, where from): --data, else the run's own data file (metrics.json), else the sample."""
    import json
    from pathlib import Path

    from helpers import _readers
    from helpers._offline import samples

    source, text_col, label_col = args.data, args.text_col, args.label_col
    metrics = Path(args.folder) / "metrics.json"
    if source is None and metrics.exists():
        record = json.loads(metrics.read_text())
        used = str((record.get("data") or {}).get("used") or "")
        params = record.get("params") or {}
        if used and Path(used).is_file() and not (record.get("data") or {}).get("standin"):
            source, text_col, label_col = used, params.get("TEXT_COL") or "text", params.get("LABEL_COL")
    if source is None:
        rows = samples.phrasebank_rows(args.rows)
        return [text for _, text in rows], None, "the generated sample (give --data FILE for your own rows)"
    with contextlib.redirect_stdout(sys.stderr):
        wanted = [text_col, *([label_col] if label_col else [])]
        frame, _ = _readers.read_table(Path(source).expanduser(), wanted=wanted)
    frame = frame.dropna(subset=[text_col]).head(args.rows)
    labels = [str(v) for v in frame[label_col]] if label_col and label_col in frame else None
    return [str(t) for t in frame[text_col]], labels, str(source)


def _cmd_serve(args) -> int:
    from . import serve

    bad = [name for name in args.allowed_host if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?",
                                                                   name.strip())]
    if bad:
        print(f"error: --allowed-host {bad[0]!r} is not a host name; give the name clients use (models.example.com, "
              "10.0.0.5, [fd00::5]), once per name: no scheme, path or wildcard", file=sys.stderr)
        return 2
    try:
        batching = {"max_batch": 1, "max_wait_ms": 0} if args.no_batching else {
            "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}
        return serve.serve(args.folder, host=args.host, port=args.port, device=args.device,
                           base_model=args.base_model, allowed_hosts=args.allowed_host, runtime=args.runtime,
                           **batching)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def options_as_parameters(argv: list[str], sub: argparse.ArgumentParser) -> list[str]:
    """`--label-names A,B` / `--label_names=A,B` -> `-p LABEL_NAMES A,B` for any option `workbook run` or
    `sweep` does not define itself, so every parameter of `workbook list` can be typed as an option;
    a misspelt one is then refused by name, with the closest parameter, before anything runs."""
    known = set(sub._option_string_actions)
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out += argv[i:]
            break
        name, eq, value = token[2:].partition("=")
        if (token.startswith("--") and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name)
                and not any(k.startswith("--" + name) for k in known)):  # argparse's prefixes stay its own
            param = name.upper().replace("-", "_")
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    sub.error(f"--{name} needs a value: --{name} VALUE sets the notebook parameter {param} "
                              "(`workbook list` shows them)")
                value = argv[i + 1]
                i += 1
            out += ["-p", param, value]
        else:
            out.append(token)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in parser.parameter_commands:
        argv = argv[:1] + options_as_parameters(argv[1:], parser.parameter_commands[argv[0]])
    args, extra = parser.parse_known_args(argv)
    if args.command == "predict" and not any(e.startswith("-") and e != "-" for e in extra):
        args.texts += extra  # texts after an option: `workbook predict DIR --base-model B "text"`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "plan":
        return _cmd_plan(args)
    if args.command == "list":
        return _cmd_list()
    if args.command == "sweep":
        return _cmd_sweep(args)
    if args.command == "compare":
        return _cmd_compare(args)
    if args.command == "ui":
        return _cmd_ui(args)
    if args.command == "samples":
        from helpers._offline import samples
        from helpers._paths import SAMPLES_DIR

        for path in samples.write_all(SAMPLES_DIR):
            print(f"wrote {path}")
        return 0
    if args.command == "predict":
        return _cmd_predict(args)
    if args.command == "serve":
        return _cmd_serve(args)
    if args.command == "export":
        return _cmd_export(args)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
