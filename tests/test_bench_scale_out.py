"""benchmarks/scale_out.py at its smallest: 1 and 2 workers × 2 trials on PostgreSQL and an MLflow server, and a
SIGKILL chaos case; every check must hold and every figure must be there."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.services import POSTGRES_SERVER_URL, postgres_database
from tests.test_benchmarks_cpu import run_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.services]


def test_scale_out_smoke_run_checks_and_measures(tmp_path: Path) -> None:
    with postgres_database("ftlab_probe"):  # skips, with the reason, when PostgreSQL is not reachable
        pass
    output = tmp_path / "scale_out.json"
    result = run_benchmark(
        "scale_out", "--workers", "1,2", "--trials", "3", "--chaos", "sigkill", "--postgres", POSTGRES_SERVER_URL,
        "--output", str(output), timeout=900,
    )  # fmt: skip

    assert output.exists()
    assert result["all_checks_hold"], [case["failed_checks"] for case in result["cases"]]
    labels = [case["case"]["label"] for case in result["cases"]]
    assert labels == ["postgresql-w1-t3-none", "postgresql-w2-t3-none", "postgresql-w2-t3-sigkill"]
    for case in result["cases"]:
        assert case["trial_states"]["COMPLETE"] == 3
        assert case["trials_measured"] >= 1 and case["coordination_s"]["mean"] > 0
        assert case["peak_connections"]["study"] >= 1 and case["connection_samples"] > 0
        assert {"next_trial", "tell", "mlflow_create_run", "t_mlflow_end"} <= set(case["per_op_mean_s"])
    assert result["vs_w1"]["postgresql-w1-t3-none"]["coordination_ratio_vs_w1"] == 1.0
