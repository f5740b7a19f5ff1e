"""The documentation's generated tables, from the code (their one source).

Each table lives in a page of ``docs/`` (or in README.md) between two markers::

    <!-- generated: NAME (python -m tools.readme_tables --write) -->
    ...
    <!-- end generated: NAME -->

``python -m tools.readme_tables --write`` rewrites every block from the code,
``python -m tools.readme_tables --check`` exits 1 naming the blocks that are out of date, and
``tests/test_readme.py`` runs the same check, so the docs cannot drift from the flags, metrics,
alerts, dashboard and runbook. Without arguments it prints the tables.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.config import settings as cfg
from exporter.expose.catalog import ALL_METRICS

ROOT = Path(__file__).resolve().parent.parent


def configuration_table() -> list[str]:
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for option in cfg.ALL_OPTIONS:
        rows.append(
            f"| `{f'{option.flag} {option.metavar}'.strip()}` | `{option.env}` "
            f"| {option.shown_default} "
            f"| {option.help} |"
        )
    return rows


def metrics_table() -> list[str]:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in ALL_METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |")
    return rows


def _command_table(add_options: Callable[[argparse.ArgumentParser], None]) -> list[str]:
    """A command's flags exactly as its ``--help`` shows them (the help strings carry the
    command's own defaults and environment variables)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser)
    rows = ["| flag | meaning |", "|---|---|"]
    for action in parser._actions:
        flag = action.option_strings[-1]
        shown = f"{flag} {action.metavar}" if action.metavar else flag
        rows.append(f"| `{shown}` | {action.help} |")
    return rows


def demo_table() -> list[str]:
    from exporter.ops.demo import add_demo_options

    return _command_table(add_demo_options)


def monitoring_table() -> list[str]:
    from exporter.cli import add_monitoring_options

    return _command_table(add_monitoring_options)


#: Where a command's row points for more than its help line (links relative to docs/).
COMMAND_LINKS = {
    "monitoring": "[what it writes](custom-queries.md"
    "#five-minutes-from-a-file-to-a-dashboard-panel-and-an-alert)",
    "demo": "`--tweets N`, `--data-dir PATH`; [its flags](your-own-database.md#the-demos-flags)",
    "sample-data": "[details](your-own-database.md#sample-data-tw-exporter-sample-data)",
}


def commands_table() -> list[str]:
    """Every command of ``tw-exporter --help``, with its help line (``exporter/cli.py``)."""
    from exporter.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    rows = ["| command | what it does |", "|---|---|"]
    for choice in commands._choices_actions:
        link = COMMAND_LINKS.get(choice.dest)
        rows.append(
            f"| `tw-exporter {choice.dest}` | {choice.help}{f' ({link})' if link else ''} |"
        )
    rows.append("| `tw-exporter --version` | the version |")
    rows.append(
        "| `tw-exporter COMMAND --help` | the command's flags, with their defaults and variables |"
    )
    return rows


def sample_data_table() -> list[str]:
    from exporter.ops.sample_data import add_sample_data_options

    return _command_table(add_sample_data_options)


# ---------------------------------------------------------------- tables from exporter.monitoring
# Imported when called: the monitoring generator is large and only the docs need it here.

RUNBOOK_PAGE = "runbook.md"
_ROOT_RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+)\)")


def _from_docs(markdown: str) -> str:
    """Links written relative to the repository root (as for the README) made relative to a
    page in ``docs/``: ``docs/x.md`` becomes ``x.md``, anything else gets ``../``."""

    def relink(match: re.Match[str]) -> str:
        target = match.group(1)
        return (
            f"]({target.removeprefix('docs/') if target.startswith('docs/') else '../' + target})"
        )

    return _ROOT_RELATIVE_LINK.sub(relink, markdown)


def alerts_table() -> str:
    """The alert table, for a page beside the runbook: its links go to ``runbook.md``."""
    from exporter.monitoring import render

    table = _from_docs(render.alerts_markdown())
    return table.replace("](#runbook-", f"]({RUNBOOK_PAGE}#runbook-")


def alert_parameters_table() -> str:
    from exporter.monitoring import render

    return _from_docs(render.thresholds_markdown())


def panels_table() -> str:
    from exporter.monitoring import render

    return _from_docs(render.panels_markdown())


def runbook_sections() -> str:
    """One section per alert, under the runbook page's own title (the generator's
    ``## Runbook`` heading is the page's ``# Runbook`` here)."""
    from exporter.monitoring import render

    return _from_docs(render.runbook_markdown().removeprefix("## Runbook\n").lstrip("\n"))


