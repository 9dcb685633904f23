"""`python -m bench.run`: the whole benchmark in one command, then `docs/performance.md`.

Starts a mock upstream, bmo, the bare pass-through and LiteLLM (in its own
network namespace when `unshare -n` works), then for each metric runs the
arms one after another (direct, bmo, bare, litellm), `--rounds` times, so
that background noise hits every arm alike. Every process it starts is in its
own process group and is killed on exit, failure or SIGTERM. Traffic goes to
127.0.0.1 only. Raw results: `bench/results/latest.json`.

    python -m bench.run              # defaults: 10 s runs, 2 rounds, < 15 minutes
    python -m bench.run --quick      # a ~2-3 minute smoke run
    python -m bench.run --baseline-tree /path/to/old/checkout   # adds the arm `bmo (before)`
    python -m bench.run --no-workers2                           # without the 1-vs-2-workers pair
    python -m bench.run --workers 2 --pin-load 0                # every bmo arm with 2 workers

Every bmo arm's CPU is also split by process (workers, projector, main), so a
regression shows where it landed. The arm `bmo (2 workers)` (`bmo serve
--workers 2`) runs only in the paired metrics `w2_*`, interleaved with the
one-worker arm, with the mock and the load tool pinned to one CPU; see "Two
workers on two cores" in bench/README.md for what that can and cannot show.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import arms as arms_mod
from bench import noise
from bench.arms import PROBE_MODEL, REPO, Arm
from bench.procs import (
    Procs,
    pin_tree,
    restore_affinity,
    roles_cpu_seconds,
    tree_cpu_seconds,
    tree_rss_mb,
)
from bench.setup_deps import ensure_all
from bench.wrk import parse_wrk, write_script, wrk_argv

__all__ = ["main"]

ARM_ORDER = ("direct", "bmo", "bmo_w2", "bmo_before", "bare", "litellm")
PAIRED_ONLY = frozenset({"bmo_w2"})  # arms measured only by the metrics that name them in `only`
W2_PAIR = ("bmo", "bmo_w2")


def is_bmo(name: str) -> bool:
    """A `bmo serve` arm (bmo, bmo_before, or one a later module adds as bmo_*): CPU split by process."""
    return name == "bmo" or name.startswith("bmo_")


RESULTS = REPO / "bench" / "results" / "latest.json"


@dataclass(frozen=True)
class Plan:
    duration: float  # headline wrk runs (c=1, c=32)
    short: float  # secondary runs (TTFT, c=8, c=64)
    rounds: int
    warmup: float
    rates: tuple[float, ...]  # open-loop sweep, requests/s
    step: float  # seconds per sweep rate
    lag_rate: float
    lag_interval: float
    hold_streams: int
    hold_ms: int
    limit_s: float  # stop starting new work after this many seconds
    litellm: bool
    workers: int = 1  # `bmo serve --workers`
    baseline_tree: str = ""  # a second bmo arm from this checkout ("bmo (before)")
    pin_load: str = ""  # taskset CPU list for the mock and every load tool ("" = not pinned)
    idle_s: float = 60.0  # the idle-CPU window: at 10 ms ticks, 60 s resolve 0.017 % of a core
    workers2: bool = True  # the paired arm `bmo (2 workers)` on the w2_* metrics


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(
            duration=args.duration or 2.0,
            short=2.0,
            rounds=args.rounds or 1,
            warmup=1.0,
            rates=(50.0, 500.0, 1000.0),
            step=2.0,
            lag_rate=500.0,
            lag_interval=0.05,
            hold_streams=200,
            hold_ms=2500,
            idle_s=5.0,
            limit_s=args.limit,
            litellm=not args.no_litellm,
            **_options(args),
        )
    duration = args.duration or 10.0
    return Plan(
        duration=duration,
        short=max(2.0, duration * 0.3),
        rounds=args.rounds or 2,
        warmup=3.0,
        rates=(50.0, 500.0, 1000.0, 2000.0),
        step=3.0,
        lag_rate=500.0,
        lag_interval=0.05,
        hold_streams=1000,
        hold_ms=5000,
        limit_s=args.limit,
        litellm=not args.no_litellm,
        **_options(args),
    )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    tree = str(args.baseline_tree.resolve()) if args.baseline_tree else ""
    # with --workers N every bmo arm has N workers already; on one CPU there is nothing to pin apart
    workers2 = not args.no_workers2 and args.workers == 1 and (os.cpu_count() or 1) >= 2
    return {"workers": args.workers, "baseline_tree": tree, "pin_load": args.pin_load, "workers2": workers2}


@dataclass
class Metric:
    key: str
    title: str
    kind: str  # wrk | ttft | openloop | hold
    concurrency: int = 1
    stream: bool = False
    duration: float = 0.0
    rate: float = 0.0
    only: tuple[str, ...] = ()  # arms; empty = all
    rounds: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""
    max_rounds: int = 0  # 0 = the plan's rounds
    pin: str = ""  # taskset CPU list for the mock and the load tool during this metric's runs


@dataclass
class Harness:
    plan: Plan
    procs: Procs
    work: Path
    started: float
    arms: dict[str, Arm] = field(default_factory=dict)
    scripts: dict[tuple[str, bool], Path] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    otlp: tuple[int, Path] | None = None
    pin: str = ""  # the CPUs the current metric pins the mock and load tools to ("" = the plan's)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fits(self, seconds: float) -> bool:
        return self.elapsed() + seconds <= self.plan.limit_s


# ---------------------------------------------------------------- measuring


def count_events(arm: Arm) -> int | None:
    if arm.data_dir is None or not (arm.data_dir / "events.db").exists():
        return None
    uri = f"file:{arm.data_dir / 'events.db'}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])
    except sqlite3.Error:
        return None


def _json_out(rc_out: tuple[int, str]) -> dict[str, Any]:
    rc, out = rc_out
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"tool exited {rc} without a result: {out[-400:]}")


def measure(
    h: Harness,
    arm: Arm,
    argv: list[str],
    parse: Callable[[tuple[int, str]], dict[str, Any]],
    *,
    timeout: float,
    side: list[str] | None = None,
) -> dict[str, Any]:
    """One tool run against one arm, with the server tree's CPU, RSS and (bmo) events around it."""
    peak = [0.0]

    def tick() -> None:
        peak[0] = max(peak[0], tree_rss_mb(arm.roots))

    events_before = count_events(arm)
    others_before = noise.snapshot()
    roles_before = roles_cpu_seconds(arm.roots) if is_bmo(arm.name) else {}
    cpu_before = tree_cpu_seconds(arm.roots).seconds
    wall_start = time.monotonic()
    argvs = [_pinned(h, argv)] + ([_pinned(h, side)] if side else [])
    outs = h.procs.run_tools(argvs, cwd=REPO, timeout=timeout, on_tick=tick)
    wall = time.monotonic() - wall_start
    cpu = tree_cpu_seconds(arm.roots).seconds - cpu_before
    roles_after = roles_cpu_seconds(arm.roots) if is_bmo(arm.name) else {}
    others = noise.others_cores(others_before, noise.snapshot())
    result = parse(outs[0])
    requests = int(result.get("requests", 0))
    result["cpu_s"] = cpu
    result["cpu_ms_per_req"] = cpu * 1000 / requests if requests else math.nan
    result["cpu_util"] = cpu / wall if wall else math.nan
    result["others_cores"] = others  # CPU of processes outside the bench during this run
    if roles_after:  # per process: worker-1, worker-2 ..., projector, main (ms per request)
        result["cpu_ms_per_req_by_process"] = {
            role: (seconds - roles_before.get(role, 0.0)) * 1000 / requests if requests else math.nan
            for role, seconds in sorted(roles_after.items())
        }
    result["rss_end_mb"] = tree_rss_mb(arm.roots)
    result["rss_peak_mb"] = max(peak[0], result["rss_end_mb"])
    if side:
        result["side"] = _json_out(outs[1])
    events_after = count_events(arm)
    if events_before is not None and events_after is not None:
        appended = events_after - events_before
        result["events"] = appended
        result["events_per_req"] = appended / requests if requests else math.nan
        result["events_per_s"] = appended / result["seconds"] if result.get("seconds") else math.nan
    return result


