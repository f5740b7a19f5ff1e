"""Numbers in the docs that the code knows: connection counts, defaults and limits (issue 25).

The tables are generated (tools/readme_tables.py); prose cannot be, so each number a sentence
states is checked here against the constant it comes from, and three sweeps catch a number
written without a check: a connection count, a flag's default, the exporter's port. A claim
the sweeps find that is neither registered below nor about something else (HTTP connections,
a test's setup) fails, naming the page and the words.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.collectors import COLLECTORS
from exporter.config import settings as cfg
from exporter.config.queries_file import DEFAULT_MAX_SERIES
from exporter.db.database import MAX_CONNECTION_AGE
from exporter.expose.accepting import BASE_DESCRIPTORS, MAX_ACCEPT_BATCH, accept_batch
from exporter.ops.check import CHECK_CONNECTIONS

REPO = Path(__file__).resolve().parent.parent
PAGES = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "exporter/sql/least-privilege.sql",
]

POOL = cfg.DEFAULT_MAX_CONNECTIONS  # the most connections the pool opens, by default
BUILTIN = len(COLLECTORS)  # queries, so connections, with no queries file
# The --ha lock session: one plain connection per replica, besides the pool (exporter/db/leader.py
# says so in its first line; tests/test_ha.py runs it).
HA_LOCK = 1
WEB_CONNECTIONS = next(o.default for o in cfg.ALL_OPTIONS if o.flag == "--web-max-connections")
LOW_NOFILE = 64  # the docs' example of a low open-files limit
#: The cap the server fits beside BASE_DESCRIPTORS and the default pool under that limit.
LOW_NOFILE_CAP = max(
    c
    for c in range(1, int(WEB_CONNECTIONS) + 1)
    if c + accept_batch(c) <= LOW_NOFILE - BASE_DESCRIPTORS - POOL
)
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}


def flat(path: Path) -> str:
    """The page's text with its line breaks (and SQL comment markers) folded into spaces."""
    text = path.read_text()
    if path.suffix == ".sql":
        text = re.sub(r"^-- ?", "", text, flags=re.M)
    return " ".join(text.split())


def script_connection_limit() -> int:
    match = re.search(
        r"\\set connection_limit (\d+)", (REPO / "exporter/sql/least-privilege.sql").read_text()
    )
    assert match, "exporter/sql/least-privilege.sql sets no default connection_limit"
    return int(match.group(1))


LIMIT = script_connection_limit()
PER_REPLICA = (
    f"per replica, the exporter uses at most `--max-connections`, default {POOL}, plus {HA_LOCK} "
    f"with `--ha` for its lock, plus {CHECK_CONNECTIONS} while `tw-exporter check` runs"
)

#: page -> sentences (whitespace folded) whose numbers come from the code.
CLAIMS: dict[str, list[str]] = {
    "README.md": [
        f"a pool of one connection per query ({BUILTIN} for the built-in queries; at most "
        f"`--max-connections`, default {POOL}, with custom ones)",
    ],
    "docs/running-against-your-database.md": [
        f"one connection per query while it runs: as many as the enabled queries, at most "
        f"`--max-connections`, default {POOL}; the {BUILTIN} built-in queries alone use {BUILTIN}",
        f"keeps up to `--max-connections` (default {POOL}; one per enabled query, so {BUILTIN} "
        "with the built-in queries alone) client connections open",
        f"plus {CHECK_CONNECTIONS} for `tw-exporter check` run beside it",
        f"The exporter opens at most `--max-connections` connections (default {POOL})",
        f"(the {BUILTIN} built-in ones, plus your",
        f"while `tw-exporter check` runs beside it, {CHECK_CONNECTIONS} more",
        f"each replica also holds {HA_LOCK} lock connection to `--ha-dsn`",
        f"| `transaction` | `--max-connections` ({POOL}):",
        f"| `session` | `--max-connections` + {CHECK_CONNECTIONS} ({POOL + CHECK_CONNECTIONS}):",
        f"default {LIMIT}) counts the server connections",
        f"a queries file that keeps all {POOL} connections busy",
        f"replaces all pooled connections every {MAX_CONNECTION_AGE:g} seconds",
    ],
    "docs/security.md": [f"| Connection limit | {LIMIT} ({PER_REPLICA}) |"],
    "exporter/sql/least-privilege.sql": [
        f"connection_limit (default {LIMIT}: per replica, the exporter uses at most "
        f"--max-connections (default {POOL}), plus {HA_LOCK} with --ha for its lock, plus "
        f"{CHECK_CONNECTIONS} while `tw-exporter check` runs)"
    ],
    "docs/custom-queries.md": [
        f"at most `--max-connections` connections (default {POOL})",
        f"{WORDS[POOL]} slow queries holding the {WORDS[POOL]} connections",
        f"max_series: {DEFAULT_MAX_SERIES} # default {DEFAULT_MAX_SERIES}",
    ],
    "docs/how-it-works.md": [f"at most `--max-connections`, default {POOL};"],
    "docs/high-availability.md": [f"Each replica opens **{WORDS[HA_LOCK]} plain connection"],
    "docs/http-limits.md": [
        f"At the default cap of {WEB_CONNECTIONS} connections",
        f"With `ulimit -n {LOW_NOFILE}`, the default cap of {WEB_CONNECTIONS} and the default pool "
        f"of {POOL}, the cap becomes {LOW_NOFILE_CAP}:",
        f"at most `cap / 8` (1 to {MAX_ACCEPT_BATCH}) new connections",
    ],
}

