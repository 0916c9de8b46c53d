"""The MLflow store as a whole, for the tool: the sweeps' groups of seeds, the runs as a table, `workbook ui`.

One notebook run's own logging (its parameters, evaluations, final scores, plots) is the kit's
(`helpers/_mlflow.py`, started and finished by the notebook's run object); this module adds what spans
runs. Where the store is: `MLFLOW_TRACKING_URI` when set, else `runs/mlflow.db`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from helpers._mlflow import (
    _PARAM_LIMIT,
    DB_FILE,
    GROUP_ENV,
    TRIAL_ENV,
    _one_line,
    client,
    experiment_id,
    is_local,
    quiet_mlflow,
    runs_dir,
    runs_frame,
    tracking_uri,
)

__all__ = ["DB_FILE", "GROUP_ENV", "TRIAL_ENV", "client", "end_stale_runs", "experiment_id", "finish_group", "is_local",
           "quiet_mlflow", "runs_dir", "runs_frame", "start_group", "tracking_uri"]


def start_group(experiment: str, group: str, params: dict[str, Any]) -> str | None:
    """The parent run of one configuration's seeds in `experiment` (the same one again when a sweep resumes);
    None, with one line said, when it cannot be logged: the seeds' runs are then tracked ungrouped."""
    try:
        from mlflow.entities import Param

        mlflow_client = client()
        with quiet_mlflow():
            exp = experiment_id(mlflow_client, experiment)
            found = mlflow_client.search_runs([exp], filter_string=f"tags.`workbook.group` = '{group}' and "
                                                                   "tags.`workbook.seeds_parent` = 'true'")
            if found:
                return found[0].info.run_id
            run = mlflow_client.create_run(exp, run_name=f"{group} (seeds)", tags={
                "workbook.group": group, "workbook.seeds_parent": "true"})
            mlflow_client.log_batch(run.info.run_id, params=[
                Param(k, (v if isinstance(v, str) else json.dumps(v, default=str))[:_PARAM_LIMIT])
                for k, v in sorted(params.items())])
            return run.info.run_id
    except Exception as err:  # noqa: BLE001 - tracking must never fail the sweep
        print(f"tracking: could not start the MLflow run grouping {group} ({_one_line(err)}); its seeds' runs "
              "are tracked ungrouped")
        return None


def finish_group(run_id: str | None, metric: str, scores: list[float]) -> None:
    """Log a configuration's mean and spread over its seeds on its parent run, and close it."""
    if run_id is None or not scores:
        return
    mean = sum(scores) / len(scores)
    spread = (sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) ** 0.5 if len(scores) > 1 else 0.0
    try:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        with quiet_mlflow():
            mlflow_client = client()
            mlflow_client.log_batch(run_id, metrics=[Metric(f"val_{metric}_mean", mean, now, 0),
                                                     Metric(f"val_{metric}_sd", spread, now, 0),
                                                     Metric("seeds", float(len(scores)), now, 0)])
            mlflow_client.set_terminated(run_id, "FINISHED")
    except Exception as err:  # noqa: BLE001
        print(f"tracking: could not log the seeds' mean to MLflow ({_one_line(err)})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process, or not a pid: not ours to judge
    return True


def end_stale_runs(experiment: str) -> list[str]:
    """Runs of `experiment` still RUNNING whose notebook process on this machine is gone (killed by a signal: its
    kernel never reached the end of its run), ended as KILLED; their ids. Another machine's runs, and runs
    without a process id (older ones), are left as they are."""
    ended: list[str] = []
    try:
        with quiet_mlflow():
            mlflow_client = client()
            found = mlflow_client.get_experiment_by_name(experiment)
            if found is None:
                return ended
            host = socket.gethostname()
            for run in mlflow_client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'"):
                tags = run.data.tags
                pid = tags.get("workbook.pid", "")
                if tags.get("workbook.host") == host and pid.isdigit() and not _alive(int(pid)):
                    mlflow_client.set_tag(run.info.run_id, "workbook.status", "killed")
                    mlflow_client.set_terminated(run.info.run_id, "KILLED")
                    ended.append(run.info.run_id)
    except Exception as err:  # noqa: BLE001 - tracking must never fail the sweep
        print(f"tracking: could not look for runs left RUNNING ({_one_line(err)})")
    return ended
