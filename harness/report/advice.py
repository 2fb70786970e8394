"""What a run means for someone choosing a broker: each scenario's PASS / WARN / FAIL
criterion stated, and advice computed from the measured results, one line per need
("per-key order with competing consumers", "no duplicates", ...). Nothing here is
written by hand about a broker: every sentence names numbers from this run."""

from __future__ import annotations

from collections.abc import Callable

from mailbag.harness.result import Report, ScenarioResult

#: how each scenario judges a broker; every scenario also FAILs on a lost message and
#: WARNs on a duplicate delivery
CRITERIA = {
    "ordering": "WARN when a queue that promises order per key (`?ordered=1` / `?fifo=1`) hands a key's messages "
    "out of order; on other queues the violations are measured, not judged (they promise no order).",
    "redelivery": "WARN when a retried message comes back before its delay, later than delay + tolerance, "
    "or with an attempt number other than 2.",
    "crash": "FAIL when a message the killed consumer held never comes back.",
    "dead-letter": "WARN when messages reach the DLQ after a number of attempts other than the policy's.",
    "fan-out": "FAIL when a subscribed queue misses a message.",
    "latency": "FAIL when publishing stalls; latency and throughput are measured, not judged.",
}


def render(report: Report) -> list[str]:
    """The report's "What this means" section, as markdown lines."""
    lines = [
        "## What this means",
        "",
        "How each verdict is reached: any lost message is a FAIL, any duplicate delivery a WARN, and",
        "",
        *(f"- **{s}**: {text}" for s, text in CRITERIA.items() if _ran(report, s)),
        "",
        "### Which to pick",
        "",
    ]
    advice = [line for rule in RULES if (line := rule(report))]
    lines += [f"- {line}" for line in advice] or ["- Run more scenarios: nothing here tells the brokers apart."]
    return lines


def _ran(report: Report, scenario: str) -> bool:
    return any(r.scenario == scenario for r in report.results)


def _results(report: Report, scenario: str) -> list[ScenarioResult]:
    return [r for r in report.results if r.scenario == scenario and r.error is None]


def _excluded(report: Report) -> dict[str, str]:
    """Brokers no advice recommends, with why: they lost messages, or could not run a
    scenario, anywhere in the run."""
    lost: dict[str, int] = {}
    for r in report.results:
        if r.lost:
            lost[r.broker] = lost.get(r.broker, 0) + r.lost
    why = {b: f"lost {n} message(s)" for b, n in lost.items()}
    for r in report.results:
        if r.error is not None:
            why.setdefault(r.broker, "could not run every scenario (see ERROR above)")
    return dict(sorted(why.items()))


def _candidates(report: Report, scenario: str) -> list[ScenarioResult]:
    """The results of `scenario` a recommendation may cite: the broker delivered every
    message there, and lost none and failed nothing anywhere else."""
    excluded = _excluded(report)
    return [r for r in _results(report, scenario) if r.broker not in excluded and r.delivered == r.published]


def _not_judged(report: Report, scenario: str, judged: list[ScenarioResult]) -> str:
    names = {r.broker for r in judged}
    excluded = _excluded(report)
    left = [f"{b} ({excluded.get(b, 'did not deliver every message')})" for b in _ran_on(report, scenario) - names]
    return f"; not judged: {', '.join(sorted(left))}" if left else ""


def _ran_on(report: Report, scenario: str) -> set[str]:
    return {r.broker for r in report.results if r.scenario == scenario}


def _loss(report: Report) -> str | None:
    excluded = _excluded(report)
    if not excluded:
        return None
    return "Do not use as configured: " + "; ".join(f"{b} {why}" for b, why in excluded.items()) + "."


def _order(report: Report) -> str | None:
    results = _results(report, "ordering")
    if not results:
        return None
    c = results[0].metrics.get("consumers", 1)
    messages = report.settings.get("messages", 0)
    judged = _candidates(report, "ordering")
    kept = [r.broker for r in judged if r.metrics.get(f"key_violations_{c}") == 0]
    broken = [(r.broker, r.metrics.get(f"key_violations_{c}", 0)) for r in judged if r.broker not in kept]
    text = f"Need per-key order with {c} competing consumers: "
    if kept:
        text += f"use {', '.join(kept)} (0 violations, every message delivered)"
    elif judged:
        text += "none of these kept it; use an ordered queue"
    else:
        text += "no broker here delivered every message, so none is advised"
    if broken:
        text += "; " + ", ".join(f"{b} had {n} per-key order violations among {messages} messages" for b, n in broken)
    return text + _not_judged(report, "ordering", judged) + "."


def _duplicates(report: Report) -> str | None:
    if not report.results:
        return None
    seen: dict[str, int] = {}
    for r in report.results:
        seen[r.broker] = seen.get(r.broker, 0) + r.duplicates
    excluded = _excluded(report)
    listened = {b["label"]: b.get("listen") for b in report.brokers}
    none = [
        f"{b} (listened {listened[b]:g}s after the last message)" if listened.get(b) is not None else b
        for b, n in seen.items()
        if not n and b not in excluded
    ]
    dup = ", ".join(f"{b} {n}" for b, n in sorted(seen.items()) if n)
    if dup:
        text = f"Duplicates delivered: {dup}. Handlers must be idempotent (mailbag's idempotency store drops them)"
        return text + (f"; none from {', '.join(none)}." if none else ".")
    if not none:
        return None
    return f"No duplicates from {', '.join(none)}; delivery is still at least once, so keep handlers idempotent."


def _crash(report: Report) -> str | None:
    judged = _candidates(report, "crash")
    results = [r for r in judged if r.metrics.get("came_back")]
    if not results:
        return None
    parts = []
    for r in sorted(results, key=lambda r: r.metrics["comeback_seconds"]["max"] or 0):
        waited = r.metrics["comeback_seconds"]["max"] or 0.0
        how = " (simulated crash)" if r.metrics.get("simulated") else ""
        parts.append(f"{r.broker} within {waited:.2f}s{how}")
    return (
        "A crashed consumer's messages came back: "
        + ", ".join(parts)
        + "; pick the fastest if stalls matter"
        + _not_judged(report, "crash", judged)
        + "."
    )


def _speed(report: Report) -> str | None:
    judged = _candidates(report, "latency")
    results = [r for r in judged if r.metrics.get("latency_ms", {}).get("p50") is not None]
    if len(results) < 2:
        return None
    fastest = min(results, key=lambda r: r.metrics["latency_ms"]["p50"])
    busiest = max(results, key=lambda r: r.metrics["throughput"])
    return (
        f"Lowest latency: {fastest.broker} (p50 {fastest.metrics['latency_ms']['p50']:.1f} ms); "
        f"highest throughput: {busiest.broker} ({busiest.metrics['throughput']:.0f} msg/s end to end)"
        + _not_judged(report, "latency", judged)
        + "."
    )


def _clean(report: Report) -> str | None:
    brokers = [b["label"] for b in report.brokers]
    clean = [b for b in brokers if all(r.verdict == "PASS" for r in report.results if r.broker == b)]
    if not clean:
        return None
    return f"Passed every scenario without a warning: {', '.join(clean)}."


#: the advice, in the order a reader needs it: what to avoid first
RULES: list[Callable[[Report], str | None]] = [_loss, _clean, _order, _duplicates, _crash, _speed]
