"""``ftlab confirm``: does the sweep's winner really beat the baseline, or is it seed noise?

The baseline and the top K configurations of a finished sweep are trained again with N new training seeds each
(``seed`` + 1 … + N: data order and dropout change; the validation split, set by ``data.split_seed``, does not). The
runs form a study of their own, ``<sweep>-confirm``, in the same storage: a fixed plan of enqueued trials that the
sweep's machinery runs (one process per trial, heartbeats, retries, the failure budget, an MLflow run each, nested
under one parent run "confirm" in the sweep's experiment). Run again, it runs only what is missing, and ``ftlab
worker --confirm`` processes can take part. The verdict (:mod:`ftlab.sweep.verdict`) is computed from that study
whenever it is asked for: by ``ftlab confirm``, ``status``, ``best`` and the export.

New seeds remove seed luck, not the bias of having chosen on the validation split. With ``data.holdout_fraction`` set,
each run's final model is also evaluated on the holdout split no sweep trial trained or was evaluated on, and the
verdict compares those figures (:func:`confirm_split`) and says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftlab.config import PrunerConfig, SweepConfig
from ftlab.errors import UserError
from ftlab.figures import HOLDOUT_FIGURES, on_holdout
from ftlab.record import (
    BASELINE_ATTR,
    FAIL_REASON_ATTR,
    HOLDOUT_ATTR,
    OVERRIDES_ATTR,
    RUN_NAME_ATTR,
    RUN_TAGS_ATTR,
    SWEEP_CHANGES_ATTR,
)
from ftlab.sweep.summary import baseline_trial, pareto_front
from ftlab.sweep.verdict import (
    BETTER,
    Comparison,
    Correction,
    FamilyComparison,
    SeedCount,
    Summary,
    compare_many_to_baseline,
    summarize,
)

CONFIRMS_ATTR = "ftlab.confirms"  # confirmation trial: the sweep trial whose configuration it trains again
SEED_ATTR = "ftlab.seed"  # confirmation trial: its training seed
PLAN_ATTR = "ftlab.confirm_plan"  # confirmation study: the trials and seeds last asked for
PARENT_RUN_NAME = "confirm"


def confirm_config(sweep: SweepConfig) -> SweepConfig:
    """The sweep as its confirmation study runs it: its own study, full runs (nothing is pruned), same experiment."""
    return sweep.model_copy(
        update={
            "name": f"{sweep.name}-confirm",
            "pruner": PrunerConfig(name="none"),
            "tracking": sweep.tracking.model_copy(update={"experiment": sweep.tracking.experiment or sweep.name}),
        }
    )


@dataclass(frozen=True)
class Candidate:
    """A configuration to confirm: the sweep trial it comes from, its params, and why it was chosen."""

    trial: int
    params: dict[str, Any]
    baseline: bool
    why: str = ""

    @property
    def label(self) -> str:
        return f"baseline (trial {self.trial})" if self.baseline else f"trial {self.trial}"


def candidates(study: optuna.Study, top: int) -> list[Candidate]:
    """The baseline trial and the ``top`` best other configurations, each configuration once: by the objective (one
    objective), or the Pareto front by the first objective and then, if the front has fewer, the other completed
    trials by the first objective (several). Fewer than ``top`` only when the sweep has fewer distinct ones.

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
    first = (study.metric_names or ["the objective"])[0]
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    front = {trial.number for trial in pareto_front(study)} if len(study.directions) > 1 else set()
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    ranked = sorted(completed, key=lambda item: (item.number not in front, sign * item.values[0]))
    chosen: list[Candidate] = [Candidate(baseline.number, dict(baseline.params), True, "the sweep's baseline")]
    for trial in ranked:
        if len(chosen) > top:
            break
        if all(trial.params != other.params for other in chosen):
            where = "on the Pareto front, " if trial.number in front else ""
            why = f"{where}#{len(chosen)} by {first} ({trial.values[0]:.4g} in the sweep)"
            chosen.append(Candidate(trial.number, dict(trial.params), False, why))
    return chosen


def selection_note(chosen: list[Candidate], top: int, several_objectives: bool) -> str:
    """What was confirmed and why, in words; says so when the sweep had fewer configurations than asked for."""
    found = len(chosen) - 1
    how = "the Pareto front first, then the rest, by the first objective" if several_objectives else "the objective"
    note = f"the baseline and the top {found} distinct configuration(s) by {how}"
    if found < top:
        note += (
            f"; --top {top} asked for {top}, but the sweep has only {found} completed configuration(s) that differ "
            "from the baseline's and from each other"
        )
    return note


