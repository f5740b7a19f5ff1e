"""Turn the measurements into ``results/RESULTS.md`` and the plots."""

from __future__ import annotations

from typing import Any

from benchmarks.common import RESULTS

QUERIES = ("top_users", "trending_hashtags", "platform_stats")
SHORT = {"top_users": "top users", "trending_hashtags": "trending", "platform_stats": "stats"}


def ms(seconds: float) -> str:
    value = seconds * 1000
    if value < 1:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def db_tables(db: list[dict[str, Any]]) -> str:
    lines = [
        "| scale | tweets in 7d window | indexes | "
        + " | ".join(f"{SHORT[q]}: seed → exporter (ms)" for q in QUERIES)
        + " | cycle: seed (ms) | cycle: exporter (ms) | cycle: bare pool (ms) | exporter / bare |",
        "|---|---:|---|" + "---:|" * (len(QUERIES) + 4),
    ]
    for entry in db:
        for state, label in (("plain", "PK only"), ("indexed", "recommended")):
            s = entry[state]
            cells = [f"{ms(s['seed'][q])} → {ms(s['exporter'][q])}" for q in QUERIES]
            c = s["cycle"]
            lines.append(
                f"| {entry['scale']} | {entry['in_window']:,} | {label} | "
                + " | ".join(cells)
                + f" | {ms(c['seed_concurrent'])} | **{ms(c['exporter'])}** | "
                f"{ms(c['bare_concurrent'])} | {c['exporter'] / c['bare_concurrent']:.2f} |"
            )
    return "\n".join(lines)


def overhead_table(db: list[dict[str, Any]]) -> str:
    lines = [
        "| scale | indexes | "
        + " | ".join(f"{SHORT[q]}: Database.fetch / bare" for q in QUERIES)
        + " | sequential (ms) | concurrent (ms) | speed-up |",
        "|---|---|" + "---:|" * (len(QUERIES) + 3),
    ]
    for entry in db:
        for state, label in (("plain", "PK only"), ("indexed", "recommended")):
            s, c = entry[state], entry[state]["cycle"]
            ratios = [f"{s['exporter'][q] / s['bare'][q]:.2f}" for q in QUERIES]
            lines.append(
                f"| {entry['scale']} | {label} | "
                + " | ".join(ratios)
                + f" | {ms(c['bare_sequential'])} | {ms(c['bare_concurrent'])} | "
                f"{c['bare_sequential'] / c['bare_concurrent']:.2f}x |"
            )
    return "\n".join(lines)


