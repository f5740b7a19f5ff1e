"""Bounds every business label value before it enters the snapshot (docs/label-values.md).

Usernames and hashtags are typed by the platform's users and become Prometheus label values.
One 100 kB hashtag in the top K would make every scrape 100 kB larger and, past Prometheus'
``label_value_length_limit`` or Mimir's 2,048-byte ingestion limit, fail the *whole* scrape,
blacking out every tw-exporter metric. So every label value of every business family (the
built-in queries today, custom queries later) passes through :class:`LabelBounder` at the one
place families enter the store (``SnapshotStore.record_success``):

* A value longer than the limit, counted in UTF-8 bytes as Prometheus and Mimir count it,
  becomes ``<prefix>…<12 hex digits of the SHA-256 of the whole value>``, cut at a code point
  (and not inside a combining sequence), so it stays valid UTF-8, two different long values stay
  two series, and the same value gets the same label every cycle.
* An empty value (which Prometheus would store as an absent label) becomes ``(empty)``.
* Rewritten values never take a label value another row exports verbatim: should a crafted
  short value equal a rewritten one (or two rewrites collide), the rewritten one is hashed
  again with an attempt number until it is unique within its family. Exact values are never
  changed, so each label stays a one-to-one mapping and no two rows merge into one series.
* Rows whose label sets are identical before any rewrite (a query returning duplicates) would
  make the exposition invalid; the first row is kept, as the built-in top-users mapping does.

Values are not trimmed or otherwise normalised: ``" x"`` and ``"x"`` stay two series.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from exporter.config.settings import (
    DEFAULT_MAX_LABEL_LENGTH,
    MAX_MAX_LABEL_LENGTH,
    MIN_MAX_LABEL_LENGTH,
)

log = logging.getLogger(__name__)

MARKER = "…"  # U+2026: shows a person reading the legend that the value goes on
HASH_HEX_DIGITS = 12  # 48 bits: collisions are negligible among the top N/K, and re-hashed anyway
EMPTY = "(empty)"
SUFFIX_BYTES = len(MARKER.encode()) + HASH_HEX_DIGITS

# Logged values are remembered (as 16-byte digests) so each is logged once per run; an attacker
# who keeps inventing new long values must not grow that memory without bound.
MAX_REMEMBERED = 10_000


def digest(value: str, attempt: int = 0) -> str:
    """The hash in a shortened value: the first hex digits of SHA-256 of the whole value, so an
    operator can find the original (``docs/label-values.md`` has the SQL). A re-hash after a
    collision appends ``NUL`` and the attempt number, which no PostgreSQL text can contain."""
    data = value.encode()
    if attempt:
        data += b"\x00" + str(attempt).encode()
    return hashlib.sha256(data).hexdigest()[:HASH_HEX_DIGITS]


def _continues_previous(char: str) -> bool:
    """Whether ``char`` belongs to the user-perceived character before it: combining marks,
    variation selectors, emoji skin-tone modifiers, tag characters, and a zero-width joiner."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or char == "\u200d"
        or 0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
        or 0xE0100 <= code <= 0xE01EF
    )


def prefix_within(value: str, max_bytes: int) -> str:
    """The longest prefix of ``value`` whose UTF-8 is at most ``max_bytes`` and that ends between
    two user-perceived characters (never inside a code point, never before a combining mark or
    after a zero-width joiner; a best effort without a full grapheme-cluster table)."""
    prefix = value.encode()[:max_bytes].decode("utf-8", "ignore")  # drops a split code point
    cut = len(prefix)
    while cut > 0 and cut < len(value):
        if _continues_previous(value[cut]) or value[cut - 1] == "\u200d":
            cut -= 1
        else:
            break
    return value[:cut]


def fits(value: str, limit: int) -> bool:
    """Whether ``value`` is exported unchanged: non-empty and at most ``limit`` UTF-8 bytes."""
    # A code point is at most 4 bytes: short values skip the encoding.
    return bool(value) and (len(value) * 4 <= limit or len(value.encode()) <= limit)


def rewrite(value: str, limit: int, attempt: int = 0) -> str:
    """What an empty or too long ``value`` is exported as (``attempt`` > 0 after a collision)."""
    if not value:
        return EMPTY if attempt == 0 else f"{EMPTY}{MARKER}{digest(value, attempt)}"
    return prefix_within(value, limit - SUFFIX_BYTES) + MARKER + digest(value, attempt)