# What a refusal of a changed sweep file offers `ftlab confirm`, which has no --accept-changes: confirming the sweep's
# configurations under other settings would not say whether its winner is real, yet name the runs after its trials.
CONFIRM_FIX = (
    "put the sweep file back as the sweep ran it, or give the sweep a new `name:` and run `ftlab sweep` on it before "
    "confirming"
)


def confirm_split(sweep: SweepConfig) -> str:
    """Where the confirmation measures: ``holdout`` when the data has a holdout split and an objective has a holdout
    figure (:data:`ftlab.figures.HOLDOUT_FIGURES`), else ``validation``."""
    holdout = sweep.data.holdout_fraction and any(o.metric in HOLDOUT_FIGURES for o in sweep.objectives)
    return "holdout" if holdout else "validation"


def refuse_seen_holdout(sweep_study: optuna.Study, source: str) -> None:
    """Refuse to confirm on the holdout split of a sweep that accepted a change of its data (``--accept-changes``):
    its trials from before trained on other data, which may have held the holdout's documents.

    Raises:
        UserError: the sweep study records such a change.
    """
    changes = [
        change
        for accepted in sweep_study.user_attrs.get(SWEEP_CHANGES_ATTR, [])
        for change in accepted.get("changes", [])
        if change.startswith(("data.", "data_fingerprint"))
    ]
    if changes:
        raise UserError.single(
            f"the sweep accepted a change of its data ({'; '.join(changes)}): its earlier trials may have trained on "
            "documents of the holdout split, so a confirmation there could not claim the sweep never saw them",
            where=source,
            fix="give the sweep a new `name:` and run `ftlab sweep` on it with the holdout from the start",
        )


def seeds_for(seed: int, count: int) -> list[int]:
    """New training seeds: never the sweep's own, whose luckiest result picked the winner."""
    return [seed + offset for offset in range(1, count + 1)]


def _key(trial: FrozenTrial) -> tuple[int, int]:
    return trial.user_attrs[CONFIRMS_ATTR], trial.user_attrs[SEED_ATTR]


def enqueue_plan(study: optuna.Study, plan: list[Candidate], seeds: list[int], settings: dict[str, Any]) -> int:
    """Enqueue every (configuration, seed) not already done, running or waiting; how many were enqueued. The plan,
    with ``settings`` (correction, min_effect, selection, finish, split), is recorded: the verdict is read against it.
    With ``split`` "holdout", the runs are judged on the holdout split.

    A run that failed by an error of its own is enqueued again (the cause may be fixed now); one stopped from outside
    has its retry waiting already; a diverged one is a result.
    """
    trials = study.get_trials(deepcopy=False)
    present = {
        _key(trial)
        for trial in trials
        if CONFIRMS_ATTR in trial.user_attrs and (trial.state != TrialState.FAIL or is_diverged(trial))
    }
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
                    **({HOLDOUT_ATTR: True} if settings.get("split") == "holdout" else {}),
                },
                skip_if_exists=False,
            )
            added += 1
    recorded = {
        "trials": [candidate.trial for candidate in plan],
        "seeds": seeds,
        "baseline": next(candidate.trial for candidate in plan if candidate.baseline),
        "params": {str(candidate.trial): candidate.params for candidate in plan},
        "why": {str(candidate.trial): candidate.why for candidate in plan},
    }
    study.set_user_attr(PLAN_ATTR, recorded | settings)
    return added


# --- the verdict ----------------------------------------------------------------------------------------------------

DEFAULT_CORRECTION: Correction = "paired"
"""Every configuration runs the baseline's seeds (the same data order per seed), so a seed's luck is shared: pairing by
seed removes it from the comparison, and Holm's steps hold the family-wise error for the K configurations."""
SPLITS = {
    "validation": "on the validation split the sweep chose on (new seeds remove seed luck, not the bias of choosing "
    "on this split)",
    "holdout": "on a held-out split the sweep never saw",
}


