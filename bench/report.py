"""Write `docs/performance.md` and its plots from the results of `python -m bench.run`.

python -m bench.report [bench/results/latest.json]   # rewrite the report from saved results
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.noise import NOISY_RUN_SHARE, NOISY_SHARE, noise_reasons
from bench.stats import median

__all__ = ["write_report"]

REPO = Path(__file__).resolve().parents[1]
ARMS = ("direct", "bmo", "bmo_w2", "bmo_before", "bare", "litellm")
PAIRED_ONLY = ("bmo_w2",)  # measured only in their own metrics (w2_*), shown in their own section
LABELS = {
    "direct": "direct (mock)",
    "bmo": "bmo",
    "bmo_w2": "bmo (2 workers)",
    "bmo_before": "bmo (before)",
    "bare": "bare pass-through",
    "litellm": "LiteLLM",
}
Getter = Callable[[dict[str, Any]], float | None]


# ---------------------------------------------------------------- values


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    size = abs(value)
    if float(value).is_integer() or size >= 1000:
        text = f"{value:,.0f}"
    elif size >= 100:
        text = f"{value:.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return text + unit


def _metric(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((m for m in results["metrics"] if m["key"] == key), None)


def values(results: dict[str, Any], key: str, arm: str, get: Getter) -> list[float | None]:
    """One value per round (None where the run failed or was skipped)."""
    metric = _metric(results, key)
    if metric is None:
        return []
    out: list[float | None] = []
    for round_ in metric["rounds"]:
        run = round_.get(arm)
        if not run or "error" in run or "skipped" in run:
            out.append(None)
            continue
        try:
            out.append(get(run))
        except (KeyError, TypeError):
            out.append(None)
    return out


def med(vals: Sequence[float | None]) -> float | None:
    present = [v for v in vals if v is not None and not math.isnan(v)]
    return median(present) if present else None


def both(vals: Sequence[float | None], unit: str = "") -> str:
    """`median (r1 / r2)`."""
    if not vals:
        return "–"
    if len(vals) == 1:
        return fmt(vals[0], unit)
    return f"{fmt(med(vals), unit)} ({' / '.join(fmt(v) for v in vals)})"


def added(results: dict[str, Any], key: str, arm: str, get: Getter) -> list[float | None]:
    """Per round: the arm's value minus direct's value in the same round."""
    mine, base = values(results, key, arm, get), values(results, key, "direct", get)
    return [a - b if a is not None and b is not None else None for a, b in zip(mine, base, strict=False)]


def ratio(results: dict[str, Any], key: str, num: str, den: str, get: Getter) -> list[float | None]:
    top, bottom = values(results, key, num, get), values(results, key, den, get)
    return [a / b if a is not None and b else None for a, b in zip(top, bottom, strict=False)]


def g(*path: str) -> Getter:
    def get(run: dict[str, Any]) -> float | None:
        value: Any = run
        for part in path:
            value = value[part]
        return float(value) if value is not None else None

    return get


RPS, P50, P99, CPU = g("rps"), g("p50_ms"), g("p99_ms"), g("cpu_ms_per_req")
TTFT50, TTFT99 = g("ttft_ms", "p50"), g("ttft_ms", "p99")
TTLB50, TTLB99 = g("ttlb_ms", "p50"), g("ttlb_ms", "p99")


# ---------------------------------------------------------------- tables


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def present_arms(results: dict[str, Any]) -> list[str]:
    """The arms every metric measures: the known ones in order, then any other (one a later module
    adds); not the paired-only arms (`bmo (2 workers)`), which have a section of their own."""
    known = [a for a in ARMS if a in results["arms"] and a not in PAIRED_ONLY]
    return known + [a for a in results["arms"] if a not in ARMS]


HEADLINE: list[tuple[str, str, Getter, Getter | None, bool]] = [
    # label, metric key, value, second value shown after " / ", subtract direct's value of the same round
    ("c=1 non-stream added latency p50 (ms)", "ns_c1", P50, None, True),
    ("c=1 non-stream added latency p99 (ms)", "ns_c1", P99, None, True),
    ("c=1 non-stream latency p50 / p99 (ms)", "ns_c1", P50, P99, False),
    ("c=32 non-stream RPS", "ns_c32", RPS, None, False),
    ("c=32 non-stream p50 / p99 (ms)", "ns_c32", P50, P99, False),
    ("c=32 stream RPS (20 chunks)", "st_c32", RPS, None, False),
    ("c=32 stream TTLB p50 / p99 (ms)", "st_c32", P50, P99, False),
    ("c=1 TTFT overhead p50 (ms)", "ttft_c1", TTFT50, None, True),
    ("c=1 TTFT overhead p99 (ms)", "ttft_c1", TTFT99, None, True),
    ("c=1 TTFT p50 / p99 (ms)", "ttft_c1", TTFT50, TTFT99, False),
    ("c=32 TTFT p50 / p99 (ms)", "ttft_c32", TTFT50, TTFT99, False),
    ("CPU ms/request, c=32 non-stream", "ns_c32", CPU, None, False),
    ("CPU ms/request, c=32 stream", "st_c32", CPU, None, False),
    ("CPU ms/request, c=1 non-stream", "ns_c1", CPU, None, False),
    ("RSS after c=32 non-stream (MB)", "ns_c32", g("rss_end_mb"), None, False),
]


def headline(results: dict[str, Any]) -> str:
    arms = present_arms(results)
    rows = []
    for label, key, get, second, is_added in HEADLINE:
        row = [label]
        for arm in arms:
            if is_added and arm == "direct":
                row.append("(baseline)")
                continue
            vals = added(results, key, arm, get) if is_added else values(results, key, arm, get)
            cell = fmt(med(vals))
            if second is not None:
                cell += " / " + fmt(med(values(results, key, arm, second)))
            row.append(cell)
        row += [
            _ratio_cell(results, key, get, "litellm", is_added),
            _ratio_cell(results, key, get, "bare", is_added),
        ]
        rows.append(row)
    idle = results.get("idle") or {}
    if idle:
        cells = [fmt(idle[a]["cores"] * 100) if a in idle else "–" for a in arms]
        window = results["meta"]["plan"].get("idle_s", 3.0)
        rows.append([f"CPU while idle, {fmt(window)} s before the metrics (% of a core)", *cells, "", ""])
    header = ["metric (median of rounds)", *(LABELS.get(a, a) for a in arms), "bmo / LiteLLM", "bmo / bare"]
    return table(header, rows)


def _ratio_cell(results: dict[str, Any], key: str, get: Getter, other: str, is_added: bool) -> str:
    if other not in results["arms"] or "bmo" not in results["arms"]:
        return "–"
    if is_added:
        mine, theirs = med(added(results, key, "bmo", get)), med(added(results, key, other, get))
    else:
        mine, theirs = med(values(results, key, "bmo", get)), med(values(results, key, other, get))
    if mine is None or theirs is None or mine <= 0 or theirs <= 0:
        return "–"
    return f"{mine / theirs:.2f}×"


def detail_wrk(results: dict[str, Any], key: str) -> str:
    metric = _metric(results, key)
    if metric is None or not metric["rounds"]:
        return f"_{key}: not run ({(metric or {}).get('skipped', 'absent')})._"
    rows = []
    for arm in present_arms(results):
        rps = values(results, key, arm, RPS)
        if not any(v is not None for v in rps):
            rows.append([LABELS.get(arm, arm), *(["–"] * 6), _errors(metric, arm)])
            continue
        rows.append(
            [
                LABELS.get(arm, arm),
                both(rps),
                both(values(results, key, arm, P50)),
                both(values(results, key, arm, P99)),
                both(values(results, key, arm, CPU)),
                both(values(results, key, arm, g("rss_end_mb"))),
                _events(results, key, arm),
                _errors(metric, arm),
            ]
        )
    header = ["arm", "RPS", "p50 ms", "p99 ms", "CPU ms/req", "RSS MB", "events/s (per req)", "errors"]
    return f"**{metric['title']}**, {metric['duration']:.0f} s per run\n\n" + table(header, rows)


PROCESS_KEYS = ("ns_c1", "ns_c32", "st_c32", "w2_ns_c32", "w2_st_c32")


def detail_processes(results: dict[str, Any]) -> str:
    """CPU ms per request of each bmo process (median of rounds): where a regression landed."""
    rows = []
    for key in PROCESS_KEYS:
        metric = _metric(results, key)
        if metric is None or not metric["rounds"]:
            continue
        for arm in [a for a in results["arms"] if a == "bmo" or a.startswith("bmo_")]:
            roles = sorted({r for rnd in metric["rounds"] for r in _by_process(rnd.get(arm) or {})})
            if not roles:  # an arm this metric did not measure
                continue
            cells = []
            for role in roles:
                value = med(values(results, key, arm, g("cpu_ms_per_req_by_process", role)))
                cells.append(f"{role} {fmt(value)}")
            total = med(values(results, key, arm, CPU))
            rows.append([metric["title"], LABELS.get(arm, arm), fmt(total), " · ".join(cells) or "–"])
    if not rows:
        return "_no per-process figures in this run._"
    return table(["run", "arm", "CPU ms/req (tree)", "by process (ms/req)"], rows)


def _by_process(run: dict[str, Any]) -> dict[str, float]:
    return run.get("cpu_ms_per_req_by_process") or {}


W2_KEYS = ("w2_ns_c32", "w2_st_c32")


def workers2_section(results: dict[str, Any]) -> str:
    """bmo with 1 and 2 workers on the same pinned load: RPS, CPU per request per process, the ratio."""
    plan, nproc = results["meta"]["plan"], results["meta"]["facts"]["nproc"] or 2
    if not plan.get("workers2"):
        return _workers_text(plan)
    rows = []
    for key in W2_KEYS:
        metric = _metric(results, key)
        if metric is None or not metric["rounds"]:
            rows.append([key, "not run: " + ((metric or {}).get("skipped") or "absent"), *["–"] * 7])
            continue
        rows += [_w2_row(results, metric, arm) for arm in ("bmo", "bmo_w2")]
        scale = ratio(results, key, "bmo_w2", "bmo", RPS)
        cores = ratio(results, key, "bmo_w2", "bmo", g("cpu_util"))
        cpu = ratio(results, key, "bmo_w2", "bmo", CPU)
        rows.append(
            [metric["title"], "**2 workers / 1**", both(scale), both(cpu), "", "", "", "", both(cores)]
        )
    header = ["run", "arm", "RPS", "CPU ms/req (tree)", "worker-1", "worker-2", "projector", "main"]
    header.append("cores used (bmo tree)")
    return _w2_intro(plan, nproc) + "\n\n" + table(header, rows) + "\n\n" + _w2_verdict(results, nproc)


def _w2_row(results: dict[str, Any], metric: dict[str, Any], arm: str) -> list[str]:
    key = metric["key"]

    def role(name: str) -> str:
        return both(values(results, key, arm, g("cpu_ms_per_req_by_process", name)))

    cells = [role("worker-1"), role("worker-2") if arm == "bmo_w2" else "", role("projector"), role("main")]
    return [
        metric["title"],
        LABELS[arm],
        both(values(results, key, arm, RPS)),
        both(values(results, key, arm, CPU)),
        *cells,
        both(values(results, key, arm, g("cpu_util"))),
    ]


def _w2_intro(plan: dict[str, Any], nproc: int) -> str:
    pin = plan.get("pin_load") or "0"
    return (
        f"`bmo serve --workers 2` (arm `bmo (2 workers)`) and the one-worker `bmo` arm, measured one after "
        f"the other in each of the same {plan['rounds']} round(s), on c=32 only. For these runs the mock's "
        f"threads and wrk are pinned to CPU {pin} with `taskset` (the mock is moved back to every CPU "
        "afterwards; the other metrics are not pinned); the servers may use every CPU. CPU per request is "
        "split per process and each process's CPU is divided by all of the run's requests, so the parts add "
        "up to the tree's figure: with two workers, worker-1 + worker-2 is the workers' cost of a request. "
        "\"cores used\" is the bmo tree's CPU seconds divided by the run's wall time; in the ratio row, "
        "RPS, CPU ms/request and cores are each the 2-worker figure over the 1-worker one of the same round "
        "(median, then every round)."
    )


def _w2_verdict(results: dict[str, Any], nproc: int) -> str:
    scale = med(ratio(results, "w2_ns_c32", "bmo_w2", "bmo", RPS))
    cores = med(ratio(results, "w2_ns_c32", "bmo_w2", "bmo", g("cpu_util")))
    cpu = med(ratio(results, "w2_ns_c32", "bmo_w2", "bmo", CPU))
    if scale is None:
        return "_The 1-vs-2-workers pair did not produce figures in this run (see the harness notes)._"
    text = (
        f"**Scaling (c=32 non-stream): {scale:.2f}× the RPS** with two workers, using {fmt(cores)}× the "
        f"cores, at {fmt(cpu)}× the CPU per request. "
    )
    if nproc <= 2:
        text += (
            "On a noisy run the ratio also measures how the scheduler shares contended cores: two worker "
            "processes win a larger share against other work than one does, which flatters the RPS ratio. "
        )
        text += (
            f"**What {nproc} cores can and cannot show.** They cannot show whether `--workers 2` scales RPS "
            "by 1.6×: wrk and the mock, pinned to one CPU, need most of it at c=32, the projector and the "
            "granian supervisor need some of the rest, so two workers share about one free core where one "
            "worker alone already keeps a core busy. RPS here is bounded by the machine, not by bmo; the "
            "cores-used ratio is the ceiling any scaling could reach. What they can show is the cost side: "
            "CPU per request with two workers (worker-1 + worker-2, projector, main) against one worker's. "
            "A ratio near 1 means a second worker adds no contention inside bmo (the shared SQLite writer "
            "lock, the projector catching up from two writers); a clear rise means it does. A 1.6× claim "
            "needs at least 4 cores: 2 for the workers, 1 for wrk and the mock, 1 for the projector and the "
            "rest."
        )
    return text


def _workers_text(plan: dict[str, Any]) -> str:
    workers = plan.get("workers", 1)
    pinned = plan.get("pin_load") or ""
    if workers <= 1:
        return (
            "The 1-vs-2-workers pair was left out of this run (`--no-workers2`); the default "
            "`python -m bench.run` measures it."
        )
    where = (
        f"the mock and every load tool were pinned to CPU {pinned} (`taskset`), the servers were not"
        if pinned
        else "the load tools and the mock shared the cores with the servers (not pinned)"
    )
    return (
        f"Every bmo arm ran with `--workers {workers}`; {where}. The per-process table gives each worker's "
        "CPU per request of the run (the parts add up), whose sum must stay at one worker's figure as "
        "workers are added; the default run (one worker, plus the paired arm `bmo (2 workers)`) compares "
        "the two directly."
    )


def _events(results: dict[str, Any], key: str, arm: str) -> str:
    per_s = values(results, key, arm, g("events_per_s"))
    if not any(v is not None for v in per_s):
        return "–"
    per_req = values(results, key, arm, g("events_per_req"))
    return f"{both(per_s)} ({fmt(med(per_req))})"


def _errors(metric: dict[str, Any], arm: str) -> str:
    total, notes = 0, []
    for round_ in metric["rounds"]:
        run = round_.get(arm) or {}
        if "error" in run:
            notes.append(run["error"][:120])
        total += int(run.get("errors", 0) or 0) + int(run.get("status_errors", 0) or 0)
    return "; ".join(notes) if notes else str(total)


def detail_ttft(results: dict[str, Any], key: str) -> str:
    metric = _metric(results, key)
    if metric is None or not metric["rounds"]:
        return f"_{key}: not run ({(metric or {}).get('skipped', 'absent')})._"
    rows = []
    for arm in present_arms(results):
        rows.append(
            [
                LABELS.get(arm, arm),
                both(values(results, key, arm, TTFT50)),
                both(values(results, key, arm, TTFT99)),
                both(values(results, key, arm, TTLB50)),
                both(values(results, key, arm, TTLB99)),
                both(values(results, key, arm, RPS)),
                both(values(results, key, arm, CPU)),
                _errors(metric, arm),
            ]
        )
    header = [
        "arm",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TTLB p50 ms",
        "TTLB p99 ms",
        "streams/s",
        "CPU ms/req",
        "errors",
    ]
    return f"**{metric['title']}**, {metric['duration']:.0f} s per run\n\n" + table(header, rows)


def detail_sweep(results: dict[str, Any]) -> str:
    sweeps = [m for m in results["metrics"] if m["kind"] == "openloop"]
    if not sweeps:
        return "_Open-loop sweep: not run._"
    rows = []
    for arm in present_arms(results):
        for metric in sweeps:
            if not metric["rounds"]:
                continue
            key = metric["key"]
            achieved = values(results, key, arm, g("achieved_rps"))
            if not any(v is not None for v in achieved):
                name = LABELS.get(arm, arm)
                rows.append([name, fmt(metric["rate"]), "saturated below / skipped", *[""] * 5])
                continue
            rows.append(
                [
                    LABELS.get(arm, arm),
                    fmt(metric["rate"]),
                    both(achieved),
                    both(values(results, key, arm, g("latency_ms", "p50"))),
                    both(values(results, key, arm, g("latency_ms", "p99"))),
                    both(values(results, key, arm, CPU)),
                    both(values(results, key, arm, g("send_lag_ms", "p99"))),
                    _drops(metric, arm),
                ]
            )
    header = ["arm", "offered req/s", "achieved req/s", "p50 ms", "p99 ms", "CPU ms/req"]
    header += ["generator send lag p99 ms", "errors + dropped"]
    step = sweeps[0]["duration"]
    return (
        f"Each rate runs {step:.0f} s per arm. Latency counts from each request's scheduled send time "
        "(queueing included, no coordinated omission). An arm stops climbing in a round once a rate "
        "saturates it (achieved < 90 % of offered, drops, > 1 % errors or p99 > 1 s). The generator's "
        "send lag (how late it sent against its schedule) shows when the generator itself, one Python "
        "process on the same cores, was the limit rather than the server.\n\n" + table(header, rows)
    )


def _drops(metric: dict[str, Any], arm: str) -> str:
    parts = []
    for round_ in metric["rounds"]:
        run = round_.get(arm) or {}
        if "error" in run:
            parts.append("failed")
        elif "skipped" in run:
            parts.append("skipped")
        else:
            parts.append(f"{run.get('errors', 0)} + {run.get('dropped', 0)}")
    return " / ".join(parts)


def lag_values(results: dict[str, Any], pct: str, rate: float | None = None) -> list[float | None]:
    rate = results["meta"]["plan"]["lag_rate"] if rate is None else rate
    return values(results, f"ol_{int(rate)}", "bmo", g("side", "lag_ms", pct))


def lag_saturated(results: dict[str, Any]) -> float | None:
    """bmo's achieved rate in the lag run when it fell short of the offered rate, else None."""
    rate = results["meta"]["plan"]["lag_rate"]
    achieved = med(values(results, f"ol_{int(rate)}", "bmo", g("achieved_rps")))
    return achieved if achieved is not None and achieved < 0.9 * rate else None


