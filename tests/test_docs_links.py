"""The documentation is a site whose links hold (issue 14): every relative link in README.md and
docs/ names a file that exists, every ``#anchor`` names a heading (GitHub's slug rules) or an
explicit ``<a id>``/``<a name>`` of that page, every docs page is in the index and reachable from
the README, and every alert's ``runbook_url`` lands on its runbook entry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
FRONT_PAGE = REPO / "README.md"
DOCS = REPO / "docs"
DOCS_INDEX = DOCS / "README.md"
RUNBOOK = DOCS / "runbook.md"
RULES = REPO / "prometheus" / "tw-exporter.rules.yml"


def pages() -> list[Path]:
    return [FRONT_PAGE, *sorted(DOCS.rglob("*.md"))]


# ---------------------------------------------------------------- reading markdown

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_INLINE_LINK = re.compile(
    r"(?<!\\)\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
_EXPLICIT_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_ATX_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def _blank(match: re.Match[str]) -> str:
    """The match replaced by spaces, its line breaks kept, so line numbers stay right."""
    return re.sub(r"[^\n]", " ", match.group(0))


def prose_lines(text: str) -> list[str]:
    """The page's lines with fenced code blocks emptied (their lines kept, as blanks)."""
    lines: list[str] = []
    fence = ""
    for line in text.split("\n"):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opened:
            fence = opened.group(1)
            lines.append("")
        else:
            lines.append(line)
    return lines


def prose(text: str) -> str:
    """The page without code (fenced blocks, inline spans) and HTML comments, where nothing
    is a link or a heading; offsets of line breaks are kept."""
    return _COMMENT.sub(_blank, _CODE_SPAN.sub(_blank, "\n".join(prose_lines(text))))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text in lower case, every character that is
    not a letter, digit, underscore, hyphen or space removed, spaces turned into hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = text.replace("`", "")
    text = re.sub(r"[*~]", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link may name on the page: heading slugs (a repeated one gets -1, -2,
    ...) and explicit ``<a id=...>``/``<a name=...>``."""
    text = path.read_text(encoding="utf-8")
    lines = prose_lines(text)
    found: set[str] = set(_EXPLICIT_ANCHOR.findall(_COMMENT.sub("", "\n".join(lines))))
    seen: dict[str, int] = {}
    for index, line in enumerate(lines):
        heading = _ATX_HEADING.match(line)
        title = (heading.group(1) or "") if heading else None
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if (
            title is None
            and line.strip()
            and not line.lstrip().startswith(("|", "-", "*", ">"))
            and _SETEXT_UNDERLINE.match(following)
        ):
            title = line
        if title is None:
            continue
        slug = github_slug(title)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {self.target}"


def links(page: Path) -> Iterator[Link]:
    text = prose(page.read_text(encoding="utf-8"))
    for pattern in (_INLINE_LINK, _REFERENCE_DEFINITION, _HTML_LINK):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1
            yield Link(page, line, match.group(1))


def problem(link: Link, root: Path = REPO) -> str | None:
    """Why the link does not resolve, or None. External links (with a scheme) are not
    fetched: the test runs offline."""
    if _SCHEME.match(link.target):
        return None
    parts = urlsplit(link.target)
    if not parts.path and not parts.fragment:
        return "empty link"
    if parts.path.startswith("/"):
        return "absolute path: links must be relative to the page"
    target = (link.page.parent / unquote(parts.path)).resolve() if parts.path else link.page
    if root not in target.parents and target != root:
        return "points outside the repository"
    if not target.exists():
        return f"no such file: {target.relative_to(root)}"
    fragment = unquote(parts.fragment)
    if fragment and target.suffix == ".md" and fragment not in anchors(target):
        return f"no heading or anchor #{fragment} in {target.relative_to(root)}"
    return None


def broken(page: Path) -> list[str]:
    return [f"{link}: {why}" for link in links(page) if (why := problem(link))]


def linked_pages(page: Path) -> set[Path]:
    """The markdown pages in the repository a page links to."""
    found = set()
    for link in links(page):
        if _SCHEME.match(link.target) or problem(link):
            continue
        path = urlsplit(link.target).path
        if not path:
            continue
        target = (page.parent / unquote(path)).resolve()
        if target.is_dir() and (target / "README.md").exists():
            target = target / "README.md"
        if target.suffix == ".md":
            found.add(target)
    return found


# ---------------------------------------------------------------- the checker checks


def test_slugs_follow_githubs_rules() -> None:
    assert github_slug("Security: TLS and basic auth on /metrics") == (
        "security-tls-and-basic-auth-on-metrics"
    )
    assert github_slug("TLS + basic auth under load, and a soak") == (
        "tls--basic-auth-under-load-and-a-soak"
    )
    assert github_slug("TCP keepalive and `TCP_USER_TIMEOUT`") == (
        "tcp-keepalive-and-tcp_user_timeout"
    )
    assert github_slug("100M+ tweets") == "100m-tweets"
    assert github_slug("Kubernetes (Helm)") == "kubernetes-helm"
    assert github_slug("The demo's flags") == "the-demos-flags"
    assert github_slug("Über [Zeilen](x.md) *schön*") == "über-zeilen-schön"


def test_the_checker_finds_broken_links_and_anchors(tmp_path: Path) -> None:
    """Every kind of link the checker reads, good and broken, on a page of its own, so a
    checker that silently reads nothing cannot pass."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## Same\n\n## Same\n\nSetext\n---\n")
    page.write_text(
        '# Title\n\n<a id="explicit"></a>\n\n'
        "[ok](other.md#same-1) [ok](other.md#setext) [ok](#explicit) [ok](#title)\n"
        "[multi\nline](other.md) ![img](other.md) [ok](https://example.com/#nothing)\n"
        "[bad file](missing.md)\n"
        "[bad anchor](other.md#same-2)\n"
        "[bad here](#nope)\n"
        '<a href="#gone">html</a>\n'
        "[ref]: missing-too.md\n"
        "`[in code](missing-code.md)`\n\n"
        "```\n[in a fence](missing-fence.md)\n# not a heading\n```\n"
        "[not a heading](#not-a-heading)\n"
    )
    problems = {link.target: why for link in links(page) if (why := problem(link, root=tmp_path))}
    assert set(problems) == {
        "missing.md",
        "other.md#same-2",
        "#nope",
        "#gone",
        "missing-too.md",
        "#not-a-heading",
    }, problems
    assert len(list(links(page))) == 13


