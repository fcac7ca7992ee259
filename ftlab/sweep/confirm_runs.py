"""How ``ftlab confirm``'s parent run reads in MLflow: role confirm, what it is for, the verdict so far (tags and its
description, the table included), and each configuration's mean and confidence interval over seeds as metrics,
named by the sweep's trial numbers.

The confirmation study numbers its runs 0, 1, … of its own; a confirmation is about the sweep's trials, so nothing
here shows the confirmation study's numbering, and no seed run is marked best (a configuration wins by its mean over
seeds, never by its luckiest seed). Everything is read from :func:`ftlab.sweep.confirm.confirmation`'s
``as_json()``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from ftlab.config import SweepConfig
from ftlab.sweep.confirm import PARENT_RUN_NAME, confirmation
from ftlab.sweep.runs import ParentRun
from ftlab.tracking import DESCRIPTION_TAG, SOURCE_TAG, redact_url

logger = logging.getLogger(__name__)

ROLE = "confirm"


def confirm_parent_run(sweep: SweepConfig, confirm: SweepConfig, sweep_file: Path, storage_url: str) -> ParentRun:
    """The "confirm" parent run of ``sweep``'s confirmation study (``confirm``: its config)."""
    return ParentRun(
        name=PARENT_RUN_NAME,
        tags=lambda study: {
            "ftlab.role": ROLE,
            "ftlab.confirms_study": sweep.name,
            "optuna.study_name": confirm.name,
            "optuna.storage": redact_url(storage_url),
            "ftlab.sweep_file": str(sweep_file),
            SOURCE_TAG: f"ftlab confirm {sweep_file}",
            DESCRIPTION_TAG: _description(sweep.name, None),
        },
        show=lambda study, uri, run_id: show_verdict(study, sweep.name, sweep.objectives[0].metric, uri, run_id),
    )


def _description(sweep_name: str, found: dict[str, Any] | None, table: str = "") -> str:
    text = (
        f"The confirmation of sweep {sweep_name}: its baseline and best configurations trained again with new seeds, "
        f"one nested run per configuration and seed, to tell a real gain from seed noise. Trial numbers are the "
        f"sweep's. Metrics: each configuration's mean over seeds and its 95 % CI (confirm/trial_N/…)."
    )
    if found is None:
        return f"{text}\n\nVerdict: none yet (the baseline has no completed seed run)."
    return f"{text}\n\nVerdict: {found['sentence']}\n\n{table}"


def verdict_tags_and_metrics(found: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """The parent run's tags and metrics from ``Confirmation.as_json()``."""
    tags = {
        "ftlab.verdict": str(found.get("sentence", "")),
        "ftlab.winner_trial": str(found.get("winner")),
        "ftlab.winner_beats_baseline": str(bool(found.get("winner_beats_baseline"))).lower(),
        "ftlab.confirmed_trials": ",".join(str(row["trial"]) for row in found.get("configurations", [])),
    }
    metrics: dict[str, float] = {}
    for row in found.get("configurations", []):
        prefix = f"confirm/trial_{row['trial']}"
        summary, against = row.get("summary") or {}, row.get("against_baseline") or {}
        metrics[f"{prefix}/seeds"] = float(len(row.get("values", [])))
        for key in ("mean", "ci_low", "ci_high"):
            if summary.get(key) is not None:
                metrics[f"{prefix}/{key}"] = float(summary[key])
            if against.get(key) is not None:
                metrics[f"{prefix}/vs_baseline_{key}"] = float(against[key])
        if row.get("baseline"):
            tags["ftlab.baseline_trial"] = str(row["trial"])
        elif against.get("verdict"):
            tags[f"ftlab.verdict.trial_{row['trial']}"] = str(against["verdict"])
    return tags, metrics


def show_verdict(study: optuna.Study, sweep_name: str, metric: str, tracking_uri: str, parent_run_id: str) -> None:
    """The verdict so far on the parent run; a tracking server that cannot take it now costs this update only."""
    found = confirmation(study, metric)
    if found is None:
        return
    as_json = found.as_json()
    tags, metrics = verdict_tags_and_metrics(as_json)
    tags[DESCRIPTION_TAG] = _description(sweep_name, as_json, found.table())
    step = sum(len(row.get("values", [])) for row in as_json.get("configurations", []))
    timestamp = int(time.time() * 1000)
    try:
        MlflowClient(tracking_uri=tracking_uri).log_batch(
            parent_run_id,
            metrics=[Metric(key, value, timestamp, step) for key, value in metrics.items()],
            tags=[RunTag(key, value) for key, value in tags.items()],
        )
    except Exception as error:
        logger.warning("could not show the confirmation's verdict in MLflow: %s", error)