def detail_lag(results: dict[str, Any]) -> str:
    rows = []
    for metric in results["metrics"]:
        key = metric["key"]
        if metric["kind"] != "openloop" or not any(
            v is not None for v in lag_values(results, "p50", metric["rate"])
        ):
            continue

        def col(*path: str, key: str = key) -> str:
            return both(values(results, key, "bmo", g(*path)))

        rows.append(
            [
                fmt(metric["rate"]),
                col("achieved_rps"),
                col("side", "lag_ms", "p50"),
                col("side", "lag_ms", "p99"),
                col("side", "lag_ms", "max"),
                col("side", "lag_ms", "n"),
                col("side", "timeouts"),
                col("events_per_s"),
            ]
        )
    if not rows:
        return "_Projection lag: not measured in this run._"
    header = ["offered req/s", "achieved req/s", "lag p50 ms", "lag p99 ms", "lag max ms", "samples"]
    header += ["timeouts (2 s)", "events/s"]
    plan = results["meta"]["plan"]
    return (
        "Time from the end of a response to its ledger row (with an outcome) being returned by "
        "`GET /v1/openai-compat/runs?limit=1&model=mock/probe-model`, sampled every "
        f"{plan['lag_interval'] * 1000:.0f} ms by a separate process while the open-loop generator drives "
        "bmo. With this few samples p99 is close to the maximum. Where bmo could not keep up with the "
        "offered rate (achieved < offered), the lag includes its backlog.\n\n" + table(header, rows)
    )


