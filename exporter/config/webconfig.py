"""The Prometheus exporter-toolkit web-config file (``--web-config-file``), for tw-exporter.

Operators of node_exporter, postgres_exporter & co. already describe TLS and basic auth in one
YAML file (the exporter-toolkit "web configuration", checked by ``promtool check web-config``).
This module accepts the same file so that tw-exporter can be deployed with the same file, the
same secrets and the same tooling. It parses and validates the file (:func:`load_web_config`),
authorizes ``Authorization`` headers against bcrypt hashes (:meth:`WebConfig.authorize`) and
builds the server's :class:`ssl.SSLContext`, re-reading certificates when they are rotated
(:class:`TLSContextProvider`). It does not serve HTTP itself.

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

``client_auth_type`` mapping (Go ``tls.ClientAuthType`` -> Python ``ssl.VerifyMode``)
-------------------------------------------------------------------------------------
OpenSSL, as exposed by Python's :mod:`ssl`, always verifies a client certificate it asks for and
cannot ask for one without verifying it, so only the verifying Go modes map exactly:

========================== ============= ======================================================
Go value                   Python        Notes
========================== ============= ======================================================
NoClientCert (default)     CERT_NONE     exact
RequestClientCert          CERT_NONE     Go asks but never checks the certificate; not asking
                                         is equivalent for access control
RequireAnyClientCert       CERT_REQUIRED stricter: Python cannot require a certificate without
(legacy RequireClientCert)               verifying it, so it must chain to the client CA,
                                         which is therefore required
VerifyClientCertIfGiven    CERT_OPTIONAL exact; client CA required
RequireAndVerifyClientCert CERT_REQUIRED exact; client CA required
========================== ============= ======================================================

Other limits of Python's :mod:`ssl`
-----------------------------------
* ``cipher_suites`` are translated from Go to OpenSSL names and apply to TLS 1.2 and below; the
  TLS 1.3 names are accepted and ignored (Go ignores them as well; Python cannot set TLS 1.3
  suites). Only the names Go's ``tls.CipherSuites()`` returns are accepted, as upstream.
* ``curve_preferences``: Python can restrict key exchange to a single group only
  (``SSLContext.set_ecdh_curve``). One curve is applied exactly; with several, OpenSSL's default
  group list (which contains all four Go curves) is kept and the order cannot be imposed.
* ``min_version: TLS10``/``TLS11`` are set, but OpenSSL 3's default security level may still
  refuse those protocol versions.
* Certificates are re-read when their files change (see :class:`TLSContextProvider`); the rest of
  the file (users, client-auth type, versions) is read at start-up, unlike exporter-toolkit which
  re-reads the whole file on every request.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import logging
import os
import re
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import bcrypt
import yaml

__all__ = [
    "TLSConfig",
    "TLSContextProvider",
    "WebConfig",
    "WebConfigError",
    "load_web_config",
    "load_yaml",
]

log = logging.getLogger(__name__)


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


# --- vocabulary, taken from exporter-toolkit's web/tls_config.go and web/handler.go -------------

_TOP_LEVEL_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_HTTP_KEYS = ("http2", "headers")
# Known to (newer) exporter-toolkit but not implemented: rejected with a specific message.
_UNSUPPORTED_KEYS = {
    "rate_limit": "request rate limiting is not implemented by tw-exporter",
    "tls_server_config.client_allowed_sans": (
        "client certificate SAN allow-lists are not implemented by tw-exporter; "
        "restrict clients with a dedicated client CA instead"
    ),
}

_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

_CLIENT_AUTH: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,  # exporter-toolkit's legacy alias of the above
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_NEEDING_CA = frozenset(
    {
        "RequireAnyClientCert",
        "RequireClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    }
)

# Go's tls.CipherSuites() names -> OpenSSL names. None: a TLS 1.3 suite (not configurable).
_CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}

# Go tls.CurveID names -> OpenSSL group names. The ML-KEM hybrids exist in exporter-toolkit
# built with Go >= 1.26; they apply only where the local OpenSSL knows them.
_CURVES: dict[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
    "SecP256r1MLKEM768": "SecP256r1MLKEM768",
    "SecP384r1MLKEM1024": "SecP384r1MLKEM1024",
}

# Header name -> allowed values (empty: any value), as exporter-toolkit's extraHTTPHeaders.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

# $2a$/$2b$/$2y$ (and the rare $2x$), two-digit cost, 22 salt + 31 digest characters.
_BCRYPT_HASH = re.compile(rb"\A\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
_BCRYPT_MIN_COST, _BCRYPT_MAX_COST = 4, 31
# bcrypt only ever uses the first 72 bytes of a password. bcrypt>=5 raises beyond that; Go's
# x/crypto/bcrypt and htpasswd silently truncate, so truncating keeps their hashes working.
_BCRYPT_MAX_PASSWORD = 72


# --- YAML, shared with the queries file ------------------------------------------------------


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


# --- small typed accessors over the parsed YAML ----------------------------------------------


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _mapping(value: object, key: str) -> dict[str, object]:
    """A YAML mapping with string keys; ``null`` counts as empty, like a missing section."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"expected a mapping, got {_kind(value)}", key)
    for k in value:
        if not isinstance(k, str):
            raise WebConfigError(
                f"keys must be strings, got {_kind(k)} {k!r} (quote it in YAML)", key
            )
    return value


