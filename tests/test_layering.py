"""The package's dependencies point one way and form no cycle (the contracts in .importlinter, checked by
import-linter), and every top-level module has a place in the layers, so a new one cannot slip past them."""

from __future__ import annotations

import configparser
import pkgutil
import subprocess
import sys
from pathlib import Path

import ftlab

ROOT = Path(__file__).resolve().parents[1]


def test_dependencies_point_one_way_and_form_no_cycle() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_every_top_level_module_has_a_layer() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"]
    layered = {name.strip() for line in layers.splitlines() for name in line.split("|") if name.strip()}
    modules = {f"ftlab.{module.name}" for module in pkgutil.iter_modules(ftlab.__path__)} - {"ftlab.__main__"}
    assert modules - layered == set(), "give these modules a layer in .importlinter"