# ---------------------------------------------------------------- the documentation


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    problems = broken(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_front_page_links_into_the_docs() -> None:
    """The checks below would pass vacuously on a page whose links the reader misses."""
    assert len(list(links(FRONT_PAGE))) >= 30
    assert DOCS_INDEX.resolve() in linked_pages(FRONT_PAGE)


def test_every_docs_page_is_in_the_index_and_reachable_from_the_readme() -> None:
    docs_pages = {page.resolve() for page in DOCS.rglob("*.md")}
    unlisted = docs_pages - linked_pages(DOCS_INDEX) - {DOCS_INDEX.resolve()}
    assert not unlisted, f"docs pages missing from docs/README.md: {sorted(map(str, unlisted))}"
    reached, queue = {FRONT_PAGE.resolve()}, [FRONT_PAGE.resolve()]
    while queue:
        for target in linked_pages(queue.pop()):
            if target not in reached and (target in docs_pages or target == FRONT_PAGE):
                reached.add(target)
                queue.append(target)
    orphans = docs_pages - reached
    assert not orphans, f"docs pages no link from README.md leads to: {sorted(map(str, orphans))}"


def _runbook_urls() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    }


def test_every_alert_has_its_runbook_entry() -> None:
    urls = _runbook_urls()
    assert urls
    present = anchors(RUNBOOK)
    missing = [alert for alert in urls if f"runbook-{alert.lower()}" not in present]
    assert not missing, f"alerts without an entry in docs/runbook.md: {missing}"


def test_runbook_links_of_earlier_versions_still_land_on_the_front_page() -> None:
    """Rules deployed from earlier versions link to README.md#runbook-<alert>: the anchor is
    still there, next to a link to the entry's new place."""
    present = anchors(FRONT_PAGE)
    missing = [alert for alert in _runbook_urls() if f"runbook-{alert.lower()}" not in present]
    assert not missing, f"README.md lost the old runbook anchors of: {missing}"


def test_every_runbook_url_lands_on_its_entry() -> None:
    """The URL in each alert is ``<repository>/blob/<branch>/<path>#runbook-<alert>``; the path
    must be the runbook page and the anchor one of its entries."""
    for alert, url in _runbook_urls().items():
        parts = urlsplit(url)
        path = parts.path.split("/blob/", 1)[1].split("/", 1)[1]
        assert REPO / path == RUNBOOK, f"{alert}: {url} is not docs/runbook.md"
        assert parts.fragment in anchors(RUNBOOK), f"{alert}: #{parts.fragment} is not there"
