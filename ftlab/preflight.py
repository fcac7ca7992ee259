"""Before any trial starts, prove that the sweep can run: every problem found at once, as one :class:`UserError`.

``ftlab validate`` runs these checks, and so do ``ftlab sweep``, ``worker`` and ``train`` before their first trial:

- every value the search space can produce makes valid training settings (``ftlab.sweep.space``);
- the model is a local folder that exists, or a well-formed hub id that can be had (in the local cache when offline);
- the data files exist, are text of their declared format, and hold at least one optimizer step at the largest
  effective batch the search can pick and one validation block (the data preparation itself, cached for the trials);
- the study storage and the tracking server answer within seconds: "never connected" is told apart from a connection
  lost later (which the workers ride out).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import sqlalchemy
import sqlalchemy.exc

from ftlab import paths
from ftlab.config import SweepConfig, TrainConfig
from ftlab.errors import Problem, UserError
from ftlab.settings import resolve_train_config
from ftlab.sweep.space import reachable_configs
from ftlab.tracking import redact_url

CONNECT_TIMEOUT_S = 5
_OFFLINE_VALUES = {"1", "on", "yes", "true"}


def _offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in _OFFLINE_VALUES for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- the model -------------------------------------------------------------------------------------------------------


def model_problems(sweep: SweepConfig, source: str) -> list[Problem]:
    """Whether ``model.name_or_path`` (and ``model.tokenizer``) can be loaded, answered within seconds."""
    problems = []
    for key, name in (("model.name_or_path", sweep.model.name_or_path), ("model.tokenizer", sweep.model.tokenizer)):
        if name is not None:
            problems += _model_problems(name, sweep.model.revision, f"{source}:{key}")
    return problems


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
                f"cannot reach the Hugging Face hub within {CONNECT_TIMEOUT_S} s ({_first_line(error)})",
                where,
                name,
                "check the network, or set HF_HUB_OFFLINE=1 with the model in the local cache",
            )
        ]
    return []


# --- the data --------------------------------------------------------------------------------------------------------


def data_problems(sweep: SweepConfig, sweep_dir: Path, configs: list[TrainConfig], source: str) -> list[Problem]:
    """Prepare the data (cached for the trials) and check it holds an optimizer step for every config, and a
    validation block."""
    import transformers

    from ftlab.data import prepare_data
    from ftlab.training.loop import NotEnoughDataError, plan_steps

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        sweep.model.tokenizer or sweep.model.name_or_path, revision=sweep.model.revision
    )
    try:
        data = prepare_data(sweep.data, tokenizer, base_dir=sweep_dir)
    except UserError as error:
        return [_located(problem, source) for problem in error.problems]
    largest = max(configs, key=lambda config: config.total_train_batch_size)
    try:
        plan_steps(largest, len(data.train))
    except NotEnoughDataError as error:
        return [Problem(str(error), f"{source}:data", fix="see the message")]
    return []


def _located(problem: Problem, source: str) -> Problem:
    where = problem.where or "data"
    return Problem(
        problem.message, where if where.startswith(source) else f"{source}:{where}", problem.value, problem.fix
    )


# --- the services ----------------------------------------------------------------------------------------------------


def storage_problems(url: str, where: str) -> list[Problem]:
    """Whether the Optuna storage at ``url`` can be opened now."""
    if (database := paths.sqlite_file(url)) is not None:
        return _writable_problems(database, where)
    if paths.journal_file(url) is not None or url.startswith("grpc://"):
        from ftlab.sweep.study import storage_problem  # Optuna's proxy client and journal: imported only here

        problem = storage_problem(url)
        fix = "start the proxy (docs/scale-out.md, section 9), or give a journal path every worker can write"
        return [] if problem is None else [Problem(problem, where, redact_url(url), fix)]
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool, connect_args=connect_args)
        with engine.connect():
            pass
    except (sqlalchemy.exc.ArgumentError, ImportError) as error:
        return [Problem(f"not a database URL ftlab can open ({_first_line(error)})", where, redact_url(url),
                        "use sqlite:///path.db or postgresql://user@host:5432/db")]  # fmt: skip
    except sqlalchemy.exc.DBAPIError as error:
        return [
            Problem(
                f"cannot connect to the study storage: {redact_url(_first_line(error))}",
                where,
                redact_url(url),
                "check host, port, database name and credentials; the database must exist and be reachable from "
                "this machine",
            )
        ]
    return []


def tracking_problems(uri: str, where: str) -> list[Problem]:
    """Whether the MLflow tracking store at ``uri`` answers now (a server's /health within seconds)."""
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT_S) as answer:
                if answer.status == 200:
                    return []
                reason = f"HTTP {answer.status} from /health"
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code} from /health: is this an MLflow tracking server?"
        except (urllib.error.URLError, OSError) as error:
            reason = f"no answer within {CONNECT_TIMEOUT_S} s ({getattr(error, 'reason', error)})"
        return [
            Problem(
                f"cannot reach the MLflow tracking server: {reason}",
                where,
                redact_url(uri),
                "start it (`mlflow server …`), check the address, or leave --tracking-uri unset for ./mlruns",
            )
        ]
    if (database := paths.sqlite_file(uri)) is not None:
        return _writable_problems(database, where)
    if uri.startswith(("postgresql", "mysql", "mssql")):
        return storage_problems(uri, where)
    return []


def _writable_problems(database: Path, where: str) -> list[Problem]:
    """A SQLite file can be written where its folder is, or can be made."""
    existing = database
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if os.access(existing, os.W_OK):  # the file itself, or the nearest folder the missing ones would be made in
        return []
    return [Problem("cannot write the database file here", where, str(database), "choose a writable folder")]


# --- all of it -------------------------------------------------------------------------------------------------------


def settings_problems(sweep: SweepConfig, sweep_dir: Path, source: str) -> tuple[list[TrainConfig], list[Problem]]:
    """The training settings every value of the search can produce, and what is wrong with any of them."""
    try:
        baseline = resolve_train_config(sweep, sweep_dir, source=source)
    except UserError as error:
        return [], error.problems
    return reachable_configs(sweep, baseline, sweep_dir, source)


def trial_problems(sweep: SweepConfig, sweep_dir: Path, source: str) -> list[Problem]:
    """Everything a trial needs that is not a service: settings, model and data. Imports transformers."""
    configs, problems = settings_problems(sweep, sweep_dir, source)
    problems += model_problems(sweep, source)
    if not problems:  # the data check loads the tokenizer and prepares the data: only once the rest is sound
        problems += data_problems(sweep, sweep_dir, configs, source)
    return problems


def service_problems(
    storage_url: str | None, tracking_uri: str, storage_where: str, tracking_where: str
) -> list[Problem]:
    """Whether the study storage (if any) and the tracking store answer."""
    problems = storage_problems(storage_url, storage_where) if storage_url is not None else []
    return problems + tracking_problems(tracking_uri, tracking_where)


def raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise UserError(problems)
