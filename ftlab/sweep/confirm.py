"""``ftlab confirm``: does the sweep's winner really beat the baseline, or is it seed noise?

The baseline and the top K configurations of a finished sweep are trained again with N new training seeds each
(``seed`` + 1 … + N: data order and dropout change; the validation split, set by ``data.split_seed``, does not). The
runs form a study of their own, ``<sweep>-confirm``, in the same storage: a fixed plan of enqueued trials that the
sweep's machinery runs (one process per trial, heartbeats, retries, the failure budget, an MLflow run each, nested
under one parent run "confirm" in the sweep's experiment). Run again, it runs only what is missing, and ``ftlab
worker --confirm`` processes can take part. The verdict (:mod:`ftlab.sweep.verdict`) is computed from that study
whenever it is asked for: by ``ftlab confirm``, ``status``, ``best`` and the export.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftlab.config import PrunerConfig, SweepConfig
from ftlab.errors import UserError
from ftlab.sweep.record import BASELINE_ATTR, OVERRIDES_ATTR, RUN_NAME_ATTR, RUN_TAGS_ATTR
from ftlab.sweep.summary import baseline_trial, pareto_front
from ftlab.sweep.verdict import BETTER, Difference, Summary, compare_to_baseline, summarize

CONFIRMS_ATTR = "ftlab.confirms"  # confirmation trial: the sweep trial whose configuration it trains again
SEED_ATTR = "ftlab.seed"  # confirmation trial: its training seed
PLAN_ATTR = "ftlab.confirm_plan"  # confirmation study: the trials and seeds last asked for
PARENT_RUN_NAME = "confirm"


def confirm_study_name(sweep: SweepConfig) -> str:
    return f"{sweep.name}-confirm"


def confirm_config(sweep: SweepConfig) -> SweepConfig:
    """The sweep as its confirmation study runs it: its own study, full runs (nothing is pruned), same experiment."""
    return sweep.model_copy(
        update={
            "name": confirm_study_name(sweep),
            "pruner": PrunerConfig(name="none"),
            "tracking": sweep.tracking.model_copy(update={"experiment": sweep.tracking.experiment or sweep.name}),
        }
    )


@dataclass(frozen=True)
class Candidate:
    """A configuration to confirm: the sweep trial it comes from and its params."""

    trial: int
    params: dict[str, Any]
    baseline: bool

    @property
    def label(self) -> str:
        return f"baseline (trial {self.trial})" if self.baseline else f"trial {self.trial}"


def candidates(study: optuna.Study, top: int) -> list[Candidate]:
    """The baseline trial and the ``top`` best other configurations (one objective), or the first ``top`` of the
    Pareto front by the first objective (several), each configuration once.

    Raises:
        UserError: the baseline trial has not completed: there is nothing to compare with.
    """
    baseline = baseline_trial(study)
    if baseline is None:
        raise UserError.single(
            "the sweep's baseline trial has not completed, so there is nothing to confirm against",
            where=study.study_name,
            fix="run the sweep until its baseline trial completes (`ftlab status` shows it)",
        )
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    pool = pareto_front(study) if len(study.directions) > 1 else study.get_trials(states=(TrialState.COMPLETE,))
    chosen: list[Candidate] = [Candidate(baseline.number, dict(baseline.params), True)]
    for trial in sorted(pool, key=lambda item: sign * item.values[0]):
        if len(chosen) > top:
            break
        if all(trial.params != other.params for other in chosen):
            chosen.append(Candidate(trial.number, dict(trial.params), False))
    return chosen


def seeds_for(seed: int, count: int) -> list[int]:
    """New training seeds: never the sweep's own, whose luckiest result picked the winner."""
    return [seed + offset for offset in range(1, count + 1)]


def _key(trial: FrozenTrial) -> tuple[int, int]:
    return trial.user_attrs[CONFIRMS_ATTR], trial.user_attrs[SEED_ATTR]