def detail_hold(results: dict[str, Any]) -> str:
    metric = _metric(results, "hold")
    if metric is None or not metric["rounds"]:
        return f"_Open-stream hold: not run ({(metric or {}).get('skipped', 'absent')})._"
    rows = []
    for arm in present_arms(results):
        if metric["only"] and arm not in metric["only"]:
            continue
        rows.append(
            [
                LABELS.get(arm, arm),
                both(values(results, "hold", arm, g("requests"))),
                both(values(results, "hold", arm, g("upstream_max_held"))),
                both(values(results, "hold", arm, g("max_open"))),
                both(values(results, "hold", arm, g("rss_baseline_mb"))),
                both(values(results, "hold", arm, g("rss_peak_mb"))),
                both(values(results, "hold", arm, g("rss_per_stream_kb"))),
                both(values(results, "hold", arm, TTFT99)),
                _errors(metric, arm),
            ]
        )
    header = [
        "arm",
        "streams completed",
        "held at the upstream at once",
        "open at the client at once",
        "RSS before MB",
        "RSS peak MB",
        "KB per stream",
        "TTFT p99 ms",
        "errors",
    ]
    plan = results["meta"]["plan"]
    return (
        f"{plan['hold_streams']} streaming requests opened over ~{min(2.0, plan['hold_ms'] / 2500):.0f} s; "
        f'the mock sends the first token at once and holds the rest for {plan["hold_ms"]} ms. "Held at the '
        "upstream\" is the mock's own count of streams it held at the same moment: a gateway that queues "
        'requests behind an upstream connection-pool limit shows that limit there. "Open at the client" '
        "counts streams that had received data and not yet ended at the same moment. RSS is the sum of "
        "VmRSS over the server's process tree (for bmo: the granian main process, the worker and the "
        "projector), sampled every 250 ms. "
        "LiteLLM is left out (at its ~30 streams/s, opening them all would take most of a minute).\n\n"
        + table(header, rows)
    )


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    label: str
    value: float | None
    limit: float
    higher_is_better: bool
    unit: str
    source: str = "issue 7"
    miss_reason: str = ""  # a MISS whatever the value, with this reason
    note: str = ""  # said after the verdict (what the figure can and cannot mean)
    unshowable: str = ""  # neither PASS nor MISS: this machine cannot decide the target, for this reason

    def verdict(self) -> str:
        text = self._verdict()
        return f"{text}; {self.note}" if self.note else text

    def _verdict(self) -> str:
        if self.unshowable and self.value is not None:
            return f"**NOT SHOWABLE HERE**: {self.unshowable}"
        if self.miss_reason:
            return f"**MISS**: {self.miss_reason}"
        if self.value is None:
            return "NOT MEASURED"
        ok = self.value >= self.limit if self.higher_is_better else self.value <= self.limit
        gap = abs(self.value - self.limit)
        rel = self.value / self.limit if self.limit else math.nan
        how = f"by {fmt(gap, self.unit)} ({rel:.2f}× the target)"
        return f"**PASS** {how}" if ok else f"**MISS** {how}"


