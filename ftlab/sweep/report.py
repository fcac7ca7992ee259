"""The sweep's report: Optuna's plots as HTML and PNG plus a best-versus-baseline table, logged to the parent run."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ftlab.config import SweepConfig
from ftlab.sweep.summary import compare, format_value, status_json

logger = logging.getLogger(__name__)

PlotFn = Callable[..., Any]
FIDELITY_AXIS = "tokens seen (fidelity point)"


def _plots(study: optuna.Study) -> dict[str, tuple[PlotFn, PlotFn, dict[str, Any]]]:
    """name → (plotly function, matplotlib function, kwargs); Optuna's own visualisations, ``plot_<name>``."""
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as mpl

    kwargs: dict[str, Any] = {}
    if len(study.directions) > 1:
        kwargs = {"target": lambda trial: trial.values[0], "target_name": "objective 0"}
    names = ["optimization_history", "param_importances", "parallel_coordinate", "slice"]
    plots = {name: (getattr(vis, f"plot_{name}"), getattr(mpl, f"plot_{name}"), kwargs) for name in names}
    last = "intermediate_values" if len(study.directions) == 1 else "pareto_front"
    plots[last] = (getattr(vis, f"plot_{last}"), getattr(mpl, f"plot_{last}"), {})
    return plots


def _drawable(name: str, study: optuna.Study) -> bool:
    """Whether the study has what plot ``name`` draws. Asked first: Optuna logs a warning for each plot it cannot
    draw (two per plot, plotly and matplotlib: eight lines after a sweep in which no trial completed)."""
    trials = study.get_trials(deepcopy=False)
    if name == "intermediate_values":  # Optuna draws these states only: a trial stopped by Ctrl-C (FAIL) does not count
        drawn = (TrialState.PRUNED, TrialState.COMPLETE, TrialState.RUNNING)
        return any(trial.intermediate_values for trial in trials if trial.state in drawn)
    completed = sum(trial.state == TrialState.COMPLETE for trial in trials)
    return completed >= (2 if name == "param_importances" else 1)  # importances need two completed trials


def _save_png(axes: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    first = axes.flat[0] if hasattr(axes, "flat") else axes
    figure = first.get_figure()
    figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def comparison_markdown(study: optuna.Study, sweep: SweepConfig) -> str:
    """A best-versus-baseline table, readable in the MLflow UI and in a terminal."""
    metric = sweep.objectives[0].metric
    comparison = compare(study, metric)
    lines = [f"# {study.study_name}: best trial vs baseline", ""]
    if comparison is None:
        return "\n".join([*lines, "No trial has completed yet."])
    best, base = comparison.best, comparison.baseline
    lines += ["| | baseline | best |", "|---|---|---|"]
    lines.append(f"| trial | {base.number if base else '-'} | {best.number} |")
    lines.append(f"| {metric} | {format_value(comparison.baseline_value)} | {format_value(comparison.best_value)} |")
    lines.append(
        f"| eval/perplexity | {format_value(base.perplexity if base else None)} | {format_value(best.perplexity)} |"
    )
    for key in sorted(best.params):
        lines.append(f"| {key} | {base.params.get(key, '-') if base else '-'} | {best.params[key]} |")
    lines += ["", comparison.sentence()]
    return "\n".join(lines)


def write_report(study: optuna.Study, sweep: SweepConfig, out_dir: Path) -> list[Path]:
    """Write every plot that the study's trials allow (HTML and PNG) plus the comparison; returns the files."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; PNGs only
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    html_parts: list[str] = []
    for name, (plotly_fn, matplotlib_fn, kwargs) in _plots(study).items():
        if not _drawable(name, study):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                figure = plotly_fn(study, **kwargs)
                axes = matplotlib_fn(study, **kwargs)
                if name == "intermediate_values":  # Optuna calls the x axis "Step"; ftlab reports at tokens seen
                    figure.update_xaxes(title_text=FIDELITY_AXIS)
                    axes.set_xlabel(FIDELITY_AXIS)
                _save_png(axes, out_dir / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            logger.info("skipping plot %s: %s", name, error)
            continue
        # One HTML file embeds plotly.js once (it works offline) instead of once per plot.
        include = "inline" if not html_parts else False
        html_parts.append(figure.to_html(full_html=False, include_plotlyjs=include))
        written.append(out_dir / f"{name}.png")
    comparison = comparison_markdown(study, sweep)
    (out_dir / "best_vs_baseline.md").write_text(comparison + "\n")
    (out_dir / "status.json").write_text(json.dumps(status_json(study, sweep.objectives[0].metric), indent=2))
    html = f"<html><head><meta charset='utf-8'><title>{study.study_name}</title></head><body>"
    html += f"<pre>{comparison}</pre>" + "".join(html_parts) + "</body></html>"
    (out_dir / "report.html").write_text(html)
    written += [out_dir / "best_vs_baseline.md", out_dir / "status.json", out_dir / "report.html"]
    return written


def log_report(
    study: optuna.Study, sweep: SweepConfig, tracking_uri: str, parent_run_id: str, out_dir: Path
) -> list[Path]:
    """Write the report and log it to the sweep's parent run under ``report/``."""
    from mlflow import MlflowClient

    files = write_report(study, sweep, out_dir)
    MlflowClient(tracking_uri=tracking_uri).log_artifacts(parent_run_id, str(out_dir), "report")
    return files
