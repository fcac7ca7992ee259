"""Sampler seeds: a new study uses the file's seed; resumes and workers get distinct, reproducible ones."""

from __future__ import annotations

from ftlab.sweep.study import sampler_seed


def test_a_new_study_uses_the_file_s_seed_and_no_seed_stays_random() -> None:
    assert sampler_seed(7) == 7
    assert sampler_seed(None, 3, 5) is None


def test_resumes_and_workers_get_reproducible_seeds_that_do_not_collide() -> None:
    assert sampler_seed(0, 4) == sampler_seed(0, 4)  # a resume is reproducible
    # Two workers where one saw one trial more and drew a salt one less: a sum would give both the same seed.
    assert sampler_seed(0, 1, 5) != sampler_seed(0, 0, 6)
    seeds = {sampler_seed(0, existing, salt) for existing in range(20) for salt in range(20)}
    assert len(seeds) == 400