@dataclass(frozen=True)
class ConfirmedConfig:
    """One configuration's results by seed (a list of objective values each; NaN: diverged) and its statistics."""

    candidate: Candidate
    results: dict[int, list[float]]
    summaries: list[Summary]  # per objective, over the seeds with a finite result
    against: list[Comparison] | None  # per objective; None for the baseline itself
    seeds: SeedCount

    @property
    def values(self) -> list[float]:
        """The first objective's finite seed results."""
        return [values[0] for values in self.results.values() if math.isfinite(values[0])]

    @property
    def summary(self) -> Summary:
        return self.summaries[0]

    @property
    def against_baseline(self) -> Comparison | None:
        return None if self.against is None else self.against[0]


@dataclass(frozen=True)
class Confirmation:
    """The current plan's configurations, their seed results and statistics per objective, and the winner."""

    metrics: list[str]
    directions: list[str]
    seeds: list[int]
    rows: list[ConfirmedConfig]
    families: list[FamilyComparison]  # per objective
    missing: list[tuple[int, int]]  # (trial, seed) of the plan without any result yet
    selection: str  # what was confirmed and why
    split: str = "validation"  # where the runs were judged: a key of SPLITS, the plan's (see confirm_split)
    finish: str = "ftlab confirm"  # the command that runs what is missing

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def direction(self) -> str:
        return self.directions[0]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def winner(self) -> ConfirmedConfig | None:
        """The configuration with the best confirmed mean (not its luckiest seed) among those with a finite result on
        every planned seed: one that diverged or has seeds missing cannot win. The baseline excepted."""
        others = [row for row in self.rows if not row.candidate.baseline and row.seeds.shortfall is None]
        sign = 1 if self.direction == "minimize" else -1
        return min(others, key=lambda row: sign * row.summary.mean, default=None)

    def method(self) -> str:
        family = self.families[0]
        effect = "" if family.min_effect is None else f"; minimum effect {family.min_effect:.1%} of the baseline"
        return f"{family.method}; {family.family_size} configuration(s) tested against the baseline{effect}"

    def title(self, objective: int = 0) -> str:
        # Where the objective was measured: the holdout split for a holdout figure, else the validation split.
        split = "holdout" if self.metrics[objective] in HOLDOUT_FIGURES.values() else "validation"
        return (
            f"confirmation of {len(self.rows) - 1} configuration(s) over seeds {self.seeds} "
            f"({self.metrics[objective]}, {self.directions[objective]}, {split} split)"
        )

    def sentence(self) -> str:
        """The verdict in words: the winner, what it was measured on and how; or why there is none."""
        words = [self._winner_words()]
        if self.missing:
            words.append(f"incomplete: {len(self.missing)} planned run(s) have no result; `{self.finish}` runs them")
        words.append(f"{self.method()}; measured {self._where()}")
        return ". ".join(words)

    def _where(self) -> str:
        """Where the compared figures were measured, claiming the holdout only for the figures measured there."""
        if self.split != "holdout":
            return SPLITS[self.split]
        # Validation figures without a holdout counterpart (eval/best_loss) keep the validation split's caveat.
        chosen_on = [metric for metric in self.metrics if metric.startswith("eval/")]
        if not chosen_on:
            return SPLITS["holdout"]
        return f"{SPLITS['holdout']}, except {', '.join(chosen_on)}: {SPLITS['validation']}"

    def _winner_words(self) -> str:
        winner = self.winner
        if not any(not row.candidate.baseline for row in self.rows):
            return "no configuration besides the baseline was confirmed"
        if winner is None or winner.against is None:
            return "no configuration has a finite result on every planned seed, so none is called better"
        parts = []
        for index, diff in enumerate(winner.against):
            interval = "" if diff.ci_low is None else f" (family-wise 95 % CI {diff.ci_low:+.4f} … {diff.ci_high:+.4f})"
            parts.append(
                f"{self.metrics[index]} {winner.summaries[index].mean:.4f} over {winner.summaries[index].n} seeds is "
                f"{diff.verdict}{interval}"
            )
        return f"{winner.candidate.label}: " + "; ".join(parts)

    COLUMNS = (
        "configuration", "seeds", "mean", "95 % CI", "seed sd", "vs baseline", "family 95 % CI", "relative",
        "p (corrected)", "verdict",
    )  # fmt: skip

    def table_rows(self, objective: int = 0) -> list[tuple[str, ...]]:
        """One row of cells per configuration, in :attr:`COLUMNS` order: the terminal's and the markdown's table."""
        rows = []
        for row in self.rows:
            summary = row.summaries[objective]
            diff = None if row.against is None else row.against[objective]
            rows.append(
                (
                    row.candidate.label,
                    _seed_cell(row.seeds),
                    _number(summary.mean),
                    _interval(summary.ci_low, summary.ci_high),
                    _number(summary.spread),
                    _number(diff.mean if diff else None, "+"),
                    _interval(diff.ci_low, diff.ci_high, signed=True) if diff else "-",
                    "-" if diff is None or diff.relative is None else f"{diff.relative:+.2%}",
                    "-" if diff is None or diff.p_value is None else f"{diff.p_value:.3g}",
                    diff.verdict if diff else "; ".join(filter(None, ["the reference", row.seeds.shortfall])),
                )
            )
        return rows

    def table(self) -> str:
        """The confirmation as markdown tables, one per objective (the report, MLflow, the model card)."""
        parts = []
        for objective in range(len(self.metrics)):
            lines = [f"**{self.title(objective)}**", ""] if len(self.metrics) > 1 else []
            lines += ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
            lines += ["| " + " | ".join(cells) + " |" for cells in self.table_rows(objective)]
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def as_json(self) -> dict[str, Any]:
        winner = self.winner
        return {
            "metric": self.metric,
            "direction": self.direction,
            "metrics": self.metrics,
            "directions": self.directions,
            "seeds": self.seeds,
            "split": self.split,
            "correction": self.families[0].correction,
            "method": self.families[0].method,
            "family_size": self.families[0].family_size,
            "min_effect": self.families[0].min_effect,
            "selection": self.selection,
            "complete": self.complete,
            "missing": [{"trial": trial, "seed": seed} for trial, seed in self.missing],
            "finish": None if self.complete else self.finish,
            "configurations": _plain([_row_json(row, self.metrics) for row in self.rows]),
            "winner": None if winner is None else winner.candidate.trial,
            "winner_beats_baseline": bool(
                winner and winner.against_baseline and winner.against_baseline.verdict == BETTER
            ),
            "sentence": self.sentence(),
        }


