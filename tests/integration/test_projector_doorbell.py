"""The projector process and its doorbell socket: a projector that found the socket taken
binds it once its predecessor exits (a quick restart leaves the old projector finishing its
last catch-up), so rings reach it again and the workers' readiness comes back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.projections.doorbell import Doorbell, DoorbellListener, socket_path

REPO = Path(__file__).resolve().parents[2]


def _wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_projector_started_beside_its_predecessor_takes_the_doorbell_when_it_exits(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    predecessor = DoorbellListener(socket_path(data))
    assert predecessor.bound
    env = {**os.environ, "BMO_GLOBAL_DATA": str(data), "PYTHONPATH": str(REPO)}
    env.pop("BMO_STORE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "projections", "run", "--poll-ms", "20"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr or []), daemon=True)
    reader.start()
    bell = Doorbell(socket_path(data))
    try:
        assert _wait_until(lambda: any("polling the store until it can bind" in s for s in said), 60), said
        predecessor.close()  # it finished and unlinked its socket
        assert _wait_until(bell.answered, 30), "the projector never bound the freed doorbell socket"
    finally:
        bell.close()
        predecessor.close()
        assert proc.stdin is not None
        proc.stdin.close()  # how `bmo serve` stops it
        assert proc.wait(timeout=60) == 0