def _check_keys(section: Mapping[str, object], allowed: tuple[str, ...], parent: str) -> None:
    for k in section:
        path = _join(parent, k)
        if path in _UNSUPPORTED_KEYS:
            raise WebConfigError(_UNSUPPORTED_KEYS[path], path)
        if k not in allowed:
            raise WebConfigError(f"unknown key (expected one of: {', '.join(allowed)})", path)


def _str(section: Mapping[str, object], name: str, parent: str) -> str | None:
    """An optional string; empty strings count as unset, as in exporter-toolkit."""
    value = section.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"expected a string, got {_kind(value)}", _join(parent, name))
    return value


def _bool(section: Mapping[str, object], name: str, parent: str, default: bool) -> bool:
    value = section.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise WebConfigError(f"expected true or false, got {_kind(value)}", _join(parent, name))
    return value


def _str_list(section: Mapping[str, object], name: str, parent: str) -> list[str]:
    value = section.get(name)
    key = _join(parent, name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WebConfigError(f"expected a list of strings, got {_kind(value)}", key)
    for item in value:
        if not isinstance(item, str):
            raise WebConfigError(f"expected a list of strings, found {_kind(item)}", key)
    return value


def _choice(value: str, choices: Mapping[str, object], key: str) -> None:
    if value not in choices:
        raise WebConfigError(
            f"unknown value {value!r} (expected one of: {', '.join(choices)})", key
        )


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


# --- TLS -------------------------------------------------------------------------------------


def _no_password() -> bytes:
    """Password callback for load_cert_chain: never prompt on a TTY for an encrypted key."""
    return b""


@contextmanager
def _pem_paths(*pems: str) -> Iterator[list[str]]:
    """Expose in-memory PEM text as file paths, because ``load_cert_chain`` only takes paths.

    Uses an anonymous memory file on Linux so that an inline private key never touches a disk;
    elsewhere a private (0700) temporary directory, removed straight after loading.
    """
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fds: list[int] = []
        try:
            for pem in pems:
                fd = os.memfd_create("tw-exporter-pem", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, pem.encode())
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="tw-exporter-pem-") as tmp:
        paths = []
        for i, pem in enumerate(pems):
            path = Path(tmp, f"{i}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(pem)
            paths.append(str(path))
        yield paths


def _check_readable(path: Path, key: str) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise WebConfigError(f"cannot read {path}: {exc.strerror or exc}", key) from None


@dataclass(frozen=True)
class TLSConfig:
    """The parsed ``tls_server_config`` section; file paths are absolute.

    Exactly one of ``cert_file``/``cert`` and one of ``key_file``/``key`` is set;
    ``client_auth_type`` is the exporter-toolkit name (see the module docstring for how it maps
    onto :class:`ssl.VerifyMode`).
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        """What Python's ssl does for ``client_auth_type`` (module docstring has the table)."""
        return _CLIENT_AUTH[self.client_auth_type]

    @property
    def watched_files(self) -> tuple[Path, ...]:
        """Files whose change triggers a reload of the TLS context."""
        files = (self.cert_file, self.key_file, self.client_ca_file)
        return tuple(f for f in files if f is not None)

    def build_context(self) -> ssl.SSLContext:
        """A new server-side SSLContext, reading the certificate, key and CA files now.

        Raises :class:`WebConfigError` naming the key whose file or value is unusable.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        ctx.maximum_version = self.max_version
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        openssl_ciphers = [c for c in (_CIPHER_SUITES[n] for n in self.cipher_suites) if c]
        if openssl_ciphers:
            try:
                ctx.set_ciphers(":".join(openssl_ciphers))
            except ssl.SSLError:
                raise WebConfigError(
                    "none of the cipher suites is available in this OpenSSL build",
                    "tls_server_config.cipher_suites",
                ) from None
        if len(self.curve_preferences) == 1:
            name = self.curve_preferences[0]
            try:
                ctx.set_ecdh_curve(_CURVES[name])
            except (ValueError, ssl.SSLError):
                raise WebConfigError(
                    f"curve {name!r} is not supported by this OpenSSL build",
                    "tls_server_config.curve_preferences",
                ) from None
        ctx.set_alpn_protocols(["http/1.1"])
        self._load_key_pair(ctx)
        ctx.verify_mode = self.verify_mode
        self._load_client_ca(ctx)
        return ctx

    def _load_key_pair(self, ctx: ssl.SSLContext) -> None:
        cert_key = "tls_server_config.cert_file" if self.cert_file else "tls_server_config.cert"
        key_key = "tls_server_config.key_file" if self.key_file else "tls_server_config.key"
        if self.cert_file:
            _check_readable(self.cert_file, cert_key)
        if self.key_file:
            _check_readable(self.key_file, key_key)
        inline = [pem for pem in (self.cert, self.key) if pem is not None]
        try:
            with _pem_paths(*inline) as tmp_paths:
                it = iter(tmp_paths)
                cert_path = str(self.cert_file) if self.cert_file else next(it)
                key_path = str(self.key_file) if self.key_file else next(it)
                ctx.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as exc:
            raise WebConfigError(
                f"cannot load the certificate/key pair ({exc.reason or exc}); expected a PEM "
                "certificate and the matching unencrypted PEM private key",
                f"{cert_key}+{key_key.removeprefix('tls_server_config.')}",
            ) from None
        except OSError as exc:
            raise WebConfigError(f"cannot load: {exc.strerror or exc}", cert_key) from None

    def _load_client_ca(self, ctx: ssl.SSLContext) -> None:
        if self.client_ca_file is None and self.client_ca is None:
            return
        key = (
            "tls_server_config.client_ca_file"
            if self.client_ca_file
            else "tls_server_config.client_ca"
        )
        try:
            if self.client_ca_file is not None:
                _check_readable(self.client_ca_file, key)
                ctx.load_verify_locations(cafile=str(self.client_ca_file))
            else:
                ctx.load_verify_locations(cadata=self.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise WebConfigError(
                f"no usable PEM CA certificate ({getattr(exc, 'reason', None) or exc})", key
            ) from None


def _parse_tls(raw: object, base_dir: Path) -> TLSConfig | None:
    parent = "tls_server_config"
    section = _mapping(raw, parent)
    if not section:
        return None
    _check_keys(section, _TLS_KEYS, parent)

    def path(name: str) -> Path | None:
        value = _str(section, name, parent)
        return None if value is None else Path(os.path.abspath(base_dir / value))

    cert_file, key_file, ca_file = path("cert_file"), path("key_file"), path("client_ca_file")
    cert, key, ca = (_str(section, n, parent) for n in ("cert", "key", "client_ca"))
    for inline, file_, name in (
        (cert, cert_file, "cert"),
        (key, key_file, "key"),
        (ca, ca_file, "client_ca"),
    ):
        if inline is not None and file_ is not None:
            raise WebConfigError(
                f"set either {name} (inline PEM) or {name}_file, not both", f"{parent}.{name}"
            )
    if cert is None and cert_file is None:
        raise WebConfigError(
            "required when tls_server_config is set (or an inline PEM 'cert')",
            f"{parent}.cert_file",
        )
    if key is None and key_file is None:
        raise WebConfigError(
            "required when tls_server_config is set (or an inline PEM 'key')", f"{parent}.key_file"
        )

    auth = _str(section, "client_auth_type", parent) or "NoClientCert"
    _choice(auth, _CLIENT_AUTH, f"{parent}.client_auth_type")
    has_ca = ca is not None or ca_file is not None
    if auth == "NoClientCert" and has_ca:
        raise WebConfigError(
            "a client CA is configured but client_auth_type is NoClientCert; set "
            "client_auth_type: RequireAndVerifyClientCert (or remove the CA)",
            f"{parent}.client_auth_type",
        )
    if auth in _CLIENT_AUTH_NEEDING_CA and not has_ca:
        raise WebConfigError(
            f"required when client_auth_type is {auth} (the CA that signs client certificates)",
            f"{parent}.client_ca_file",
        )

    versions: dict[str, ssl.TLSVersion] = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = _str(section, name, parent) or default
        _choice(value, _TLS_VERSIONS, f"{parent}.{name}")
        versions[name] = _TLS_VERSIONS[value]
    if versions["min_version"] > versions["max_version"]:
        raise WebConfigError("must not be above max_version", f"{parent}.min_version")

    ciphers = _str_list(section, "cipher_suites", parent)
    unknown = [c for c in ciphers if c not in _CIPHER_SUITES]
    if unknown:
        raise WebConfigError(
            f"unknown cipher suite(s) {', '.join(unknown)} (expected Go tls.CipherSuites() names: "
            f"{', '.join(_CIPHER_SUITES)})",
            f"{parent}.cipher_suites",
        )
    curves = _str_list(section, "curve_preferences", parent)
    unknown = [c for c in curves if c not in _CURVES]
    if unknown:
        raise WebConfigError(
            f"unknown curve(s) {', '.join(unknown)} (expected: {', '.join(_CURVES)})",
            f"{parent}.curve_preferences",
        )

    return TLSConfig(
        cert_file=cert_file,
        key_file=key_file,
        cert=cert,
        key=key,
        client_auth_type=auth,
        client_ca_file=ca_file,
        client_ca=ca,
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        cipher_suites=tuple(ciphers),
        prefer_server_cipher_suites=_bool(section, "prefer_server_cipher_suites", parent, True),
        curve_preferences=tuple(curves),
    )


class TLSContextProvider:
    """Builds an ssl.SSLContext from TLSConfig and re-reads cert_file/key_file/client_ca_file
    when their mtime/size change (certificate rotation without restart).

    ``loop.create_server(ssl=...)`` takes one context for the lifetime of the listener, so the
    server gets a stable *front* context (:attr:`server_context`) whose ``sni_callback`` runs on
    every ClientHello (with or without SNI). At most once per :attr:`CHECK_INTERVAL` seconds the
    callback stats the watched files; when their mtime, size or inode changed it builds a fresh
    context and switches the connection to it (``ssl_object.context = ...``), which replaces the
    certificate, key and client-CA store for that handshake. Protocol versions, verify mode and
    other per-connection settings still come from the front context, which is fine because
    only the files are reloaded, never the YAML.

    A rotation caught half-way (new certificate, old key) fails to load: the previous context
    stays in use, a warning is logged once, and the files are tried again on the next change.
    The callback never raises, so a broken reload cannot break handshakes.
    """

    CHECK_INTERVAL: ClassVar[float] = 1.0

    def __init__(self, tls: TLSConfig) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        signature = self._signature()
        front = tls.build_context()  # raises WebConfigError: fail at start-up, not per handshake
        front.sni_callback = self._on_client_hello
        self._front = front
        self._current = front
        self._current_signature = signature
        self._failed_signature: tuple[tuple[object, ...], ...] | None = None
        self._next_check = time.monotonic() + self.CHECK_INTERVAL

    @property
    def server_context(self) -> ssl.SSLContext:
        """The context to pass to ``loop.create_server(ssl=...)``."""
        return self._front

    def _signature(self) -> tuple[tuple[object, ...], ...]:
        out: list[tuple[object, ...]] = []
        for path in self._tls.watched_files:
            try:
                st = path.stat()  # follows symlinks, e.g. Kubernetes' ..data swaps
            except OSError as exc:
                out.append((str(path), "error", exc.errno))
            else:
                out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _refresh(self) -> ssl.SSLContext:
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return self._current
            self._next_check = now + self.CHECK_INTERVAL
            signature = self._signature()
            if signature in (self._current_signature, self._failed_signature):
                return self._current
            try:
                ctx = self._tls.build_context()
            except WebConfigError as exc:
                self._failed_signature = signature
                log.warning(
                    "TLS files changed but cannot be loaded, keeping the previous ones: %s", exc
                )
                return self._current
            self._current, self._current_signature = ctx, signature
            self._failed_signature = None
            log.info("reloaded TLS certificate files after a change on disk")
            return ctx

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext
    ) -> None:
        try:
            ctx = self._refresh()
            if ctx is not self._front:
                ssl_object.context = ctx
        except Exception:  # a callback exception would abort the handshake with no clear cause
            log.exception(
                "TLS certificate reload check failed; continuing with the current certificate"
            )


# --- basic auth ------------------------------------------------------------------------------


def _parse_users(raw: object) -> dict[str, bytes]:
    users = _mapping(raw, "basic_auth_users")
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        key = f"basic_auth_users.{user}"
        if ":" in user:
            raise WebConfigError("user names cannot contain ':' (HTTP basic auth separator)", key)
        encoded = hashed.encode() if isinstance(hashed, str) else b""
        match = _BCRYPT_HASH.match(encoded)
        cost = int(match.group(1)) if match else 0
        if not _BCRYPT_MIN_COST <= cost <= _BCRYPT_MAX_COST:
            # No echo of the value: it may be a plaintext password put there by mistake.
            raise WebConfigError(
                "expected a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters), e.g. from "
                "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`",
                key,
            )
        out[user] = encoded
    return out


def _parse_basic_authorization(authorization: bytes | None) -> tuple[str, bytes] | None:
    """``Basic base64(user:password)`` -> (user, password); None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (binascii.Error, ValueError):  # ValueError covers UnicodeDecodeError
        return None


def _cache_token(user: str, password: bytes, hashed: bytes) -> bytes:
    """SHA-256 over length-prefixed user, password and hash: the cached proof of a login."""
    h = hashlib.sha256()
    for part in (user.encode(), password, hashed):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _decoy_hash(users: Mapping[str, bytes]) -> bytes:
    """A hash nobody's password matches, at the users' highest cost.

    Checking unknown users against it makes "no such user" cost as much bcrypt time as "wrong
    password", so response times do not reveal which user names exist. No password is hashed to
    build it (that could take seconds at a high cost): a fresh salt plus an all-zero digest.
    """
    costs = [int(h[4:6]) for h in users.values()] or [10]
    return bcrypt.gensalt(rounds=max(costs)) + b"." * 31


@dataclass(frozen=True)
class WebConfig:
    """A validated web-config file: what the HTTP server needs to serve TLS and basic auth."""

    tls: TLSConfig | None = None
    basic_auth_users: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )
    headers: tuple[tuple[str, str], ...] = ()
    http2: bool = True  # accepted for compatibility; tw-exporter serves HTTP/1.1 only

    CACHE_SIZE: ClassVar[int] = 256
    # Uncached checks admitted at once: one running on the bcrypt thread plus this many minus
    # one queued behind it. A check that finds them all taken is refused at once (the server
    # answers 503 with Retry-After), so an admitted login waits at most this many bcrypt times.
    BCRYPT_SLOTS: ClassVar[int] = 4

    _decoy: bytes = field(init=False, repr=False, compare=False)
    _verified: OrderedDict[str, bytes] = field(
        default_factory=OrderedDict, init=False, repr=False, compare=False
    )
    _cache_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _bcrypt_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    # bcrypt's own executor: one thread (checks are serialised anyway), never asyncio's default
    # executor, which the database's host-name lookups share. Threads start on first use.
    _bcrypt_executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bcrypt"
        ),
        init=False,
        repr=False,
        compare=False,
    )
    _bcrypt_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(WebConfig.BCRYPT_SLOTS),
        init=False,
        repr=False,
        compare=False,
    )

    def __post_init__(self) -> None:
        users = self.basic_auth_users
        if not isinstance(users, MappingProxyType):
            object.__setattr__(self, "basic_auth_users", MappingProxyType(dict(users)))
        object.__setattr__(self, "_decoy", _decoy_hash(self.basic_auth_users))

    @property
    def auth_required(self) -> bool:
        """Whether requests need basic-auth credentials (some user is configured)."""
        return bool(self.basic_auth_users)

    def check_cached(self, authorization: bytes | None) -> bool | None:
        """The verdict when it needs no bcrypt: True when no users are configured or these
        exact credentials verified before, False for a missing or malformed header, None when
        only a bcrypt check can tell (the server then runs ``authorize`` off the event loop)."""
        if not self.basic_auth_users:
            return True
        credentials = _parse_basic_authorization(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = self.basic_auth_users.get(user)
        if stored is None:
            return None
        token = _cache_token(user, password, stored)
        with self._cache_lock:
            cached = self._verified.get(user)
            if cached is not None:
                self._verified.move_to_end(user)
        if cached is not None and hmac.compare_digest(cached, token):
            return True
        return None

    def adopt_cache(self, previous: object) -> None:
        """Take over ``previous``'s verified logins for users whose hash is unchanged.

        Called when a reload replaces the running configuration: without it every scraper's
        next request needed bcrypt again, and during a flood of wrong passwords (every bcrypt
        slot taken) a scraper whose login had been cached got 503 on every scrape. A user
        whose hash changed, or who was removed, is dropped: the cached proof covers the hash
        (``_cache_token``), so it could never match anyway."""
        if not isinstance(previous, WebConfig) or previous is self:
            return
        with previous._cache_lock:
            verified = list(previous._verified.items())
        kept = [
            (user, token)
            for user, token in verified
            if user in self.basic_auth_users
            and previous.basic_auth_users.get(user) == self.basic_auth_users[user]
        ]
        with self._cache_lock:
            for user, token in reversed(kept):
                self._verified.setdefault(user, token)
                self._verified.move_to_end(user, last=False)  # older than this config's own
            while len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)

    def submit(self, authorization: bytes | None) -> concurrent.futures.Future[bool] | None:
        """Run :meth:`authorize` on the bcrypt thread; None when :attr:`BCRYPT_SLOTS` checks
        are already admitted (a flood of wrong passwords), so the caller can refuse at once
        instead of queueing without bound. Cached credentials never come here: the server
        answers them from :meth:`check_cached` on the event loop, ahead of any flood."""
        if not self._bcrypt_slots.acquire(blocking=False):
            return None
        try:
            future = self._bcrypt_executor.submit(self.authorize, authorization)
        except BaseException:
            self._bcrypt_slots.release()
            raise
        future.add_done_callback(lambda _: self._bcrypt_slots.release())
        return future

    def authorize(self, authorization: bytes | None) -> bool:
        """Check a raw ``Authorization`` header value; True when no users are configured.

        Successful verifications are cached, so a scraper that sends the same credentials every
        15 s pays bcrypt once, not per scrape: per user, the SHA-256 of (user, password, hash) of
        the last successful login is kept (at most :attr:`CACHE_SIZE` users, least recently used
        evicted) and compared with :func:`hmac.compare_digest`. Failures are never cached, and an
        unknown user is checked against a decoy hash of the same cost, so a miss always costs one
        bcrypt call. bcrypt calls are serialised (CPU-bound, as in exporter-toolkit); an uncached
        check blocks for the bcrypt time, so the asyncio server runs it through :meth:`submit`.
        """
        verdict = self.check_cached(authorization)
        if verdict is not None:
            return verdict
        credentials = _parse_basic_authorization(authorization)
        assert credentials is not None  # check_cached returned False otherwise
        user, password = credentials
        stored = self.basic_auth_users.get(user)
        hashed = stored if stored is not None else self._decoy
        with self._bcrypt_lock:
            try:
                ok = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)
            except ValueError:  # e.g. a salt bcrypt's decoder refuses
                ok = False
        if not ok or stored is None:
            return False
        with self._cache_lock:
            self._verified[user] = _cache_token(user, password, hashed)
            self._verified.move_to_end(user)
            while len(self._verified) > self.CACHE_SIZE:
                self._verified.popitem(last=False)
        return True


# --- http_server_config ----------------------------------------------------------------------


def _parse_http(raw: object) -> tuple[tuple[tuple[str, str], ...], bool]:
    parent = "http_server_config"
    section = _mapping(raw, parent)
    _check_keys(section, _HTTP_KEYS, parent)
    http2 = _bool(section, "http2", parent, True)
    headers: list[tuple[str, str]] = []
    for name, value in _mapping(section.get("headers"), f"{parent}.headers").items():
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
            raise WebConfigError(f"expected a string, got {_kind(value)}", key)
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
        raise WebConfigError(f"the top level must be a mapping, got {_kind(document)}")
    top = _mapping(document, "")
    _check_keys(top, _TOP_LEVEL_KEYS, "")
    tls = _parse_tls(top.get("tls_server_config"), base_dir)
    if tls is not None:
        tls.build_context()  # validate files now
    headers, http2 = _parse_http(top.get("http_server_config"))
    users = _parse_users(top.get("basic_auth_users"))
    return WebConfig(
        tls=tls, basic_auth_users=MappingProxyType(users), headers=headers, http2=http2
    )