#: Numbers next to "connection(s)" that are not the exporter's database connections.
NOT_POOL_COUNTS = {
    "docs/database-faults.md": [
        "until the 300 s connection recycle",  # a connection's age, not a count
        "one free connection slot",  # the server's, in a fault scenario
        "SQLSTATE 53300 while connections of ours",  # an error code
        "on the one connection",  # the scenario's one slot
    ],
    "docs/custom-queries.md": [
        "holds one connection",
        "keeps one connection out",
        "at least one connection keeps",
    ],
    "docs/high-availability.md": ["keeps one server connection per client"],
    "docs/http-limits.md": [
        "32 per connection",
        "503 Too many connections",
        "1,000 idle connections to an in-process server",  # a measurement's setup
        "allocated 256 KiB per connection",  # bytes, not a count
        "as one of the server's connections closes",
    ],
    "docs/performance.md": ["over one kept-alive connection", "16 KiB buffer per connection"],
    "docs/running-against-your-database.md": [
        "keeps one server connection for all",
        "through to one server connection",
        "over 2 server connections",  # a test's setup
    ],
    "docs/security.md": ["PostgreSQL 15 that accepts TLS connections"],
}

COUNT = r"\b(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten)\b"
CONNECTION_COUNT = re.compile(
    rf"{COUNT}(?: [\w`'()-]+){{0,3}}? (?:client |server |lock |database )?connections?\b"
    rf"|at most {COUNT} (?:\w+ )?(?:connections?|per replica)\b|{COUNT} in all\b|pool of {COUNT}\b",
    re.I,
)


def page_name(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("page", list(CLAIMS), ids=str)
def test_each_number_the_code_knows_is_the_codes(page: str) -> None:
    text = flat(REPO / page)
    for claim in CLAIMS[page]:
        assert claim in text, f"{page} no longer says (or says otherwise): {claim}"


def test_the_documented_connection_limit_fits_one_replica() -> None:
    assert POOL + HA_LOCK + CHECK_CONNECTIONS <= LIMIT


@pytest.mark.parametrize("path", PAGES, ids=page_name)
def test_every_connection_count_is_checked(path: Path) -> None:
    """A number next to "connection(s)" (or "at most N", "N in all", "pool of N") is inside a
    checked claim above, or listed as not being about the exporter's database connections."""
    text = flat(path)
    known = CLAIMS.get(page_name(path), []) + NOT_POOL_COUNTS.get(page_name(path), [])
    spans = [
        (m.start(), m.start() + len(k)) for k in known for m in re.finditer(re.escape(k), text)
    ]
    unchecked = [
        text[max(0, m.start() - 40) : m.end() + 20]
        for m in CONNECTION_COUNT.finditer(text)
        if not any(start <= m.start() and m.end() <= end for start, end in spans)
        and "connection" in text[max(0, m.start() - 80) : m.end() + 80].lower()
    ]
    assert not unchecked, (
        f"{page_name(path)}: connection counts no test checks (add them to CLAIMS with the "
        f"constant they come from): {unchecked}"
    )


OPTIONS = {option.flag: option for option in cfg.ALL_OPTIONS}
FLAG_DEFAULT = re.compile(r"`?(--[a-z][a-z-]+)`?(?:[^`|#;]{0,40}?)\(?default:? (\d+(?:\.\d+)?)s?\b")


@pytest.mark.parametrize("path", PAGES, ids=page_name)
def test_every_flag_default_in_prose_is_the_options(path: Path) -> None:
    """ "`--flag` ... default N" in a sentence says the option's real default."""
    wrong = []
    for match in FLAG_DEFAULT.finditer(flat(path)):
        option = OPTIONS.get(match.group(1))
        if option is None or "--" in match.group(0)[len(match.group(1)) + 1 :]:
            continue  # another command's flag, or the number belongs to a later flag
        if option.default is None or float(option.default) != float(match.group(2)):
            wrong.append(f"{match.group(0)!r}: the default is {option.default}")
    assert not wrong, f"{page_name(path)}: {wrong}"


# Other services' ports a page may name: PostgreSQL's, PgBouncer's, Grafana's, Prometheus'.
OTHER_PORTS = {5432, 6432, 3000, 9090}
PORT = re.compile(r"(?:127\.0\.0\.1|0\.0\.0\.0|localhost|\.internal|\]):(\d{4,5})\b|-p (\d+):")


@pytest.mark.parametrize("path", PAGES, ids=page_name)
def test_every_exporter_port_is_the_default_port(path: Path) -> None:
    ports = {int(a or b) for a, b in PORT.findall(flat(path))} - OTHER_PORTS
    assert ports <= {cfg.DEFAULT_PORT}, f"{page_name(path)} names ports {ports}"
