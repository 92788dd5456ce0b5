"""The table, the target ratios and the chart of bench/peers/run.py's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TARGETS = {
    "enqueue_p50_over_ping_max": 1.25,  # Sleipnir single-enqueue p50 / PING p50
    "drain_2_over_fastest_peer_min": 5.0,  # Sleipnir drain / fastest peer, 2 processes each
    "round_trip_p50_over_ping_max": 4.0,  # Sleipnir idle round trip p50 / PING p50
}


def _rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _us(x: float) -> str:
    return f"{x / 1000:,.1f} ms" if x >= 1000 else f"{x:,.0f} µs"


def _drain(d: dict[str, Any]) -> str:
    s = f"{d['jobs_per_s']:,.0f}"
    if d["partial"]:
        s += "*"
    return s


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    header = [
        "system",
        "enqueue p50",
        "enqueue p99",
        "enqueue jobs/s",
        "enqueue p50 / PING p50",
        "bulk jobs/s",
        "drain 1 proc, jobs/s",
        "drain 2 procs, jobs/s",
        "worker start-up",
        "round trip p50",
        "round trip p99",
        "RSS after drain (1 proc)",
    ]
    rows = [header]
    for s in results["systems"].values():
        rt = s["round_trip"]
        rt_p50 = _us(rt["p50_us"]) + (f" (n={rt['n']})" if rt.get("capped") else "")
        rows.append(
            [
                s["name"],
                _us(s["single"]["p50_us"]),
                _us(s["single"]["p99_us"]),
                _rate(s["single"]["jobs_per_s"]),
                f"{s['single']['p50_us'] / s['single']['paired_ping']['p50_us']:.2f}x",
                _rate(s["bulk"]["jobs_per_s"]) if s["bulk"] else "n/a",
                _drain(s["drain_1"]),
                _drain(s["drain_2"]),
                f"{s['drain_1']['startup_s']:.2f} s",
                rt_p50,
                _us(rt["p99_us"]),
                f"{s['drain_1']['rss_end_mib']:.0f} MiB ({s['drain_1']['rss_processes']} proc)",
            ]
        )
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    f = results["floor"]
    systems = results["systems"]
    out: dict[str, Any] = {"floor_ping_p50_us": f["p50_us"]}
    if "sleipnir" not in systems:
        return out
    s = systems["sleipnir"]
    # The PING timed side by side with Sleipnir's enqueue calls, in the same process and
    # moment: the same machine conditions as the numerator.
    ping = s["single"]["paired_ping"]["p50_us"]
    out["paired_ping_p50_us"] = ping
    out["enqueue_p50_over_ping"] = s["single"]["p50_us"] / ping
    out["round_trip_p50_over_ping"] = s["round_trip"]["p50_us"] / f["p50_us"]
    peers = {k: v for k, v in systems.items() if k != "sleipnir"}
    if peers:
        for key in ("drain_2", "drain_1"):
            best = max(peers, key=lambda k: peers[k][key]["jobs_per_s"])
            out[f"{key}_fastest_peer"] = peers[best]["name"]
            out[f"{key}_over_fastest_peer"] = s[key]["jobs_per_s"] / peers[best][key]["jobs_per_s"]
        enq = min(peers, key=lambda k: peers[k]["single"]["p50_us"])
        out["fastest_enqueue_peer"] = peers[enq]["name"]
        out["fastest_enqueue_peer_over_ping"] = (
            peers[enq]["single"]["p50_us"] / peers[enq]["single"]["paired_ping"]["p50_us"]
        )
    t = TARGETS
    out["met"] = {
        "enqueue": out["enqueue_p50_over_ping"] <= t["enqueue_p50_over_ping_max"],
        "round_trip": out["round_trip_p50_over_ping"] <= t["round_trip_p50_over_ping_max"],
    }
    if "drain_2_over_fastest_peer" in out:
        out["met"]["drain"] = out["drain_2_over_fastest_peer"] >= t["drain_2_over_fastest_peer_min"]
    return out


def print_report(results: dict[str, Any]) -> None:
    m, v, f = results["machine"], results["versions"], results["floor"]
    print(
        f"\nPeers on Redis {m['redis_server']} ({results['redis_settings']}): {m['nproc']} CPUs "
        f"({m['cpu']}), Python {m['python']}"
    )
    print("  " + ", ".join(f"{k} {x}" for k, x in v.items()))
    print(
        f"\nFloor (redis-py {f['redis_py']}, hiredis {f['hiredis']}): PING p50 "
        f"{f['p50_us']:.1f} µs (runs {', '.join(f'{x:.0f}' for x in f['runs'])}), "
        f"p99 {f['p99_us']:.1f} µs; LPUSH p50 {f['lpush']['p50_us']:.1f} µs; "
        f"EVALSHA 'return 1' p50 {f['evalsha']['p50_us']:.1f} µs; pipelined LPUSH "
        f"{f['lpush_pipelined']['items_per_s']:,.0f}/s "
        f"({f['lpush_pipelined']['per_pipeline']} per pipeline)"
    )
    rows = table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print("\n  spread of the runs ((max - min) / median):")
    for s in results["systems"].values():
        parts = [
            f"{key} {s[key]['spread'] * 100:.0f}%"
            for key in ("single", "bulk", "drain_1", "drain_2", "round_trip")
            if s.get(key)
        ]
        print(f"    {s['name']:<9} " + ", ".join(parts))
    rt = results["ratios"]
    if "enqueue_p50_over_ping" in rt:
        met = rt["met"]
        t = TARGETS

        def word(ok: bool) -> str:
            return "met" if ok else "MISSED"

        print("\nTargets (Sleipnir):")
        print(
            f"  single-enqueue p50 / paired PING p50 ({rt['paired_ping_p50_us']:.0f} µs) = "
            f"{rt['enqueue_p50_over_ping']:.2f}x (target <= {t['enqueue_p50_over_ping_max']}x): "
            f"{word(met['enqueue'])}"
        )
        if "drain" in met:
            print(
                f"  drain, 2 procs / fastest peer ({rt['drain_2_fastest_peer']}) = "
                f"{rt['drain_2_over_fastest_peer']:.2f}x "
                f"(target >= {t['drain_2_over_fastest_peer_min']}x): {word(met['drain'])}; "
                f"1 proc / fastest peer ({rt['drain_1_fastest_peer']}) = "
                f"{rt['drain_1_over_fastest_peer']:.2f}x"
            )
        print(
            f"  idle round trip p50 / PING p50 ({rt['floor_ping_p50_us']:.0f} µs) = "
            f"{rt['round_trip_p50_over_ping']:.2f}x "
            f"(target <= {t['round_trip_p50_over_ping_max']}x): {word(met['round_trip'])}"
        )
    print(
        f"\n  load average at start {results['loadavg_start'][0]:.2f}, at end "
        f"{results['loadavg_end'][0]:.2f}; the machine's CPUs were busy "
        f"{results['machine_cpu_busy']:.2f} CPUs on average (this bench included)"
    )


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(results["systems"].values())
    names = [s["name"] for s in systems]
    colors = ["#c0392b" if s["name"] == "Sleipnir" else "#7f8c8d" for s in systems]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ping = results["floor"]["p50_us"]
    xs = list(range(len(names)))
    width = 0.4

    def label(ax: Any, x: float, v: float, text: str) -> None:
        ax.annotate(text, (x, v), ha="center", va="bottom", fontsize=7)

    def ping_line(ax: Any, y: float) -> None:
        ax.axhline(y, color="#2980b9", linestyle="--", linewidth=1)
        ax.annotate(
            f"redis-py PING p50 {ping:.0f} µs",
            (len(names) - 0.5, y * 1.08),
            color="#2980b9",
            ha="right",
            va="bottom",
            fontsize=8,
        )

    ax = axes[0][0]
    p50 = [s["single"]["p50_us"] for s in systems]
    p99 = [s["single"]["p99_us"] for s in systems]
    ax.bar([x - width / 2 for x in xs], p50, width, label="p50", color=colors)
    ax.bar([x + width / 2 for x in xs], p99, width, label="p99", color="#bdc3c7")
    for x, a in zip(xs, p50, strict=True):
        label(ax, x - width / 2, a, f"{a:.0f}")
    ping_line(ax, ping)
    ax.set_xticks(xs, names)
    ax.set_yscale("log")
    ax.set_ylabel("µs per call (log)")
    ax.set_title("single enqueue, one producer (lower is better)", fontsize=11)
    ax.legend(fontsize=8)

    ax = axes[0][1]
    d1 = [s["drain_1"]["jobs_per_s"] for s in systems]
    d2 = [s["drain_2"]["jobs_per_s"] for s in systems]
    h1 = ["//" if s["drain_1"]["partial"] else "" for s in systems]
    h2 = ["//" if s["drain_2"]["partial"] else "" for s in systems]
    ax.bar([x - width / 2 for x in xs], d1, width, label="1 process", color="#95a5a6", hatch=h1)
    ax.bar([x + width / 2 for x in xs], d2, width, label="2 processes", color="#34495e", hatch=h2)
    if any(h1 + h2):
        ax.set_xlabel(
            f"hatched: not done {results['params']['drain_cap_s']:.0f} s after its first "
            "job; the rate of the jobs done by then",
            fontsize=8,
        )
    for x, a, b in zip(xs, d1, d2, strict=True):
        label(ax, x - width / 2, a, f"{a:,.0f}")
        label(ax, x + width / 2, b, f"{b:,.0f}")
    ax.set_xticks(xs, names)
    ax.set_yscale("log")
    ax.set_ylabel("jobs/s (log)")
    ax.set_title(
        f"drain of up to {results['params']['drain_jobs']:,} queued no-op jobs (higher is better)",
        fontsize=11,
    )
    ax.legend(fontsize=8)

    ax = axes[1][0]
    p50 = [s["round_trip"]["p50_us"] / 1000 for s in systems]
    p99 = [s["round_trip"]["p99_us"] / 1000 for s in systems]
    ax.bar([x - width / 2 for x in xs], p50, width, label="p50", color=colors)
    ax.bar([x + width / 2 for x in xs], p99, width, label="p99", color="#bdc3c7")
    for x, a in zip(xs, p50, strict=True):
        label(ax, x - width / 2, a, f"{a:.2f}")
    ping_line(ax, ping / 1000)
    ax.set_xticks(xs, names)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("idle round trip, enqueue to result visible (lower is better)", fontsize=11)
    ax.legend(fontsize=8)

    ax = axes[1][1]
    rss = [s["drain_1"]["rss_end_mib"] for s in systems]
    ax.bar(xs, rss, color=colors)
    for x, s, v in zip(xs, systems, rss, strict=True):
        label(ax, x, v, f"{v:.0f} ({s['drain_1']['rss_processes']} proc)")
    ax.set_xticks(xs, names)
    ax.set_ylabel("MiB")
    ax.set_title("worker RSS after the 1-process drain, all its processes", fontsize=11)

    m = results["machine"]
    fig.suptitle(
        f"Sleipnir and peers on one Redis {m['redis_server']} (loopback), {m['nproc']} CPUs, "
        f"Python {m['python']}; medians of {results['params']['repeats']} runs"
        + (" [--quick]" if results["quick"] else ""),
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
