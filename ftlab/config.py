"""The sweep file schema: typed, strict, with every default here and nowhere else.

A sweep file is YAML with these top-level keys: ``name``, ``model``, ``data``, ``baseline``, ``train``, ``search``,
``objective``, ``sampler``, ``pruner``, ``budget``, ``tracking``, ``storage``. Training keys use the names of
transformers' ``TrainingArguments`` so that users meet names they already know. Unknown keys are errors.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftlab.errors import MISSING, ConfigError, Problem
from ftlab.figures import FINAL_METRICS
from ftlab.paths import DATA_CACHE_DIR, TRIALS_DIR
from ftlab.yamlfile import load_yaml


class StrictModel(BaseModel):
    """Base for every config block: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """Which pretrained causal LM to fine-tune."""

    name_or_path: str
    """A Hugging Face hub id (``gpt2``), a local model directory, or ``demo://tiny-gpt2`` for the offline demo model."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load; pin it for reproducible sweeps."""
    tokenizer: str | None = None
    """Tokenizer to load if it is not stored with the model."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel passed to ``from_pretrained``."""


class DataConfig(StrictModel):
    """Where the text comes from and how it is cut into training blocks."""

    dataset: str | None = None
    """A dataset name on the Hugging Face hub (``wikitext``), loaded with ``datasets.load_dataset``."""
    dataset_config: str | None = None
    """The hub dataset's configuration (``wikitext-2-raw-v1``)."""
    train_files: list[str] | None = None
    """Local files (txt, json/jsonl, csv, parquet) to train on, or ``demo://pydoc-topics.txt``."""
    validation_files: list[str] | None = None
    """Local validation files; without them a deterministic split is cut from the training data."""
    text_column: str = "text"
    """Column holding the text (json, csv, parquet and hub datasets)."""
    block_size: int = Field(default=128, ge=2)
    """Tokens per packed training sequence."""
    validation_fraction: float = Field(default=0.05, gt=0, lt=1)
    """Share of the documents held out for validation when the data has no validation split."""
    split_seed: int = 0
    """Seed of the validation (and holdout) split, so that every trial sees the same one."""
    holdout_fraction: float = Field(default=0.0, ge=0, lt=1)
    """Share of the documents cut out as a holdout split that no sweep trial trains or is evaluated on; only
    ``ftlab confirm`` evaluates its runs' final models there, so that its verdict is free of the bias of choosing on
    the validation split. Cut by document with ``split_seed`` from the training documents, after the validation split
    (which is the same as without a holdout). 0 (the default): no holdout. Set it before the sweep runs: a change is a
    change of the data, which a started sweep refuses."""
    max_train_blocks: int | None = Field(default=None, ge=1)
    """Keep at most this many training blocks (for quick sweeps)."""
    max_eval_blocks: int | None = Field(default=None, ge=1)
    """Keep at most this many validation blocks (and as many holdout blocks)."""
    cache_dir: str = str(DATA_CACHE_DIR)
    """Where tokenized, packed splits are cached, keyed by a fingerprint of source, tokenizer and settings."""

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.train_files is None):
            raise ValueError("set exactly one of `data.dataset` (a hub dataset) or `data.train_files` (local files)")
        if self.validation_files is not None and self.train_files is None:
            raise ValueError("`data.validation_files` needs `data.train_files`")
        return self


SchedulerName = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
OptimizerName = Literal["adamw_torch", "adamw_torch_fused", "adamw_hf", "adam", "sgd", "adafactor"]