def targets(results: dict[str, Any]) -> list[Target]:
    def b(key: str, get: Getter) -> float | None:
        return med(values(results, key, "bmo", get))

    def ratio_med(key: str, other: str) -> float | None:
        return med(ratio(results, key, "bmo", other, RPS))

    hold_open = b("hold", g("upstream_max_held"))
    hold_rss = b("hold", g("rss_peak_mb"))
    streams = results["meta"]["plan"]["hold_streams"]
    hold_reason = ""
    if hold_open is not None and hold_open < 0.95 * streams:
        hold_reason = (
            f"bmo held only {hold_open:.0f} of {streams} streams open to the upstream at once (RSS then "
            f"{fmt(hold_rss)} MB); see the many-open-streams table"
        )
    saturated_at = lag_saturated(results)
    lag_reason = (
        f"bmo could not sustain the offered rate (achieved {fmt(saturated_at)} req/s), so the lag "
        f"({fmt(med(lag_values(results, 'p99')))} ms) is mostly backlog"
        if saturated_at is not None
        else ""
    )
    ttft32 = b("ttft_c32", TTFT50)
    bmo_p99, litellm_p99 = (med(added(results, "ns_c1", arm, P99)) for arm in ("bmo", "litellm"))
    c1_p99_vs_litellm = bmo_p99 / litellm_p99 if bmo_p99 is not None and litellm_p99 else None
    idle_bmo = (results.get("idle") or {}).get("bmo")
    idle_share = idle_bmo["cores"] * 100 if idle_bmo else None
    return [
        Target(
            "c=1 non-stream added latency p50 ≤ 1.5 ms",
            med(added(results, "ns_c1", "bmo", P50)),
            1.5,
            False,
            " ms",
        ),
        Target(
            "c=1 non-stream added latency p99 ≤ 4 ms",
            med(added(results, "ns_c1", "bmo", P99)),
            4.0,
            False,
            " ms",
        ),
        Target("c=32 non-stream ≥ 2,000 RPS", b("ns_c32", RPS), 2000, True, " RPS"),
        Target("c=32 stream ≥ 1,000 RPS", b("st_c32", RPS), 1000, True, " RPS"),
        Target("c=32 non-stream ≥ 20× LiteLLM (same run)", ratio_med("ns_c32", "litellm"), 20, True, "×"),
        Target("c=32 stream ≥ 20× LiteLLM (same run)", ratio_med("st_c32", "litellm"), 20, True, "×"),
        Target("c=32 non-stream ≥ 40 % of bare", ratio_med("ns_c32", "bare"), 0.4, True, ""),
        Target("c=32 stream ≥ 40 % of bare", ratio_med("st_c32", "bare"), 0.4, True, ""),
        Target(
            "TTFT overhead p50 ≤ 1.5 ms (c=1)",
            med(added(results, "ttft_c1", "bmo", TTFT50)),
            1.5,
            False,
            " ms",
        ),
        Target(
            f"Projection lag p99 ≤ 50 ms at {fmt(results['meta']['plan']['lag_rate'])} RPS",
            med(lag_values(results, "p99")),
            50,
            False,
            " ms",
            miss_reason=lag_reason,
        ),
        Target(f"{streams} open streams, RSS ≤ 300 MB", hold_rss, 300, False, " MB", miss_reason=hold_reason),
        _workers2_target(results),
        Target("CPU ≤ 0.8 ms/request, c=32 non-stream", b("ns_c32", CPU), 0.8, False, " ms", "issue 16"),
        Target("CPU ≤ 1.2 ms/request, c=32 stream", b("st_c32", CPU), 1.2, False, " ms", "issue 16"),
        Target("CPU ≤ 1.0 ms/request, c=1 non-stream", b("ns_c1", CPU), 1.0, False, " ms", "issue 16"),
        Target(
            "c=1 added latency p99 below LiteLLM's (same run; bmo / LiteLLM < 1)",
            c1_p99_vs_litellm,
            1.0,
            False,
            "×",
            "issue 16",
        ),
        Target("CPU while idle < 0.1 % of a core", idle_share, 0.1, False, " %", "issue 16"),
        Target("TTFT p50 ≤ 20 ms at c=32", ttft32, 20, False, " ms", "performance-notes"),
        Target(
            "stream TTLB added p50 ≤ 2 ms (c=1)",
            med(added(results, "ttft_c1", "bmo", TTLB50)),
            2,
            False,
            " ms",
            "performance-notes",
        ),
        Target(
            "stretch: c=1 added p50 ≤ 1.0 ms",
            med(added(results, "ns_c1", "bmo", P50)),
            1.0,
            False,
            " ms",
            "performance-notes",
        ),
    ]


