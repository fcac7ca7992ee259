"""YAML as users write it: ``1e-4`` is a number and a key given twice is an error.

PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-4``): ``1e-4`` is read as the string "1e-4", which passed
validation inside ``choices: [1e-4, 3e-4]`` and failed in the sweep. And YAML keeps the last of two equal keys without
a word, so a setting edited in one place and repeated further down silently lost. :class:`SweepLoader` reads numbers
as YAML 1.2 does and refuses duplicate keys, at any depth.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

from ftlab.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.2's float: an exponent without a dot counts (1e-4, 5E3), a dot without digits after it too (1.).
_FLOAT_1_2 = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)$")


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives the same key twice."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r} on line {line} (first on line {first_line})")
        self.key, self.line, self.first_line = key, line, first_line


class SweepLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 numbers (``1e-4`` is a float) that refuses duplicate mapping keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue  # `<<: *defaults` merges are meant to be overridden; complex keys are left to PyYAML
            key = self.construct_object(key_node, deep=False)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


# PyYAML copies the resolver table for the subclass: its own SafeLoader stays as it is.
SweepLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (the contents of ``source``) with :class:`SweepLoader`.

    Raises:
        ConfigError: not valid YAML, or a key given twice in one mapping (with its line).
    """
    try:
        return yaml.load(text, Loader=SweepLoader)
    except DuplicateKeyError as error:
        raise ConfigError.single(
            f"the key `{error.key}` is given twice in one mapping, on line {error.first_line} and on line "
            f"{error.line}; YAML would silently keep only the last",
            where=source,
            fix=f"keep one `{error.key}:` (merge the two)",
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError.single(f"not valid YAML: {error}", where=source, fix="fix the YAML syntax") from None
