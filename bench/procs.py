"""Processes for the bench: start in their own process group, stop them all, read /proc.

Every process the harness starts goes through `Procs.spawn`, which puts it in
a new session (its own process group) so `Procs.stop_all` can signal the whole
group, children included, even when the harness fails half-way.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CpuSample",
    "Procs",
    "by_role",
    "free_port",
    "pin_tree",
    "process_role",
    "process_tree",
    "restore_affinity",
    "roles_cpu_seconds",
    "tree_cpu_seconds",
    "tree_rss_mb",
    "wait_http",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Procs:
    """Owns every child process of the harness; `stop_all` ends them group by group."""

    log_dir: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.children.append(proc)
        return proc

    def run_tools(
        self,
        argvs: Sequence[Sequence[str]],
        *,
        cwd: Path,
        timeout: float,
        on_tick: Callable[[], None] | None = None,
        tick_s: float = 0.25,
    ) -> list[tuple[int, str]]:
        """Run load tools side by side until all exit; [(returncode, stdout)] in order.

        `on_tick` runs every `tick_s` while they run (the harness samples RSS there).
        A tool still running at `timeout` is killed and reported with returncode -9.
        """
        outs = [tempfile.TemporaryFile() for _ in argvs]  # noqa: SIM115 - closed below
        running = []
        for argv, out in zip(argvs, outs, strict=True):
            proc = subprocess.Popen(
                list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
            self.children.append(proc)
            running.append(proc)
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in running) and time.monotonic() < deadline:
                if on_tick is not None:
                    on_tick()
                time.sleep(tick_s)
        finally:
            for proc in running:
                if proc.poll() is None:
                    self.stop(proc, timeout=1.0)
                elif proc in self.children:
                    self.children.remove(proc)
        results = []
        for proc, out in zip(running, outs, strict=True):
            out.seek(0)
            results.append((proc.returncode, out.read().decode(errors="replace")))
            out.close()
        return results

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 8.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left."""
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        if proc in self.children:
            self.children.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.children)):
            self.stop(proc)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    port: int,
    *,
    path: str = "/",
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    netns_pid: int | None = None,
) -> None:
    """Until something answers HTTP on 127.0.0.1:port (any status); raise on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} during start-up")
        if _answers(port, path, netns_pid):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port}{path} within {timeout:.0f}s")


def _answers(port: int, path: str, netns_pid: int | None) -> bool:
    if netns_pid is not None:
        argv = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "curl", "-s", "-o", "/dev/null"]
        argv += ["--max-time", "2", f"http://127.0.0.1:{port}{path}"]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime + cutime + cstime in clock ticks) for every process readable now."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return out


def _ppid_map() -> dict[int, int]:
    return {pid: ppid for pid, (ppid, _) in proc_stats().items()}


def process_tree(root: int) -> list[int]:
    """The root and every descendant that is alive now."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents:
            tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


@dataclass(frozen=True)
class CpuSample:
    seconds: float
    pids: tuple[int, ...]


def tree_cpu_seconds(roots: Iterable[int]) -> CpuSample:
    """utime+stime of each process in the trees (threads included), in seconds."""
    pids = [pid for root in roots for pid in process_tree(root)]
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return CpuSample(ticks / CLK_TCK, tuple(pids))


def process_role(pid: int) -> str:
    """What a process of bmo's tree is, from its command line: worker-N, projector, guard or main.

    `bmo serve` execs granian, whose processes retitle themselves (`... worker-1`);
    the projector is `python -m app projections run`; the tool-process guard is
    `process_guard.py`. The tree's root (and anything else) counts as main.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "main"
    if "projections run" in cmdline:
        return "projector"
    if "process_guard" in cmdline:
        return "guard"
    match = re.search(r" (worker-\d+)", cmdline)
    return match.group(1) if match else "main"


def by_role(per_process: dict[str, float]) -> dict[str, float]:
    """`roles_cpu_seconds`' figures with the workers summed as `worker` (others as they are)."""
    out: dict[str, float] = {}
    for role, value in per_process.items():
        key = "worker" if role.startswith("worker-") else role
        out[key] = out.get(key, 0.0) + value
    return out


def roles_cpu_seconds(roots: Iterable[int]) -> dict[str, float]:
    """utime+stime per role (`process_role`) over the trees, in seconds.

    Only live processes count (as in `tree_cpu_seconds`): a worker that exited
    between two samples takes its CPU with it, which a respawn would show as a drop.
    """
    out: dict[str, float] = {}
    for root in roots:
        for pid in process_tree(root):
            ticks = _cpu_ticks(pid)
            if ticks is None:
                continue
            role = process_role(pid)
            out[role] = out.get(role, 0.0) + ticks / CLK_TCK
    return out


def _cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def tree_rss_mb(roots: Iterable[int]) -> float:
    """The sum of VmRSS over the trees (shared pages counted once per process)."""
    total_kb = 0
    for root in roots:
        for pid in process_tree(root):
            total_kb += _vm_rss_kb(pid)
    return total_kb / 1024


def _vm_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pin_tree(roots: Iterable[int], cpus: set[int]) -> dict[int, set[int]]:
    """Move every thread of the trees onto `cpus`; each thread's former CPU set, to restore.

    The bench pins a running mock for some runs only (the 1-vs-2-workers pair), so
    it sets the affinity of the threads that exist (`/proc/PID/task`), not of a
    process about to start; `restore_affinity` undoes it.
    """
    former: dict[int, set[int]] = {}
    for root in roots:
        for pid in process_tree(root):
            for tid in _threads(pid):
                with contextlib.suppress(OSError):
                    former[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, cpus)
    return former


def restore_affinity(roots: Iterable[int], former: dict[int, set[int]]) -> None:
    """Give every thread of the trees its CPU set from before `pin_tree` back.

    Threads started while pinned inherited the pinned set; they get the union of
    the former sets (the mock's threads all had the same one).
    """
    default = set().union(*former.values()) if former else set(range(os.cpu_count() or 1))
    for root in roots:
        for pid in process_tree(root):
            for tid in _threads(pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, former.get(tid, default))


def _threads(pid: int) -> list[int]:
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []
