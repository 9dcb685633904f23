"""A cached, slim Open WebUI 0.12.4 venv outside the repository (open-webui.md §3.1).

Created once under `~/.cache/bmo-tests/openwebui-0.12.4/` (override with
`BMO_OPENWEBUI_VENV`), guarded by a lock file so parallel runs wait for one
install instead of colliding, and reused when present and importable:

    pip install --no-deps -r tests/openwebui/open-webui.lock     # open-webui==0.12.4, hashed
    pip install -r tests/openwebui/requirements.lock             # its slim list + playwright, hashed

Both locks are made by `scripts/lock` (from `open-webui.in` and `requirements.in`; the slim list is
a copy of the wheel's own `requirements-slim.txt`, run with USE_SLIM_DOCKER=true). The cache stamp
holds the locks' digest, so a refreshed lock rebuilds the venv instead of testing stale packages.
The browser is Debian's chromium, never `playwright install`.

The driver scripts (`driver.py`) run with this venv's interpreter, so the tests'
own environment needs neither python-socketio nor playwright.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OPEN_WEBUI_VERSION", "InstallError", "OpenWebUIVenv", "ensure_venv"]

OPEN_WEBUI_VERSION = "0.12.4"
_HERE = Path(__file__).resolve().parent
_LOCKS = (_HERE / "open-webui.lock", _HERE / "requirements.lock")
_STAMP = ".bmo-tests-complete"
_PIP_TIMEOUT_S = 900


class InstallError(RuntimeError):
    """Open WebUI could not be installed or imported; the message says what failed."""


@dataclass(frozen=True)
class OpenWebUIVenv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def open_webui(self) -> Path:
        return self.root / "bin" / "open-webui"


def default_root() -> Path:
    override = os.environ.get("BMO_OPENWEBUI_VENV")
    if override:
        return Path(override).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bmo-tests" / f"openwebui-{OPEN_WEBUI_VERSION}"


def ensure_venv(root: Path | None = None, log: Path | None = None) -> OpenWebUIVenv:
    """The ready venv: reused when importable, else (re)built under an exclusive lock."""
    venv = OpenWebUIVenv(root or default_root())
    venv.root.parent.mkdir(parents=True, exist_ok=True)
    if _usable(venv):
        return venv
    lock_path = venv.root.parent / f"{venv.root.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing: wait for it
        try:
            if _usable(venv):
                return venv
            _install(venv, log or venv.root.parent / f"{venv.root.name}.install.log")
            if not _usable(venv):
                raise InstallError(f"Open WebUI installed into {venv.root} but does not import; see the log")
            return venv
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _locks_digest() -> str:
    digest = hashlib.sha256()
    for lock in _LOCKS:
        digest.update(lock.read_bytes())
    return digest.hexdigest()


def _usable(venv: OpenWebUIVenv) -> bool:
    stamp = venv.root / _STAMP
    if not stamp.exists() or not venv.python.exists() or not venv.open_webui.exists():
        return False
    if _locks_digest() not in stamp.read_text():
        return False
    check = (
        "import importlib.metadata as m, open_webui, socketio, playwright.async_api;"
        f"assert m.version('open-webui') == {OPEN_WEBUI_VERSION!r}"
    )
    try:
        done = subprocess.run(
            [str(venv.python), "-c", check], capture_output=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _install(venv: OpenWebUIVenv, log: Path) -> None:
    if venv.root.exists():
        shutil.rmtree(venv.root)
    started = time.monotonic()
    with open(log, "w") as out:

        def run(*cmd: str | Path) -> None:
            out.write(f"$ {' '.join(map(str, cmd))}\n")
            out.flush()
            try:
                done = subprocess.run(
                    [str(c) for c in cmd],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=_PIP_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired as exc:
                raise InstallError(f"{' '.join(map(str, cmd))} timed out; see {log}") from exc
            if done.returncode != 0:
                out.flush()
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                raise InstallError(
                    f"Open WebUI {OPEN_WEBUI_VERSION} could not be installed into {venv.root}:\n"
                    f"`{' '.join(map(str, cmd))}` exited {done.returncode}. Last lines of {log}:\n{tail}"
                )

        run(sys.executable, "-m", "venv", venv.root)
        pip = (venv.python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check")
        open_webui_lock, requirements_lock = _LOCKS
        run(*pip, "--no-deps", "-r", open_webui_lock)
        run(*pip, "-r", requirements_lock)  # the Python playwright only: the browser is Debian's chromium
        out.write(f"installed in {time.monotonic() - started:.0f}s\n")
    (venv.root / _STAMP).write_text(f"open-webui=={OPEN_WEBUI_VERSION}\nlocks {_locks_digest()}\n")


if __name__ == "__main__":  # `python -m tests.openwebui.install`: prepare the cache (e.g. in .ci/run)
    t0 = time.monotonic()
    print(ensure_venv().root, f"ready in {time.monotonic() - t0:.0f}s")
