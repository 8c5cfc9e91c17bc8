"""The report: summary JSON, the table, ratios and targets."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

from bench.cases import TARGETS, Bench, Scenario
from bench.harness import _fmt_eps, _fmt_num, _ratio, _round, target_check


def summarize(bench: Bench, machine: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The JSON object: issue 2's keys first, then ratios, details, targets."""
    sc = bench.scenarios
    eps = {k: _round(s.eps, 0) for k, s in sc.items() if not k.startswith("latency_")}
    latency = {
        k.removeprefix("latency_"): s.runs[0].sub.get("latency_ms", {}) if s.runs else {}
        for k, s in sc.items()
        if k.startswith("latency_")
    }
    loomd_lat = latency.get("loomd", {})
    out: dict[str, Any] = {
        **eps,
        "p50_ms_at_10k": _round(loomd_lat.get("p50"), 3),
        "p99_ms_at_10k": _round(loomd_lat.get("p99"), 3),
        **_daemon_figures(bench.daemons),
        "ratio_realtime_64b_over_mosquitto_qos0": _ratio(
            eps.get("loomd_realtime_64b_eps"), eps.get("mosquitto_qos0_eps"), 2
        ),
        "ratio_realtime_64b_over_raw_zmq": _ratio(
            eps.get("loomd_realtime_64b_eps"), eps.get("raw_zmq_proxy_eps"), 3
        ),
        "ratio_reliable_over_mosquitto_qos1": _ratio(
            eps.get("loomd_reliable_eps"), eps.get("mosquitto_qos1_eps"), 2
        ),
        **_delivery_figures(sc),
        "latency_ms": latency,
        "daemon_latency_ms_at_10k": (
            sc["latency_loomd"].runs[0].sub.get("daemon_latency_ms")
            if "latency_loomd" in sc and sc["latency_loomd"].runs
            else None
        ),
        "scenarios": {k: scenario_json(s) for k, s in sc.items()},
        "sweep": bench.sweep_rows,
        "mode": "quick" if quick else "full",
        "plan": bench.plan.__dict__,
        "machine": machine,
    }
    out["targets"] = {key: target_check(out.get(key), op, bound) for key, op, bound, _ in TARGETS}
    out["errors"] = {k: s.error for k, s in sc.items() if s.error}
    return out


def _daemon_figures(daemons: list[dict[str, Any]]) -> dict[str, Any]:
    """Idle RSS: median over the daemon starts; READY: the slowest start (the target's view)."""
    if not daemons:
        return {"idle_rss_mb": None, "ready_s": None}
    return {
        "idle_rss_mb": _round(statistics.median(d["idle_rss_mb"] for d in daemons), 1),
        "ready_s": _round(max(d["ready_s"] for d in daemons), 3),
        "ready_s_all": [_round(d["ready_s"], 3) for d in daemons],
        "answer_s_all": [_round(d["answer_s"], 3) for d in daemons],
        "idle_rss_mb_all": [_round(d["idle_rss_mb"], 1) for d in daemons],
        "daemon_peak_rss_mb": {d["scenario"]: _round(d.get("peak_rss_mb"), 1) for d in daemons},
        "daemon_exit_codes": {d["scenario"]: d.get("exit_code") for d in daemons},
    }


def _delivery_figures(sc: dict[str, Scenario]) -> dict[str, Any]:
    """Loss accounting of the two acknowledged flows."""
    out: dict[str, Any] = {}
    rel = sc.get("loomd_reliable_eps")
    if rel is not None and rel.runs:
        ack_errors = sum(1 for r in rel.runs if r.pub.get("ack_error"))
        out["reliable_lost"] = rel.total("sub", "missing") + ack_errors
        out["reliable_acked"] = rel.total("pub", "acked")
        out["reliable_duplicates"] = rel.total("sub", "duplicates")
    q1 = sc.get("mosquitto_qos1_eps")
    if q1 is not None and q1.runs:
        out["mosquitto_qos1_lost"] = q1.total("pub", "sent") - q1.total("sub", "received")
    return out