def enqueue_plan(study: optuna.Study, plan: list[Candidate], seeds: list[int]) -> int:
    """Enqueue every (configuration, seed) not already done, running or waiting; how many were enqueued.

    A run that failed by an error of its own is enqueued again (the cause may be fixed now); one stopped from outside
    has its retry waiting already.
    """
    trials = study.get_trials(deepcopy=False)
    present = {_key(trial) for trial in trials if trial.state != TrialState.FAIL and CONFIRMS_ATTR in trial.user_attrs}
    added = 0
    for candidate in plan:
        for seed in seeds:
            if (candidate.trial, seed) in present:
                continue
            name = f"confirm-trial-{candidate.trial:03d}" + ("-baseline" if candidate.baseline else "")
            study.enqueue_trial(
                candidate.params,
                user_attrs={
                    CONFIRMS_ATTR: candidate.trial,
                    SEED_ATTR: seed,
                    BASELINE_ATTR: candidate.baseline,
                    OVERRIDES_ATTR: {"seed": seed},
                    RUN_NAME_ATTR: f"{name}-seed-{seed}",
                    RUN_TAGS_ATTR: {"ftlab.confirms_trial": str(candidate.trial), "ftlab.seed": str(seed)},
                },
                skip_if_exists=False,
            )
            added += 1
    study.set_user_attr(PLAN_ATTR, {"trials": [candidate.trial for candidate in plan], "seeds": seeds})
    return added


# --- the verdict ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfirmedConfig:
    candidate: Candidate
    values: list[float]
    summary: Summary
    against_baseline: Difference | None  # None for the baseline itself


@dataclass(frozen=True)
class Confirmation:
    """Every confirmed configuration's seed results and statistics, and the winner by confirmed mean."""

    metric: str
    direction: str
    seeds: list[int]
    rows: list[ConfirmedConfig]

    @property
    def winner(self) -> ConfirmedConfig | None:
        """The configuration with the best confirmed mean (not its luckiest seed), the baseline excepted."""
        others = [row for row in self.rows if not row.candidate.baseline and row.values]
        if not others:
            return None
        sign = 1 if self.direction == "minimize" else -1
        return min(others, key=lambda row: sign * row.summary.mean)

    def sentence(self) -> str:
        winner = self.winner
        if winner is None or winner.against_baseline is None:
            return "no configuration besides the baseline was confirmed"
        n = min(len(row.values) for row in self.rows)
        diff = winner.against_baseline
        interval = (
            "" if diff.ci_low is None else f" (95 % CI of the difference {diff.ci_low:+.4f} … {diff.ci_high:+.4f})"
        )
        return (
            f"{winner.candidate.label}: {self.metric} {winner.summary.mean:.4f} over {n} seeds is "
            f"{diff.verdict}{interval}"
        )

    COLUMNS = ("configuration", "seeds", "mean", "95 % CI", "seed sd", "vs baseline", "95 % CI", "verdict")

    def table_rows(self) -> list[tuple[str, ...]]:
        """One row of cells per configuration, in :attr:`COLUMNS` order: the terminal's and the markdown's table."""
        rows = []
        for row in self.rows:
            summary, diff = row.summary, row.against_baseline
            rows.append(
                (
                    row.candidate.label,
                    str(summary.n),
                    f"{summary.mean:.4f}",
                    _interval(summary.ci_low, summary.ci_high),
                    _number(summary.spread),
                    _signed(diff.mean if diff else None),
                    _interval(diff.ci_low, diff.ci_high, signed=True) if diff else "-",
                    diff.verdict if diff else "the reference",
                )
            )
        return rows

    def table(self) -> str:
        """The confirmation as a markdown table (the report, MLflow, the model card)."""
        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(cells) + " |" for cells in self.table_rows()]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        winner = self.winner
        return {
            "metric": self.metric,
            "direction": self.direction,
            "seeds": self.seeds,
            "configurations": [
                {
                    "trial": row.candidate.trial,
                    "baseline": row.candidate.baseline,
                    "params": row.candidate.params,
                    "values": row.values,
                    "summary": asdict(row.summary),
                    "against_baseline": None if row.against_baseline is None else asdict(row.against_baseline),
                }
                for row in self.rows
            ],
            "winner": None if winner is None else winner.candidate.trial,
            "winner_beats_baseline": bool(
                winner and winner.against_baseline and winner.against_baseline.verdict == BETTER
            ),
            "sentence": self.sentence(),
        }


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return "-"
    return f"{low:+.4f} … {high:+.4f}" if signed else f"{low:.4f} … {high:.4f}"