def _row_json(row: ConfirmedConfig, metrics: list[str]) -> dict[str, Any]:
    return {
        "trial": row.candidate.trial,
        "baseline": row.candidate.baseline,
        "params": row.candidate.params,
        "why": row.candidate.why,
        "seeds": asdict(row.seeds) | {"shortfall": row.seeds.shortfall},
        "results": {str(seed): values for seed, values in row.results.items()},  # NaN (diverged) made None below
        "values": row.values,
        "summary": asdict(row.summary),
        "against_baseline": None if row.against_baseline is None else asdict(row.against_baseline),
        "objectives": [
            {
                "metric": metric,
                "summary": asdict(row.summaries[index]),
                "against_baseline": None if row.against is None else asdict(row.against[index]),
            }
            for index, metric in enumerate(metrics)
        ],
    }


def _plain(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON has no NaN): a diverged seed's result, the NaN mean of a
    configuration without a finite seed."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _seed_cell(seeds: SeedCount) -> str:
    cell = f"{seeds.finished - seeds.diverged} of {seeds.planned}"
    if seeds.diverged:
        cell += f", {seeds.diverged} diverged"
    if seeds.finished < seeds.planned:
        cell += f", {seeds.planned - seeds.finished} missing"
    return cell


def _number(value: float | None, sign: str = "") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:{sign}.4f}"


def _interval(low: float | None, high: float | None, signed: bool = False) -> str:
    if low is None or high is None:
        return "-"
    return f"{low:+.4f} … {high:+.4f}" if signed else f"{low:.4f} … {high:.4f}"


def is_diverged(trial: FrozenTrial) -> bool:
    """A confirmation run whose loss became NaN or infinite: a result (against its configuration), not a failure to
    retry. Recorded PRUNED (a confirmation study prunes nothing else) or FAIL with a reason that says so."""
    if trial.state == TrialState.PRUNED:
        return True
    reason = str(trial.user_attrs.get(FAIL_REASON_ATTR) or "")
    return trial.state == TrialState.FAIL and reason.startswith("diverged")


def _results(study: optuna.Study, objectives: int) -> dict[tuple[int, int], list[float]]:
    """(trial, seed) → objective values of every finished confirmation run; NaN for a diverged one. A completed run
    wins over a diverged one for the same key (a retry that went through)."""
    found: dict[tuple[int, int], list[float]] = {}
    for trial in study.get_trials(deepcopy=False):
        if CONFIRMS_ATTR not in trial.user_attrs or SEED_ATTR not in trial.user_attrs:
            continue
        if trial.state == TrialState.COMPLETE:
            found[_key(trial)] = list(trial.values)
        elif is_diverged(trial):
            found.setdefault(_key(trial), [math.nan] * objectives)
    return found