def _pinned(h: Harness, argv: list[str]) -> list[str]:
    """The load tool on the pinned CPUs (the metric's, else `--pin-load`), off the server's others."""
    cpus = h.pin or h.plan.pin_load
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def _tool(arm: Arm, module: str, *extra: str) -> list[str]:
    argv = [*arm.prefix, sys.executable, "-m", module, *extra]
    return [*argv, "--port", str(arm.port), "--token", arm.token]


def run_one(h: Harness, metric: Metric, arm: Arm) -> dict[str, Any]:
    if metric.kind == "wrk":
        script = h.scripts[(arm.name, metric.stream)]
        argv = wrk_argv(
            arm.port, script, connections=metric.concurrency, duration=metric.duration, prefix=arm.prefix
        )
        return measure(h, arm, argv, lambda o: parse_wrk(o[1]), timeout=metric.duration + 30)
    if metric.kind == "ttft":
        argv = _tool(arm, "bench.ttft", "--model", arm.model)
        argv += ["--concurrency", str(metric.concurrency), "--duration", str(metric.duration)]
        return measure(h, arm, argv, _ttft_parse, timeout=metric.duration + 30)
    if metric.kind == "openloop":
        return _openloop(h, metric, arm)
    if metric.kind == "hold":
        return _hold(h, metric, arm)
    raise ValueError(metric.kind)