def confirmation(study: optuna.Study, metric: str) -> Confirmation | None:
    """The verdict from a confirmation study's COMPLETE runs; None before the baseline has any."""
    values: dict[int, list[float]] = defaultdict(list)
    params: dict[int, tuple[dict[str, Any], bool]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        number = trial.user_attrs.get(CONFIRMS_ATTR)
        if number is None:
            continue
        values[number].append(trial.values[0])
        params[number] = (dict(trial.params), bool(trial.user_attrs.get(BASELINE_ATTR)))
    baselines = [number for number, (_, baseline) in params.items() if baseline]
    if not baselines:
        return None
    reference = values[baselines[0]]
    direction = study.directions[0].name.lower()
    rows = []
    for number in sorted(values, key=lambda item: (not params[item][1], item)):
        candidate = Candidate(number, *params[number])
        against = None if candidate.baseline else compare_to_baseline(values[number], reference, direction)  # type: ignore[arg-type]
        rows.append(ConfirmedConfig(candidate, values[number], summarize(values[number]), against))
    plan = study.user_attrs.get(PLAN_ATTR, {})
    return Confirmation(metric, direction, list(plan.get("seeds", [])), rows)


def load_confirmation(sweep: SweepConfig, storage_override: str | None = None) -> Confirmation | None:
    """The sweep's confirmation, if `ftlab confirm` has run on it (in the sweep's storage or ``storage_override``)."""
    from ftlab.sweep.study import load_study, storage_url_for

    try:
        study = load_study(confirm_config(sweep), storage_url_for(sweep, storage_override))
    except KeyError:
        return None
    return confirmation(study, sweep.objectives[0].metric)


def write_confirmation_report(found: Confirmation, out_dir: Path) -> list[Path]:
    """The table (markdown, JSON) and a plot of every seed's objective per configuration (PNG and HTML)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "confirmation.md").write_text(f"{found.table()}\n\n{found.sentence()}\n")
    (out_dir / "confirmation.json").write_text(json.dumps(found.as_json(), indent=2))
    labels = [row.candidate.label for row in found.rows]
    figure, axes = plt.subplots(figsize=(max(6, 2 * len(labels)), 4))
    for index, row in enumerate(found.rows):
        axes.scatter([index] * len(row.values), row.values, alpha=0.7, label=None)
        if row.summary.ci_low is not None:
            low, high = row.summary.mean - row.summary.ci_low, row.summary.ci_high - row.summary.mean
            axes.errorbar(index + 0.15, row.summary.mean, yerr=[[low], [high]], fmt="o", color="black", capsize=4)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel(found.metric)
    axes.set_title("every seed's result; mean with its 95 % confidence interval")
    figure.savefig(out_dir / "confirmation.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    plot = go.Figure([go.Box(y=row.values, name=row.candidate.label, boxpoints="all") for row in found.rows])
    plot.update_layout(yaxis_title=found.metric, title="every seed's result per configuration")
    plot.write_html(out_dir / "confirmation.html", include_plotlyjs=True)
    return [
        out_dir / name for name in ("confirmation.md", "confirmation.json", "confirmation.png", "confirmation.html")
    ]