def runbook_redirects() -> str:
    """For the README: an anchor per alert where the runbook used to be, linking to its entry
    in docs/runbook.md, so ``runbook_url``s of rules deployed from earlier versions still land
    next to the right link."""
    from exporter.monitoring import render

    entries = re.findall(r'<a id="(runbook-[^"]+)"></a>\s+### (\S+)', render.runbook_markdown())
    return "".join(
        f'- <a id="{anchor}"></a>[{name}](docs/{RUNBOOK_PAGE}#{anchor})\n'
        for anchor, name in entries
    )


# ---------------------------------------------------------------- generated blocks in the docs


@dataclass(frozen=True)
class Block:
    name: str
    page: Path
    """Relative to the repository root."""
    render: Callable[[], str]

    @property
    def begin(self) -> str:
        return f"<!-- generated: {self.name} (python -m tools.readme_tables --write) -->"

    @property
    def end(self) -> str:
        return f"<!-- end generated: {self.name} -->"


def _lines(rows: Callable[[], list[str]]) -> Callable[[], str]:
    return lambda: "\n".join(rows()) + "\n"


BLOCKS: tuple[Block, ...] = (
    Block("configuration", Path("docs/configuration.md"), _lines(configuration_table)),
    Block("commands", Path("docs/configuration.md"), _lines(commands_table)),
    Block("monitoring-flags", Path("docs/configuration.md"), _lines(monitoring_table)),
    Block("metrics", Path("docs/metrics.md"), _lines(metrics_table)),
    Block("demo-flags", Path("docs/your-own-database.md"), _lines(demo_table)),
    Block("sample-data-flags", Path("docs/your-own-database.md"), _lines(sample_data_table)),
    Block("alert-parameters", Path("docs/prometheus-and-alerts.md"), alert_parameters_table),
    Block("alerts", Path("docs/prometheus-and-alerts.md"), alerts_table),
    Block("dashboard-panels", Path("docs/grafana.md"), panels_table),
    Block("runbook", Path("docs/runbook.md"), runbook_sections),
    Block("runbook-redirects", Path("README.md"), runbook_redirects),
)


def _pattern(block: Block) -> re.Pattern[str]:
    return re.compile(re.escape(block.begin) + r"\n(.*?)" + re.escape(block.end), re.S)


def fill(block: Block, text: str) -> str:
    """``text`` with the block's content regenerated; a page without its markers is an error
    (a deleted marker would otherwise leave a stale table nobody checks)."""
    pattern = _pattern(block)
    if len(pattern.findall(text)) != 1:
        raise ValueError(
            f"{block.page}: expected exactly one '{block.begin}' ... '{block.end}' block"
        )
    body = block.render().rstrip("\n")
    return pattern.sub(lambda _: f"{block.begin}\n\n{body}\n\n{block.end}", text)


def regenerate(root: Path = ROOT) -> dict[Path, tuple[str, str]]:
    """Every page with generated blocks: (its text now, its text regenerated)."""
    pages: dict[Path, tuple[str, str]] = {}
    for block in BLOCKS:
        old, new = pages.get(block.page) or ((text := (root / block.page).read_text()), text)
        pages[block.page] = (old, fill(block, new))
    return pages


def stale(root: Path = ROOT) -> list[str]:
    """Names of the blocks whose page differs from what the code generates."""
    names = []
    for block in BLOCKS:
        text = (root / block.page).read_text()
        if fill(block, text) != text:
            names.append(f"{block.page}: {block.name}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.readme_tables", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="rewrite the generated blocks")
    group.add_argument("--check", action="store_true", help="exit 1 when a block is stale")
    args = parser.parse_args(argv)
    try:
        return _run(write=args.write, check=args.check)
    except (OSError, ValueError) as error:
        print(f"python -m tools.readme_tables: error: {error}", file=sys.stderr)
        return 2


def _run(*, write: bool, check: bool) -> int:
    if write:
        for page, (old, new) in regenerate().items():
            if new != old:
                (ROOT / page).write_text(new)
                print(f"wrote {page}")
        return 0
    if check:
        out_of_date = stale()
        for name in out_of_date:
            print(f"out of date: {name} (run python -m tools.readme_tables --write)")
        return 1 if out_of_date else 0
    for block in BLOCKS:
        print(f"{block.page}: {block.name}\n\n{block.render()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