def _ttft_parse(out: tuple[int, str]) -> dict[str, Any]:
    result = _json_out(out)
    result["seconds"] = result["elapsed_s"]
    result["rps"] = result["requests"] / result["elapsed_s"] if result["elapsed_s"] else 0.0
    return result


def _openloop(h: Harness, metric: Metric, arm: Arm) -> dict[str, Any]:
    argv = _tool(arm, "bench.openloop", "load", "--model", arm.model)
    argv += ["--rate", str(metric.rate), "--duration", str(metric.duration), "--drain", "5"]
    side = None
    if is_bmo(arm.name) and metric.rate in (h.plan.lag_rate, h.plan.rates[0]):
        side = [*arm.prefix, sys.executable, "-m", "bench.openloop", "lag", "--port", str(arm.port)]
        side += ["--token", arm.token, "--model", f"mock/{PROBE_MODEL}", "--duration", str(metric.duration)]
        side += ["--interval", str(h.plan.lag_interval)]

    def parse(out: tuple[int, str]) -> dict[str, Any]:
        result = _json_out(out)
        result["seconds"] = result["duration_s"]
        return result

    return measure(h, arm, argv, parse, timeout=metric.duration + 30, side=side)


def _hold(h: Harness, metric: Metric, arm: Arm) -> dict[str, Any]:
    """`--hold-streams` streams open at once (the mock holds each for hold_ms); peak RSS."""
    baseline = tree_rss_mb(arm.roots)
    hold_s = h.plan.hold_ms / 1000
    ramp = min(2.0, hold_s / 2.5)
    _mock_holds(h, reset=True)
    argv = _tool(arm, "bench.ttft", "--model", arm.model, "--once")
    argv += ["--concurrency", str(metric.concurrency), "--ramp-s", str(ramp), "--duration", str(ramp + 0.5)]
    argv += ["--grace", str(hold_s + 25), "--content", f"hold please __hold_ms={h.plan.hold_ms}__"]
    result = measure(h, arm, argv, _ttft_parse, timeout=hold_s + 45)
    result["rss_baseline_mb"] = baseline
    result["upstream_max_held"] = _mock_holds(h).get("max")
    opened = max(1, result.get("upstream_max_held") or result.get("max_open", 0))
    result["rss_per_stream_kb"] = (result["rss_peak_mb"] - baseline) * 1024 / opened
    return result


