"""Watching a sweep: a live rich view on a terminal, one line per event otherwise (logs, CI, pipes)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ftlab.sweep.events import TrialEvent
from ftlab.sweep.scheduler import Scheduler
from ftlab.sweep.summary import compare, state_counts


def _short(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in params.items()
    )


class SweepView:
    """Receives the scheduler's events and shows them, live or line by line."""

    def __init__(
        self,
        scheduler: Scheduler,
        console: Console,
        metric: str,
        live: bool | None = None,
        headline: Callable[[optuna.Study], str] | None = None,
    ) -> None:
        """``headline(study)``: the line that sums the study up after each COMPLETE trial; the best against the
        baseline by default (a confirmation shows its verdict so far instead)."""
        self.scheduler = scheduler
        self.console = console
        self.metric = metric
        self.live = console.is_terminal if live is None else live
        self._headline = headline or self._best_against_baseline
        self._lock = threading.Lock()
        self._counts = state_counts(scheduler.study)
        self._best_line = self._headline(scheduler.study)

    def _best_against_baseline(self, study: optuna.Study) -> str:
        comparison = compare(study, self.metric)
        return comparison.sentence() if comparison else "no completed trial yet"

    def on_event(self, event: TrialEvent) -> None:
        with self._lock:
            self._counts = state_counts(self.scheduler.study)
            if event.kind == "COMPLETE":
                self._best_line = self._headline(self.scheduler.study)
        if not self.live:
            # Not markup: a failure's detail quotes other programs (gloo's ``[/path/pair.cc:553]``), params quote
            # users' choices.
            self.console.print(self._event_line(event), markup=False, highlight=False, soft_wrap=True)

    def _event_line(self, event: TrialEvent) -> str:
        label = event.label or f"trial {event.number}" + (" (baseline)" if event.baseline else "")
        if event.kind == "started":
            return f"{label} started: {_short(event.params)}"
        record = event.record
        if record is not None and record.state == "COMPLETE":
            objectives = ", ".join(
                f"{objective.metric} {value:.4f}"
                for objective, value in zip(self.scheduler.sweep.objectives, record.values or [], strict=False)
            )
            return f"{label} COMPLETE: {objectives} in {record.seconds:.1f} s | {self._best_line}"
        return f"{label} {record.outcome}: {record.detail}" if record else f"{label} {event.kind}"

    def render(self) -> Group:
        with self._lock:
            counts, best_line = dict(self._counts), self._best_line
        header = Text.assemble(
            (self.scheduler.sweep.name, "bold"),
            f"  complete {counts['COMPLETE']}  running {counts['RUNNING']}  pruned {counts['PRUNED']}  "
            f"failed {counts['FAIL']}" + (f" (diverged {counts['DIVERGED']})" if counts.get("DIVERGED") else ""),
        )
        table = Table(show_header=True, header_style="bold", box=None)
        metrics = ["train/loss", *(o.metric for o in self.scheduler.sweep.objectives if o.metric != "train/loss")]
        for column in ("trial", "progress", "step", *metrics, "params"):
            table.add_column(column)
        for running in sorted(self.scheduler.running.copy().values(), key=lambda item: item.number):
            progress = self._read_progress(running.progress_file)
            total = progress.get("total_steps") or 1
            step = progress.get("step") or 0
            table.add_row(
                Text(running.label or f"{running.number}" + (" (baseline)" if running.baseline else "")),
                ProgressBar(total=total, completed=step, width=24),
                f"{step}/{progress.get('total_steps') or '?'}",
                *(_fmt(progress.get("latest", {}).get(metric)) for metric in metrics),
                Text(_short(running.params)),
            )
        return Group(header, Text(best_line), table)

    @staticmethod
    def _read_progress(path: Any) -> dict[str, Any]:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def context(self) -> AbstractContextManager[object]:
        if not self.live:
            return nullcontext()
        return Live(get_renderable=self.render, console=self.console, refresh_per_second=2, transient=False)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
