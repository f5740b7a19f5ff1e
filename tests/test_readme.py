"""The README agrees with the code: flags, defaults, metrics, port, commands."""

from __future__ import annotations

import re
from pathlib import Path

from exporter import settings as cfg
from exporter.catalog import ALL_METRICS, all_sample_names
from tests.pki import PKI
from tools.readme_tables import configuration_table, metrics_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
METRIC_PREFIXES = ("tw_up", "tw_exporter_", "tw_user_followers", "tw_hashtag_", "tw_platform_")


def test_configuration_table_is_generated_from_the_options() -> None:
    for row in configuration_table():
        assert row in README, f"README lacks or differs in: {row}"


def test_metrics_table_is_generated_from_the_catalogue() -> None:
    for row in metrics_table():
        assert row in README, f"README lacks or differs in: {row}"


def test_every_metric_named_in_the_readme_exists() -> None:
    known = all_sample_names() | {spec.name for spec in ALL_METRICS}
    mentioned = {
        name
        for name in re.findall(r"\btw_[a-z_]+", README)
        if name.startswith(METRIC_PREFIXES) and not name.endswith("_")
    }
    assert mentioned, "the README names no metric at all?"
    unknown = {name for name in mentioned if name not in known}
    assert not unknown, f"README names metrics the exporter does not serve: {unknown}"


def test_default_port_and_quick_start() -> None:
    assert f"127.0.0.1:{cfg.DEFAULT_PORT}/metrics" in README
    assert f"0.0.0.0:{cfg.DEFAULT_PORT}" in README
    assert "pip install -e '.[demo]' && .venv/bin/tw-exporter demo" in README
    assert "pip install -e '.[test]' && .venv/bin/pytest" in README


def test_every_alert_has_a_runbook_section() -> None:
    import yaml

    rules_file = Path(__file__).resolve().parent.parent / "prometheus" / "tw-exporter.rules.yml"
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    alerts = [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
    assert alerts
    for alert in alerts:
        assert f'<a id="runbook-{alert.lower()}"></a>' in README, alert
        assert f"### {alert}" in README, alert


def test_web_config_examples_in_the_readme_pass_promtool_and_load(tmp_path: Path, pki: PKI) -> None:
    import shutil
    import subprocess

    from exporter.webconfig import load_web_config
    from tests.helpers import promtool

    blocks = [
        block
        for block in re.findall(r"```yaml\n(.*?)```", README, re.S)
        if "tls_server_config" in block or "basic_auth_users" in block
    ]
    assert blocks, "the README shows no web-config example?"
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
