"""The generated files: which they are, whether they are up to date, and writing them."""

from __future__ import annotations

from pathlib import Path

from exporter.monitoring import paths
from exporter.monitoring.paths import ROOT
from exporter.monitoring.render import (
    render_dashboard,
    render_helm_rules,
    render_rules,
    render_thresholds,
)


def generated_files() -> dict[Path, str]:
    """Each generated file's path (relative to the repository root) and content."""
    dashboard = render_dashboard()
    return {
        paths.RULES_PATH: render_rules(),
        paths.HELM_RULES_PATH: render_helm_rules(),
        paths.HELM_THRESHOLDS_PATH: render_thresholds(),
        paths.DASHBOARD_PATH: dashboard,
        paths.HELM_DASHBOARD_PATH: dashboard,
    }


def stale_files(root: Path = ROOT) -> list[Path]:
    """Generated files missing on disk or differing from what would be generated."""
    stale = []
    for path, content in generated_files().items():
        target = root / path
        if not target.is_file() or target.read_text(encoding="utf-8") != content:
            stale.append(path)
    return stale


def write_files(root: Path = ROOT) -> list[Path]:
    """Write the generated files that differ from disk; the paths written."""
    written = []
    for path, content in generated_files().items():
        target = root / path
        if target.is_file() and target.read_text(encoding="utf-8") == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        written.append(path)
    return written
