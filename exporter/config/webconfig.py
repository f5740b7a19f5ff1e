"""The Prometheus exporter-toolkit web-config file (``--web-config-file``), for tw-exporter.

Operators of node_exporter, postgres_exporter & co. already describe TLS and basic auth in one
YAML file (the exporter-toolkit "web configuration", checked by ``promtool check web-config``).
This module accepts the same file so that tw-exporter can be deployed with the same file, the
same secrets and the same tooling. It reads and validates the file (:func:`load_web_config`)
into a :class:`WebConfig`; each section's own job lives beside it: ``web_tls`` validates
``tls_server_config``, builds the server's :class:`ssl.SSLContext` and re-reads rotated
certificates; ``basic_auth`` validates ``basic_auth_users`` and checks logins against their
bcrypt hashes; ``web_fields`` holds the error and the typed accessors they share. None of them
serves HTTP.

Compatibility with exporter-toolkit
-----------------------------------
* Keys are the exporter-toolkit ones; unknown keys and duplicate keys are errors, as with Go's
  ``yaml.UnmarshalStrict``. ``rate_limit`` and ``client_allowed_sans`` exist in newer
  exporter-toolkit releases but are *rejected* here rather than silently ignored: ignoring an
  allow-list would quietly weaken security.
* Relative ``cert_file``, ``key_file`` and ``client_ca_file`` are resolved against the directory
  of the web-config file, as exporter-toolkit does.
* Inline PEM ``cert``, ``key`` and ``client_ca`` (newer exporter-toolkit) are supported; giving
  both ``cert`` and ``cert_file`` (or ``key``/``key_file``, ``client_ca``/``client_ca_file``) is
  an error rather than exporter-toolkit's silent preference for the file.
* Stricter than exporter-toolkit, on purpose (each a silent misconfiguration in Go):
  a non-empty ``tls_server_config`` without a certificate or key is an error (Go falls back to
  plain HTTP); verifying client-auth types need ``client_ca_file``/``client_ca`` (Go would use
  the system roots); ``min_version`` above ``max_version`` is an error (Go fails every
  handshake); user names containing ``:`` are an error (they can never log in); bcrypt hashes
  are checked fully (Go only checks the prefix, length and cost); header values must be ASCII.
* ``http_server_config.http2`` is accepted (``WebConfig.http2``) but tw-exporter speaks HTTP/1.1
  only; the TLS context advertises ``http/1.1`` through ALPN.
* ``headers`` accepts the exporter-toolkit list only: Content-Security-Policy, X-Frame-Options
  (``deny``/``sameorigin``), X-Content-Type-Options (``nosniff``), X-XSS-Protection and
  Strict-Transport-Security. A blank value means "not set", as documented upstream.

* ``client_auth_type`` and the limits of Python's :mod:`ssl`: see ``exporter.config.web_tls``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from exporter.config.basic_auth import parse_users
from exporter.config.strict_yaml import load_yaml
from exporter.config.web_fields import WebConfigError, boolean, check_keys, kind, mapping
from exporter.config.web_tls import TLSConfig, parse_tls

__all__ = ["WebConfig", "load_web_config"]

# --- vocabulary, taken from exporter-toolkit's web/handler.go ----------------------------------

_TOP_LEVEL_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_HTTP_KEYS = ("http2", "headers")

# Header name -> allowed values (empty: any value), as exporter-toolkit's extraHTTPHeaders.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}


@dataclass(frozen=True)
class WebConfig:
    """A validated web-config file: what the HTTP server needs to serve TLS and basic auth.

    Data only: ``exporter.config.http_security`` turns it into the server's TLS context
    (``web_tls.TLSContextProvider``) and login checker (``basic_auth.BasicAuth``)."""

    tls: TLSConfig | None = None
    basic_auth_users: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    headers: tuple[tuple[str, str], ...] = ()
    http2: bool = True  # accepted for compatibility; tw-exporter serves HTTP/1.1 only

    def __post_init__(self) -> None:
        users = self.basic_auth_users
        if not isinstance(users, MappingProxyType):
            object.__setattr__(self, "basic_auth_users", MappingProxyType(dict(users)))

    @property
    def auth_required(self) -> bool:
        """Whether requests need basic-auth credentials (some user is configured)."""
        return bool(self.basic_auth_users)


# --- http_server_config ----------------------------------------------------------------------


def _parse_http(raw: object) -> tuple[tuple[tuple[str, str], ...], bool]:
    parent = "http_server_config"
    section = mapping(raw, parent)
    check_keys(section, _HTTP_KEYS, parent)
    http2 = boolean(section, "http2", parent, True)
    headers: list[tuple[str, str]] = []
    for name, value in mapping(section.get("headers"), f"{parent}.headers").items():
        key = f"{parent}.headers.{name}"
        if name not in _HEADERS:
            raise WebConfigError(
                f"this header cannot be configured (allowed: {', '.join(_HEADERS)})", key
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # Go's YAML decoder turns scalars into strings as well
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise WebConfigError(f"expected a string, got {kind(value)}", key)
        allowed = _HEADERS[name]
        if allowed and value not in allowed:
            raise WebConfigError(
                f"invalid value {value!r} (expected one of: {', '.join(allowed)})", key
            )
        if any(c in value for c in "\r\n\0"):
            raise WebConfigError("header values cannot contain line breaks or NUL", key)
        if not value.isascii():  # the server sends headers as bytes: it would fail at start-up
            raise WebConfigError(f"invalid value {value!r}: header values must be ASCII", key)
        if value:  # blank means "not set", per exporter-toolkit's documentation
            headers.append((name, value))
    return tuple(headers), http2


# --- entry point -----------------------------------------------------------------------------


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read, validate and load an exporter-toolkit web-config file.

    Certificate, key and CA files are loaded once here, so a bad file fails start-up with a
    message naming the key and path instead of failing every TLS handshake later. An empty file
    means no TLS and no authentication. Raises :class:`WebConfigError`.
    """
    config_path = Path(path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(
            f"cannot read web config file {config_path}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise WebConfigError(f"web config file {config_path} is not valid UTF-8") from None
    try:
        document = load_yaml(text)
    except ValueError as exc:
        raise WebConfigError(f"web config file {config_path}: {exc}") from None
    try:
        return _from_document(document, config_path.parent)
    except WebConfigError as exc:
        located = WebConfigError(f"web config file {config_path}: {exc}")
        located.key = exc.key
        raise located from None


def _from_document(document: object, base_dir: Path) -> WebConfig:
    if document is not None and not isinstance(document, dict):
        raise WebConfigError(f"the top level must be a mapping, got {kind(document)}")
    top = mapping(document, "")
    check_keys(top, _TOP_LEVEL_KEYS, "")
    tls = parse_tls(top.get("tls_server_config"), base_dir)
    if tls is not None:
        tls.build_context()  # validate files now
    headers, http2 = _parse_http(top.get("http_server_config"))
    users = parse_users(top.get("basic_auth_users"))
    return WebConfig(
        tls=tls, basic_auth_users=MappingProxyType(users), headers=headers, http2=http2
    )
