"""Before any trial starts, prove that the sweep can run: every problem found at once, as one :class:`UserError`.

``ftlab validate`` runs these checks, and so do ``ftlab sweep``, ``worker`` and ``train`` before their first trial:

- every value the search space can produce makes valid training settings (``ftlab.sweep.space``);
- the model is a local folder that exists, or a well-formed hub id that can be had (in the local cache when offline);
  its config.json loads, its weights are there, its positions hold ``data.block_size``, and its tokenizer has a
  vocabulary that reads the data (``ftlab.model_checks``);
- the data files exist, are text of their declared format, and hold at least one optimizer step at the largest
  effective batch the search can pick and one validation block (the data preparation itself, cached for the trials);
- the study storage and the tracking server answer within seconds: "never connected" is told apart from a connection
  lost later (which the workers ride out).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

from ftlab.config import SweepConfig, TrainConfig
from ftlab.errors import ConfigError, Problem, UserError, first_line, redact_url
from ftlab.folders import folder_problem
from ftlab.settings import resolve_train_config
from ftlab.storage import backend_for, sqlite_file
from ftlab.sweep.space import baseline_outside_ranges, baseline_point, reachable_configs
from ftlab.tracking import local_artifact_root

CONNECT_TIMEOUT_S = 5
_MLFLOW_API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
_WRITABLE_FIX = "point it at a folder this user can write (not a file, not a read-only mount)"
_OFFLINE_VALUES = {"1", "on", "yes", "true"}


def _offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in _OFFLINE_VALUES for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


# --- the model -------------------------------------------------------------------------------------------------------


def model_problems(sweep: SweepConfig, source: str) -> list[Problem]:
    """Whether ``model.name_or_path`` (and ``model.tokenizer``) can be had, answered within seconds, and then whether
    they can train (see :mod:`ftlab.model_checks`)."""
    from ftlab.model_checks import model_content_problems

    problems = []
    for key, name in (("model.name_or_path", sweep.model.name_or_path), ("model.tokenizer", sweep.model.tokenizer)):
        if name is not None:
            problems += _model_problems(name, sweep.model.revision, f"{source}:{key}")
    # Found; then what is inside: config, weights, positions against data.block_size, a real tokenizer.
    return problems or model_content_problems(sweep, source)


def _looks_like_a_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def _model_problems(name: str, revision: str | None, where: str) -> list[Problem]:
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(name).expanduser()
    if folder.is_dir():
        if (folder / "config.json").is_file():
            return []
        return [Problem("the model folder has no config.json", where, name, "point it at a save_pretrained folder")]
    if _looks_like_a_path(name):
        return [Problem("model folder not found", where, name, "check the path, or give a hub id such as gpt2")]
    try:
        validate_repo_id(name)
    except HFValidationError:
        return [Problem("neither a local folder nor a hub id", where, name, "give a folder or an id such as gpt2")]
    if isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return []  # in the local cache: loads offline too
    if _offline():
        return [
            Problem(
                "the model is not in the local Hugging Face cache and the hub is switched off (HF_HUB_OFFLINE)",
                where,
                name,
                "download it once with network access, point model.name_or_path at a local folder, "
                "or unset HF_HUB_OFFLINE",
            )
        ]
    try:
        HfApi().model_info(name, revision=revision, timeout=CONNECT_TIMEOUT_S)
    except RevisionNotFoundError:
        return [Problem(f"the hub model has no revision {revision!r}", where, name, "check model.revision")]
    except RepositoryNotFoundError:
        return [Problem("no such model on the Hugging Face hub (or it is private)", where, name, "check the id")]
    except Exception as error:  # connection refused, DNS failure, timeout: the hub's client raises several kinds
        return [
            Problem(
                f"cannot reach the Hugging Face hub within {CONNECT_TIMEOUT_S} s ({first_line(error)})",
                where,
                name,
                "check the network, or set HF_HUB_OFFLINE=1 with the model in the local cache",
            )
        ]
    return []


# --- the data --------------------------------------------------------------------------------------------------------


def data_check(
    sweep: SweepConfig, sweep_dir: Path, configs: list[TrainConfig], source: str
) -> tuple[list[Problem], str | None]:
    """Prepare the data (cached for the trials) and check it holds an optimizer step for every config, and a
    validation block; with the prepared data's fingerprint (None where it could not be prepared): the study
    remembers it, so that a resumed sweep on other data is refused (:mod:`ftlab.sweep.identity`)."""
    import transformers

    from ftlab.data import prepare_data
    from ftlab.model_checks import data_token_problems
    from ftlab.training.loop import NotEnoughDataError, plan_steps

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        sweep.model.tokenizer or sweep.model.name_or_path, revision=sweep.model.revision
    )
    try:
        data = prepare_data(sweep.data, tokenizer, base_dir=sweep_dir)
    except UserError as error:
        return [_located(problem, source) for problem in error.problems], None
    sample = data.train.select(range(min(64, len(data.train))))["input_ids"]
    if problems := data_token_problems(sweep, [token for block in sample for token in block], source):
        return problems, data.fingerprint
    largest = max(configs, key=lambda config: config.total_train_batch_size)
    try:
        plan_steps(largest, len(data.train))
    except NotEnoughDataError as error:
        return [Problem(str(error), f"{source}:data", fix="see the message")], data.fingerprint
    return [], data.fingerprint


def _located(problem: Problem, source: str) -> Problem:
    where = problem.where or "data"
    return replace(problem, where=where if where.startswith(source) else f"{source}:{where}")


# --- the services ----------------------------------------------------------------------------------------------------


def storage_problems(url: str, where: str) -> list[Problem]:
    """Whether the Optuna storage at ``url`` can be opened now: its backend answers within seconds."""
    try:
        backend = backend_for(url)
    except ConfigError as error:
        return [replace(problem, where=where) for problem in error.problems]
    problem = backend.problem(url, CONNECT_TIMEOUT_S)
    return [] if problem is None else [Problem(redact_url(problem), where, redact_url(url), backend.fix)]


def tracking_problems(uri: str, where: str) -> list[Problem]:
    """Whether the MLflow tracking store at ``uri`` answers now (a server's /health and its API within seconds), or
    for a local store, whether its database and its artifacts folder can be written."""
    if uri.startswith(("http://", "https://")):
        reason = _server_problem(uri.rstrip("/"))
        if reason is None:
            return []
        return [
            Problem(
                reason,
                where,
                redact_url(uri),
                "start it (`mlflow server …`), check the address, or leave --tracking-uri unset for ./mlruns",
            )
        ]
    if uri.startswith(("sqlite:///", "postgresql", "mysql", "mssql")):
        problems = storage_problems(uri, where)
        artifacts = local_artifact_root(uri)
        if not problems and artifacts is not None and (problem := folder_problem(Path(artifacts))):
            problems.append(Problem(f"cannot store artifacts: {problem}", where, redact_url(uri), _WRITABLE_FIX))
        return problems
    return _file_store_problems(uri, where)


def _server_problem(base: str) -> str | None:
    """Why the server at ``base`` is no MLflow tracking server that answers (one sentence), or None."""
    try:
        with urllib.request.urlopen(base + "/health", timeout=CONNECT_TIMEOUT_S) as answer:
            if answer.status != 200:
                return f"cannot reach the MLflow tracking server: HTTP {answer.status} from /health"
        # Any web server may answer /health: MLflow's API must answer too, in JSON.
        with urllib.request.urlopen(base + _MLFLOW_API_PROBE, timeout=CONNECT_TIMEOUT_S) as answer:
            if isinstance(json.loads(answer.read() or b"{}"), dict):
                return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):  # an MLflow server with authentication: ftlab's client logs in as configured
            return None
        path = urllib.parse.urlsplit(error.url or "").path
        return f"the server answers HTTP {error.code} from {path}: is this an MLflow tracking server?"
    except (urllib.error.URLError, OSError) as error:
        cause = getattr(error, "reason", error)
        return f"cannot reach the MLflow tracking server: no answer within {CONNECT_TIMEOUT_S} s ({cause})"
    except ValueError:
        pass
    return "the server answers, but not as MLflow's API does: is this an MLflow tracking server?"


def _file_store_problems(uri: str, where: str) -> list[Problem]:
    """A plain folder (or ``file:``) is MLflow's retired file store, which MLflow refuses unless told otherwise."""
    if "://" in uri and not uri.startswith("file:"):
        return []  # another scheme MLflow knows (databricks, a plugin's): it answers for itself
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in _OFFLINE_VALUES:
        return [
            Problem(
                "a plain path is MLflow's retired file store, which MLflow refuses",
                where,
                uri,
                f"give a database: sqlite:///{uri.removeprefix('file://').rstrip('/') or '.'}/mlflow.db, or an "
                "MLflow server's http:// address (or set MLFLOW_ALLOW_FILE_STORE=true to use the file store)",
            )
        ]
    if problem := folder_problem(Path(uri.removeprefix("file://"))):
        return [Problem(f"cannot use the tracking folder: {problem}", where, uri, _WRITABLE_FIX)]
    return []


def same_store_problems(storage_url: str, tracking_uri: str, where: str) -> list[Problem]:
    """The study and MLflow in one SQLite file: each would create its tables in the other's database (Optuna's and
    MLflow's schemas share table names), leaving it half made. Found before either is touched."""
    study_file = sqlite_file(storage_url)
    tracking_file = sqlite_file(tracking_uri)
    if study_file is None or tracking_file is None:
        return []
    if study_file.expanduser().resolve() != tracking_file.expanduser().resolve():
        return []
    return [
        Problem(
            "the study storage and the MLflow tracking store are the same SQLite file",
            where,
            storage_url,
            "give each its own file, e.g. sqlite:///mlruns/optuna.db for the study and sqlite:///mlruns/mlflow.db "
            "for MLflow",
        )
    ]


# --- the folders trials write ----------------------------------------------------------------------------------------


def folder_problems(sweep: SweepConfig, configs: list[TrainConfig], source: str) -> list[Problem]:
    """Whether the data cache and every trial output folder the search can pick can be written (made as needed)."""
    folders = {f"{source}:data.cache_dir": [sweep.data.cache_dir]}
    folders[f"{source}:train.output_dir"] = sorted({config.output_dir for config in configs})
    return [
        Problem(problem, key, folder, _WRITABLE_FIX)
        for key, values in folders.items()
        for folder in values
        if (problem := folder_problem(Path(folder)))
    ]


# --- all of it -------------------------------------------------------------------------------------------------------


def settings_problems(sweep: SweepConfig, sweep_dir: Path, source: str) -> tuple[list[TrainConfig], list[Problem]]:
    """The training settings every value of the search can produce, and what is wrong with any of them."""
    try:
        baseline = resolve_train_config(sweep, sweep_dir, source=source)
        baseline_point(sweep, baseline, source)  # trial 0 is the baseline: its values must be in the search space
    except UserError as error:
        return [], error.problems
    return reachable_configs(sweep, baseline, sweep_dir, source)


def settings_warnings(sweep: SweepConfig, sweep_dir: Path, source: str) -> list[str]:
    """What is allowed but probably not meant: a baseline outside its own search range."""
    try:
        baseline = resolve_train_config(sweep, sweep_dir, source=source)
    except UserError:
        return []  # reported as a problem
    return baseline_outside_ranges(sweep, baseline, source)


def trial_check(sweep: SweepConfig, sweep_dir: Path, source: str) -> tuple[list[Problem], str | None]:
    """Everything a trial needs that is not a service: settings, model and data, and the prepared data's fingerprint
    (None where the data was not prepared). Imports transformers."""
    configs, problems = settings_problems(sweep, sweep_dir, source)
    problems += folder_problems(sweep, configs, source) + model_problems(sweep, source)
    if problems:  # the data check loads the tokenizer and prepares the data: only once the rest is sound
        return problems, None
    return data_check(sweep, sweep_dir, configs, source)


def service_problems(storage_url: str, tracking_uri: str, storage_where: str, tracking_where: str) -> list[Problem]:
    """Whether the study storage and the tracking store answer, and are not one and the same file."""
    if same := same_store_problems(storage_url, tracking_uri, storage_where):
        return same
    return storage_problems(storage_url, storage_where) + tracking_problems(tracking_uri, tracking_where)


def raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise UserError(problems)
