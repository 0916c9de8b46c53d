"""The tool around the notebooks: `workbook run / sweep / compare / predict / serve / list / plan / ui`.

It imports the teaching kit (`helpers`); the kit never imports it. Modules:
    workbook.cli             the `workbook` command (argparse), one function per subcommand
    workbook.runner          run notebooks headless with papermill; the run folder and its summary
    workbook.sweep           grid and Optuna sweeps over a notebook's parameters, seeds
    workbook.compare         the comparison report of runs: table, metric vs parameter, validation curves
    workbook.tracking        the MLflow store as a whole: sweep groups, the runs as a table
    workbook.serve           a web page and a JSON API for a saved model folder
    workbook.onnx            `workbook export` and the ONNX Runtime classifier (no torch)
    workbook.score_template  the self-contained score.py copied into every saved model folder
"""

__version__ = "0.1.0"
