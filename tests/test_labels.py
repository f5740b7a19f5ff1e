"""The label-value bound (exporter.expose.labels): byte limit, code-point safety, stability,
distinctness, the collision rule, the empty-value rule, and logging once per value and run."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from pathlib import Path

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from exporter.cli import build_parser
from exporter.collectors import QUERY_NAMES, top_users, trending_hashtags
from exporter.config.settings import (
    DEFAULT_MAX_LABEL_LENGTH,
    MAX_MAX_LABEL_LENGTH,
    MIN_MAX_LABEL_LENGTH,
    query_params,
    settings_from,
)
from exporter.expose import labels
from exporter.expose.labels import (
    EMPTY,
    MARKER,
    LabelBounder,
    fits,
    rewrite,
    shorten,
)
from exporter.expose.snapshot import SnapshotStore

# Any text PostgreSQL can store (no NUL, no lone surrogates), long enough to cross any limit.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=400)
TRICKY_ALPHABET = st.sampled_from(
    ["a", "é", "e\u0301", "🔥", "👩\u200d👩\u200d👧", "👍🏽", "日", "\\", '"']
)
TRICKY = st.lists(TRICKY_ALPHABET, min_size=1, max_size=300).map("".join)
LIMITS = st.integers(MIN_MAX_LABEL_LENGTH, 600)


def nbytes(text: str) -> int:
    return len(text.encode())


def split_shortened(value: str) -> tuple[str, str]:
    prefix, marker, digest = value.rpartition(MARKER)
    assert marker == MARKER and len(digest) == labels.HASH_HEX_DIGITS
    return prefix, digest


# ------------------------------------------------------------------ the shortening function


@settings(max_examples=300, deadline=None)
@given(value=TEXT | TRICKY, limit=LIMITS)
@example(value="🔥" * 1000, limit=DEFAULT_MAX_LABEL_LENGTH)
@example(value="e\u0301" * 1000, limit=DEFAULT_MAX_LABEL_LENGTH)
def test_shortened_values_fit_in_bytes_and_never_split_a_code_point(value: str, limit: int) -> None:
    result = shorten(value, limit)
    encoded = result.encode("utf-8")  # a lone surrogate or split code point would raise here
    assert len(encoded) <= limit
    assert encoded.decode("utf-8") == result
    if fits(value, limit):
        assert result == value  # short values are exported as they are, not trimmed
        return
    if not value:
        assert result == EMPTY
        return
    prefix, digest = split_shortened(result)
    assert value.startswith(prefix)
    assert digest == hashlib.sha256(value.encode()).hexdigest()[: labels.HASH_HEX_DIGITS]
    # The cut is at a code point boundary and not in front of a combining mark.
    if prefix and len(prefix) < len(value):
        assert unicodedata.category(value[len(prefix)]) not in ("Mn", "Mc", "Me")
        assert value[len(prefix) - 1] != "\u200d"
    # The prefix uses the room it has: one more code point would not fit, unless it was held
    # back to keep a combining sequence (or a zero-width-joined emoji) whole.
    grown = value[: len(prefix) + 1]
    if nbytes(grown) + labels.SUFFIX_BYTES <= limit:
        assert len(grown) < len(value)
        assert labels._continues_previous(value[len(grown)]) or grown[-1] == "\u200d"


@given(value=TEXT, limit=LIMITS)
def test_shortening_is_stable(value: str, limit: int) -> None:
    assert shorten(value, limit) == shorten(value, limit)
    assert shorten(value, limit) == shorten("".join(list(value)), limit)


@settings(max_examples=300)
@given(common=TEXT | TRICKY, a=TEXT, b=TEXT, limit=LIMITS)
def test_two_different_long_values_stay_different(common: str, a: str, b: str, limit: int) -> None:
    # Long values that differ only after the cut (the common part fills the prefix).
    first, second = "x" * limit + common + a, "x" * limit + common + b
    assume(first != second)
    assert shorten(first, limit) != shorten(second, limit)


def test_examples_a_reader_can_check_by_hand() -> None:
    tag = "spam" * 25_000  # 100 kB
    short = shorten(tag, 256)
    assert short == "spam" * 60 + "s" + "…" + hashlib.sha256(tag.encode()).hexdigest()[:12]
    assert nbytes(short) == 256
    # 4-byte emoji: 241 bytes of room hold 60 of them, not 60.25.
    assert split_shortened(shorten("🔥" * 1000, 256))[0] == "🔥" * 60
    # e + COMBINING ACUTE ACCENT is 3 bytes; the 81st "e" would lose its accent, so it goes.
    assert split_shortened(shorten("e\u0301" * 1000, 256))[0] == "e\u0301" * 80
    assert shorten("", 256) == EMPTY
    assert shorten(" padded ", 256) == " padded "  # not trimmed


# ------------------------------------------------------------------ families: collisions


def gauge(label: str, *values: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily("tw_test", "test", labels=[label])
    for i, value in enumerate(values):
        family.add_metric([value], float(i))
    return family


def exported(family: Metric) -> dict[str, float]:
    return {next(iter(s.labels.values())): s.value for s in family.samples}


def test_a_crafted_short_value_keeps_its_text_and_the_long_value_is_rehashed() -> None:
    long_value = "x" * 1000
    crafted = rewrite(long_value, 64)  # exactly what the long value would be shortened to
    assert fits(crafted, 64)
    for order in ((long_value, crafted), (crafted, long_value)):
        result = LabelBounder(64).bound("q", [gauge("tag", *order)])
        values = exported(result.families[0])
        assert len(values) == 2
        assert values[crafted] == float(order.index(crafted))
        assert values[rewrite(long_value, 64, attempt=1)] == float(order.index(long_value))
        assert result.shortened == 1


def test_empty_values_get_the_placeholder_unless_a_row_owns_it() -> None:
    assert exported(LabelBounder().bound("q", [gauge("tag", "", "a")]).families[0]) == {
        EMPTY: 0.0,
        "a": 1.0,
    }
    result = LabelBounder().bound("q", [gauge("tag", "", EMPTY)])
    values = exported(result.families[0])
    assert values[EMPTY] == 1.0  # the row literally named "(empty)" keeps its name
    assert values[rewrite("", DEFAULT_MAX_LABEL_LENGTH, attempt=1)] == 0.0
    assert result.shortened == 0  # empties are not "truncated"


def test_duplicate_rows_keep_the_first_and_distinct_rows_stay_distinct() -> None:
    result = LabelBounder().bound("q", [gauge("tag", "a", "b", "a")])
    assert exported(result.families[0]) == {"a": 0.0, "b": 1.0}


def test_one_value_gets_one_label_across_samples_and_families() -> None:
    long_value = "y" * 500
    histogram = HistogramMetricFamily("tw_h", "h", labels=["tag"])
    histogram.add_metric([long_value], buckets=[("1", 1), ("+Inf", 2)], sum_value=3)
    counter = CounterMetricFamily("tw_c", "c", labels=["tag", "lang"])
    counter.add_metric([long_value, "en"], 1)
    counter.add_metric([long_value, "fr"], 2)
    result = LabelBounder().bound("q", [histogram, counter])
    tags = {s.labels["tag"] for f in result.families for s in f.samples}
    assert tags == {shorten(long_value, DEFAULT_MAX_LABEL_LENGTH)}
    assert len(result.families[0].samples) == len(histogram.samples)
    assert {s.labels["lang"] for s in result.families[1].samples} == {"en", "fr"}
    assert result.shortened == 2  # one value in each of two families


def test_untouched_families_are_passed_through_as_they_are() -> None:
    family = gauge("tag", "a", "b")
    assert LabelBounder().bound("q", [family]).families[0] is family


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        TEXT | TRICKY | st.sampled_from(["", EMPTY, "z" * 300]) | TEXT.map(lambda v: "z" * 70 + v),
        unique=True,
        max_size=12,
    ),
    limit=st.integers(MIN_MAX_LABEL_LENGTH, 80),
)
def test_any_set_of_rows_gives_as_many_distinct_series_within_the_limit(
    values: list[str], limit: int
) -> None:
    # Add the shortened forms of the long values as crafted rows of their own.
    crafted = [rewrite(v, limit) for v in values if not fits(v, limit)]
    rows = list(dict.fromkeys(values + crafted))
    family = LabelBounder(limit).bound("q", [gauge("tag", *rows)]).families[0]
    got = exported(family)
    assert len(got) == len(rows)  # nothing merged, nothing lost
    assert sorted(got.values()) == [float(i) for i in range(len(rows))]
    assert all(fits(v, limit) for v in got)
    for i, row in enumerate(rows):
        if fits(row, limit):
            assert got[row] == float(i)  # exact values keep their text


# ------------------------------------------------------------------ the store: counter, logs


def test_the_store_counts_and_logs_each_shortened_value_once_per_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = query_params()
    store = SnapshotStore(
        interval=1,
        queries=dict.fromkeys(QUERY_NAMES, (1.0, 3.0)),
        process_metrics=False,
        max_label_length=64,
    )
    tags = [{"tag": "t" * 100, "tweet_count": 3}, {"tag": "ok", "tweet_count": 2}]
    users = [{"username": "u" * 100, "follower_count": 9, "verified": True}]
    caplog.set_level(logging.WARNING, logger="exporter.expose.labels")
    for _ in range(3):
        store.record_success(
            "trending_hashtags", trending_hashtags.COLLECTOR.to_families(tags, params), 0
        )
    store.record_success("top_users", top_users.COLLECTOR.to_families(users, params), 0)
    counter = store.health.label_values_truncated
    assert counter.labels(query="trending_hashtags")._value.get() == 3.0
    assert counter.labels(query="top_users")._value.get() == 1.0
    assert counter.labels(query="platform_stats")._value.get() == 0.0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "trending_hashtags: tag label value of 100 bytes exported as" in messages[0]
    assert "t" * 100 not in messages[0]  # the log line is bounded too
    body = store.render().text.body.decode()
    assert 'tw_exporter_label_values_truncated_total{query="trending_hashtags"} 3.0' in body
    assert f'tag="{shorten("t" * 100, 64)}"' in body


def test_the_log_memory_is_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(labels, "MAX_REMEMBERED", 3)
    bounder = LabelBounder(32)
    caplog.set_level(logging.WARNING, logger="exporter.expose.labels")
    result = bounder.bound("q", [gauge("tag", *(f"{i:02}" + "v" * 40 for i in range(6)))])
    assert result.shortened == 6
    assert len(caplog.records) == 3 + 1  # three values, then one "not logged any more" line
    assert "further ones are counted" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("limit", [MIN_MAX_LABEL_LENGTH - 1, MAX_MAX_LABEL_LENGTH + 1])
def test_the_bounder_refuses_limits_the_settings_refuse(limit: int) -> None:
    with pytest.raises(ValueError, match="label length limit"):
        LabelBounder(limit)


def test_flag_and_environment_variable_set_the_limit() -> None:
    def parse(argv: list[str], env: dict[str, str]) -> int:
        args = build_parser().parse_args(["run", "--dsn", "postgresql://db/app", *argv])
        return settings_from(args, env).max_label_length

    assert parse([], {}) == DEFAULT_MAX_LABEL_LENGTH == 256
    assert parse([], {"TW_EXPORTER_MAX_LABEL_LENGTH": "1024"}) == 1024
    assert parse(["--max-label-length", "32"], {"TW_EXPORTER_MAX_LABEL_LENGTH": "1024"}) == 32


def test_the_docs_state_the_limit_the_code_has() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "label-values.md").read_text()
    row = "| `--max-label-length BYTES` | `TW_EXPORTER_MAX_LABEL_LENGTH` | "
    row += f"{DEFAULT_MAX_LABEL_LENGTH} |"
    assert row in docs
    assert f"from {MIN_MAX_LABEL_LENGTH} to {MAX_MAX_LABEL_LENGTH:,}" in docs
    assert (
        f"expected a whole number of bytes from {MIN_MAX_LABEL_LENGTH} to {MAX_MAX_LABEL_LENGTH}"
        in docs
    )
    assert f"`{EMPTY}`" in docs and f"first {labels.HASH_HEX_DIGITS} hex digits" in docs