def _mock_holds(h: Harness, reset: bool = False) -> dict[str, int]:
    """The host mock's count of held streams (now, max) via `GET /mock/holds`."""
    url = f"http://127.0.0.1:{h.arms['direct'].port}/mock/holds" + ("?reset" if reset else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- plan of metrics


def build_metrics(plan: Plan) -> list[Metric]:
    """In priority order: if the time budget runs out, the last ones are skipped."""
    d, s = plan.duration, plan.short
    metrics = [
        Metric("ns_c1", "Non-streaming, c=1 (wrk)", "wrk", 1, False, d),
        Metric("ns_c32", "Non-streaming, c=32 (wrk)", "wrk", 32, False, d),
        Metric("st_c32", "Streaming 20 chunks, c=32 (wrk, time to last byte)", "wrk", 32, True, d),
        *workers2_metrics(plan),
        Metric("ttft_c1", "Streaming TTFT / TTLB, c=1 (raw client)", "ttft", 1, True, s),
        Metric("ttft_c32", "Streaming TTFT / TTLB, c=32 (raw client)", "ttft", 32, True, s),
        Metric("ns_c8", "Non-streaming, c=8 (wrk)", "wrk", 8, False, s),
        Metric("ns_c64", "Non-streaming, c=64 (wrk)", "wrk", 64, False, s),
    ]
    for rate in plan.rates:
        title = f"Open loop {int(rate)} req/s"
        metrics.append(Metric(f"ol_{int(rate)}", title, "openloop", 0, False, plan.step, rate))
    hold = Metric("hold", f"{plan.hold_streams} concurrent open streams", "hold", plan.hold_streams, True)
    hold.duration, hold.only, hold.max_rounds = plan.hold_ms / 1000, ("direct", "bmo", "bare"), 1
    metrics.append(hold)
    return metrics


def workers2_metrics(plan: Plan) -> list[Metric]:
    """bmo with 1 and 2 workers on the same load, the mock and wrk pinned to one CPU: c=32 non-stream
    (RPS and CPU per request per worker) and, as time allows, streaming."""
    if not plan.workers2:
        return []
    pin = plan.pin_load or "0"
    pinned = f"mock and wrk pinned to CPU {pin}"
    metrics = [
        Metric("w2_ns_c32", f"1 vs 2 workers: non-streaming, c=32 ({pinned})", "wrk", 32, False),
        Metric("w2_st_c32", f"1 vs 2 workers: streaming 20 chunks, c=32 ({pinned})", "wrk", 32, True),
    ]
    for metric in metrics:
        metric.duration, metric.only, metric.pin = plan.duration, W2_PAIR, pin
    return metrics


def metric_arms(h: Harness, metric: Metric) -> list[str]:
    """The arms a metric measures, in order: its `only` list, else every arm but the paired-only ones."""
    if metric.only:
        return [n for n in ARM_ORDER if n in h.arms and n in metric.only]
    return [n for n in ARM_ORDER if n in h.arms and n not in PAIRED_ONLY]


@contextlib.contextmanager
def pinned_mock(h: Harness, metric: Metric) -> Iterator[None]:
    """During a pinned metric, the host mock's threads on the metric's CPUs (restored after), as wrk is."""
    if not metric.pin or h.plan.pin_load:  # `--pin-load` pinned the mock at start for the whole run
        yield
        return
    cpus = {int(c) for c in metric.pin.split(",")}
    former = pin_tree(h.arms["direct"].roots, cpus)
    h.pin = metric.pin
    try:
        yield
    finally:
        h.pin = ""
        restore_affinity(h.arms["direct"].roots, former)


def _estimate(metric: Metric, arms: int) -> float:
    overhead = 0.6 if metric.kind == "wrk" else 1.2
    if metric.kind == "hold":
        overhead += 3
    return arms * (metric.duration + overhead)


def run_metric(h: Harness, metric: Metric) -> None:
    names = metric_arms(h, metric)
    if metric.only and len(names) < len(metric.only) and metric.pin:
        metric.skipped = f"arms missing: {sorted(set(metric.only) - set(names))}"
        h.notes.append(f"{metric.key}: {metric.skipped}")
        return
    with pinned_mock(h, metric):
        _run_rounds(h, metric, names)


def _run_rounds(h: Harness, metric: Metric, names: list[str]) -> None:
    for index in range(min(h.plan.rounds, metric.max_rounds or h.plan.rounds)):
        if not h.fits(_estimate(metric, len(names))):
            metric.skipped = f"time budget ({h.plan.limit_s:.0f} s) reached after {index} round(s)"
            h.notes.append(f"{metric.key}: {metric.skipped}")
            return
        round_result: dict[str, Any] = {}
        for name in names:
            arm = h.arms[name]
            if metric.kind == "openloop" and _saturated_before(metric, h, name, index):
                round_result[name] = {"skipped": "saturated at a lower rate"}
                continue
            try:
                round_result[name] = run_one(h, metric, arm)
            except Exception as exc:  # one failed run must not lose the others
                round_result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            _progress(h, metric, index, name, round_result[name])
        metric.rounds.append(round_result)


def saturated(result: dict[str, Any]) -> bool:
    if "skipped" in result or "error" in result:
        return True
    offered = result["offered_rps"]
    return (
        result["achieved_rps"] < 0.9 * offered
        or result["dropped"] > 0
        or result["errors"] > 0.01 * offered * result["duration_s"]
        or result["latency_ms"]["p99"] > 1000
    )


def _saturated_before(metric: Metric, h: Harness, arm: str, index: int) -> bool:
    for other in h.metrics:
        if other is metric:
            return False
        done = other.kind == "openloop" and len(other.rounds) > index and arm in other.rounds[index]
        if done and saturated(other.rounds[index][arm]):
            return True
    return False


def _progress(h: Harness, metric: Metric, index: int, arm: str, result: dict[str, Any]) -> None:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "achieved_rps", "errors", "error", "skipped")
    keys += ("others_cores",)
    brief = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if k in keys}
    if "ttft_ms" in result:
        brief["ttft_p50"] = round(result["ttft_ms"]["p50"], 3)
    print(f"[{h.elapsed():6.1f}s] {metric.key} r{index + 1} {arm}: {brief}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- set-up


def start_all(h: Harness) -> None:
    """The mock, LiteLLM (spawned first: it is the slowest to start), the OTLP sink, bmo and bare."""
    procs, work = h.procs, h.work
    mock_port, mock_pid = arms_mod.start_mock(procs, "mock", pin=h.plan.pin_load)
    h.arms["direct"] = arms_mod.start_direct(mock_port, mock_pid)
    litellm = None
    if h.plan.litellm:
        try:
            litellm = arms_mod.start_litellm(procs, work, arms_mod.start_netns(procs), mock_port)
        except Exception as exc:
            h.notes.append(f"LiteLLM did not start: {type(exc).__name__}: {exc}")
    h.otlp = arms_mod.start_otlp_sink(procs, work)
    otlp_port = h.otlp[0] if h.otlp else None
    h.arms["bmo"] = arms_mod.start_bmo(procs, mock_port, work, otlp_port, workers=h.plan.workers)
    if h.plan.workers2:
        try:
            h.arms["bmo_w2"] = arms_mod.start_bmo(procs, mock_port, work, otlp_port, name="bmo_w2", workers=2)
        except Exception as exc:  # the pair is then skipped; the rest of the run stands
            h.notes.append(f"bmo (2 workers) did not start: {type(exc).__name__}: {exc}")
    if h.plan.baseline_tree:
        tree = Path(h.plan.baseline_tree)
        h.arms["bmo_before"] = arms_mod.start_bmo(
            procs, mock_port, work, otlp_port, tree=tree, name="bmo_before", workers=h.plan.workers
        )
    h.arms["bare"] = arms_mod.start_bare(procs, mock_port)
    if litellm is not None:
        try:
            litellm[1]()
            h.arms["litellm"] = litellm[0]
        except Exception as exc:
            h.notes.append(f"LiteLLM did not start: {type(exc).__name__}: {exc}")
    for arm in h.arms.values():
        for stream in (False, True):
            path = work / f"{arm.name}_{'stream' if stream else 'plain'}.lua"
            h.scripts[(arm.name, stream)] = write_script(
                path, model=arm.model, token=arm.token, stream=stream
            )


def warm_up(h: Harness) -> dict[str, Any]:
    """wrk at c=32 for `warmup` seconds non-streaming and 1 s streaming, per arm; not reported."""
    out: dict[str, Any] = {}
    for name in [n for n in ARM_ORDER if n in h.arms]:
        arm = h.arms[name]
        for stream, seconds in ((False, h.plan.warmup), (True, 1.0)):
            argv = wrk_argv(
                arm.port, h.scripts[(name, stream)], connections=32, duration=seconds, prefix=arm.prefix
            )
            done = subprocess.run(
                _pinned(h, argv), capture_output=True, text=True, timeout=seconds + 30, check=False
            )
            result = parse_wrk(done.stdout)
            out[f"{name}_{'stream' if stream else 'plain'}"] = result
            if result["requests"] and result["errors"] >= result["requests"]:
                h.notes.append(f"{name}: every warm-up request failed ({result}); arm dropped")
                h.arms.pop(name)
                break
    return out


def idle_cpu(h: Harness, seconds: float) -> dict[str, dict[str, float]]:
    """CPU (in cores) and RSS of each arm's process tree while nobody sends it anything.

    Every arm is measured over the same window; the window is long (60 s) because
    the CPU counters tick every 10 ms, and 0.1 % of a core is one tick in 10 s.
    """
    before = {name: tree_cpu_seconds(arm.roots).seconds for name, arm in h.arms.items()}
    time.sleep(seconds)
    return {
        name: {
            "cores": (tree_cpu_seconds(arm.roots).seconds - before[name]) / seconds,
            "rss_mb": tree_rss_mb(arm.roots),
        }
        for name, arm in h.arms.items()
    }


# ---------------------------------------------------------------- facts


def _cmd(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = (
        "bmo",
        "litestar",
        "granian",
        "aiohttp",
        "msgspec",
        "eventsourcing",
        "uvloop",
        "opentelemetry-sdk",
    )
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    py = arms_mod.LITELLM_VENV / "bin" / "python"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    found["litellm"] = _cmd([str(py), "-c", code]) if py.exists() else "absent"
    return found


def machine_facts() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(
            ln.split()[1]
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _cmd(["wrk", "-v"]).split(" [")[0],
        "sqlite": sqlite3.sqlite_version,
        "versions": _versions(),
    }


def uptime() -> str:
    return _cmd(["uptime"])


def others_window(seconds: float = 2.0) -> float:
    """Cores' worth of CPU used by processes outside the bench over `seconds` (bench/noise.py)."""
    first = noise.snapshot()
    time.sleep(seconds)
    return noise.others_cores(first, noise.snapshot())


# ---------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None, help="seconds per headline run (default 10)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per metric (default 2)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~2-3 minutes)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM arm")
    parser.add_argument(
        "--no-workers2",
        action="store_true",
        help="skip the arm `bmo (2 workers)` and its paired 1-vs-2-workers metrics (quicker)",
    )
    parser.add_argument("--limit", type=float, default=900.0, help="start no new run after this many seconds")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="also run bmo from this checkout (e.g. a `git worktree` of main) as the arm `bmo (before)`",
    )
    parser.add_argument("--workers", type=int, default=1, help="`bmo serve --workers` for the bmo arms")
    parser.add_argument(
        "--pin-load",
        default="",
        metavar="CPUS",
        help="taskset CPU list for the mock and the load tools (e.g. 0); the servers keep every CPU",
    )
    parser.add_argument("--postgres", action="store_true", help="also: 1 vs 2 instances on PostgreSQL")
    parser.add_argument(
        "--postgres-only", action="store_true", help="only the PostgreSQL arm (bench/pg_arm.py)"
    )
    return parser.parse_args(argv)


def _on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _on_term)
    if args.postgres_only:
        return _postgres_arm(args)
    started = time.monotonic()
    plan = make_plan(args)
    ensure_all(plan.litellm)
    facts = machine_facts()
    load_before, others_before = uptime(), others_window()
    with tempfile.TemporaryDirectory(prefix="bmo-bench-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        h = Harness(plan, Procs(work / "logs"), work, started)
        h.metrics = build_metrics(plan)
        warm: dict[str, Any] = {}
        idle: dict[str, Any] = {}
        during_start = noise.snapshot()
        during = math.nan
        try:
            start_all(h)
            print(f"[{h.elapsed():6.1f}s] arms up: {sorted(h.arms)}", file=sys.stderr, flush=True)
            warm = warm_up(h)
            idle = idle_cpu(h, plan.idle_s)
            for metric in h.metrics:
                run_metric(h, metric)
            during = noise.others_cores(during_start, noise.snapshot())
        finally:
            h.procs.stop_all()
            otlp = _otlp_counts(h)
            _keep_logs(work)
        results = {
            "meta": {
                "command": "python -m bench.run" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
                "plan": asdict(plan),
                "facts": facts,
                "uptime_before": load_before,
                "uptime_after": uptime(),
                "others_cores_before": others_before,
                "others_cores_after": others_window(),
                "others_cores_during": during,
                "elapsed_s": time.monotonic() - started,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "notes": h.notes,
                "otlp": otlp,
            },
            "arms": {
                n: {"port": a.port, "model": a.model, "notes": a.notes, "netns": bool(a.prefix)}
                for n, a in h.arms.items()
            },
            "warmup": warm,
            "idle": idle,
            "metrics": [asdict(m) for m in h.metrics],
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    from bench.report import write_report

    write_report(results, args.out)
    print(f"bench: wrote {args.out} and {RESULTS} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return _postgres_arm(args) if args.postgres else 0


def _postgres_arm(args: argparse.Namespace) -> int:
    """One vs two bmo instances on one PostgreSQL store (bench/pg_arm.py, its own results file)."""
    from bench.pg_arm import run_postgres_arm

    run_postgres_arm(seconds=args.duration or (4.0 if args.quick else 12.0), rounds=args.rounds or 2)
    return 0


def _otlp_counts(h: Harness) -> dict[str, Any] | None:
    if h.otlp is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        return json.loads(h.otlp[1].read_text())
    return None


def _keep_logs(work: Path) -> None:
    """Copy the servers' logs next to the results for a post-mortem."""
    dest = RESULTS.parent / "logs"
    dest.mkdir(parents=True, exist_ok=True)
    for log in (work / "logs").glob("*.log"):
        data = log.read_bytes()
        if len(data) > 400_000:
            data = data[:200_000] + b"\n[... cut ...]\n" + data[-200_000:]
        (dest / log.name).write_bytes(data)


if __name__ == "__main__":
    sys.exit(main())
