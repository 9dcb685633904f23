"""Pinning a running process tree for some runs only, and undoing it (bench/procs.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.procs import pin_tree, restore_affinity

CHILD = """
import sys, threading, time
sys.stdin.readline()  # start a second thread when told: it is born while the process is pinned
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("started", flush=True)
time.sleep(60)
"""


def _affinities(pid: int) -> dict[int, set[int]]:
    return {int(t): os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="pinning to a subset needs two CPUs")
def test_threads_born_while_pinned_are_unpinned_too() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        everywhere = os.sched_getaffinity(child.pid)
        assert len(everywhere) >= 2
        former = pin_tree([child.pid], {0})
        assert all(cpus == {0} for cpus in _affinities(child.pid).values())
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "started"
        pinned = _affinities(child.pid)  # the new thread exists: it printed after start()
        assert len(pinned) == 2 and all(cpus == {0} for cpus in pinned.values())
        restore_affinity([child.pid], former)
        assert all(cpus == everywhere for cpus in _affinities(child.pid).values())
    finally:
        child.kill()
        child.wait()