def growth_table(db: list[dict[str, Any]]) -> str:
    lines = [
        "| scale | tweets | in window | cycle, recommended indexes (ms) | µs per window tweet |"
        " cycle, PK only (ms) | µs per window tweet |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in db:
        w = max(1, e["in_window"])
        ci, cp = e["indexed"]["cycle"]["exporter"], e["plain"]["cycle"]["exporter"]
        lines.append(
            f"| {e['scale']} | {e['tweets']:,} | {e['in_window']:,} | {ms(ci)} | "
            f"{ci / w * 1e6:.2f} | {ms(cp)} | {cp / w * 1e6:.2f} |"
        )
    return "\n".join(lines)


def scrape_table(sc: dict[str, Any]) -> str:
    lines = [
        "| server | req/s | p50 (ms) | p99 (ms) | CPU per request (µs) | RSS after (MiB) |"
        " exporter / this |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    exp = sc["exporter"]
    rows = (
        ("tw-exporter `/metrics` (cycles every 1 s)", exp),
        ("library floor: `prometheus_client.start_http_server`", sc["library"]),
        ("physical floor: asyncio Protocol, fixed bytes", sc["physical"]),
    )
    for label, r in rows:
        lines.append(
            f"| {label} | {r['rps']:,.0f} | {r['p50'] * 1e3:.2f} | {r['p99'] * 1e3:.2f} | "
            f"{r['cpu_per_request_us']:.0f} | {r['rss_mb']:.0f} | {exp['rps'] / r['rps']:.2f} |"
        )
    return "\n".join(lines)


def sweep_table(sweep: list[dict[str, Any]]) -> str:
    lines = [
        "| table | window | tweets in window | cycle (ms) | µs per window tweet |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in sweep:
        w = max(1, r["in_window"])
        lines.append(
            f"| {r['tweets']:,} tweets | {r['days']}d | {r['in_window']:,} | {ms(r['cycle'])} | "
            f"{r['cycle'] / w * 1e6:.2f} |"
        )
    return "\n".join(lines)


def overlap_table(ov: dict[str, Any]) -> str:
    d, b = ov["during_cycle"], ov["between_cycles"]
    return "\n".join(
        [
            "| scrapes | n | p50 (ms) | p99 (ms) |",
            "|---|---:|---:|---:|",
            f"| overlapping a cycle | {d['n']} | {d['p50'] * 1e3:.2f} | {d['p99'] * 1e3:.2f} |",
            f"| between cycles | {b['n']} | {b['p50'] * 1e3:.2f} | {b['p99'] * 1e3:.2f} |",
        ]
    )


def plots(results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    db = results["db"]
    if db:
        tweets = [e["tweets"] for e in db]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series = (
            ("seed SQL, PK only", lambda e: e["plain"]["cycle"]["seed_concurrent"], "o--"),
            (
                "seed SQL, recommended indexes",
                lambda e: e["indexed"]["cycle"]["seed_concurrent"],
                "s--",
            ),
            ("exporter, PK only", lambda e: e["plain"]["cycle"]["exporter"], "o-"),
            ("exporter, recommended indexes", lambda e: e["indexed"]["cycle"]["exporter"], "s-"),
        )
        for label, get, style in series:
            ax.plot(tweets, [get(e) * 1000 for e in db], style, label=label)
        ax.axhline(1000, color="grey", linewidth=0.8, linestyle=":")
        ax.text(tweets[0], 1100, "1 s goal", color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tweets in tw_tweets (7-day window holds ~1/6)")
        ax.set_ylabel("collection cycle, median (ms)")
        ax.set_title("DB cost per cycle (3 queries concurrently, 2 vCPU)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "cycle-time.png", dpi=110)
        plt.close(fig)
        made.append("cycle-time.png")
    sc = results.get("scrape")
    if sc:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = ["tw-exporter\n(cycling every 1 s)", "library floor\n(prometheus_client)",
                  "physical floor\n(fixed bytes)"]  # fmt: skip
        values = [sc["exporter"]["rps"], sc["library"]["rps"], sc["physical"]["rps"]]
        colors = ["tab:blue", "tab:grey", "tab:green"]
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
        ax.set_ylabel("requests/s (wrk -t2 -c8)")
        ax.set_title(f"/metrics throughput, {sc['series']} series, {sc['body_bytes']:,} bytes")
        fig.tight_layout()
        fig.savefig(RESULTS / "scrape-throughput.png", dpi=110)
        plt.close(fig)
        made.append("scrape-throughput.png")
    return made


def write(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [
        "# Benchmark results",
        "",
        f"Generated by `python -m benchmarks.run_all` on {results['started']} "
        f"(took {results['elapsed_s'] / 60:.1f} min). Machine: `nproc` = {m['nproc']}, "
        f"CPU {m['cpu']}, {m['memory']} RAM, {m.get('postgres', '?')} on the same host, "
        f"Python {m['python']}. Datasets from `exporter.ops.dataset` (60 days of tweets, the "
        "7-day window holds ~1/6 of them; ids are time-ordered like snowflake ids). Times are "
        "medians; every ratio compares numbers measured in the same run.",
        "",
        "## DB cost per collection cycle",
        "",
        "`seed` is the seed dashboard's original SQL; `exporter` is the exporter's SQL through "
        "its own `Database` and a full cycle, `Pipeline.run_all` (every query's scheduled job "
        "at once, rows mapped to metrics, exposition rendered); `bare pool` is the exporter's "
        "three statements through a bare `asyncpg` pool with `asyncio.gather`.",
        "",
        db_tables(results["db"]),
        "",
        "![cycle time vs table size](cycle-time.png)",
        "",
        "### Exporter overhead and concurrency",
        "",
        "`Database.fetch` / bare `conn.fetch` per query (read-only transaction + timeouts), and "
        "the bare statements run one after another vs concurrently on the 2 cores:",
        "",
        overhead_table(results["db"]),
        "",
        "The cycle ratio is ~1.0 once queries take tens of milliseconds; at 100k the cycle's "
        "fixed cost (mapping rows, rendering the exposition in text and OpenMetrics, plain and "
        "gzipped: ~5 ms CPU) shows. Sub-millisecond queries (top users with its index) pay "
        "the read-only transaction's BEGIN/COMMIT round trips (~0.2 ms), hence the larger "
        "per-query ratio there. Concurrency saves less than 2x on 2 cores because the trending "
        "query dominates the cycle and PostgreSQL's parallel workers already use both cores.",
        "",
        "### Growth",
        "",
        growth_table(results["db"]),
    ]
    if results.get("sweep"):
        parts += [
            "",
            "Same tables, different window lengths (`--trending-days` = `--stats-days`), "
            "recommended indexes: the cost follows the rows inside the window, and a window "
            "of the same size costs the same in a 1M-row and a 10M-row table.",
            "",
            sweep_table(results["sweep"]),
        ]
    index_lines = []
    for e in results["db"]:
        built = ", ".join(f"{k} {v:.1f} s" for k, v in e.get("index_build_seconds", {}).items())
        index_lines.append(f"- {e['scale']}: {built}")
    parts += ["", "Index build time (`CREATE INDEX CONCURRENTLY`):", "", *index_lines]
    sc = results.get("scrape")
    if sc:
        idle = sc["idle"]
        parts += [
            "",
            "## Scrape cost",
            "",
            f"`wrk -t2 -c8 -d{sc['wrk_seconds']}s --latency` against `/metrics` "
            f"({sc['series']} series, {sc['body_bytes']:,} bytes) while the exporter runs a "
            f"cycle every second on the {sc['dataset']} dataset (recommended indexes). The "
            "floors serve the same number of series (library) and the exporter's exact bytes "
            "(physical). wrk shares the 2 cores with the server and PostgreSQL.",
            "",
            scrape_table(sc),
            "",
            "![scrape throughput vs floors](scrape-throughput.png)",
            "",
            f"CPU per request net of the cycles that ran during the wrk run: "
            f"{sc['exporter']['net_cpu_per_request_us']:.0f} µs. Idle (no scrapes): "
            f"{idle['cpu_per_cycle_ms']:.1f} ms CPU per cycle, RSS {idle['rss_mb']:.0f} MiB; "
            f"RSS after the wrk run {sc['exporter']['rss_mb']:.0f} MiB.",
            "",
            "wrk, the server and PostgreSQL share 2 cores, so req/s is partly wrk's limit; CPU "
            "per request is the sturdier comparison (`python -m benchmarks.http_hotpath` gives "
            "the server's own cost per request in-process, without the network).",
            "",
            f"Scrapes overlapping a cycle vs not: a light probe (one scrape every 20 ms) against "
            f"the exporter on the {sc['overlap']['dataset']} dataset (interval 2 s; a cycle "
            f"takes {sc['overlap']['cycle_median_s'] * 1e3:.0f} ms, so "
            f"{sc['overlap']['busy_fraction']:.0%} of scrapes overlap one):",
            "",
            overlap_table(sc["overlap"]),
        ]
    made = plots(results)
    text = "\n".join(parts) + "\n"
    (RESULTS / "RESULTS.md").write_text(text)
    return text + "\nplots: " + ", ".join(made)