def _workers2_target(results: dict[str, Any]) -> Target:
    """RPS with two workers over one worker's, same round, c=32 non-stream, mock and wrk pinned."""
    scale = med(ratio(results, "w2_ns_c32", "bmo_w2", "bmo", RPS))
    cores = med(ratio(results, "w2_ns_c32", "bmo_w2", "bmo", g("cpu_util")))
    cpu = med(ratio(results, "w2_ns_c32", "bmo_w2", "bmo", CPU))
    nproc = results["meta"]["facts"]["nproc"] or 2
    note = unshowable = ""
    if scale is None and not results["meta"]["plan"].get("workers2"):
        note = "the 1-vs-2-workers pair was not part of this run (`--no-workers2` or `--workers N`)"
    elif nproc <= 2:
        unshowable = (
            f"on {nproc} cores RPS is bounded by the machine, not by bmo (the mock and wrk pinned to one of "
            f"them); bmo used {fmt(cores)}× the cores with two workers, the ceiling of any ratio here, at "
            f'{fmt(cpu)}× the CPU per request (see "Two workers")'
        )
    label = "--workers 2 scales RPS ≥ 1.6× (c=32 non-stream)"
    return Target(label, scale, 1.6, True, "×", note=note, unshowable=unshowable)


def targets_table(results: dict[str, Any]) -> str:
    rows = [[t.label, fmt(t.value, t.unit), t.verdict(), t.source] for t in targets(results)]
    return table(["target", "bmo (median)", "verdict", "from"], rows)


