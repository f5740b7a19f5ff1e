"""Basic-auth login for the web config's ``basic_auth_users``: bcrypt hashes, as exporter-toolkit.

:func:`parse_users` validates the section (hashes checked fully, not just their prefix as Go
does; user names containing ``:`` refused, since they could never log in). :class:`BasicAuth`
checks ``Authorization`` headers against the hashes: verified logins are cached, bcrypt runs on
its own bounded executor, and a reload's new checker takes over the old one's cache
(:meth:`BasicAuth.adopt_cache`)."""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import bcrypt

from exporter.config.web_fields import WebConfigError, mapping

# $2a$/$2b$/$2y$ (and the rare $2x$), two-digit cost, 22 salt + 31 digest characters.
_BCRYPT_HASH = re.compile(rb"\A\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
_BCRYPT_MIN_COST, _BCRYPT_MAX_COST = 4, 31
# bcrypt only ever uses the first 72 bytes of a password. bcrypt>=5 raises beyond that; Go's
# x/crypto/bcrypt and htpasswd silently truncate, so truncating keeps their hashes working.
_BCRYPT_MAX_PASSWORD = 72


def parse_users(raw: object) -> dict[str, bytes]:
    """The ``basic_auth_users`` section: user name -> bcrypt hash, each hash checked."""
    users = mapping(raw, "basic_auth_users")
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


class BasicAuth:
    """Checks ``Authorization`` headers against the configured users' bcrypt hashes.

    The HTTP server's authenticator (``exporter.expose.http.Authenticator``): it answers from
    its cache on the event loop (:meth:`check_cached`) and runs bcrypt through :meth:`submit`.
    One is built per loaded web config; a reload builds a new one, which takes over the old
    one's verified logins (:meth:`adopt_cache`)."""

    CACHE_SIZE: ClassVar[int] = 256
    # Uncached checks admitted at once: one running on the bcrypt thread plus this many minus
    # one queued behind it. A check that finds them all taken is refused at once (the server
    # answers 503 with Retry-After), so an admitted login waits at most this many bcrypt times.
    BCRYPT_SLOTS: ClassVar[int] = 4

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users: Mapping[str, bytes] = MappingProxyType(dict(users))
        self._decoy = _decoy_hash(self.users)
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        # bcrypt's own executor: one thread (checks are serialised anyway), never asyncio's
        # default executor, which the database's host-name lookups share. Threads start on
        # first use.
        self._bcrypt_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bcrypt"
        )
        self._bcrypt_slots = threading.BoundedSemaphore(self.BCRYPT_SLOTS)

    def check_cached(self, authorization: bytes | None) -> bool | None:
        """The verdict when it needs no bcrypt: True when no users are configured or these
        exact credentials verified before, False for a missing or malformed header, None when
        only a bcrypt check can tell (the server then runs ``authorize`` off the event loop)."""
        if not self.users:
            return True
        credentials = _parse_basic_authorization(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = self.users.get(user)
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

    def adopt_cache(self, previous: BasicAuth) -> None:
        """Take over ``previous``'s verified logins for users whose hash is unchanged.

        Called when a reload replaces the running configuration: without it every scraper's
        next request needed bcrypt again, and during a flood of wrong passwords (every bcrypt
        slot taken) a scraper whose login had been cached got 503 on every scrape. A user
        whose hash changed, or who was removed, is dropped: the cached proof covers the hash
        (``_cache_token``), so it could never match anyway."""
        if previous is self:
            return
        with previous._cache_lock:
            verified = list(previous._verified.items())
        kept = [
            (user, token)
            for user, token in verified
            if user in self.users and previous.users.get(user) == self.users[user]
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
        stored = self.users.get(user)
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