def _plan_of(study: optuna.Study, results: dict[tuple[int, int], list[float]]) -> dict[str, Any]:
    """The plan last enqueued; for a study from before plans were recorded in full, the one its runs show."""
    plan = dict(study.user_attrs.get(PLAN_ATTR) or {})
    if "params" not in plan:
        known = {}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if CONFIRMS_ATTR in trial.user_attrs:
                known[str(trial.user_attrs[CONFIRMS_ATTR])] = (
                    dict(trial.params),
                    bool(trial.user_attrs.get(BASELINE_ATTR)),
                )
        plan.setdefault("trials", sorted({trial for trial, _ in results}))
        plan.setdefault("seeds", sorted({seed for _, seed in results}))
        plan["params"] = {key: params for key, (params, _) in known.items()}
        plan["baseline"] = next((int(key) for key, (_, baseline) in known.items() if baseline), None)
    return plan


def confirmation(study: optuna.Study, metrics: str | Sequence[str]) -> Confirmation | None:
    """The verdict on the current plan's runs (runs of older plans are left out); None before any plan.

    Diverged runs count against their configuration; planned runs without a result make their configuration
    incomplete, and the confirmation lists them. The correction, minimum effect and split are the plan's: on the
    holdout split, the sweep's objectives ``metrics`` are named by the holdout figures compared for them.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    metrics = metrics[: len(study.directions)]
    results = _results(study, len(metrics))
    plan = _plan_of(study, results)
    if plan.get("baseline") is None or not plan.get("trials"):
        return None
    split = plan.get("split", "validation")
    if split == "holdout":  # the runs' values are their holdout figures: name what was compared
        metrics = [on_holdout(metric) for metric in metrics]
    seeds = [int(seed) for seed in plan["seeds"]]
    numbers = [plan["baseline"], *[number for number in plan["trials"] if number != plan["baseline"]]]
    by_config = {
        number: {seed: results[(number, seed)] for seed in seeds if (number, seed) in results} for number in numbers
    }
    directions = [direction.name.lower() for direction in study.directions]
    families = [
        compare_many_to_baseline(
            [{seed: values[index] for seed, values in by_config[number].items()} for number in numbers[1:]],
            {seed: values[index] for seed, values in by_config[numbers[0]].items()},
            directions[index],  # type: ignore[arg-type]
            planned_seeds=seeds,
            correction=plan.get("correction", DEFAULT_CORRECTION),
            min_effect=plan.get("min_effect"),
        )
        for index in range(len(metrics))
    ]
    whys = plan.get("why", {})
    rows = []
    for position, number in enumerate(numbers):
        candidate = Candidate(
            number, dict(plan["params"].get(str(number), {})), position == 0, whys.get(str(number), "")
        )
        finite = [[values[index] for values in by_config[number].values() if math.isfinite(values[index])]
                  for index in range(len(metrics))]  # fmt: skip
        summaries = [summarize(values) if values else Summary(0, math.nan, None, None, None) for values in finite]
        against = None if position == 0 else [family.comparisons[position - 1] for family in families]
        count = families[0].baseline if position == 0 else families[0].comparisons[position - 1].seeds
        rows.append(ConfirmedConfig(candidate, by_config[number], summaries, against, count))
    missing = [(number, seed) for number in numbers for seed in seeds if (number, seed) not in results]
    return Confirmation(
        metrics, directions, seeds, rows, families, missing, plan.get("selection", ""), split,
        plan.get("finish", "ftlab confirm"),
    )  # fmt: skip


def load_confirmation(sweep: SweepConfig, storage_override: str | None = None) -> Confirmation | None:
    """The sweep's confirmation, if `ftlab confirm` has run on it (in the sweep's storage or ``storage_override``)."""
    from ftlab.storage import storage_url_for
    from ftlab.sweep.study import load_study

    try:
        study = load_study(confirm_config(sweep), storage_url_for(sweep, storage_override))
    except KeyError:
        return None
    return confirmation(study, [objective.metric for objective in sweep.objectives])


def write_confirmation_report(found: Confirmation, out_dir: Path) -> None:
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