def shorten(value: str, limit: int) -> str:
    """``value`` itself when it fits, else its shortened form (no collision handling)."""
    return value if fits(value, limit) else rewrite(value, limit)


@dataclass
class Bounded:
    """One query's families with bounded labels and what was changed to get there."""

    families: list[Metric]
    shortened: int = 0  # distinct values per family that were too long
    # (label, original, exported, attempt): attempt > 0 when the first form was taken
    events: list[tuple[str, str, str, int]] = field(default_factory=list)
    duplicates: list[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=list)


def _sample_key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def bound_family(family: Metric, limit: int, result: Bounded) -> Metric:
    """``family`` with every label value bounded (the same object when nothing changes)."""
    samples: Sequence[Sample] = family.samples
    if all(fits(v, limit) for s in samples for v in s.labels.values()) and len(
        {_sample_key(s) for s in samples}
    ) == len(samples):
        return family
    # Values exported verbatim, per label name: a rewritten value must take none of them.
    taken: dict[str, set[str]] = {}
    for sample in samples:
        for name, value in sample.labels.items():
            if fits(value, limit):
                taken.setdefault(name, set()).add(value)
    chosen: dict[tuple[str, str], str] = {}
    for sample in samples:
        for name, value in sample.labels.items():
            if fits(value, limit) or (name, value) in chosen:
                continue
            used = taken.setdefault(name, set())
            attempt = 0
            while (new := rewrite(value, limit, attempt)) in used:
                attempt += 1
            used.add(new)
            chosen[name, value] = new
            result.shortened += bool(value)
            result.events.append((name, value, new, attempt))
    out: list[Sample] = []
    emitted: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for sample in samples:
        key = _sample_key(sample)
        if key in emitted:
            result.duplicates.append(key)
            continue
        emitted.add(key)
        labels = {n: chosen.get((n, v), v) for n, v in sample.labels.items()}
        out.append(sample._replace(labels=labels))
    bounded = copy.copy(family)
    bounded.samples = out
    return bounded


class LabelBounder:
    """Applies the limit to each query's families, and logs each rewrite once per run."""

    def __init__(self, limit: int = DEFAULT_MAX_LABEL_LENGTH) -> None:
        if not MIN_MAX_LABEL_LENGTH <= limit <= MAX_MAX_LABEL_LENGTH:
            raise ValueError(
                f"label length limit {limit} outside {MIN_MAX_LABEL_LENGTH}-{MAX_MAX_LABEL_LENGTH}"
            )
        self.limit = limit
        self._logged: set[bytes] = set()
        self._log_full_noted = False

    def bound(self, query: str, families: Iterable[Metric]) -> Bounded:
        result = Bounded(families=[])
        for family in families:
            result.families.append(bound_family(family, self.limit, result))
        for name, original, new, attempt in result.events:
            if self._first_time(query, name, original):
                self._log_rewrite(query, name, original, new, attempt)
        for sample_name, labels in result.duplicates:
            if self._first_time(query, sample_name, repr(labels)):
                log.warning(
                    "query %s returned the series %s%r more than once; the first row is kept",
                    query,
                    sample_name,
                    dict(labels),
                )
        return result

    def _log_rewrite(self, query: str, label: str, original: str, new: str, attempt: int) -> None:
        rehashed = (
            f" (re-hashed {attempt}x: another row exports the first form verbatim)"
            if attempt
            else ""
        )
        if not original:
            log.warning(
                "query %s: empty %s label value exported as %r%s (docs/label-values.md)",
                query,
                label,
                new,
                rehashed,
            )
            return
        log.warning(
            "query %s: %s label value of %d bytes exported as %r%s (limit %d bytes, "
            "--max-label-length; docs/label-values.md)",
            query,
            label,
            len(original.encode()),
            new,
            rehashed,
            self.limit,
        )

    def _first_time(self, *parts: str) -> bool:
        key = hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).digest()
        if key in self._logged:
            return False
        if len(self._logged) >= MAX_REMEMBERED:
            if not self._log_full_noted:
                self._log_full_noted = True
                log.warning(
                    "%d distinct label values rewritten this run; further ones are counted in "
                    "tw_exporter_label_values_truncated_total but not logged",
                    MAX_REMEMBERED,
                )
            return False
        self._logged.add(key)
        return True
