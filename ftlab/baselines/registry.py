"""Named baselines that ship with ftlab, and the one entry point that turns a sweep's ``baseline:`` into a card.

A built-in baseline is a Trainer model card stored as package data in ``ftlab/baselines/cards/<name>.md``;
adding one is adding a file there. The list is read from that folder, so it cannot drift from what ships.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from ftlab.baselines.card import CardBaseline, load_card, parse_card
from ftlab.errors import CardError

BUILTIN_PREFIX = "builtin:"


def _cards() -> Traversable:
    return resources.files("ftlab.baselines").joinpath("cards")


def builtin_baselines() -> list[str]:
    """The names of the baselines that ship with ftlab, sorted."""
    return sorted(entry.name.removesuffix(".md") for entry in _cards().iterdir() if entry.name.endswith(".md"))


def load_builtin(name: str) -> CardBaseline:
    """Parse a built-in baseline's card; ``name`` may carry the ``builtin:`` prefix that its ``source`` shows.

    Raises:
        CardError: no built-in baseline has that name (the message lists the known ones).
    """
    bare = name.removeprefix(BUILTIN_PREFIX)
    known = builtin_baselines()
    if bare not in known:
        raise CardError.single(
            "unknown built-in baseline",
            where="baseline",
            value=name,
            fix=f"use one of: {', '.join(known)}; or give a path to a Trainer model card",
        )
    text = _cards().joinpath(f"{bare}.md").read_text(encoding="utf-8")
    return parse_card(text, f"{BUILTIN_PREFIX}{bare}")


def resolve_baseline(spec: str, relative_to: Path | None = None) -> CardBaseline:
    """Turn a sweep's ``baseline:`` string into a parsed card.

    Args:
        spec: a built-in name (``gpt2-xl_ft_logits_25k``, optionally ``builtin:``-prefixed) or a path to a model card
            (or to a model folder holding its README.md). Built-in names win over same-named files.
        relative_to: the folder that relative paths are resolved against, normally the sweep file's folder, so
            that a sweep works whatever folder it is run from. ``None`` means the current folder.

    Raises:
        CardError: the name is neither a built-in nor an existing file, or the file is not a Trainer card.
    """
    if spec.startswith(BUILTIN_PREFIX) or spec in builtin_baselines():
        return load_builtin(spec)
    path = Path(spec).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = Path(relative_to) / path
    if not path.exists() and len(Path(spec).parts) == 1 and not Path(spec).suffix:
        # A bare word that is no file was most likely meant as a built-in name.
        raise CardError.single(
            "neither a built-in baseline nor a model card file",
            where="baseline",
            value=spec,
            fix=f"use one of: {', '.join(builtin_baselines())}; or give a path to a model card",
        )
    return load_card(path)
