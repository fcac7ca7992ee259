"""Which folder ``ftlab best --export DIR`` may write, and which it may replace.

Replacing a folder deletes what was in it, so ``--force`` replaces only a folder ftlab itself exported before (its
``ftlab.json`` provenance file says so, and an export holds files only), and never a folder that holds (or is) the
study storage, the MLflow store or its artifacts, the sweep file, or the current folder: `--export mlruns --force`
or `--export . --force` would otherwise delete the results the export is made from.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftlab.errors import UserError
from ftlab.folders import unwritable_reason
from ftlab.storage import storage_files
from ftlab.tracking import tracking_store_files

PROVENANCE_FILE = "ftlab.json"
# Keys every export's provenance file has had: enough to tell it from another tool's ftlab.json.
_PROVENANCE_KEYS = frozenset({"study", "trial", "weights_from"})


class ExportRefusedError(UserError):
    """The export would not be trustworthy (weights that do not reproduce the recorded metric), or would overwrite a
    folder that is not an earlier export."""


def is_ftlab_export(folder: Path) -> bool:
    """Whether ``folder`` is a model folder that ``ftlab best --export`` wrote."""
    try:
        provenance = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
        children = list(folder.iterdir())
    except (OSError, ValueError):
        return False
    flat = all(not child.is_dir() or child.is_symlink() for child in children)
    return isinstance(provenance, dict) and provenance.keys() >= _PROVENANCE_KEYS and flat


def local_store_paths(url: str) -> list[Path]:
    """The files and folders on this machine behind a storage or tracking URL (none for a server)."""
    found = storage_files(url)
    return found + [path for path in tracking_store_files(url) if path not in found]


def check_export_target(out_dir: Path, force: bool, protected: dict[str, Path]) -> None:
    """Refuse an export target that is a file, holds what must survive, or is a non-empty folder ftlab did not write.

    ``protected`` names what must survive (e.g. ``{"the sweep file": Path("sweep.yaml")}``).

    Raises:
        ExportRefusedError: the target is refused; the message says why and what to do instead.
    """
    where = f"--export {out_dir}"
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportRefusedError.single("the export target is a file", where=where, fix="choose a folder path")
    if (reason := unwritable_reason(out_dir)) is not None:  # said before the weights are fetched or re-trained
        raise ExportRefusedError.single(reason, where=where, fix="choose a folder you can write in")
    target = out_dir.resolve()
    for what, path in protected.items():
        kept = path.expanduser().resolve()
        if kept == target or target in kept.parents:
            raise ExportRefusedError.single(
                f"the export folder holds {what} ({kept}); exporting there would delete it",
                where=where,
                fix="choose a new folder for the export, e.g. --export exported-model",
            )
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not is_ftlab_export(out_dir):
        raise ExportRefusedError.single(
            f"the export folder is not empty and is not an earlier ftlab export (no {PROVENANCE_FILE} from "
            "`ftlab best --export`, or it holds folders); ftlab does not replace folders it did not write",
            where=where,
            fix="choose an empty or new folder",
        )
    if not force:
        raise ExportRefusedError.single(
            "the export folder holds an earlier export",
            where=where,
            fix="pass --force to replace it, or choose an empty or new folder",
        )
