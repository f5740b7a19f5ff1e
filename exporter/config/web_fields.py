"""The vocabulary of web-config validation: its error, and typed accessors over parsed YAML.

Shared by the modules that validate the file's sections (``webconfig`` for the file and its
``http_server_config``, ``web_tls`` for ``tls_server_config``, ``basic_auth`` for
``basic_auth_users``), so that every section reports a problem the same way: one line naming
the dotted key and what was expected."""

from __future__ import annotations

from collections.abc import Mapping


class WebConfigError(ValueError):
    """An invalid or unreadable web-config file.

    The message names the offending key (as a dotted path such as
    ``tls_server_config.min_version``) and what was expected. It never contains a password, a
    bcrypt hash or a private key, so it is safe to log and to print on start-up.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        shown = key if key is None or key.isprintable() else ascii(key)
        # Keys come from the file: one with a line break must not split the one-line error.
        super().__init__(f"{shown}: {message}" if shown else message)
        self.key = key


# Known to (newer) exporter-toolkit but not implemented: rejected with a specific message.
_UNSUPPORTED_KEYS = {
    "rate_limit": "request rate limiting is not implemented by tw-exporter",
    "tls_server_config.client_allowed_sans": (
        "client certificate SAN allow-lists are not implemented by tw-exporter; "
        "restrict clients with a dedicated client CA instead"
    ),
}


def join_key(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def mapping(value: object, key: str) -> dict[str, object]:
    """A YAML mapping with string keys; ``null`` counts as empty, like a missing section."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"expected a mapping, got {kind(value)}", key)
    for k in value:
        if not isinstance(k, str):
            raise WebConfigError(
                f"keys must be strings, got {kind(k)} {k!r} (quote it in YAML)", key
            )
    return value


def check_keys(section: Mapping[str, object], allowed: tuple[str, ...], parent: str) -> None:
    for k in section:
        path = join_key(parent, k)
        if path in _UNSUPPORTED_KEYS:
            raise WebConfigError(_UNSUPPORTED_KEYS[path], path)
        if k not in allowed:
            raise WebConfigError(f"unknown key (expected one of: {', '.join(allowed)})", path)


def string(section: Mapping[str, object], name: str, parent: str) -> str | None:
    """An optional string; empty strings count as unset, as in exporter-toolkit."""
    value = section.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"expected a string, got {kind(value)}", join_key(parent, name))
    return value


def boolean(section: Mapping[str, object], name: str, parent: str, default: bool) -> bool:
    value = section.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise WebConfigError(f"expected true or false, got {kind(value)}", join_key(parent, name))
    return value


def string_list(section: Mapping[str, object], name: str, parent: str) -> list[str]:
    value = section.get(name)
    key = join_key(parent, name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WebConfigError(f"expected a list of strings, got {kind(value)}", key)
    for item in value:
        if not isinstance(item, str):
            raise WebConfigError(f"expected a list of strings, found {kind(item)}", key)
    return value


def choice(value: str, choices: Mapping[str, object], key: str) -> None:
    if value not in choices:
        raise WebConfigError(
            f"unknown value {value!r} (expected one of: {', '.join(choices)})", key
        )


def kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)