def scenario_json(s: Scenario) -> dict[str, Any]:
    return {
        "label": s.label,
        "eps_runs": [round(r) for r in s.rates()],
        "sent": s.total("pub", "sent"),
        "received": s.total("sub", "received"),
        "dropped_publisher": s.total("pub", "dropped_local"),
        "dropped_daemon": _sum_dicts(r.sub.get("dropped_daemon") for r in s.runs),
        "dropped_subscriber": s.total("sub", "dropped_local"),
        "age_ms_runs": [r.sub["age_ms"] for r in s.runs if "age_ms" in r.sub],
        "sub_stopped": [r.sub.get("stopped") for r in s.runs],
        "dropped_broker": (
            s.total("sub", "dropped_broker")
            if any("dropped_broker" in r.sub for r in s.runs)
            else None
        ),
        "pub_eps": [
            round(r.pub["sent"] / r.pub["elapsed_s"]) for r in s.runs if r.pub.get("elapsed_s")
        ],
        "peak_rss_mb": {side: _round(s.peak(side), 1) for side in ("pub", "broker", "sub")},
        "cpu_us_per_event": {
            side: _round(s.cpu_us_per_event(side), 2) for side in ("pub", "broker", "sub")
        },
        "error": s.error,
    }


def _sum_dicts(items: Iterator[dict[str, int] | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in items:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def print_report(bench: Bench, summary: dict[str, Any]) -> None:
    _print_header(bench, summary)
    _print_throughput(bench, summary)
    _print_latency(bench, summary)
    _print_sweep(summary)
    _print_daemon(summary)
    _print_verdict(summary)


def _print_header(bench: Bench, summary: dict[str, Any]) -> None:
    m, c = summary["machine"], summary["cpu_during_run"]
    print(
        f"\nloomd bus benchmark ({summary['mode']}: {bench.plan.duration_s:g} s per run, "
        f"median of {bench.plan.repeats}), git {m['git']}"
    )
    if m["git_modified"]:
        print(f"uncommitted changes measured: {', '.join(m['git_modified'])}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB, {m['os']}, {m['kernel']}")
    print(
        f"python {m['python']}, pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), uvloop {m['uvloop']}, "
        f"cbor2 {m['cbor2']}, paho-mqtt {m['paho_mqtt']}, {m['mosquitto']}"
    )
    print(
        f"during the run: bench processes {c['bench_cpu_cores']} cores, other processes "
        f"{c['other_cpu_cores']} cores, steal {c['steal_cores']} (load avg {c['loadavg_start']} "
        f"-> {c['loadavg_end']}, {c['wall_s']} s)"
    )
    if c["other_cpu_cores"] > 0.2:
        print(
            f"WARNING: other processes took {c['other_cpu_cores']} of {m['cores']} cores during "
            f"the run: every figure below is pessimistic"
        )
    print()


def _print_throughput(bench: Bench, summary: dict[str, Any]) -> None:
    if all(key.startswith("latency_") for key in bench.scenarios):
        return
    head = (
        f"{'throughput (events/s the subscriber receives)':<44}{'median':>10}  {'runs':<22}"
        f"{'sent':>9}{'received':>10}{'lost':>9}  {'counted p/d/s':<22}{'CPU us/ev p/b/s':<17}"
        f"{'peak MB p/b/s'}"
    )
    print(head)
    print("-" * len(head))
    sides = ("pub", "broker", "sub")
    for key, s in bench.scenarios.items():
        if key.startswith("latency_"):
            continue
        j = summary["scenarios"][key]
        runs = ", ".join(f"{r / 1000:.0f}k" for r in j["eps_runs"]) or "FAILED"
        counted = "-"
        if key.startswith("loomd_"):
            daemon_drops = sum(j["dropped_daemon"].values())
            counted = f"{j['dropped_publisher']}/{daemon_drops}/{j['dropped_subscriber']}"
        elif j["dropped_broker"] is not None:  # mosquitto's $SYS counter
            counted = f"-/{j['dropped_broker']}/-"
        cpu = "/".join(_fmt_num(j["cpu_us_per_event"][x], 1) for x in sides)
        rss = "/".join(_fmt_num(j["peak_rss_mb"][x], 0) for x in sides)
        print(
            f"{s.label:<44}{_fmt_eps(s.eps)}  {runs:<22}{j['sent']:>9}{j['received']:>10}"
            f"{j['sent'] - j['received']:>9}  {counted:<22}{cpu:<17}{rss}"
        )
    for key, j in summary["scenarios"].items():
        if j["age_ms_runs"] and not key.startswith("latency_"):
            p50 = "/".join(f"{a['p50']:.1f}" for a in j["age_ms_runs"])
            p99 = "/".join(f"{a['p99']:.1f}" for a in j["age_ms_runs"])
            print(f"  {j['label']}: event age at the subscriber p50 {p50} ms, p99 {p99} ms")
    rel = bench.scenarios.get("loomd_reliable_eps")
    if rel is not None and rel.runs:
        sub_rates = ", ".join(f"{r.sub['eps'] / 1000:.0f}k" for r in rel.runs)
        print(
            f"  loomd reliable: acked {summary['reliable_acked']}, "
            f"lost {summary['reliable_lost']}, duplicates {summary['reliable_duplicates']}; "
            f"the subscriber got {sub_rates} ev/s"
        )
    if summary.get("mosquitto_qos1_lost") is not None:
        print(
            f"  mosquitto QoS 1: {summary['mosquitto_qos1_lost']} events acknowledged to the "
            f"publisher never reached the subscriber"
        )
    print()


def _print_latency(bench: Bench, summary: dict[str, Any]) -> None:
    if not any(key.startswith("latency_") for key in bench.scenarios):
        return
    cols = ("p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "samples", "sent", "recv")
    print(
        f"{'latency at 10k ev/s (publish -> subscriber)':<46}" + "".join(f"{c:>10}" for c in cols)
    )
    for key, s in bench.scenarios.items():
        if not key.startswith("latency_"):
            continue
        lat = s.runs[0].sub.get("latency_ms", {}) if s.runs else {}
        if not lat.get("n"):
            print(f"{s.label:<46}  n/a {s.error or ''}")
            continue
        ms = "".join(f"{lat[q]:>10.3f}" for q in ("p50", "p90", "p99", "p999", "max"))
        counts = (lat["n"], s.runs[0].pub.get("sent", 0), s.runs[0].sub["received"])
        print(f"{s.label:<46}{ms}" + "".join(f"{c:>10}" for c in counts))
    dl = summary.get("daemon_latency_ms_at_10k")
    if dl:
        print(
            f"  loomd's own histogram (publish ts -> hand-off to the subscriber socket): "
            f"p50 {dl.get('p50')} ms, p99 {dl.get('p99')} ms"
        )
    print()


def _print_sweep(summary: dict[str, Any]) -> None:
    if not summary["sweep"]:
        return
    cols = ("offered/s", "received/s", "lost", "daemon", "sub", "age p50", "age p99")
    print(
        f"{'loomd realtime 64 B at a fixed offered rate':<44}"
        + "".join(f"{c:>11}" for c in cols)
        + "  CPU us/ev p/d/s"
    )
    for row in summary["sweep"]:
        age = row["age_ms"]
        cells = (
            f"{row['offered_eps']:,}",
            f"{row['received_eps']:,}",
            row["sent"] - row["received"],
            row["dropped_daemon"],
            row["dropped_subscriber"],
            f"{age.get('p50', float('nan')):.1f} ms",
            f"{age.get('p99', float('nan')):.1f} ms",
        )
        cpu = "/".join(str(c) for c in row["cpu_us_per_event"])
        print(f"{'':<44}" + "".join(f"{c:>11}" for c in cells) + f"  {cpu}")
    print()


def _print_daemon(summary: dict[str, Any]) -> None:
    if summary.get("idle_rss_mb") is None:
        return
    print(
        f"loomd daemon: idle RSS {summary['idle_rss_mb']} MB (median; per start "
        f"{summary['idle_rss_mb_all']}); spawn -> READY=1 {summary['ready_s_all']} s; "
        f"spawn -> SDK hello + ping answered {summary['answer_s_all']} s"
    )
    print(f"loomd daemon peak RSS per scenario (MB): {summary['daemon_peak_rss_mb']}\n")


def _print_verdict(summary: dict[str, Any]) -> None:
    print("ratios (same run):")
    for label, key in (
        ("loomd realtime 64 B / mosquitto QoS 0", "ratio_realtime_64b_over_mosquitto_qos0"),
        ("loomd realtime 64 B / raw zmq proxy", "ratio_realtime_64b_over_raw_zmq"),
        ("loomd reliable durable / mosquitto QoS 1", "ratio_reliable_over_mosquitto_qos1"),
    ):
        v = summary.get(key)
        print(f"  {label:<44}{f'{v:.3g}x' if v is not None else 'n/a':>10}")
    print("\ntargets (issue 2):")
    for key, _, _, text in TARGETS:
        t = summary["targets"][key]
        v = t["value"]
        shown = "not measured" if v is None else f"{v:,}"
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {text:<44} measured {shown}")
    for k, e in summary["errors"].items():
        print(f"  ERROR {k}: {e}")
    print()