# ---------------------------------------------------------------- plots


def plots(results: dict[str, Any], img: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    made = []
    conc = [(1, "ns_c1"), (8, "ns_c8"), (32, "ns_c32"), (64, "ns_c64")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (name, get) in zip(axes, (("p50", P50), ("p99", P99)), strict=True):
        for arm in present_arms(results):
            xs, ys = [], []
            for c, key in conc:
                value = med(values(results, key, arm, get))
                if value is not None:
                    xs.append(c)
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, marker="o", label=LABELS.get(arm, arm))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 8, 32, 64], labels=["1", "8", "32", "64"])
        ax.set_xlabel("concurrent connections (wrk, closed loop)")
        ax.set_ylabel(f"latency {name} (ms, log)")
        ax.set_title(f"Non-streaming latency {name} vs concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(img / "perf-latency-vs-concurrency.png", dpi=110)
    plt.close(fig)
    made.append("perf-latency-vs-concurrency.png")
    if _plot_sweep(results, img, plt):
        made.append("perf-open-loop.png")
    return made


def _plot_sweep(results: dict[str, Any], img: Path, plt: Any) -> bool:
    sweeps = [m for m in results["metrics"] if m["kind"] == "openloop" and m["rounds"]]
    if not sweeps:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in present_arms(results):
        xs, p50, p99 = [], [], []
        for metric in sweeps:
            a = med(values(results, metric["key"], arm, g("latency_ms", "p50")))
            b = med(values(results, metric["key"], arm, g("latency_ms", "p99")))
            if a is not None and b is not None:
                xs.append(metric["rate"])
                p50.append(a)
                p99.append(b)
        if xs:
            name = LABELS.get(arm, arm)
            line = ax.plot(xs, p50, marker="o", label=f"{name} p50")[0]
            ax.plot(xs, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{name} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (req/s, open loop)")
    ax.set_ylabel("latency from scheduled send (ms, log)")
    ax.set_title("Open-loop sweep, non-streaming")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(img / "perf-open-loop.png", dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- document


def _load_note(results: dict[str, Any]) -> str:
    meta = results["meta"]
    nproc = meta["facts"]["nproc"] or 2
    # results from before bench/noise.py: the whole machine's CPU over 2 s before and after, when the
    # bench itself was idle or not yet started, is the same figure
    before = meta.get("others_cores_before", meta.get("busy_cores_before"))
    after = meta.get("others_cores_after", meta.get("busy_cores_after"))
    during = _finite(meta.get("others_cores_during"))
    worst, where = _worst_run_others(results)
    reasons = noise_reasons(nproc, before=before, after=after, during=during, worst_run=worst)
    text = (
        f"- `uptime` before: `{meta.get('uptime_before', '')}`\n"
        f"- `uptime` after: `{meta.get('uptime_after', '')}` (its 1-minute figure includes the bench)\n"
        "- CPU used by other processes (the machine's user + system CPU minus the bench's own process "
        "tree and kernel threads, `bench/noise.py`), in cores of "
        f"{nproc}: {fmt(before)} over 2 s before the bench, {fmt(during)} on average over the whole run, "
        f"{fmt(worst)} in the worst single measured run{where}, {fmt(after)} over 2 s after it stopped "
        "every process. The run is flagged noisy above "
        f"{fmt(NOISY_SHARE * nproc)} cores ({NOISY_SHARE:.0%} of the machine: on {nproc} cores the bench's "
        "own c=32 runs keep every core busy, so that share is taken from the servers, and it is the size of "
        "the differences this page is read for; an idle machine measures ~0.005) before, after or on "
        f"average, or above {fmt(NOISY_RUN_SHARE * nproc)} in a single run.\n"
    )
    if reasons:
        text += (
            f"\n> **Noisy run** ({'; '.join(reasons)}). Other work was using a noticeable share of the "
            "CPU during this run "
            "(other engineers' test suites share this machine). Interleaving spreads that noise over all "
            "arms, so compare arms by their ratios (bmo / bare, bmo / LiteLLM) rather than by absolute "
            "values: RPS and tail latencies are lower and longer than on an idle machine, and even CPU ms "
            "per request is inflated by contention for the shared cores and caches.\n"
        )
    return text


def _finite(value: float | None) -> float | None:
    return value if value is not None and not math.isnan(value) else None


def _worst_run_others(results: dict[str, Any]) -> tuple[float | None, str]:
    """The highest CPU of other processes during one measured run, and which run it was."""
    worst: tuple[float | None, str] = (None, "")
    for metric in results["metrics"]:
        for index, round_ in enumerate(metric["rounds"]):
            for arm, run in round_.items():
                value = _finite((run or {}).get("others_cores"))
                if value is not None and (worst[0] is None or value > worst[0]):
                    worst = (value, f" ({metric['key']}, round {index + 1}, {LABELS.get(arm, arm)})")
    return worst


def _before_text(arms: dict[str, Any]) -> str:
    before = arms.get("bmo_before")
    if not before:
        return ""
    notes = "; ".join(before.get("notes", []))
    return f"\n- **bmo (before)**: the same, with `app/` from another checkout (`--baseline-tree`): {notes}."


def _setup(results: dict[str, Any]) -> str:
    arms, meta = results["arms"], results["meta"]
    otlp = meta.get("otlp")
    bmo_notes = "; ".join((arms.get("bmo") or {}).get("notes", []))
    lite_notes = "; ".join((arms.get("litellm") or {}).get("notes", []))
    otel = _otel_text(results, otlp) if otlp else f"OTel off. {bmo_notes}"
    return f"""\
- **direct**: `bench/mock_upstream.py`, a raw ASGI app under granian (1 worker, uvloop, HTTP/1,
  `--backlog 4096 --backpressure 8192` so that it can hold 1,000 streams while the gateways keep idle
  keep-alive connections to it).
  Non-streaming: a fixed ~300-byte `chat.completion`; streaming: 20 chunks + usage + `[DONE]`, no delay.
- **bmo**: `bmo serve --addr 127.0.0.1:PORT --auth-token T` (1 granian worker + the projector process) in a
  temporary working directory whose `bmo.toml` sets `[options] model = "mock/mock-model"` and an `openai`
  provider `mock` pointing at the mock; a fresh `BMO_GLOBAL_DATA` (event store, read models, records) for the
  run; ledger and records on, as users run it. {otel}{_before_text(arms)}
- **bare**: `bench/bare_proxy.py`, Litestar + granian (1 worker) + one `aiohttp.ClientSession` forwarding the
  raw body (no auth, no validation, no events; upstream pool limit 2,048): the ceiling for the stack bmo is
  built on.
- **LiteLLM**: `litellm --config … --num_workers 1` from `bench/.venv-litellm`
  (`pip install 'litellm[proxy]'`), master key set (it refuses to start without one), no database,
  `LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR LITELLM_MODE=PRODUCTION DISABLE_ADMIN_UI=True
  NO_DOCS=True`, `telemetry: false`;
  {lite_notes or "not run"}.
- Load: wrk `-t1 --latency --timeout 10s` with a Lua script for the POST body and bearer header
  (closed loop; for streams, wrk times the last byte); TTFT by `bench/ttft.py` (raw asyncio keep-alive
  client, time to the first body bytes containing `data:`); open loop by `bench/openloop.py` (aiohttp).
  Load generators, mocks and servers all share the same {meta["facts"]["nproc"]} cores, so RPS is the whole
  box's throughput; **CPU ms/request** (utime+stime of the server's process tree from `/proc`, before/after
  each run, divided by the requests served) is the fair comparison between servers.
- Interleaving: for each metric, every arm runs once (direct, bmo, bare, LiteLLM), and that is repeated
  {meta["plan"]["rounds"]} time(s). Tables show the median and, in brackets, every round's value.
  A {meta["plan"]["warmup"]:.0f} s wrk warm-up at c=32 (plus 1 s streaming) ran per arm before the first
  metric.
"""


def _otel_text(results: dict[str, Any], otlp: dict[str, Any]) -> str:
    names = ", ".join(f"`{k}` {v:,}" for k, v in sorted(otlp.get("names", {}).items()))
    served = _bmo_requests(results)
    per = f"{otlp.get('spans', 0) / served:.2f} spans per bmo request served" if served else ""
    return (
        "OTel **on**, exporting OTLP/HTTP to a local receiver process (`bench/otlp_sink.py`, reusing "
        "`tests/fakes/otlp_receiver.py`, answering HTTP/1.1 with keep-alive as a real collector does, so "
        "bmo's exporter reuses one connection instead of connecting per export), which received "
        f"{otlp.get('spans', 0):,} spans in "
        f"{otlp.get('exports', 0):,} exports ({names}); bmo served about {served:,} requests in the run, "
        f"so {per} (below 1 means bmo dropped spans, e.g. on a full export queue)."
        + (" **The receiver got no spans: see `bench/results/logs/`.**" if not otlp.get("spans") else "")
    )


def _bmo_requests(results: dict[str, Any]) -> int:
    """Every request the bmo arms (all export to one sink) answered: measured runs, warm-up, lag probes."""
    total = 0
    for metric in results["metrics"]:
        for round_ in metric["rounds"]:
            for arm, run in round_.items():
                if arm != "bmo" and not arm.startswith("bmo_"):
                    continue
                total += int((run or {}).get("requests", 0) or 0)
                side = ((run or {}).get("side") or {}).get("lag_ms") or {}
                total += int(side.get("n", 0) or 0)
    for name, run in results.get("warmup", {}).items():
        if name.startswith("bmo_"):
            total += int(run.get("requests", 0) or 0)
    return total


def _facts(meta: dict[str, Any]) -> str:
    f = meta["facts"]
    versions = ", ".join(f"{k} {v}" for k, v in f["versions"].items())
    return (
        f"- {f['nproc']} CPUs ({f['cpu_model']}), {f['ram_gib']} GiB RAM, Linux {f['kernel']}, "
        f"Python {f['python']}, SQLite {f['sqlite']}, {f['wrk']}\n"
        f"- Packages: {versions}\n"
        f"- Run finished {meta['finished']}, took {meta['elapsed_s']:.0f} s; command: `{meta['command']}`\n"
    )


def render(results: dict[str, Any], images: list[str]) -> str:
    meta = results["meta"]
    plan = meta["plan"]
    notes = "\n".join(f"- {n}" for n in meta.get("notes", [])) or "- none"
    pictures = "\n\n".join(f"![{name}](img/{name})" for name in images)
    wrk_keys = ("ns_c1", "ns_c32", "st_c32", "ns_c8", "ns_c64")
    details = "\n\n".join(detail_wrk(results, k) for k in wrk_keys)
    return f"""\
# Performance: bmo vs the bare pass-through vs LiteLLM

**Reproduce with one command** (from the repository root, on an otherwise idle machine):

```bash
python -m bench.run            # defaults: 10 s headline runs, 2 interleaved rounds, < 15 min
python -m bench.run --quick    # smoke run, ~2-3 min
python -m bench.report         # rewrite this page from bench/results/latest.json
```

It installs what it needs (wrk via apt, matplotlib via pip, LiteLLM into `bench/.venv-litellm` on first
use: add a few minutes that time), starts every server on 127.0.0.1 only, kills every process it started
(process groups, also on failure or SIGTERM) and rewrites this page and `docs/img/perf-*.png`.
CI never runs it.
Options: `--duration S` (headline runs), `--rounds N`, `--no-litellm`, `--limit S` (start no new run after S
seconds; the run skips and lists whatever no longer fits), `--baseline-tree PATH` (a second bmo arm,
`bmo (before)`, from another checkout, interleaved with the others), `--no-workers2` (without the
1-vs-2-workers pair), `--workers N`, `--pin-load CPUS`.

This page was generated by that command; every number below comes from the one run described here.

## Machine and load

{_facts(meta)}
{_load_note(results)}
## Headline (median of {plan["rounds"]} interleaved round(s))

"Added" rows subtract direct's value from the same round. Ratios are bmo's value divided by the other
arm's (for a pair, of the first value); for latency and CPU lower is better, for RPS higher.

{headline(results)}

## Targets

{targets_table(results)}

Why a target is met or missed, with the profiles and per-thread CPU that say so, and what each change
did: [performance-analysis.md](performance-analysis.md) (its sections are dated; the newest is last).

## Two workers (1 vs 2 on the same load)

{workers2_section(results)}

## CPU per process (bmo)

{detail_processes(results)}

## Plots

{pictures}

## Details

{details}

{detail_ttft(results, "ttft_c1")}

{detail_ttft(results, "ttft_c32")}

### Open-loop rate sweep (non-streaming)

{detail_sweep(results)}

### Projection lag (bmo)

{detail_lag(results)}

### Many open streams

{detail_hold(results)}

## Set-up

{_setup(results)}
## Method limits

- wrk is closed-loop (a slow response delays the next request on that connection: coordinated omission);
  the open-loop sweep is the correction. wrk2 is not available here.
- Headline runs are {plan["duration"]:.0f} s; TTFT, c=8 and c=64 runs {plan["short"]:.0f} s, sweep steps
  {plan["step"]:.0f} s, to keep the whole run under 15 minutes.
- CPU comes from `/proc` clock ticks (10 ms resolution): fine over thousands of requests, coarse for LiteLLM's
  few hundred. RSS is the sum over the process tree (shared pages count once per process).
- bmo's events/s is the growth of `stored_events` in `$BMO_GLOBAL_DATA/events.db` during the run divided by
  the run's length; events per request in brackets.
- The OTLP receiver's CPU is not part of bmo's figure (a collector runs elsewhere in production).

## Harness notes

{notes}
"""


def write_report(results: dict[str, Any], out: Path) -> None:
    images = plots(results, out.parent / "img")
    out.write_text(render(results, images))


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0]) if args else REPO / "bench" / "results" / "latest.json"
    write_report(json.loads(path.read_text()), REPO / "docs" / "performance.md")


if __name__ == "__main__":
    main()
