"""The queries file's validation: one clear line per problem (file, query, field), exit 2;
defaults and precedence (file over flag over default); the published JSON Schema."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml

from exporter import cli
from exporter.config.queries_file import (
    QueriesFileError,
    bind,
    json_schema,
    parse,
    parse_duration,
)
from exporter.config.settings import query_params
from tests.conftest import exporter_command
from tools.schemas import QUERIES_SCHEMA, render_queries_schema

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples" / "queries").glob("*.yml"))
SETTINGS = query_params()


def q(body: str, name: str = "q") -> str:
    """A file with one custom query whose body is the given flow mapping's content."""
    return f"queries: {{{name}: {{{body}}}}}"


OK = "sql: 'SELECT 1 AS m', metrics: {m: {help: h}}"

BAD = [
    # (file text, expected fragment of the one error line)
    (q(OK + ", foo: 1"), "query q, field foo: unknown key"),
    (q("sql: 'SELECT 1', metrics: {m: {help: h, colour: red}}"), "metrics.m.colour: unknown key"),
    ("querys: {}", "field querys: unknown key"),
    (q(OK, name="Bad-Name"), "query Bad-Name, its name: 'Bad-Name': expected snake_case"),
    (q("sql: 'SELECT 1', metrics: {9lives: {help: h}}"), "expected a Prometheus metric name"),
    (
        q("sql: 'SELECT 1', metrics: {m: {help: h, labels: [bad-label]}}"),
        "field metrics.m.labels[0]: 'bad-label': expected a Prometheus label name",
    ),
    (q("sql: 'SELECT 1', metrics: {tw_up: {help: h}}"), "'tw_up' is reserved"),
    (q("sql: 'SELECT 1', metrics: {tw_exporter_x: {help: h}}"), "'tw_exporter_x' is reserved"),
    (q("sql: 'SELECT 1', metrics: {process_x: {help: h}}"), "'process_x' is reserved"),
    (q("sql: 'SELECT 1', metrics: {python_x: {help: h}}"), "'python_x' is reserved"),
    (
        q("sql: 'SELECT 1', metrics: {tw_hashtag_tweets: {help: h}}"),
        "'tw_hashtag_tweets' is already produced by the built-in queries",
    ),
    (
        "queries: {a: {" + OK + "}, b: {" + OK + "}}",
        "query b, field metrics.m: 'm' is already produced by query a",
    ),
    (
        q("sql: 'SELECT 1', metrics: {m: {help: h, labels: [job]}}"),
        "label 'job' is reserved for the scraper",
    ),
    (
        q("sql: 'SELECT 1', metrics: {m: {help: h, const_labels: {instance: x}}}"),
        "label 'instance' is reserved for the scraper",
    ),
    (
        q("sql: 'SELECT 1', metrics: {m: {help: h, value: a, labels: [a]}}"),
        "column 'a' is both a label and the value",
    ),
    (
        q("sql: 'SELECT 1', metrics: {m: {help: h, labels: [a], const_labels: {a: x}}}"),
        "label 'a' is given twice",
    ),
    (
        q("sql: 'SELECT 1', metrics: {requests: {help: h, type: counter}}"),
        "counter 'requests' must end in _total",
    ),
    (q("sql: 'SELECT 1', metrics: {m: {help: h, type: summary}}"), "metrics.m.type"),
    (q(OK + ", interval: 5, timeout: 6"), "field timeout: 6s (q.yml) is longer than the interval"),
    (q(OK + ", interval: 60, max_staleness: 30"), "max_staleness: 30s is shorter"),
    (q(OK + ", interval: 0"), "field interval: invalid duration 0: expected from 0.05s"),
    (q(OK + ", interval: 5x"), "field interval: invalid duration '5x'"),
    (q(OK + ", max_series: 0"), "field max_series"),
    (q("sql: 'DELETE FROM tw_users', metrics: {m: {help: h}}"), "got DELETE"),
    (q("sql: 'SELECT 1; SELECT 2', metrics: {m: {help: h}}"), "expected a single statement"),
    (q("sql: 'SELECT $1', metrics: {m: {help: h}}"), "uses 1 parameter(s) ($1..$n) but 0"),
    (q("sql: 'SELECT $1', params: [[1]], metrics: {m: {help: h}}"), "field params[0]: expected"),
    (
        q("sql: 'SELECT $1', params: [{interval: soon}], metrics: {m: {help: h}}"),
        "field params[0]: invalid duration 'soon'",
    ),
    (q("sql: 'SELECT 1', metrics: {}"), "field metrics"),
    (q("metrics: {m: {help: h}}"), "field sql: Field required"),
    (q("sql: 'SELECT 1', metrics: {m: {}}"), "field metrics.m.help: Field required"),
    (q(OK, name="top_users"), "query top_users: the name of a built-in query"),
    ("builtins: {top_users: {sql: x}}", "built-in query top_users, field sql: unknown key"),
    (
        "builtins: {top_userz: {}}",
        "built-in query top_userz: unknown key (the built-in queries are top_users,",
    ),
    (
        "builtins: {platform_stats: {interval: 5, timeout: 6}}",
        "built-in query platform_stats, field timeout: 6s is longer than the interval 5s",
    ),
    (
        "queries: {a: {" + OK + "}, a: {" + OK + "}}",
        "invalid YAML at line 1, column 63: duplicate key 'a'",
    ),
    ("queries: [", "invalid YAML"),
    # OpenMetrics: a counter tw_x_total is the family tw_x, and suffixes name samples.
    (
        "queries: {a: {sql: 'SELECT 1 AS x', metrics: {tw_x: {help: h, value: x}, "
        "tw_x_total: {help: h, type: counter, value: x}}}}",
        "query a, field metrics.tw_x_total: 'tw_x_total' collides with 'tw_x' of query a: both "
        "are the OpenMetrics family 'tw_x'",
    ),
    (
        "queries: {a: {sql: 'SELECT 1 AS x', metrics: {tw_x: {help: h, value: x}}}, "
        "b: {sql: 'SELECT 1 AS x', metrics: {tw_x_created: {help: h, value: x}}}}",
        "query b, field metrics.tw_x_created: 'tw_x_created' collides with 'tw_x' of query a: "
        "the families 'tw_x_created' and 'tw_x' differ by an OpenMetrics suffix",
    ),
    (
        q(
            "sql: 'SELECT 1 AS x', metrics: {tw_user_followers_total: {help: h, type: counter, "
            "value: x}}"
        ),
        "'tw_user_followers_total' collides with 'tw_user_followers' of the built-in queries",
    ),
    (
        q("sql: 'SELECT 1 AS x', metrics: {tw_hashtag_tweets_info: {help: h, value: x}}"),
        "'tw_hashtag_tweets_info' collides with 'tw_hashtag_tweets' of the built-in queries",
    ),
    (
        q("sql: 'SELECT 1 AS x', metrics: {tw_up_sum: {help: h, value: x}}"),
        "'tw_up_sum' collides with 'tw_up' of the exporter itself",
    ),
    # What once escaped as OverflowError or RecursionError.
    (
        q(
            "sql: 'SELECT $1::interval AS x', params: [{interval: 200000000w}], "
            "metrics: {m: {help: h, value: x}}"
        ),
        "query q, field params[0]: invalid duration '200000000w': expected at most 999999999d",
    ),
    (q("interval: " + "9" * 400 + ", " + OK), "expected a finite, positive duration"),
    ("queries: " + "[" * 5000 + "]" * 5000, "nested too deeply to be read"),
    ("queries: " + "{a: " * 5000 + "1" + "}" * 5000, "nested too deeply to be read"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_each_invalid_file_gets_one_line_naming_file_query_and_field(
    text: str, expected: str
) -> None:
    with pytest.raises(QueriesFileError) as caught:
        parse(text, SETTINGS, Path("q.yml"))
    message = str(caught.value)
    assert message.startswith("q.yml: ")
    assert "\n" not in message
    assert expected in message, message


def test_semicolons_and_keywords_inside_quotes_and_comments_are_not_statements() -> None:
    sql = (
        "-- a comment; DELETE\n/* ; */ WITH x AS (SELECT ';' AS s, $$;$$ AS d, \"a;b\" AS m) "
        "SELECT 1 AS m FROM x;"
    )
    text = yaml.safe_dump({"queries": {"q": {"sql": sql, "metrics": {"m": {"help": "h"}}}}})
    assert "q" in parse(text, SETTINGS).custom


def test_invalid_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(q("sql: 'SELECT 1', metrics: {m: {help: h, labels: [job]}}"))
    with pytest.raises(SystemExit) as caught:
        cli.main(
            ["run", "--dsn", "postgresql://u:secret@127.0.0.1:1/db", "--queries-file", str(path)]
        )
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"tw-exporter: error: {path}: query q, field metrics.m.labels:")


def test_durations_and_typed_params_are_converted_before_binding() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(12) == 12
    text = q(
        "sql: 'SELECT $1, $2, $3, $4, $5, $6', metrics: {m: {help: h}}, "
        "params: [7, 1.5, text, true, {interval: 2h}, {seconds: 5m}]"
    )
    query, _ = parse(text, SETTINGS).custom["q"]
    bound = [bind(p) for p in query.params]
    assert bound == [7, 1.5, "text", True, timedelta(hours=2), 300.0]
    assert [type(b) for b in bound[:4]] == [int, float, str, bool]


def test_defaults_follow_the_issue_and_the_flags() -> None:
    other = "sql: 'SELECT 1 AS n', metrics: {n: {help: h}}"
    text = "queries: {a: {" + OK + "}, b: {" + other + ", interval: 5m}}"
    config = parse(text, query_params(interval=15.0))
    a, b = config.custom["a"][1], config.custom["b"][1]
    assert (a.interval, a.timeout, a.max_staleness, a.max_series) == (15, 10, 45, 500)
    assert (b.interval, b.timeout, b.max_staleness) == (300, 10, 900)
    assert a.sources["interval"] == "default"
    assert b.sources["interval"] == "file"
    short = parse(q(OK + ", interval: 2"), SETTINGS).custom["q"][1]
    assert short.timeout == 2  # min(10 s, interval)


def test_file_wins_over_flags_and_builtins_can_be_disabled(tmp_path: Path) -> None:
    path = tmp_path / "queries.yml"
    path.write_text("builtins: {top_users: {interval: 15s}, platform_stats: {enabled: false}}")
    args = cli.build_parser().parse_args(
        [
            "run",
            "--dsn",
            "postgresql://u@h/db",
            "--interval",
            "60",
            "--query-timeout",
            "20",
            "--queries-file",
            str(path),
        ]
    )
    from exporter.config import settings as cfg
    from exporter.config.queries_file import config_for

    settings = cfg.settings_from(args, environ={})
    config = config_for(settings)
    assert list(config.builtins) == ["top_users", "trending_hashtags"]
    top, trending = config.builtins["top_users"], config.builtins["trending_hashtags"]
    assert (top.interval, top.sources["interval"]) == (15, str(path))
    assert top.timeout == 15  # --query-timeout 20, capped at the file's interval
    assert "--query-timeout" in top.sources["timeout"]
    assert (trending.interval, trending.sources["interval"]) == (60, "--interval")
    assert trending.timeout == 20


def test_env_variable_names_the_file(tmp_path: Path) -> None:
    from exporter.config import settings as cfg

    path = tmp_path / "q.yml"
    path.write_text("queries: {}")
    args = cli.build_parser().parse_args(["run", "--dsn", "postgresql://u@h/db"])
    settings = cfg.settings_from(args, environ={"TW_EXPORTER_QUERIES_FILE": str(path)})
    assert settings.queries_file == path


def test_published_schema_is_the_generated_one() -> None:
    assert (REPO / QUERIES_SCHEMA).read_text() == render_queries_schema()
    jsonschema.Draft202012Validator.check_schema(json_schema())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_for_the_schema_and_the_exporter(path: Path) -> None:
    schema = json.loads((REPO / QUERIES_SCHEMA).read_text())
    document = yaml.safe_load(path.read_text())
    jsonschema.validate(document, schema)
    parse(path.read_text(), SETTINGS, path)


def test_schema_rejects_what_the_exporter_rejects() -> None:
    schema = json.loads((REPO / QUERIES_SCHEMA).read_text())
    for document in (
        {"queries": {"q": {"sql": "SELECT 1", "metrics": {"m": {"help": "h"}}, "foo": 1}}},
        {"queries": {"q": {"sql": "SELECT 1", "metrics": {"m": {"help": "h", "type": "x"}}}}},
        {"queries": {"q": {"sql": "SELECT 1", "interval": "soon", "metrics": {}}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(document, schema)


def test_the_docs_page_files_are_valid() -> None:
    import re

    page = (REPO / "docs" / "custom-queries.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "queries:" in b]
    assert len(blocks) >= 2
    for block in blocks:
        parse(block, SETTINGS)
    assert "docs/custom-queries.md" in (REPO / "README.md").read_text()


def test_ha_lease_must_outlast_the_longest_query_timeout_of_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --ha, a queries file's timeouts win over --query-timeout, so the lease is checked
    against the longest of them wherever the file is read: at startup (exit 2, one line) and
    on every reload (``config_for``, which the Reloader calls; an error keeps the old set)."""
    from exporter.config import settings as cfg
    from exporter.config.queries_file import config_for

    path = tmp_path / "queries.yml"
    path.write_text(q("sql: 'SELECT 1 AS m', interval: 60s, timeout: 20s, metrics: {m: {help: h}}"))
    argv = ["run", "--dsn", "postgresql://u:secret@127.0.0.1:1/db", "--queries-file", str(path)]
    ha = [*argv, "--ha", "--query-timeout", "5", "--ha-lease", "9"]
    with pytest.raises(SystemExit) as caught:
        cli.main(ha)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == (
        f"tw-exporter: error: {path}: query q, field timeout: 20s needs --ha-lease >= 22 "
        "(the timeout + 2), but the lease is 9: raise --ha-lease or shorten the timeout"
    )
    assert "secret" not in err
    # A lease long enough, or no --ha at all, loads the same file.
    ok = cfg.settings_from(cli.build_parser().parse_args([*ha[:-1], "22"]), environ={})
    assert config_for(ok).custom["q"][1].timeout == 20
    lone = cfg.settings_from(cli.build_parser().parse_args(argv), environ={})
    assert config_for(lone).custom["q"][1].timeout == 20
    # A reload that lengthens a timeout past the lease is refused the same way.
    path.write_text(q("sql: 'SELECT 1 AS m', interval: 60s, timeout: 30s, metrics: {m: {help: h}}"))
    with pytest.raises(QueriesFileError, match="30s needs --ha-lease >= 32"):
        config_for(ok)


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_report_a_hostile_file_in_one_line(command: str, tmp_path: Path) -> None:
    """Deep nesting and huge durations: exit 2 and one line, never a traceback."""
    files = {
        "deep.yml": ("queries: " + "[" * 5000 + "]" * 5000, "nested too deeply to be read"),
        "huge.yml": (
            q(
                "sql: 'SELECT $1::interval AS x', params: [{interval: 200000000w}], "
                "metrics: {m: {help: h, value: x}}"
            ),
            "expected at most 999999999d",
        ),
    }
    for name, (text, expected) in files.items():
        path = tmp_path / name
        path.write_text(text)
        result = subprocess.run(
            exporter_command(
                command, "--dsn", "postgresql://u@127.0.0.1:1/db", "--queries-file", str(path)
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = result.stderr.splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and expected in lines[0], result.stderr
    if command == "run":  # the web config, read by `run` only, holds the same way
        web = tmp_path / "web.yml"
        web.write_text("basic_auth_users: " + "[" * 5000 + "]" * 5000)
        result = subprocess.run(
            exporter_command(
                "run", "--dsn", "postgresql://u@127.0.0.1:1/db", "--web-config-file", str(web)
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"tw-exporter: error: --web-config-file: {web}"), lines
