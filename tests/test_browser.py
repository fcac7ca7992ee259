"""What a user sees after a sweep, in a real browser: MLflow's runs table and chart, optuna-dashboard's study page.

A tier of its own (``make test-browser``, or ``pytest -m browser``): a sweep run with the real CLI, ``ftlab ui`` on its
store, optuna-dashboard on its study, and Debian's headless Chromium driven by Playwright (``tests/chromium.py``).
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
from playwright.sync_api import Browser, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.chromium import find_chromium, launch
from tests.helpers import local_client, run_ftlab, write_sweep
from tests.support.services import MLFLOW_SERVER_ENV, free_port
from tests.webapps import serve

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
PAGE_TIMEOUT_MS = 60_000
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
        runs_page = re.search(rf"^The sweep's runs, best final/{OBJECTIVE} first: (\S+)$", printed, re.MULTILINE)
        command = re.search(r"optuna-dashboard (\S+) --port", printed, re.MULTILINE)
        assert runs_page and command, f"`ftlab ui` printed no runs page or optuna-dashboard command:\n{printed}"
        assert "pip install 'ftlab[dashboard]'" in printed  # the hint as users copy it, not eaten as markup
        base_url = f"http://127.0.0.1:{port}"
        assert runs_page[1] == (
            f"{base_url}/#/experiments/{sweep.experiment_id}/runs?workflowType=machine_learning"
            f"&orderByKey={urllib.parse.quote(f'metrics.`final/{OBJECTIVE}`', safe='')}&orderByAsc=true"
        )
        assert f"x axis to the metric {TOKENS}" in printed and "--port 8080" in printed
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


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with launch(chromium) as started:
        yield started


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (own cookies and storage) the size of the README's screenshots."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


# --- the tests --------------------------------------------------------------------------------------------------------


def test_runs_table_shows_the_sweep_with_its_trials_and_eval_loss(
    sweep: FinishedSweep, mlflow_ui: MlflowUi, page: Page, tmp_path: Path
) -> None:
    parent_id = sweep.parent.info.run_id
    names = [run.info.run_name for run in sweep.children.values()]
    assert sweep.parent.info.run_name == f"{sweep.study.study_name}-sweep"
    assert "trial-000-baseline" in names
    assert all(re.fullmatch(r"trial-\d{3}(-baseline)?", name) for name in names), names

    # MLflow's own order (newest first) folds the trials under the sweep's run. (First: the page keeps a sort it was
    # given for the rest of its visit.)
    open_runs_page(page, mlflow_ui, sorted_by_objective=False)
    parent_link = page.locator(f"{cell_selector(parent_id, RUN_NAME_COLUMN)} a").first
    expect(parent_link).to_have_text(sweep.parent.info.run_name, use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    folded = grid_rows(page)
    assert set(folded) == {parent_id}, "the trials' runs are not folded under the sweep's run"
    expand_parent(page, parent_id, sweep.children)

    by_text(page, "Columns", "button").click()
    show_column(page, "Dataset", shown=False)  # empty for ftlab's runs; it pushes eval/loss off the screen
    page.get_by_placeholder("Search columns").fill(OBJECTIVE)
    show_column(page, OBJECTIVE, shown=True)
    page.keyboard.press("Escape")

    rows = grid_rows(page)
    assert set(rows) == {parent_id, *sweep.children}, "the runs table shows other runs than the sweep's"
    assert rows[parent_id][RUN_NAME_COLUMN] == sweep.parent.info.run_name
    for run_id, run in sweep.children.items():
        assert rows[run_id][RUN_NAME_COLUMN] == run.info.run_name
        shown = rows[run_id].get(EVAL_LOSS_COLUMN, "")
        assert re.fullmatch(r"\d+\.\d+", shown), f"{run.info.run_name}: {OBJECTIVE} cell shows {shown!r}"
        assert float(shown) == pytest.approx(run.data.metrics[OBJECTIVE], rel=1e-4), (run.info.run_name, shown)
    keep_screenshot(page, "mlflow_runs.png", tmp_path)

    # The page `ftlab ui` printed lists the runs best first: every run with a final/eval/loss in its order, then the
    # rest (the sweep's own run, pruned trials). MLflow lists runs flat when they are sorted by a metric.
    open_runs_page(page, mlflow_ui)
    expect(page.locator(f"{cell_selector(parent_id, RUN_NAME_COLUMN)} a").first).to_be_attached()
    listed = [run_id for run_id, _ in sorted(grid_rows(page).items(), key=lambda row: int(row[1]["row-index"]))]
    final = {
        run_id: run.data.metrics[f"final/{OBJECTIVE}"]
        for run_id, run in sweep.children.items()
        if f"final/{OBJECTIVE}" in run.data.metrics
    }
    assert len(final) >= 2, "the sweep has too few complete trials to check an order"
    assert set(listed) == {parent_id, *sweep.children}
    assert listed[: len(final)] == sorted(final, key=final.__getitem__), "the printed runs page is not best first"


def test_eval_loss_against_tokens_seen_has_one_point_per_fidelity_point(
    sweep: FinishedSweep, mlflow_ui: MlflowUi, page: Page, tmp_path: Path
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
    open_runs_page(page, mlflow_ui, view="CHART", sorted_by_objective=False)
    expand_parent(page, sweep.parent.info.run_id, sweep.children)
    page.locator('button[aria-label="Configure charts"]').click()
    by_text(page, "Metric", "[role=menu] *").click()
    # Chosen as the keyboard would (its click handler, no mouse move): a submenu closes when the pointer leaves the row
    # that opened it other than straight into the submenu, which a synthetic mouse jump does not do reliably.
    by_text(page, TOKENS, "[role=menuitemcheckbox]").dispatch_event("click")
    page.get_by_placeholder("Search metric charts").fill(OBJECTIVE)
    # Charts render as they scroll into view; MLflow sections them by the metric's prefix.
    section = by_text(page, OBJECTIVE.split("/")[0])
    if section.count():
        section.evaluate("title => title.scrollIntoView({block: 'start'})")
    chart_card_button(page, OBJECTIVE, "fullscreen").click()
    dialog = page.get_by_role("dialog").filter(has_text=re.compile(f"^{re.escape(OBJECTIVE)}"))
    plot = dialog.locator(".js-plotly-plot").first
    expect(plot.locator(".xtitle").first).to_have_text(TOKENS, timeout=PAGE_TIMEOUT_MS)
    # Each run is drawn twice: its line with markers, and a faded copy under it that takes no hover (the unsmoothed
    # line; for a single point, a faded marker).
    traces = plot.evaluate(
        "plot => plot.data.filter(t => t.hoverinfo !== 'skip')"
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
    keep_screenshot(page, "mlflow_chart.png", tmp_path)


def test_optuna_dashboard_shows_the_study_and_its_trials(
    sweep: FinishedSweep, dashboard: str, page: Page, tmp_path: Path
) -> None:
    name = sweep.study.study_name
    with urllib.request.urlopen(f"{dashboard}/api/studies", timeout=30) as response:
        summaries = json.load(response)["study_summaries"]
    (study_id,) = [summary["study_id"] for summary in summaries if summary["study_name"] == name]
    best = sweep.study.best_trial

    page.goto(f"{dashboard}/dashboard/studies/{study_id}")
    body = page.locator("body")
    expect(body).to_contain_text(f"{name} (id={study_id})", use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    expect(body).to_contain_text(f"Best Trial (number={best.number})", use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    # The history plot's y axis names the objective (ftlab sets the study's metric names), not "Objective Value".
    history = page.locator(".js-plotly-plot").first
    expect(history.locator(".scatterlayer .trace").first).to_be_attached(timeout=PAGE_TIMEOUT_MS)
    expect(history.locator(".ytitle").first).to_have_text(OBJECTIVE, timeout=PAGE_TIMEOUT_MS)
    keep_screenshot(page, "optuna_dashboard.png", tmp_path)

    page.goto(f"{dashboard}/dashboard/studies/{study_id}/trials")
    numbers = {trial.number for trial in sweep.study.get_trials(deepcopy=False)}
    expect(body).to_contain_text(f"{len(numbers)} Trials", use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    assert set(listed_trials(page)) == numbers


REGISTERED = "browser-best"


@pytest.fixture(scope="module")
def confirmed_and_registered(sweep: FinishedSweep) -> tuple[Run, str]:
    """``ftlab confirm`` (the baseline and the best trial, two seeds each) and ``ftlab best --export --register`` on
    the sweep: the confirm parent run, and the registered model's name."""
    result = run_ftlab("confirm", str(sweep.file), "--top", "1", "--seeds", "2", cwd=sweep.folder, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr
    # Progress lines name the sweep's trial and the seed, not the confirmation study's own trial numbers.
    assert re.search(r"^sweep trial \d+ \(baseline\), seed \d+ started: ", result.stdout, re.MULTILINE), result.stdout
    out = sweep.folder / "exported"
    result = run_ftlab(
        "best",
        str(sweep.file),
        "--export",
        str(out),
        "--force",
        "--register",
        REGISTERED,
        cwd=sweep.folder,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    client = local_client(sweep.folder)
    (confirm,) = [
        run for run in client.search_runs([sweep.experiment_id], max_results=1000) if run.info.run_name == "confirm"
    ]
    return confirm, REGISTERED


def test_the_confirm_parent_run_reads_as_a_confirmation_with_its_verdict(
    sweep: FinishedSweep, mlflow_ui: MlflowUi, confirmed_and_registered: tuple[Run, str], page: Page, tmp_path: Path
) -> None:
    confirm, _ = confirmed_and_registered
    tags = confirm.data.tags
    assert tags["ftlab.role"] == "confirm" and tags["ftlab.verdict"]
    page.goto(f"{mlflow_ui.base_url}/#/experiments/{sweep.experiment_id}/runs/{confirm.info.run_id}")
    close_assistant(page)
    body = page.locator("body")
    expect(body).to_contain_text(
        f"The confirmation of sweep {sweep.study.study_name}", use_inner_text=True, timeout=PAGE_TIMEOUT_MS
    )
    expect(body).to_contain_text(tags["ftlab.verdict"], use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    expect(body).to_contain_text("ftlab.role", use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    expect(body).not_to_contain_text("an Optuna study", use_inner_text=True)
    baseline_trial = tags["ftlab.baseline_trial"]
    assert f"confirm/trial_{baseline_trial}/mean" in confirm.data.metrics
    keep_screenshot(page, "mlflow_confirm.png", tmp_path)


def test_the_registered_model_page_describes_the_model_and_its_version(
    sweep: FinishedSweep, mlflow_ui: MlflowUi, confirmed_and_registered: tuple[Run, str], page: Page, tmp_path: Path
) -> None:
    _, name = confirmed_and_registered
    client = local_client(sweep.folder)
    model = client.get_registered_model(name)
    version = client.get_model_version_by_alias(name, "champion")
    trial_run = client.get_run(version.tags["ftlab.trial_run_id"])
    assert trial_run.data.tags["mlflow.parentRunId"] == sweep.parent.info.run_id
    assert "max_new_tokens" not in trial_run.data.params, "the trial's run was reopened to log the model"
    assert "confirm.verdict" in version.tags
    body = page.locator("body")
    page.goto(f"{mlflow_ui.base_url}/#/models/{name}")
    close_assistant(page)
    expect(body).to_contain_text(model.description[:60], use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    expect(body).to_contain_text("ftlab.objective", use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    keep_screenshot(page, "mlflow_registered_model.png", tmp_path)
    page.goto(f"{mlflow_ui.base_url}/#/models/{name}/versions/{version.version}")
    expect(body).to_contain_text(version.description[:60], use_inner_text=True, timeout=PAGE_TIMEOUT_MS)
    expect(body).to_contain_text("Confirmation over new seeds", use_inner_text=True, timeout=PAGE_TIMEOUT_MS)


# --- how a user finds things in the MLflow UI -------------------------------------------------------------------------


def open_runs_page(page: Page, ui: MlflowUi, view: str = "TABLE", sorted_by_objective: bool = True) -> None:
    """The runs page ``ftlab ui`` printed, as a table or as charts; without its sort, the experiment's page as MLflow
    opens it (newest first), where child runs nest under their parent (sorted by a metric, MLflow lists runs flat)."""
    url = ui.runs_page if sorted_by_objective else re.sub(r"&orderBy(Key|Asc)=[^&]*", "", ui.runs_page)
    page.goto(f"{url}&{urllib.parse.urlencode({'compareRunsMode': view})}")
    page.locator(".ag-row").first.wait_for(state="attached")
    close_assistant(page)


def close_assistant(page: Page, appears_within_ms: float = 5_000) -> None:
    """Close the MLflow Assistant side panel (MLflow >= 3.6; it covers a third of the page) if it opens."""
    close_button = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    try:
        close_button.wait_for(state="attached", timeout=appears_within_ms)
    except PlaywrightTimeoutError:
        return
    close_button.click()
    close_button.wait_for(state="detached")


def expand_parent(page: Page, parent_id: str, children: dict[str, Run]) -> None:
    """Click the parent run's ⊞ so that its child runs show under it."""
    # The ⊞ is the row's first button, in the table and in the chart view's run list alike.
    page.locator(f".ag-row[row-id={json.dumps(parent_id)}] button").first.click()
    first = min(run.info.run_name for run in children.values())
    expect(page.locator("body")).to_contain_text(first, use_inner_text=True, timeout=PAGE_TIMEOUT_MS)


def chart_card_button(page: Page, title: str, kind: str) -> Locator:
    """A button (``kind`` in its component id) on the chart card titled ``title``."""
    button = f"button[data-component-id*={json.dumps(kind)}]"
    # The card: the title's nearest ancestor (or itself) that holds such a button.
    card = by_text(page, title).locator(
        f"xpath=ancestor-or-self::*[.//button[contains(@data-component-id, '{kind}')]][1]"
    )
    return card.locator(button).first


def show_column(page: Page, name: str, shown: bool) -> None:
    """Tick or untick a column in the open "Columns" tree."""
    node = by_text(page, name, '[role=dialog] [class*="-tree-title"]')
    tree_node = node.locator("xpath=ancestor-or-self::*[contains(@class, '-tree-treenode')][1]")
    node.wait_for(state="attached")
    if ("checkbox-checked" in (tree_node.get_attribute("class") or "")) != shown:
        node.click()
        ticked = re.compile("checkbox-checked")
        if shown:
            expect(tree_node).to_have_class(ticked, timeout=10_000)
        else:
            expect(tree_node).not_to_have_class(ticked, timeout=10_000)


def by_text(page: Page, text: str, selector: str = "*") -> Locator:
    """The innermost element matching ``selector`` whose whole text is ``text``."""
    # An element's ancestors hold the same text; they come before it in document order.
    return page.locator(selector).filter(has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")).last


def cell_selector(run_id: str, column: str) -> str:
    return f".ag-row[row-id={json.dumps(run_id)}] .ag-cell[col-id={json.dumps(column)}]"


def grid_rows(page: Page) -> dict[str, dict[str, str]]:
    """Every row of the runs table, ``{run id: {column id: text}}`` with its place as ``"row-index"``, scrolling
    through it (rows render lazily).

    A cell with a link reads as the link's text: the run name without the hidden name of its colour.
    """
    return page.evaluate(
        """async () => {
            const viewport = document.querySelector('.ag-body-viewport');
            const rows = {};
            for (let top = 0; ; top += Math.max(viewport.clientHeight / 2, 100)) {
                viewport.scrollTop = top;
                await new Promise(resolve => setTimeout(resolve, 250));
                for (const cell of document.querySelectorAll('.ag-row .ag-cell[col-id]')) {
                    const row = cell.closest('.ag-row');
                    const cells = (rows[row.getAttribute('row-id')] ??= {'row-index': row.getAttribute('row-index')});
                    cells[cell.getAttribute('col-id')] = (cell.querySelector('a') || cell).innerText.trim();
                }
                if (top + viewport.clientHeight >= viewport.scrollHeight) break;
            }
            viewport.scrollTop = 0;
            await new Promise(resolve => setTimeout(resolve, 250));
            return rows;
        }"""
    )


def listed_trials(page: Page) -> list[int]:
    """The numbers of the trials in optuna-dashboard's trial list, scrolling through it (it renders rows lazily)."""
    return page.evaluate(
        """async () => {
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
        }"""
    )


def metric_history(base_url: str, run_id: str, key: str) -> list[dict[str, Any]]:
    """A run's metric history through the REST API that the UI's charts read."""
    query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key})
    with urllib.request.urlopen(f"{base_url}/ajax-api/2.0/mlflow/metrics/get-history?{query}", timeout=30) as answer:
        return json.load(answer).get("metrics", [])


def keep_screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """Screenshot the page into tmp_path, check it shows something, and copy it to docs/images/ when refreshing."""
    page.evaluate("document.activeElement?.blur()")  # no focus ring on the last button clicked
    path = tmp_path / name
    page.screenshot(path=path)
    assert path.stat().st_size > 20_000, f"{name}: {path.stat().st_size} bytes, a near-empty page"
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, f"{name}: {len(colours)} colours, a blank page"
    if UPDATE_SCREENSHOTS:
        shutil.copyfile(path, DOCS_IMAGES / name)
    return path
