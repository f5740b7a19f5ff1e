"""What the web config file (``--web-config-file``) gives the HTTP server: a TLS context,
the basic-auth checker and the response headers.

Loaded at start and again on every reload, so it lives beside the configuration it reads
rather than in ``exporter.app``: ``collect/reload.py`` needs it, and importing the wiring
from there would make an import cycle (app -> reload -> app)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.config.settings import Settings

if TYPE_CHECKING:
    from exporter.config.basic_auth import BasicAuth


@dataclass(frozen=True)
class HTTPSecurity:
    """What the web config file contributes to the server (TLS, auth, headers). The server
    states what it needs of the authenticator (``exporter.expose.http.Authenticator``, a
    protocol ``BasicAuth`` satisfies); the configuration names only its own type, so it does
    not import the HTTP module it configures."""

    ssl_context: ssl.SSLContext | None = None
    authenticator: BasicAuth | None = None
    headers: tuple[tuple[str, str], ...] = ()


def load_http_security(settings: Settings) -> HTTPSecurity:
    if settings.web_config_file is None:
        return HTTPSecurity()
    from exporter.config.basic_auth import BasicAuth
    from exporter.config.web_tls import TLSContextProvider
    from exporter.config.webconfig import load_web_config

    config = load_web_config(settings.web_config_file)
    return HTTPSecurity(
        ssl_context=TLSContextProvider(config.tls).server_context if config.tls else None,
        authenticator=BasicAuth(config.basic_auth_users) if config.auth_required else None,
        headers=config.headers,
    )
