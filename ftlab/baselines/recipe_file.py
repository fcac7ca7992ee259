"""``ftlab baseline from-card -o FILE``: the recipe read from a card, as YAML for a sweep's ``baseline:``.

The file is written whole or not at all, and only where nothing else is lost: a new path, or a file that this
command wrote before (its first line says so). Any other file, the card itself included, is refused. Missing parent
folders are created, as ``mkdir -p`` would; a path under a file or in a folder that cannot be written is refused.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ftlab.baselines.card import CardBaseline
from ftlab.errors import UserError
from ftlab.fileio import atomic_write_text
from ftlab.folders import naming_write_errors, unwritable_reason

HEADER_START = "# Baseline recipe read from "
_HEADER_END = " by `ftlab baseline from-card`."


def _written_by_from_card(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as file:
            first = file.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith(HEADER_START) and first.rstrip("\n").endswith(_HEADER_END)


def check_output(output: Path, card: Path) -> None:
    """Refuse an ``output`` that would lose something.

    Raises:
        UserError: ``output`` is a folder, the card itself, a file this command did not write, or a path under a file
            or in a folder that cannot be written.
    """
    where = f"--output {output}"
    if output.is_dir():
        raise UserError.single("is a folder", where=where, fix="give a file name, e.g. -o baseline.yaml")
    if output.exists() and (output.resolve() == card.resolve() or not _written_by_from_card(output)):
        raise UserError.single(
            "the file exists and was not written by `ftlab baseline from-card`; it is not overwritten",
            where=where,
            fix="choose a new file name, or remove the file yourself first",
        )
    if (reason := unwritable_reason(output)) is not None:
        raise UserError.single(reason, where=where, fix="choose a path in a folder you can write in")


def write_recipe(output: Path, card: Path, baseline: CardBaseline) -> None:
    """Write ``baseline``'s training settings to ``output`` as commented YAML (see :func:`check_output`)."""
    check_output(output, card)
    header = [f"{HEADER_START}{card}{_HEADER_END}"]
    header += [f"# warning: {warning}" for warning in baseline.warnings]
    with naming_write_errors(f"--output {output}", "choose a path in a folder you can write in"):
        atomic_write_text(
            output, "\n".join(header) + "\n" + yaml.safe_dump(baseline.training_settings(), sort_keys=False)
        )
