"""Install what the bench needs and CI never does: wrk, matplotlib, LiteLLM's own venv."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

from bench.arms import LITELLM_VENV

__all__ = ["ensure_all", "ensure_litellm", "ensure_matplotlib", "ensure_py_spy", "ensure_wrk"]


def _run(argv: list[str], timeout: float) -> None:
    print(f"bench: installing: {' '.join(argv)}", file=sys.stderr, flush=True)
    subprocess.run(argv, check=True, timeout=timeout, stdout=subprocess.DEVNULL)


def ensure_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        _run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], timeout=300)


def ensure_py_spy() -> None:
    """py-spy for `bench.profile` only: a bench tool, never part of the runtime or test locks."""
    if shutil.which("py-spy") is None:
        _run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], timeout=300)


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        _run(["apt-get", "update", "-q"], timeout=300)
        _run(["apt-get", "install", "-y", "-q", "wrk"], timeout=300)


def ensure_litellm() -> None:
    """`python -m venv bench/.venv-litellm` and `pip install 'litellm[proxy]'` once."""
    if (LITELLM_VENV / "bin" / "litellm").exists():
        return
    _run([sys.executable, "-m", "venv", str(LITELLM_VENV)], timeout=120)
    _run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], timeout=900)


def ensure_all(with_litellm: bool) -> None:
    ensure_wrk()
    ensure_matplotlib()
    if with_litellm:
        ensure_litellm()
