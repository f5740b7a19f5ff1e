"""Strict YAML for the configuration files the operator writes (web config, queries file).

Go exporters read their YAML with ``yaml.UnmarshalStrict``; this loader refuses duplicate keys
the same way, and its errors name a position but never quote the offending line, which may hold
a secret."""

from __future__ import annotations

from typing import Any

import yaml


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, like Go's yaml.UnmarshalStrict.

    PyYAML silently keeps the last duplicate, which would let a second ``admin:`` entry
    override the first one unnoticed.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> object:
    """A configuration file's YAML, duplicate keys refused; ValueError with one safe line.

    Only the problem and its position are kept: PyYAML's full message quotes the offending
    line, which may hold a password hash, an inline private key or a DSN.
    """
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
        raise ValueError(f"invalid YAML{where}: {exc.problem or 'syntax error'}") from None
    except yaml.YAMLError:
        raise ValueError("invalid YAML") from None
