"""The bench's "Noisy run" input: CPU of processes outside the bench's tree (bench/noise.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import noise

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def _ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def test_a_reaped_child_counts_as_the_benchs_own() -> None:
    """A load tool that ran and exited inside the window (wrk) is the bench's CPU, not others'."""
    before = noise.snapshot()
    subprocess.run([sys.executable, "-c", BURN.format(s=0.5)], check=True, timeout=60)
    after = noise.snapshot()
    assert after.own - before.own >= 0.4 * noise.CLK_TCK


def test_a_process_outside_the_tree_is_not_the_benchs() -> None:
    """A busy process that is no descendant of the bench (another engineer's) is others' CPU."""
    # an intermediate child starts the burner and exits: the burner is reparented away from this process
    burner = [sys.executable, "-c", BURN.format(s=30)]
    quiet = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
    spawn = f"import subprocess\nprint(subprocess.Popen({burner!r}, {quiet}).pid)"
    done = subprocess.run(
        [sys.executable, "-c", spawn], capture_output=True, text=True, check=True, timeout=30
    )
    orphan = int(done.stdout.strip())
    try:
        start, ticks0 = noise.snapshot(), _ticks(orphan)
        deadline = time.monotonic() + 30
        while _ticks(orphan) - ticks0 < 0.3 * noise.CLK_TCK and time.monotonic() < deadline:
            time.sleep(0.05)  # a measuring window, not synchronisation: the burner runs on its own
        end, burned = noise.snapshot(), _ticks(orphan) - ticks0
        assert burned >= 0.3 * noise.CLK_TCK
        assert end.own - start.own < burned / 2
        assert noise.others_cores(start, end) > 0
    finally:
        os.kill(orphan, signal.SIGKILL)


@pytest.mark.parametrize(
    ("figures", "noisy"),
    [
        ({"before": 0.005, "after": 0.01, "during": 0.02, "worst_run": 0.05}, False),
        ({"before": 0.3, "after": 0.01, "during": 0.02, "worst_run": 0.05}, True),
        ({"before": 0.0, "after": 0.0, "during": 0.11, "worst_run": 0.05}, True),
        ({"before": 0.0, "after": 0.0, "during": 0.02, "worst_run": 0.31}, True),
        ({"before": None, "after": None, "during": None, "worst_run": None}, False),
    ],
)
def test_noise_reasons_on_two_cores(figures: dict[str, float | None], noisy: bool) -> None:
    reasons = noise.noise_reasons(2, **figures)
    assert bool(reasons) is noisy, reasons
