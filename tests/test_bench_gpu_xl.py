"""The GPU benchmark end to end (both phases, the JSON line, the result files) at tiny size on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_run_prints_one_json_line_and_writes_it(tmp_path: Path) -> None:
    output = tmp_path / "results" / "gpu_xl_tiny.json"
    out_dir = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(out_dir)}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_xl", "--tiny", "--steps", "10", "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON line, got: {completed.stdout[-2000:]}"
    result = json.loads(lines[0])
    ftlab, trainer = result["phases"]["ftlab"], result["phases"]["trainer"]
    assert "error" not in ftlab and "error" not in trainer, result["phases"]
    assert ftlab["tokens_per_s"] > 0 and trainer["tokens_per_s"] > 0
    assert ftlab["measured_steps"] == trainer["measured_steps"] == 10
    assert result["ratio_tokens_per_s"] == pytest.approx(ftlab["tokens_per_s"] / trainer["tokens_per_s"])
    assert set(result["targets"]) == {"ftlab.mfu", "ftlab.ratio_tokens_per_s", "ftlab.peak_mem_gb"}
    if result["device"] == "cpu":
        assert ftlab["mfu"] is None and result["targets"]["ftlab.mfu"]["met"] is None

    assert json.loads(output.read_text(encoding="utf-8")) == result
    assert json.loads((out_dir / output.name).read_text(encoding="utf-8")) == result