class TrainConfig(StrictModel):
    """Training settings, named exactly as in transformers' ``TrainingArguments``; defaults match it."""

    learning_rate: float = Field(default=5e-5, gt=0)
    per_device_train_batch_size: int = Field(default=8, ge=1)
    per_device_eval_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    num_train_epochs: float = Field(default=3.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)
    """Optimizer steps to run; overrides ``num_train_epochs`` when positive."""
    lr_scheduler_type: SchedulerName = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    optim: OptimizerName = "adamw_torch"
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_epsilon: float = Field(default=1e-8, gt=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    """Gradient clipping norm; 0 turns clipping off."""
    seed: int = 42
    bf16: bool | None = None
    """bf16 autocast; left unset it is on where the GPU supports bf16 and off on CPU."""
    eval_steps: int | None = Field(default=None, ge=1)
    """Evaluate every this many optimizer steps (and always at the end)."""
    eval_tokens: int | None = Field(default=None, ge=1)
    """ftlab's own: evaluate every this many training tokens instead, so that trials with different batch sizes are
    compared (and pruned) at the same fidelity points. Can't be combined with ``eval_steps``."""
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int | None = Field(default=None, ge=0)
    """Write a resumable checkpoint (model, optimizer, schedule, step) every this many optimizer steps; unset: at
    every evaluation; 0: never (SIGTERM still writes one). A retried trial resumes from its predecessor's last complete
    checkpoint."""
    use_cpu: bool = False
    """Train on the CPU even where a GPU is present."""
    nproc_per_node: int = Field(default=1, ge=1)
    """Processes per trial, as torchrun's ``--nproc-per-node``: one GPU each (gloo processes sharing the CPU without
    one). The effective batch is per_device_train_batch_size × gradient_accumulation_steps × nproc_per_node."""
    fsdp: Literal["", "full_shard"] = ""
    """As in TrainingArguments: ``full_shard`` shards weights, gradients and optimizer state over the trial's
    processes (FSDP2, for models that do not fit one device); empty: each process holds a replica (DDP)."""
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    """Compile each decoder block with torch.compile (seconds of warm-up; measure it with benchmarks/gpu_xl)."""
    output_dir: str = str(TRIALS_DIR)
    """Where trials keep checkpoints and their final model."""

    @model_validator(mode="after")
    def _warmup_once(self) -> TrainConfig:
        if self.warmup_ratio > 0 and self.warmup_steps > 0:
            raise ValueError("can't set both `warmup_ratio` and `warmup_steps`; choose one")
        if self.eval_steps is not None and self.eval_tokens is not None:
            raise ValueError("can't set both `eval_steps` and `eval_tokens`; choose one")
        if self.fsdp and self.nproc_per_node == 1:
            raise ValueError("`fsdp` shards over the trial's processes: set `nproc_per_node` to 2 or more")
        return self

    @property
    def total_train_batch_size(self) -> int:
        """Sequences per optimizer step over all of the trial's processes (micro-batch × accumulation × processes)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.nproc_per_node


TRAIN_KEYS: frozenset[str] = frozenset(TrainConfig.model_fields)
# Keys a search may open on top of the TrainingArguments names: the effective batch, split into
# micro-batch × accumulation by ftlab (see ftlab.sweep.space).
DERIVED_SEARCH_KEYS: frozenset[str] = frozenset({"total_train_batch_size"})


class FloatParam(StrictModel):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _a_range_optuna_can_sample(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step is not None)
        return self


class IntParam(StrictModel):
    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _a_range_optuna_can_sample(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step != 1)
        return self


def _check_range(low: float, high: float, log: bool, stepped: bool) -> None:
    """What Optuna would refuse only once a trial asks for a value: say it when the file is read."""
    if not low < high:
        raise ValueError(f"`low` ({low}) must be below `high` ({high})")
    if log and low <= 0:
        raise ValueError(f"a log range needs `low` above 0, got {low}; use `log: false` or a positive `low`")
    if log and stepped:
        raise ValueError("a range can be `log: true` or have a `step`, not both")


class CategoricalParam(StrictModel):
    type: Literal["categorical"] = "categorical"
    choices: list[Any] = Field(min_length=1)


class FactorParam(StrictModel):
    """A log range given as multiples of the baseline's value: ``{factor: [0.5, 200]}``."""

    type: Literal["factor"] = "factor"
    factor: tuple[float, float]

    @field_validator("factor")
    @classmethod
    def _positive_increasing(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low < high:
            raise ValueError("factor must be [low, high] with 0 < low < high")
        return value


def _infer_param_type(spec: Any) -> Any:
    """Let users omit ``type`` where the other keys say it: ``choices`` → categorical, ``factor`` → factor."""
    if isinstance(spec, dict) and "type" not in spec:
        if "choices" in spec:
            return {**spec, "type": "categorical"}
        if "factor" in spec:
            return {**spec, "type": "factor"}
    return spec


ParamSpec = Annotated[
    FloatParam | IntParam | CategoricalParam | FactorParam,
    Field(discriminator="type"),
    BeforeValidator(_infer_param_type),
]


class ObjectiveConfig(StrictModel):
    metric: str = "eval/loss"
    """A final metric of a trial, by the name in :data:`ftlab.figures.FINAL_METRICS`."""
    direction: Literal["minimize", "maximize"] = "minimize"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in FINAL_METRICS:
            close = difflib.get_close_matches(value, list(FINAL_METRICS), n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"use one of: {', '.join(FINAL_METRICS)}"
            raise ValueError(f"`{value}` is not a final metric ftlab records; {hint}")
        return value


class SamplerConfig(StrictModel):
    name: Literal["tpe", "random", "grid", "cmaes", "qmc", "gp"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = Field(default=None, ge=0)
    """Random trials before the model-based samplers (tpe, gp) take over; Optuna's default when unset."""


class PrunerConfig(StrictModel):
    name: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    n_startup_trials: int = Field(default=2, ge=0)
    """median: trials that run to the end before any is pruned."""
    n_warmup_tokens: int = Field(default=0, ge=0)
    """median: tokens a trial may see before it can be pruned."""
    min_resource_tokens: int | str = "auto"
    """successive_halving / hyperband: the smallest budget in tokens seen; auto: ``eval_tokens`` (the first fidelity
    point) where ``train`` sets it, else Optuna's own estimate."""
    reduction_factor: int = Field(default=3, ge=2)


class BudgetConfig(StrictModel):
    n_trials: int | None = Field(default=None, ge=1)
    """COMPLETE trials to reach across all workers (the baseline trial included)."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds after which no new trial starts."""
    max_trials: int | None = Field(default=None, ge=1)
    """Trials to start at most, whatever their outcome: a safety net for searches where most trials are pruned."""
    max_failures_in_a_row: int = Field(default=3, ge=1)
    """The sweep stops when this many trials in a row fail with errors of their own (a failing baseline trial stops
    it at once): the same error again and again would burn machines for nothing. A lost worker or a preempted trial
    does not count."""


def check_budget_options(n_trials: int | None, timeout: float | None) -> None:
    """``--n-trials`` and ``--timeout`` under the rules of ``budget.n_trials`` and ``budget.timeout`` in a file.

    Raises:
        ConfigError: a value the file's budget block would refuse, named by its option.
    """
    try:
        BudgetConfig(n_trials=n_trials, timeout=timeout)
    except ValidationError as error:
        raise ConfigError(
            [
                Problem(
                    item["msg"],
                    f"--{str(item['loc'][0]).replace('_', '-')}",
                    value=item.get("input"),
                    fix="leave it out to use the sweep file's budget, or pass a number above 0",
                )
                for item in error.errors()
            ]
        ) from None


class TrackingConfig(StrictModel):
    uri: str | None = None
    """MLflow tracking URI; unset means ``MLFLOW_TRACKING_URI`` or, failing that, ``./mlruns``."""
    experiment: str | None = None
    """MLflow experiment; defaults to the sweep's name."""
    artifacts: Literal["best", "all", "none"] = "best"
    """Which models reach MLflow: each finished trial's final model (best), every checkpoint too (all), or none."""


# A trial is failed once its heartbeat is this many intervals late at the least: a worker busy for a moment (a
# checkpoint, a slow storage write) must not have its live trials failed and retried under it.
MIN_HEARTBEATS_PER_GRACE = 3


class StorageConfig(StrictModel):
    url: str | None = None
    """Optuna storage URL; unset means SQLite under ``./mlruns``."""
    heartbeat_interval: int = Field(default=10, ge=1)
    """Seconds between a running trial's heartbeats."""
    grace_period: int = Field(default=60, ge=2)
    """Seconds without a heartbeat after which any worker marks a trial failed and retries it once; at least
    ``MIN_HEARTBEATS_PER_GRACE`` (3) heartbeat intervals."""


class SweepConfig(StrictModel):
    """A whole sweep file. ``ftlab train`` uses its model, data and baseline; ``ftlab sweep`` uses all of it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelConfig
    data: DataConfig
    baseline: str | dict[str, Any] | None = None
    """A built-in baseline name, a path to a Trainer model card, or inline TrainingArguments settings."""
    train: dict[str, Any] = Field(default_factory=dict)
    """Fixed TrainingArguments settings; they override the baseline's."""
    search: dict[str, ParamSpec] = Field(default_factory=dict)
    objective: ObjectiveConfig | list[ObjectiveConfig] | str = Field(default_factory=lambda: [ObjectiveConfig()])
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("objective", mode="after")
    @classmethod
    def _objective_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [ObjectiveConfig(metric=value)]
        if isinstance(value, ObjectiveConfig):
            return [value]
        return value

    @property
    def objectives(self) -> list[ObjectiveConfig]:
        assert isinstance(self.objective, list)
        return self.objective


def _known_key_check(keys: dict[str, Any], allowed: frozenset[str], where: str) -> list[Problem]:
    problems = []
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"use one of: {', '.join(sorted(allowed))}"
            problems.append(
                Problem(f"`{key}` is not a TrainingArguments setting ftlab knows", f"{where}.{key}", fix=hint)
            )
    return problems


def _cross_checks(config: SweepConfig, source: str) -> list[Problem]:
    """Checks that involve several blocks, reported together with the schema's own."""
    problems = _known_key_check(config.train, TRAIN_KEYS, f"{source}:train")
    problems += _known_key_check(config.search, TRAIN_KEYS | DERIVED_SEARCH_KEYS, f"{source}:search")
    if isinstance(config.baseline, dict):
        problems += _known_key_check(config.baseline, TRAIN_KEYS, f"{source}:baseline")
    for key in config.train:
        if key in config.search:
            problems.append(
                Problem(
                    f"`{key}` is both fixed in `train` and searched in `search`",
                    f"{source}:train.{key}",
                    fix="remove it from one of the two blocks",
                )
            )
    batch_keys = {"per_device_train_batch_size", "gradient_accumulation_steps"} & set(config.search)
    if "total_train_batch_size" in config.search and batch_keys:
        problems.append(
            Problem(
                "search either the effective batch (`total_train_batch_size`) or its parts, not both",
                f"{source}:search",
                fix=f"remove `total_train_batch_size` or {', '.join(sorted(batch_keys))}",
            )
        )
    # A grace period of fewer than a few heartbeats fails live trials (and then cannot record their result).
    storage = config.storage
    if storage.grace_period < MIN_HEARTBEATS_PER_GRACE * storage.heartbeat_interval:
        problems.append(
            Problem(
                f"`storage.grace_period` ({storage.grace_period} s) must be at least {MIN_HEARTBEATS_PER_GRACE} "
                f"heartbeat intervals (`storage.heartbeat_interval` = {storage.heartbeat_interval} s): a shorter one "
                "fails trials that are still running",
                f"{source}:storage.grace_period",
                value=storage.grace_period,
                fix=f"set `grace_period` to {MIN_HEARTBEATS_PER_GRACE * storage.heartbeat_interval} or more, or "
                "lower `heartbeat_interval`",
            )
        )
    if len(config.objectives) > 1 and config.pruner.name != "none":
        problems.append(
            Problem(
                "Optuna cannot prune multi-objective studies",
                f"{source}:pruner.name",
                value=config.pruner.name,
                fix="set `pruner: {name: none}` or use a single objective",
            )
        )
    if config.sampler.name == "grid" and any(not isinstance(spec, CategoricalParam) for spec in config.search.values()):
        problems.append(
            Problem(
                "the grid sampler needs every searched key as `choices`",
                f"{source}:search",
                fix="give each key a `choices:` list or use another sampler",
            )
        )
    return problems


def _format_validation_error(error: ValidationError, source: str) -> list[Problem]:
    problems = []
    for item in error.errors():
        # Discriminated unions put the tag in the location ("search.lr.float.low"); drop it for the user.
        loc = [str(part) for part in item["loc"] if part not in {"float", "int", "categorical", "factor"}]
        key = ".".join(loc)
        message = item["msg"].removeprefix("Value error, ")
        fix = None
        if item["type"] == "extra_forbidden":
            message = f"unknown key `{loc[-1]}`"
            fix = (
                "remove it or check its spelling against `ftlab validate --help` and the README's sweep file reference"
            )
        elif item["type"] == "missing":
            message = "required key is missing"
            fix = f"add `{key}` to the file"
        where = f"{source}:{key}" if key else source
        value = item.get("input") if item["type"] != "missing" else MISSING
        problems.append(Problem(message, where, value=value, fix=fix))
    return problems


def parse_sweep(data: Any, source: str = "<sweep>") -> SweepConfig:
    """Validate a parsed sweep mapping, reporting every problem at once as a :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError.single(
            "a sweep file must be a YAML mapping of keys",
            where=source,
            value=type(data).__name__,
            fix="start from sweeps/demo.yaml",
        )
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None
    problems = _cross_checks(config, source)
    if problems:
        raise ConfigError(problems)
    return config


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file. ``demo://`` names stay as written: commands that train or read the model and
    data resolve them with :func:`ftlab.demo.load_sweep_with_assets`.

    Raises:
        ConfigError: the file is missing, is not YAML, gives a key twice, or does not match the schema (all problems
            listed).
    """
    path = Path(path)
    if not path.is_file():
        from ftlab.filekind import not_a_file_message

        raise ConfigError.single(not_a_file_message(path, "sweep file"), where=str(path), fix="name a YAML sweep file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError.single(f"not valid YAML: {error}", where=str(path), fix="fix the YAML syntax") from None
    data = load_yaml(text, str(path))
    return parse_sweep(data, str(path))
