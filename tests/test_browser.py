"""What a user sees after a sweep, in a real browser: MLflow's runs table and chart, optuna-dashboard's study page.

A tier of its own (``make test-browser``, or ``pytest -m browser``): a sweep run with the real CLI, ``ftlab ui`` on its
store, optuna-dashboard on its study, and a headless Chromium driven over the DevTools protocol (``tests/browser.py``).
Chromium is found on PATH or installed with apt-get when running as root; without it the tests skip and say why.

Each test keeps its screenshot under its tmp_path. To refresh the ones in ``docs/images/`` (shown in the README), run
the tests on the real demo sweep (``sweeps/demo.yaml``) with::

    FTLAB_UPDATE_SCREENSHOTS=1 .venv/bin/pytest -q -m browser tests/test_browser.py -p no:cacheprovider

That sweep takes 10-20 minutes on two cores (successive halving prunes most trials, and only complete trials count
towards its 10). ``FTLAB_BROWSER_SWEEP_DIR=FOLDER`` reuses a finished sweep instead of running one: the folder it ran
in (``mlruns/`` there), with its ``sweep.yaml``, or ``sweeps/demo.yaml`` run from there when refreshing the screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.entities import Run
from PIL import Image

from tests.browser import Browser, BrowserError, by_text, find_chromium, serve
from tests.helpers import local_client, run_ftlab, write_sweep
from tests.services import MLFLOW_SERVER_ENV, free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
DOCS_IMAGES = REPO / "docs" / "images"
DEMO_SWEEP = REPO / "sweeps" / "demo.yaml"
UPDATE_SCREENSHOTS = os.environ.get("FTLAB_UPDATE_SCREENSHOTS") == "1"
SWEEP_DIR = os.environ.get("FTLAB_BROWSER_SWEEP_DIR")  # reuse a finished sweep's folder instead of running one

OBJECTIVE = "eval/loss"
TOKENS = "train/tokens_seen"
EVAL_LOSS_COLUMN = f"metrics.`{OBJECTIVE}`"
RUN_NAME_COLUMN = "attributes.`Run Name`"
PAGE_TIMEOUT_S = 60
MLFLOW_CHART_RUNS = 10  # MLflow's charts draw the first 10 runs the run list shows


@dataclass
class FinishedSweep:
    """A sweep run to the end, and what its stores hold."""

    folder: Path
    file: Path
    experiment_id: str
    parent: Run
    children: dict[str, Run]  # by run id
    study: optuna.Study
    trials: dict[str, optuna.trial.FrozenTrial]  # by the run id of their MLflow run


@dataclass
class MlflowUi:
    """``ftlab ui`` serving a sweep's store, and the two addresses it printed for the user."""

    base_url: str
    runs_page: str  # "The sweep's runs: URL"
    dashboard_storage: str  # "optuna-dashboard STORAGE"


