"""The README and the docs agree with the code: flags, defaults, metrics, port, commands, the
runbook and the web-config examples. The generated tables live in docs/ pages between markers
(tools/readme_tables.py); the README keeps the quick start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.config import settings as cfg
from exporter.expose.catalog import ALL_METRICS, all_sample_names
from tests.pki import PKI
from tools.readme_tables import BLOCKS, Block, configuration_table, fill, metrics_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {path: path.read_text() for path in sorted((ROOT / "docs").rglob("*.md"))}
METRIC_PREFIXES = ("tw_up", "tw_exporter_", "tw_user_followers", "tw_hashtag_", "tw_platform_")


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.name)
def test_generated_block_is_up_to_date(block: Block) -> None:
    text = (ROOT / block.page).read_text()
    assert fill(block, text) == text, (
        f"{block.page}: the {block.name} block is out of date: "
        "run python -m tools.readme_tables --write"
    )


def test_configuration_table_is_generated_from_the_options() -> None:
    page = DOCS[ROOT / "docs" / "configuration.md"]
    for row in configuration_table():
        assert row in page, f"docs/configuration.md lacks or differs in: {row}"


def test_metrics_table_is_generated_from_the_catalogue() -> None:
    page = DOCS[ROOT / "docs" / "metrics.md"]
    for row in metrics_table():
        assert row in page, f"docs/metrics.md lacks or differs in: {row}"


def test_every_metric_named_in_the_readme_and_docs_exists() -> None:
    known = all_sample_names() | {spec.name for spec in ALL_METRICS}
    for name, text in [("README.md", README), *((str(p), t) for p, t in DOCS.items())]:
        mentioned = {
            metric
            for metric in re.findall(r"\btw_[a-z_]+", text)
            if metric.startswith(METRIC_PREFIXES) and not metric.endswith("_")
        }
        unknown = {metric for metric in mentioned if metric not in known}
        assert not unknown, f"{name} names metrics the exporter does not serve: {unknown}"
    assert "tw_up" in README, "the README names no metric at all?"


def test_example_exposition_help_lines_are_the_catalogues() -> None:
    """The example scrape in docs/metrics.md shows the help texts the exporter serves now."""
    helps = {spec.name: spec.help for spec in ALL_METRICS}
    shown = re.findall(r"^# HELP (\w+) (.*)$", DOCS[ROOT / "docs" / "metrics.md"], re.M)
    assert len(shown) >= 5
    for name, text in shown:
        assert helps.get(name) == text, f"docs/metrics.md example: # HELP {name} is out of date"


def test_default_port_and_quick_start() -> None:
    assert f"127.0.0.1:{cfg.DEFAULT_PORT}/metrics" in README
    assert f"0.0.0.0:{cfg.DEFAULT_PORT}" in README
    assert "pip install -e '.[demo]' && .venv/bin/tw-exporter demo" in README
    assert "pip install -e '.[test]' && .venv/bin/pytest" in README


def test_the_front_page_stays_short() -> None:
    """Issue 14: the README is the front door; the reference lives in docs/."""
    assert len(README.splitlines()) <= 250


def test_every_alert_has_a_runbook_section() -> None:
    import yaml

    runbook = DOCS[ROOT / "docs" / "runbook.md"]
    rules_file = ROOT / "prometheus" / "tw-exporter.rules.yml"
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    alerts = [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
    assert alerts
    for alert in alerts:
        assert f'<a id="runbook-{alert.lower()}"></a>' in runbook, alert
        assert f"### {alert}" in runbook, alert


def test_web_config_examples_in_the_docs_pass_promtool_and_load(tmp_path: Path, pki: PKI) -> None:
    import shutil
    import subprocess

    from exporter.config.webconfig import load_web_config
    from tests.helpers import promtool

    blocks = [
        block
        for block in re.findall(r"```yaml\n(.*?)```", DOCS[ROOT / "docs" / "security.md"], re.S)
        if "tls_server_config" in block or "basic_auth_users" in block
    ]
    assert blocks, "docs/security.md shows no web-config example?"
    for index, block in enumerate(blocks):
        directory = tmp_path / f"example{index}"
        for relative in re.findall(r"(?:cert_file|key_file|client_ca_file): (\S+)", block):
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = pki.server.key if relative.endswith(".key") else pki.server.cert
            if "ca" in Path(relative).name:
                source = pki.ca.cert
            shutil.copyfile(source, target)
        path = directory / "web.yml"
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(block)
        result = subprocess.run(
            [promtool(), "check", "web-config", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        load_web_config(path)
