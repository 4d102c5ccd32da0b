"""The Markdown report and PNG charts of a field-report run, from its JSON.

``write(Path("benchmarks/results/<date>.json"))`` writes ``<date>.md`` and ``<date>-*.png`` next to
it and returns the Markdown path; ``python -m benchmarks.report FILE.json`` does the same, so a
report can be regenerated without rerunning anything. Every figure is the median of the runs of
one (Consul limit, N, system); ratios are taken between medians of the same run file.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Row = dict[str, Any]
Key = tuple[int, int, str]  # (limit, services, system)

_NUMERIC = (
    "first_complete_s",
    "peak_connections",
    "steady_connections",
    "rss_peak_mib",
    "rss_steady_mib",
    "cpu_startup_s",
    "cpu_per_min",
    "consul_cpu_startup_s",
    "consul_cpu_per_min",
    "consul_rss_before_mib",
    "consul_rss_steady_mib",
    "consul_rss_peak_mib",
    "consul_requests_startup",
    "consul_requests_per_min",
    "add_latency_s",
    "del_latency_s",
    "window_s",
    "targets_at_end",
    "expected_targets",
    "load_before",
    "harness_cpu_s",
)


def median_rows(scenarios: Sequence[Row]) -> dict[Key, Row]:
    """One row per (limit, N, system): medians of numbers, counts of runs and probe outcomes."""
    groups: dict[Key, list[Row]] = defaultdict(list)
    for row in scenarios:
        groups[(row["limit"], row["services"], row["system"])].append(row)
    out: dict[Key, Row] = {}
    for key, rows in groups.items():
        merged: Row = {"system": rows[0]["system"], "label": rows[0]["label"], "runs": len(rows)}
        for name in _NUMERIC:
            values = [r[name] for r in rows if r.get(name) is not None]
            merged[name] = statistics.median(values) if values else None
            merged[f"{name}_seen"] = len(values)
        goroutines = [r["extra"].get("max_goroutines") for r in rows]
        numbers = [g for g in goroutines if g is not None]
        merged["goroutines"] = statistics.median(numbers) if numbers else None
        failures = [r["extra"].get("rpc_failures") for r in rows]
        merged["rpc_failures"] = max((f for f in failures if f is not None), default=None)
        merged["errors"] = _sum_counts([r.get("errors") or {} for r in rows])
        merged["consul_errors"] = _sum_counts([r.get("consul_errors") or {} for r in rows])
        merged["samples"] = [s for r in rows for s in (r.get("errors") or {}).get("samples", [])]
        merged["probes"] = [r.get("probe") for r in rows]
        out[key] = merged
    return out


def _sum_counts(counts: Sequence[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for one in counts:
        for name, value in one.items():
            if isinstance(value, int):
                total[name] += value
    return dict(total)


def _n(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def _latency(row: Row, *, name: str, timeout: float) -> str:
    value = row.get(name)
    runs = row["runs"]
    seen = row.get(f"{name}_seen", 0)
    if value is None:
        if row["system"] == "prometheus-file":
            return "n/a"
        if "writes refused" in row.get("probes", []):
            return "probe writes refused (429)"
        if "skipped" in row.get("probes", []):
            return "no probe"
        return f"not seen in {timeout:.0f}"
    suffix = f" ({seen}/{runs} seen)" if seen < runs else ""
    return f"{value:.1f}{suffix}"


def _errors(counts: dict[str, int]) -> str:
    lines = counts.get("lines", 0)
    if not lines:
        return "0"
    causes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "lines" and v)
    return f"{lines}" + (f" ({causes})" if causes else "")


def _ratio(value: Any, base: Any) -> str:
    if value is None or base in (None, 0):
        return "—"
    return f"{value / base:.0%}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def side_by_side(rows: Sequence[Row], *, timeout: float) -> list[str]:
    out = ["**Discoverer** (the process that talks to Consul):", ""]
    out += _table(
        [
            "system",
            "runs",
            "first complete set s",
            "peak conns to Consul",
            "steady conns",
            "RSS peak MiB",
            "RSS steady MiB",
            "CPU s to first set",
            "CPU s/min steady",
            "goroutines (peak)",
        ],
        [
            [
                r["label"],
                str(r["runs"]),
                _n(r["first_complete_s"]) + _incomplete(r),
                _n(r["peak_connections"], ".0f"),
                _n(r["steady_connections"], ".0f"),
                _n(r["rss_peak_mib"], ".0f"),
                _n(r["rss_steady_mib"], ".0f"),
                _n(r["cpu_startup_s"], ".2f"),
                _n(r["cpu_per_min"], ".2f"),
                _n(r["goroutines"], ".0f"),
            ]
            for r in rows
        ],
    )
    out += ["**Consul agent** (what each discoverer costs it):", ""]
    out += _table(
        [
            "system",
            "Consul CPU s to first set",
            "Consul CPU s/min steady",
            "Consul RSS MiB (before → steady)",
            "requests to first set",
            "requests/min steady (completed)",
        ],
        [
            [
                r["label"],
                _n(r["consul_cpu_startup_s"], ".2f"),
                _n(r["consul_cpu_per_min"], ".2f"),
                _n(r["consul_rss_before_mib"], ".0f")
                + " → "
                + _n(r["consul_rss_steady_mib"], ".0f"),
                _n(r["consul_requests_startup"], ".0f"),
                _n(r["consul_requests_per_min"], ".0f"),
            ]
            for r in rows
        ],
    )
    out += ["**Freshness and errors:**", ""]
    out += _table(
        [
            "system",
            "add seen after s",
            "delete seen after s",
            "window s",
            "discoverer WARN/ERROR lines (by cause)",
            "Prometheus RPC failures",
            "Consul WARN/ERROR lines",
        ],
        [
            [
                r["label"],
                _latency(r, name="add_latency_s", timeout=timeout),
                _latency(r, name="del_latency_s", timeout=timeout),
                _n(r["window_s"], ".0f"),
                _errors(r["errors"]),
                _n(r["rpc_failures"], ".0f"),
                _errors(r["consul_errors"]),
            ]
            for r in rows
        ],
    )
    return out


def _incomplete(row: Row) -> str:
    seen = row.get("first_complete_s_seen", 0)
    if seen == row["runs"]:
        return ""
    targets = row.get("targets_at_end")
    expected = row.get("expected_targets")
    return f" ({seen}/{row['runs']} complete; {_n(targets, '.0f')}/{_n(expected, '.0f')} targets)"


def _above_idle(row: Row, *, base: Row, reference: Row | None) -> tuple[float | None, float | None]:
    """Consul CPU/min of ``row`` and of ``base`` above the agent's own: the reference row runs
    no Consul client at all, so its Consul CPU is the agent's idle (plus the scenario's writes)."""
    idle = None if reference is None else reference["consul_cpu_per_min"]
    if idle is None or row["consul_cpu_per_min"] is None or base["consul_cpu_per_min"] is None:
        return None, None
    return row["consul_cpu_per_min"] - idle, base["consul_cpu_per_min"] - idle


def ratios(rows: Sequence[Row]) -> list[str]:
    base = next((r for r in rows if r["system"] == "prometheus"), None)
    reference = next((r for r in rows if r["system"] == "prometheus-file"), None)
    if base is None:
        return []
    attributable = None
    if reference is not None and base["rss_steady_mib"] and reference["rss_steady_mib"]:
        attributable = base["rss_steady_mib"] - reference["rss_steady_mib"]
    out = [
        "Ratios to Prometheus consul_sd in the same run (medians). RSS is compared two ways: with "
        "the whole Prometheus process (scraping off), and with the part consul_sd adds to it "
        "(Prometheus consul_sd minus Prometheus file_sd of the same targets"
        + (f": {attributable:.0f} MiB)." if attributable is not None else ", not measured)."),
        "",
    ]
    body = []
    for r in rows:
        if r["system"] in ("prometheus", "prometheus-file"):
            continue
        body.append(
            [
                r["label"],
                _ratio(r["peak_connections"], base["peak_connections"]),
                _ratio(r["rss_steady_mib"], base["rss_steady_mib"]),
                _ratio(r["rss_steady_mib"], attributable),
                _ratio(r["cpu_per_min"], base["cpu_per_min"]),
                _ratio(r["consul_cpu_per_min"], base["consul_cpu_per_min"]),
                _ratio(*_above_idle(r, base=base, reference=reference)),
                _ratio(r["consul_cpu_startup_s"], base["consul_cpu_startup_s"]),
                _ratio(r["consul_requests_per_min"], base["consul_requests_per_min"]),
                _ratio(r["first_complete_s"], base["first_complete_s"]),
            ]
        )
    return out + _table(
        [
            "system",
            "peak conns",
            "RSS vs whole Prometheus",
            "RSS vs consul_sd's share",
            "CPU/min",
            "Consul CPU/min",
            "Consul CPU/min above idle",
            "Consul CPU to first set",
            "Consul req/min",
            "first complete set",
        ],
        body,
    )


def targets(rows: Sequence[Row], *, services: int) -> list[str]:
    """The issue's targets, each checked against this run's medians."""
    by = {r["system"]: r for r in rows}
    base = by.get("prometheus")
    reference = by.get("prometheus-file")
    checks: list[tuple[str, str, bool | None]] = []
    for key, cap in (("polling-100", 100), ("polling-200", 200), ("polling-500", 500)):
        r = by.get(key)
        if r is not None and r["peak_connections"] is not None:
            peak = r["peak_connections"]
            checks.append(
                (f"{r['label']}: peak connections ≤ {cap + 2}", f"{peak:.0f}", peak <= cap + 2)
            )
    if base is not None and base["peak_connections"] is not None:
        checks.append(
            (
                f"Prometheus consul_sd: about N peak connections (N = {services})",
                f"{base['peak_connections']:.0f}",
                None,
            )
        )
    for key, r in by.items():
        if key in ("prometheus", "prometheus-file") or base is None:
            continue
        if r["rss_steady_mib"] and base["rss_steady_mib"]:
            share = r["rss_steady_mib"] / base["rss_steady_mib"]
            text = f"{r['rss_steady_mib']:.0f} MiB = {share:.0%} of {base['rss_steady_mib']:.0f}"
            if reference is not None and reference["rss_steady_mib"]:
                extra = base["rss_steady_mib"] - reference["rss_steady_mib"]
                text += f"; {r['rss_steady_mib'] / extra:.0%} of consul_sd's {extra:.0f} MiB share"
            checks.append((f"{r['label']}: RSS < 20% of Prometheus's", text, share < 0.2))
        if r["consul_cpu_per_min"] is not None and base["consul_cpu_per_min"]:
            share = r["consul_cpu_per_min"] / base["consul_cpu_per_min"]
            checks.append(
                (
                    f"{r['label']}: Consul CPU/min < 25% of Prometheus's",
                    f"{r['consul_cpu_per_min']:.2f} vs {base['consul_cpu_per_min']:.2f} s/min"
                    f" = {share:.0%}",
                    share < 0.25,
                )
            )
            ours, theirs = _above_idle(r, base=base, reference=reference)
            if ours is not None and theirs and theirs > 0:
                checks.append(
                    (
                        f"{r['label']}: the same above the agent's idle (the file_sd row)",
                        f"{ours:.2f} vs {theirs:.2f} s/min = {ours / theirs:.0%}",
                        ours / theirs < 0.25,
                    )
                )
        first = r["first_complete_s"]
        checks.append(
            (
                f"{r['label']}: first complete set < 10 s",
                "not complete" if first is None else f"{first:.1f} s",
                first is not None and first < 10,
            )
        )
    verdict = {True: "met", False: "**missed**", None: "(reference)"}
    return _table(
        ["target", "measured", "verdict"], [[name, got, verdict[ok]] for name, got, ok in checks]
    )


CHARTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "connections": ("Open connections to Consul", [("peak_connections", "peak connections")]),
    "memory": ("Discoverer memory", [("rss_steady_mib", "RSS MiB (steady)")]),
    "cpu": (
        "CPU",
        [
            ("cpu_startup_s", "discoverer CPU s to first set"),
            ("cpu_per_min", "discoverer CPU s/min steady"),
            ("consul_cpu_per_min", "Consul CPU s/min steady"),
        ],
    ),
    "latency": (
        "Latency",
        [("first_complete_s", "first complete set s"), ("add_latency_s", "add seen after s")],
    ),
}


def chart(
    medians: dict[Key, Row], *, limit: int, name: str, directory: Path, stem: str
) -> Path | None:
    title, panels = CHARTS[name]
    sizes = sorted({n for (lim, n, _) in medians if lim == limit})
    names = sorted({s for (lim, _, s) in medians if lim == limit and s != "prometheus-file"})
    if len(sizes) < 2:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for axis, (field, ylabel) in zip(axes[0], panels, strict=True):
        for system in names:
            points = [
                (n, medians[(limit, n, system)][field])
                for n in sizes
                if (limit, n, system) in medians and medians[(limit, n, system)][field] is not None
            ]
            if points:
                label = medians[(limit, points[0][0], system)]["label"]
                axis.plot(*zip(*points, strict=True), marker="o", label=label)
        axis.set_xscale("log")
        axis.set_yscale("symlog", linthresh=1.0)
        axis.set_xlabel("services (x3 instances)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    path = directory / f"{stem}-{name}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _field(name: str, spec: str) -> Callable[[Row], str]:
    return lambda row: _n(row[name], spec)


def curve_table(medians: dict[Key, Row], *, limit: int, fmt: Callable[[Row], str]) -> list[str]:
    sizes = sorted({n for (lim, n, _) in medians if lim == limit})
    names: list[str] = []
    for lim, _, system in sorted(medians, key=lambda k: _order(k[2])):
        if lim == limit and system not in names and system != "prometheus-file":
            names.append(system)
    rows = []
    for system in names:
        label = next(medians[k]["label"] for k in medians if k[2] == system)
        cells = [
            fmt(medians[(limit, n, system)]) if (limit, n, system) in medians else "·"
            for n in sizes
        ]
        rows.append([label, *cells])
    return _table(["system", *(f"N={n}" for n in sizes)], rows)


_ORDER = ("prometheus", "blocking", "polling-100", "polling-200", "polling-500", "auto")


def _order(system: str) -> int:
    return _ORDER.index(system) if system in _ORDER else len(_ORDER)


def render(data: dict[str, Any], *, directory: Path, stem: str) -> str:
    args = data["args"]
    anchor = args["anchor"]
    limit = args["limit"]
    timeout = args["probe_timeout"]
    medians = median_rows(data["scenarios"])
    m = data["machine"]
    out = [
        f"# Field report and cost curve: {data['date']}",
        "",
        f"Command: `{data['command']}` ({data.get('minutes', 0):.0f} minutes).  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, open-file limit {m['open_files_limit']}.  ",
        f"Components: {m['consul']}; {m['prometheus']}; consul-sd at {m['git']}.  ",
        f"Load average (1 min) at start {data['load_start'][0]:.2f}, at end "
        f"{data.get('load_end', [0])[0]:.2f}; per scenario in the JSON (`load_before`).",
        "",
    ]
    if args.get("no_probe"):
        out += [
            "No change probe: "
            + (
                f"a fleet check flipped every {args['flap']:.0f} s of the window (critical, then"
                " passing again), in every scenario, the file_sd reference included."
                if args.get("flap")
                else "nothing changed in the window (a quiet fleet)."
            ),
            "",
        ]
    anchor_rows = sorted(
        (r for (lim, n, _), r in medians.items() if lim == limit and n == anchor),
        key=lambda r: _order(r["system"]),
    )
    if anchor_rows:
        out += [
            f"## The field report: {anchor} services x 3 instances, side by side",
            "",
            f"Real Consul dev agent, `limits.http_max_conns_per_client = {limit}`; medians of "
            f"{max(r['runs'] for r in anchor_rows)} runs per system.",
            "",
        ]
        out += side_by_side(anchor_rows, timeout=timeout)
        out += ratios(anchor_rows)
        out += [f"### Targets at {anchor} services", ""]
        out += targets(anchor_rows, services=anchor)
    low = sorted(
        (r for (lim, n, _), r in medians.items() if lim != limit and n == anchor),
        key=lambda r: _order(r["system"]),
    )
    if low:
        other = next(lim for (lim, n, _) in medians if lim != limit)
        out += [
            f"## The same at Consul's default `http_max_conns_per_client = {other}`",
            "",
            "One run each: what the field report saw when the connection limit bites.",
            "",
        ]
        out += side_by_side(low, timeout=timeout)
    sizes = sorted({n for (lim, n, _) in medians if lim == limit})
    if len(sizes) > 1:
        out += [
            "## Cost curve",
            "",
            f"Same scenario at N = {', '.join(map(str, sizes))} (x3 instances, real agent); "
            f"medians of {args['runs']} run(s) per size ({args['anchor_runs']} at {anchor}). "
            "`·`: not run at that size (Polling 200 and 500 run from N = "
            f"{args.get('variants_from') or anchor} on: below, they differ from maxConcurrent 100"
            " only in the cold cycle's fan-out).",
            "",
        ]
        curves: list[tuple[str, Callable[[Row], str]]] = [
            ("Peak connections to Consul", _field("peak_connections", ".0f")),
            ("Discoverer RSS MiB (steady)", _field("rss_steady_mib", ".0f")),
            ("Discoverer CPU s to the first complete set", _field("cpu_startup_s", ".2f")),
            ("Discoverer CPU s/min, steady", _field("cpu_per_min", ".2f")),
            ("Consul CPU s/min, steady", _field("consul_cpu_per_min", ".2f")),
            (
                "Consul requests/min completed in the steady window (a long-poll counts when it"
                " returns: 30s windows miss the long-polls of blocking systems)",
                _field("consul_requests_per_min", ".0f"),
            ),
            ("First complete target set, s", lambda r: _n(r["first_complete_s"]) + _incomplete(r)),
            ("Add seen after, s", lambda r: _latency(r, name="add_latency_s", timeout=timeout)),
            ("Delete seen after, s", lambda r: _latency(r, name="del_latency_s", timeout=timeout)),
            ("Discoverer WARN/ERROR lines", lambda r: _errors(r["errors"])),
        ]
        for title, fmt in curves:
            out += [f"**{title}**", ""]
            out += curve_table(medians, limit=limit, fmt=fmt)
        for name in CHARTS:
            path = chart(medians, limit=limit, name=name, directory=directory, stem=stem)
            if path is not None:
                out += [f"![{name}]({path.name})", ""]
    return "\n".join(out) + "\n"


def write(path: Path) -> Path:
    data = json.loads(path.read_text())
    markdown = path.with_suffix(".md")
    markdown.write_text(render(data, directory=path.parent, stem=path.stem))
    return markdown


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(write(Path(argument)))