# --- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    path, reason = find_chromium()
    if path is None:
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> FinishedSweep:
    """SMALL_SWEEP (3 trials, 4 fidelity points each); the demo sweep itself when refreshing the screenshots.

    Depends on ``chromium`` so that a machine without a browser skips before spending a minute on the sweep.
    """
    if SWEEP_DIR:  # a sweep that already ran there: the demo's when refreshing the screenshots, else sweep.yaml's
        folder = Path(SWEEP_DIR).resolve()
        file = DEMO_SWEEP if UPDATE_SCREENSHOTS else folder / "sweep.yaml"
    else:
        folder = tmp_path_factory.mktemp("browser")
        file = DEMO_SWEEP if UPDATE_SCREENSHOTS else write_sweep(folder)
        result = run_ftlab("sweep", str(file), cwd=folder, timeout=3600)
        assert result.returncode == 0, result.stdout + result.stderr

    settings = yaml.safe_load(file.read_text())
    client = local_client(folder)
    experiment = client.get_experiment_by_name((settings.get("tracking") or {}).get("experiment") or settings["name"])
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [run for run in runs if run.data.tags.get("ftlab.role") == "sweep"]
    children = {run.info.run_id: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    study = optuna.load_study(
        study_name=parent.data.tags["optuna.study_name"], storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"
    )
    trials = {trial.user_attrs["mlflow_run_id"]: trial for trial in study.get_trials(deepcopy=False)}
    assert set(trials) == set(children), "every trial has its run"
    return FinishedSweep(folder, file, experiment.experiment_id, parent, children, study, trials)


@pytest.fixture(scope="module")
def mlflow_ui(sweep: FinishedSweep) -> Iterator[MlflowUi]:
    """``ftlab ui FILE --port P`` (it execs ``mlflow ui`` on the sweep's store), stopped at the end.

    The tests open the addresses it printed, so a wrong one fails them as it would mislead a user.
    """
    port = free_port()
    env = {**os.environ, **MLFLOW_SERVER_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = sweep.folder / "mlflow-ui.log"
    log_path.unlink(missing_ok=True)  # serve() appends; this run's lines only
    with serve(
        [sys.executable, "-m", "ftlab.cli", "ui", str(sweep.file), "--port", str(port)],
        cwd=sweep.folder,
        # The REST API, not /health: /health answers before the store is open.
        ready_url=f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=1",
        log_path=log_path,
        env=env,
        timeout=300,
    ):
        printed = log_path.read_text()  # printed before the exec, so complete once the UI answers
        runs_page = re.search(r"^The sweep's runs: (\S+)$", printed, re.MULTILINE)
        command = re.search(r"optuna-dashboard (\S+)$", printed, re.MULTILINE)
        assert runs_page and command, f"`ftlab ui` printed no runs page or optuna-dashboard command:\n{printed}"
        assert "pip install 'ftlab[dashboard]'" in printed  # the hint as users copy it, not eaten as markup
        base_url = f"http://127.0.0.1:{port}"
        assert runs_page[1] == f"{base_url}/#/experiments/{sweep.experiment_id}/runs?workflowType=machine_learning"
        yield MlflowUi(base_url, runs_page[1], command[1])


@pytest.fixture(scope="module")
def dashboard(sweep: FinishedSweep, mlflow_ui: MlflowUi) -> Iterator[str]:
    """optuna-dashboard on the storage that ``ftlab ui`` printed: its base URL, stopped at the end."""
    executable = Path(sys.executable).with_name("optuna-dashboard")
    if not executable.exists():
        pytest.skip("optuna-dashboard is not installed; install ftlab's extra: pip install -e '.[dashboard]'")
    assert mlflow_ui.dashboard_storage == f"sqlite:///{sweep.folder / 'mlruns' / 'optuna.db'}"
    port = free_port()
    with serve(
        [
            str(executable),
            mlflow_ui.dashboard_storage,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=sweep.folder,
        ready_url=f"http://127.0.0.1:{port}/api/studies",
        log_path=sweep.folder / "optuna-dashboard.log",
        env={**os.environ, "HOME": str(sweep.folder)},  # gunicorn puts its control socket in ~/.gunicorn
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:
    with Browser(chromium, width=1600, height=1000) as fresh:
        yield fresh


# --- the tests --------------------------------------------------------------------------------------------------------


def test_runs_table_shows_the_sweep_with_its_trials_and_eval_loss(
    sweep: FinishedSweep, mlflow_ui: MlflowUi, browser: Browser, tmp_path: Path
) -> None:
    parent_id = sweep.parent.info.run_id
    names = [run.info.run_name for run in sweep.children.values()]
    assert sweep.parent.info.run_name == f"{sweep.study.study_name}-sweep"
    assert "trial-000-baseline" in names
    assert all(re.fullmatch(r"trial-\d{3}(-baseline)?", name) for name in names), names

    open_runs_page(browser, mlflow_ui)
    browser.wait_for(
        f"document.querySelector({json.dumps(cell_selector(parent_id, RUN_NAME_COLUMN) + ' a')})?.innerText.trim()"
        f" === {json.dumps(sweep.parent.info.run_name)}",
        PAGE_TIMEOUT_S,
        what=f"the sweep's parent run {sweep.parent.info.run_name!r} in the runs table",
    )
    folded = grid_rows(browser)
    assert set(folded) == {parent_id}, "the trials' runs are not folded under the sweep's run"
    expand_parent(browser, parent_id, sweep.children)

    browser.click(by_text("Columns", "button"))
    show_column(browser, "Dataset", shown=False)  # empty for ftlab's runs; it pushes eval/loss off the screen
    browser.click("document.querySelector('input[placeholder=\"Search columns\"]')")
    browser.type(OBJECTIVE)
    show_column(browser, OBJECTIVE, shown=True)
    browser.press("Escape")

    rows = grid_rows(browser)
    assert set(rows) == {parent_id, *sweep.children}, "the runs table shows other runs than the sweep's"
    assert rows[parent_id][RUN_NAME_COLUMN] == sweep.parent.info.run_name
    for run_id, run in sweep.children.items():
        assert rows[run_id][RUN_NAME_COLUMN] == run.info.run_name
        shown = rows[run_id].get(EVAL_LOSS_COLUMN, "")
        assert re.fullmatch(r"\d+\.\d+", shown), f"{run.info.run_name}: {OBJECTIVE} cell shows {shown!r}"
        assert float(shown) == pytest.approx(run.data.metrics[OBJECTIVE], rel=1e-4), (run.info.run_name, shown)
    keep_screenshot(browser, "mlflow_runs.png", tmp_path)


def test_eval_loss_against_tokens_seen_has_one_point_per_fidelity_point(
    sweep: FinishedSweep, mlflow_ui: MlflowUi, browser: Browser, tmp_path: Path
) -> None:
    # The data, as the UI fetches it: one train/tokens_seen per step, and an eval/loss at each fidelity point.
    histories: dict[str, list[dict[str, Any]]] = {}
    for run_id, trial in sweep.trials.items():
        name = sweep.children[run_id].info.run_name
        tokens = metric_history(mlflow_ui.base_url, run_id, TOKENS)
        losses = histories[name] = metric_history(mlflow_ui.base_url, run_id, OBJECTIVE)
        token_steps = [point["step"] for point in tokens]
        loss_steps = [point["step"] for point in losses]
        assert len(token_steps) == len(set(token_steps)), f"{name}: {TOKENS} logged more than once at a step"
        assert len(loss_steps) == len(set(loss_steps)), f"{name}: {OBJECTIVE} logged more than once at a step"
        tokens_at = {point["step"]: point["value"] for point in tokens}
        assert set(loss_steps) <= set(tokens_at), f"{name}: {OBJECTIVE} at steps without {TOKENS}"
        points = [(tokens_at[point["step"]], point["value"]) for point in sorted(losses, key=lambda p: p["step"])]
        fidelity = trial.intermediate_values
        assert [at for at, _ in points] == sorted(fidelity), f"{name}: {OBJECTIVE} at {points}, fidelity {fidelity}"
        assert [loss for _, loss in points] == pytest.approx([fidelity[at] for at in sorted(fidelity)], rel=1e-6)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert points[-1][0] == max(tokens_at.values()) == trial.user_attrs["tokens_seen"], (
                f"{name}: the last evaluation is not at the end of the run"
            )

    # The chart, as drawn: eval/loss against train/tokens_seen for the runs shown.
    open_runs_page(browser, mlflow_ui, view="CHART")
    expand_parent(browser, sweep.parent.info.run_id, sweep.children)
    browser.click("document.querySelector('button[aria-label=\"Configure charts\"]')")
    browser.click(by_text("Metric", "[role=menu] *"))
    browser.choose(by_text(TOKENS, "[role=menuitemcheckbox]"))
    browser.click("document.querySelector('input[placeholder=\"Search metric charts\"]')")
    browser.type(OBJECTIVE)
    # Charts render as they scroll into view; MLflow sections them by the metric's prefix.
    browser.evaluate(f"({by_text(OBJECTIVE.split('/')[0])})?.scrollIntoView({{block: 'start'}})")
    browser.click(chart_card_button(OBJECTIVE, "fullscreen"))
    dialog = (
        f"[...document.querySelectorAll('[role=dialog]')].find(d => d.innerText.startsWith({json.dumps(OBJECTIVE)}))"
    )
    plot = f"{dialog}?.querySelector('.js-plotly-plot')"
    browser.wait_for(
        f"{plot}?.querySelector('.xtitle')?.textContent === {json.dumps(TOKENS)}",
        PAGE_TIMEOUT_S,
        what=f"the {OBJECTIVE} chart with {TOKENS} on its x axis",
    )
    # Each run is drawn twice: its line with markers, and a faded copy under it that takes no hover (the unsmoothed
    # line; for a single point, a faded marker).
    traces = browser.evaluate(
        f"{plot}.data.filter(t => t.hoverinfo !== 'skip')"
        ".map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))"
    )
    drawn = [trace["name"] for trace in traces]
    assert len(drawn) == len(set(drawn)), f"a run is drawn twice: {drawn}"
    # The sweep's run has no eval/loss (it logs best/eval/loss) but takes one of the runs the chart shows.
    assert len(drawn) == min(len(sweep.children), MLFLOW_CHART_RUNS - 1), f"drawn: {drawn}"
    trial_by_name = {sweep.children[run_id].info.run_name: trial for run_id, trial in sweep.trials.items()}
    for trace in traces:
        name = trace["name"]
        assert name in trial_by_name, f"{name!r} is drawn in the {OBJECTIVE} chart but is no trial of the sweep"
        assert len(trace["x"]) == len(histories[name]), f"{name}: {len(trace['x'])} points for {len(histories[name])}"
        fidelity = trial_by_name[name].intermediate_values
        assert trace["x"] == sorted(fidelity), f"{name}: drawn at {trace['x']}, fidelity points {sorted(fidelity)}"
        expected = [fidelity[at] for at in sorted(fidelity)]
        assert trace["y"] == pytest.approx(expected, rel=1e-6), f"{name}: drawn {trace['y']}, reported {expected}"
    keep_screenshot(browser, "mlflow_chart.png", tmp_path)


def test_optuna_dashboard_shows_the_study_and_its_trials(
    sweep: FinishedSweep, dashboard: str, browser: Browser, tmp_path: Path
) -> None:
    name = sweep.study.study_name
    with urllib.request.urlopen(f"{dashboard}/api/studies", timeout=30) as response:
        summaries = json.load(response)["study_summaries"]
    (study_id,) = [summary["study_id"] for summary in summaries if summary["study_name"] == name]
    best = sweep.study.best_trial

    browser.open(f"{dashboard}/dashboard/studies/{study_id}")
    browser.wait_for(
        f"document.body.innerText.includes({json.dumps(f'{name} (id={study_id})')})"
        f" && document.body.innerText.includes({json.dumps(f'Best Trial (number={best.number})')})",
        PAGE_TIMEOUT_S,
        what=f"the study page of {name!r} with its best trial #{best.number}",
    )
    # The history plot's y axis names the objective (ftlab sets the study's metric names), not "Objective Value".
    history = "document.querySelector('.js-plotly-plot')"
    browser.wait_for(
        f"{history}?.querySelectorAll('.scatterlayer .trace').length > 0"
        f" && {history}.querySelector('.ytitle')?.textContent === {json.dumps(OBJECTIVE)}",
        PAGE_TIMEOUT_S,
        what=f"the study's history plot of {OBJECTIVE}",
    )
    keep_screenshot(browser, "optuna_dashboard.png", tmp_path)

    browser.open(f"{dashboard}/dashboard/studies/{study_id}/trials")
    numbers = {trial.number for trial in sweep.study.get_trials(deepcopy=False)}
    browser.wait_for(
        f"document.body.innerText.includes({json.dumps(f'{len(numbers)} Trials')})",
        PAGE_TIMEOUT_S,
        what=f"the trial list's heading: {len(numbers)} Trials",
    )
    assert set(listed_trials(browser)) == numbers


# --- how a user finds things in the MLflow UI -------------------------------------------------------------------------


def open_runs_page(browser: Browser, ui: MlflowUi, view: str = "TABLE") -> None:
    """The runs page ``ftlab ui`` printed, as a table or as charts."""
    browser.open(f"{ui.runs_page}&{urllib.parse.urlencode({'compareRunsMode': view})}")
    browser.wait_for("!!document.querySelector('.ag-row')", PAGE_TIMEOUT_S, what="the runs table")
    close_assistant(browser)


def close_assistant(browser: Browser, appears_within: float = 5) -> None:
    """Close the MLflow Assistant side panel (MLflow >= 3.6; it covers a third of the page) if it opens."""
    close_button = "document.querySelector('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
    try:
        browser.wait_for(f"!!{close_button}", appears_within)
    except BrowserError:
        return
    browser.click(close_button)
    browser.wait_for(f"!{close_button}", PAGE_TIMEOUT_S, what="the MLflow Assistant panel to close")


def expand_parent(browser: Browser, parent_id: str, children: dict[str, Run]) -> None:
    """Click the parent run's ⊞ so that its child runs show under it."""
    # The ⊞ is the row's first button, in the table and in the chart view's run list alike.
    browser.click(f"document.querySelector({json.dumps(f'.ag-row[row-id={json.dumps(parent_id)}] button')})")
    first = min(run.info.run_name for run in children.values())
    browser.wait_for(
        f"document.body.innerText.includes({json.dumps(first)})", PAGE_TIMEOUT_S, what=f"child run {first!r}"
    )


def chart_card_button(title: str, kind: str) -> str:
    """A JavaScript expression for a button (``kind`` in its component id) on the chart card titled ``title``."""
    button = f"button[data-component-id*={json.dumps(kind)}]"
    return (
        f"(() => {{ let e = {by_text(title)}; while (e && !e.querySelector({json.dumps(button)})) e = e.parentElement;"
        f" return e ? e.querySelector({json.dumps(button)}) : null; }})()"
    )


def show_column(browser: Browser, name: str, shown: bool) -> None:
    """Tick or untick a column in the open "Columns" tree."""
    node = by_text(name, '[role=dialog] [class*="-tree-title"]')
    ticked = f"({node}).closest('[class*=\"-tree-treenode\"]').className.includes('checkbox-checked')"
    browser.wait_for(f"!!({node})", PAGE_TIMEOUT_S, what=f"column {name!r} in the column chooser")
    if browser.evaluate(ticked) != shown:
        browser.click(node)
        browser.wait_for(f"{ticked} === {json.dumps(shown)}", 10, what=f"column {name!r} {'on' if shown else 'off'}")


def cell_selector(run_id: str, column: str) -> str:
    return f".ag-row[row-id={json.dumps(run_id)}] .ag-cell[col-id={json.dumps(column)}]"


def grid_rows(browser: Browser) -> dict[str, dict[str, str]]:
    """Every row of the runs table, ``{run id: {column id: text}}``, scrolling through it (rows render lazily).

    A cell with a link reads as the link's text: the run name without the hidden name of its colour.
    """
    return browser.evaluate(
        """(async () => {
            const viewport = document.querySelector('.ag-body-viewport');
            const rows = {};
            for (let top = 0; ; top += Math.max(viewport.clientHeight / 2, 100)) {
                viewport.scrollTop = top;
                await new Promise(resolve => setTimeout(resolve, 250));
                for (const cell of document.querySelectorAll('.ag-row .ag-cell[col-id]')) {
                    const id = cell.closest('.ag-row').getAttribute('row-id');
                    (rows[id] ??= {})[cell.getAttribute('col-id')] = (cell.querySelector('a') || cell).innerText.trim();
                }
                if (top + viewport.clientHeight >= viewport.scrollHeight) break;
            }
            viewport.scrollTop = 0;
            await new Promise(resolve => setTimeout(resolve, 250));
            return rows;
        })()"""
    )


def listed_trials(browser: Browser) -> list[int]:
    """The numbers of the trials in optuna-dashboard's trial list, scrolling through it (it renders rows lazily)."""
    return browser.evaluate(
        """(async () => {
            const list = [...document.querySelectorAll('ul')].find(u => /^Trial \\d+$/m.test(u.innerText));
            let box = list;
            while (box && getComputedStyle(box).overflowY !== 'auto') box = box.parentElement;
            const numbers = new Set();
            for (let top = 0; ; top += Math.max(box.clientHeight / 2, 100)) {
                box.scrollTop = top;
                await new Promise(resolve => setTimeout(resolve, 250));
                for (const m of list.innerText.matchAll(/^Trial (\\d+)$/gm)) numbers.add(+m[1]);
                if (top + box.clientHeight >= box.scrollHeight) break;
            }
            return [...numbers];
        })()"""
    )


def metric_history(base_url: str, run_id: str, key: str) -> list[dict[str, Any]]:
    """A run's metric history through the REST API that the UI's charts read."""
    query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key})
    with urllib.request.urlopen(f"{base_url}/ajax-api/2.0/mlflow/metrics/get-history?{query}", timeout=30) as answer:
        return json.load(answer).get("metrics", [])


def keep_screenshot(browser: Browser, name: str, tmp_path: Path) -> Path:
    """Screenshot the page into tmp_path, check it shows something, and copy it to docs/images/ when refreshing."""
    browser.evaluate("document.activeElement?.blur()")  # no focus ring on the last button clicked
    path = browser.screenshot(tmp_path / name)
    assert path.stat().st_size > 20_000, f"{name}: {path.stat().st_size} bytes, a near-empty page"
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, f"{name}: {len(colours)} colours, a blank page"
    if UPDATE_SCREENSHOTS:
        shutil.copyfile(path, DOCS_IMAGES / name)
    return path
