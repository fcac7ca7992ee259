"""The sweep's view prints what other programs and users wrote as text: `[...]` in a failure's reason, a label or a
parameter is not rich markup (gloo's "[/path/pair.cc:553]" once ended a sweep with rich's MarkupError)."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import optuna
from rich.console import Console

from ftlab.record import TrialRecord
from ftlab.sweep.events import RunningTrial, TrialEvent
from ftlab.sweep.view import SweepView

GLOO = (
    "rank 1 of the trial's process group failed (RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/"
    "transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:59011); the other ranks were stopped"
)


def _view(live: bool, running: dict[int, RunningTrial] | None = None) -> tuple[SweepView, io.StringIO]:
    out = io.StringIO()
    scheduler = SimpleNamespace(
        study=optuna.create_study(),
        sweep=SimpleNamespace(name="[bold]odd[/bold]", objectives=[SimpleNamespace(metric="eval/loss")]),
        running=running or {},
    )
    # A console with rich's defaults (markup on), as a library user may pass one.
    console = Console(file=out, width=400, color_system=None)
    return SweepView(scheduler, console, "eval/loss", live=live), out  # type: ignore[arg-type]


def test_a_failure_quoting_brackets_is_printed_as_it_is() -> None:
    view, out = _view(live=False)
    view.on_event(TrialEvent("FAIL", 2, {"optim": "[/adamw]"}, False, TrialRecord(state="FAIL", reason=GLOO)))
    assert out.getvalue().strip() == f"trial 2 FAIL: {GLOO}"


def test_the_live_table_shows_brackets_in_names_and_params_as_they_are(tmp_path: Path) -> None:
    running = {3: RunningTrial(3, {"optim": "[/adamw]"}, False, tmp_path / "progress.json")}
    view, out = _view(live=True, running=running)
    view.console.print(view.render())
    shown = out.getvalue()
    assert "[bold]odd[/bold]" in shown
    assert "optim=[/adamw]" in shown
