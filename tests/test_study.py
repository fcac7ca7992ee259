"""The study from the sweep file: sampler seeds (a new study uses the file's, resumes and workers get distinct,
reproducible ones) and Optuna's pruners with their resources in tokens."""

from __future__ import annotations

import threading

import optuna

from ftlab.config import parse_sweep
from ftlab.sweep.study import build_pruner, build_sampler, sampler_seed
from tests.helpers import SMALL_SWEEP


def test_a_new_study_uses_the_file_s_seed_and_no_seed_stays_random() -> None:
    assert sampler_seed(7) == 7
    assert sampler_seed(None, 3, 5) is None


def test_resumes_and_workers_get_reproducible_seeds_that_do_not_collide() -> None:
    assert sampler_seed(0, 4) == sampler_seed(0, 4)  # a resume is reproducible
    # Two workers where one saw one trial more and drew a salt one less: a sum would give both the same seed.
    assert sampler_seed(0, 1, 5) != sampler_seed(0, 0, 6)
    seeds = {sampler_seed(0, existing, salt) for existing in range(20) for salt in range(20)}
    assert len(seeds) == 400


def _sweep(pruner: dict, train: dict | None = None):
    return parse_sweep({**SMALL_SWEEP, "pruner": pruner, "train": train or SMALL_SWEEP["train"]})


def test_pruners_are_optuna_s_own_built_from_the_file() -> None:
    assert isinstance(build_pruner(_sweep({"name": "none"})), optuna.pruners.NopPruner)
    median = build_pruner(_sweep({"name": "median", "n_startup_trials": 3, "n_warmup_tokens": 5000}))
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 5000)


def test_successive_halving_starts_at_the_first_fidelity_point_in_tokens() -> None:
    halving = build_pruner(_sweep({"name": "successive_halving", "reduction_factor": 4}))
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    assert halving._min_resource == SMALL_SWEEP["train"]["eval_tokens"]
    assert halving._reduction_factor == 4
    # Without eval_tokens there is no first fidelity point to start at: Optuna's own estimate decides.
    by_steps = build_pruner(_sweep({"name": "hyperband"}, {"num_train_epochs": 1, "eval_steps": 10}))
    assert isinstance(by_steps, optuna.pruners.HyperbandPruner)
    assert by_steps._min_resource == "auto"
    explicit = build_pruner(_sweep({"name": "hyperband", "min_resource_tokens": 1000}))
    assert explicit._min_resource == 1000


def test_parallel_tpe_workers_do_not_propose_the_same_point_at_once() -> None:
    """Four workers each ask for a trial while the others' trials run: with TPE's constant liar each sees the running
    trials (as bad ones) and proposes a point of its own; without it, all four read the same finished trials and
    several propose the same point. Sampling is serialised, as ``ask`` is under ftlab's study lock, so that the
    outcome depends on the seed only."""
    sweep = parse_sweep({**SMALL_SWEEP, "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 8}})
    study = optuna.create_study(sampler=build_sampler(sweep.sampler, sweep))

    def sample(trial: optuna.Trial) -> dict[str, int]:
        return {"a": trial.suggest_int("a", 0, 19), "b": trial.suggest_int("b", 0, 19)}

    def loss(params: dict[str, int]) -> float:
        return (params["a"] - 3) ** 2 + (params["b"] - 2) ** 2

    for _ in range(8):  # the random start-up trials, finished
        trial = study.ask()
        study.tell(trial, loss(sample(trial)))
    lock = threading.Lock()

    def worker(running: list[optuna.Trial]) -> None:
        with lock:
            trial = study.ask()
            sample(trial)
            running.append(trial)

    for _ in range(3):  # three rounds of four trials running at once
        running: list[optuna.Trial] = []
        threads = [threading.Thread(target=worker, args=(running,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        points = [(trial.params["a"], trial.params["b"]) for trial in running]
        assert len(set(points)) == 4, f"workers running at once proposed the same point: {points}"
        for trial in running:
            study.tell(trial, loss(trial.params))
