"""Errors that are the user's to fix.

Every user-facing error says where (file and key), what is wrong, the value received and how to fix it.
The CLI turns any :class:`UserError` into a message on stderr and exit code 2, without a traceback.
Anything else is a bug in ftlab and keeps its traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MISSING: Any = object()  # "no value to show", distinct from a value of None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input."""

    message: str
    where: str | None = None  # a file, optionally with ":key.path"
    value: Any = MISSING
    fix: str | None = None

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.value is not MISSING:
            text += f"; got {self.value!r}"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


@dataclass
class UserError(Exception):
    """One or more problems with the user's input; never a bug in ftlab."""

    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def single(
        cls, message: str, *, where: str | None = None, value: Any = MISSING, fix: str | None = None
    ) -> UserError:
        return cls([Problem(message=message, where=where, value=value, fix=fix)])

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        lines = [f"{len(self.problems)} problems:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


class ConfigError(UserError):
    """A sweep or trial file that does not match the schema."""


class CardError(UserError):
    """A file that is not a model card written by transformers' Trainer."""


class DataError(UserError):
    """Training data that cannot be used: missing, empty, undecodable or too short."""


def redact_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host/...`` URLs, for anything a person or a log will read."""
    return re.sub(r"(?<=://)([^:/@]+):[^@/]*@", r"\1:***@", url)


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (of the driver's own error where SQLAlchemy wrapped one), else its type."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
