"""A low-rate latency prober for the operator routes, run as its own process.

`python -m tests.reliability.prober --base-url URL --seconds S --out FILE`
alternates `GET /v1/openai-compat/posture` and `GET /v1/openai-compat/runs?limit=5`
(plus `GET /healthz` every fifth probe, as a control: no read model, no settle)
every `--interval` seconds on one keep-alive connection and writes the latencies
(ms), start offsets, statuses and posture labels to FILE as JSON. The bearer
token comes from `PROBER_TOKEN`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import httpx

PATHS = {
    "posture": "/v1/openai-compat/posture",
    "runs": "/v1/openai-compat/runs?limit=5",
    "healthz": "/healthz",  # control: no read model, no settle; shows the worker's own latency
}
ORDER = ("posture", "runs", "posture", "runs", "healthz")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--out", type=Path, required=True)
    opts = parser.parse_args()
    token = os.environ.get("PROBER_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    result: dict[str, list] = {f"{name}_{k}": [] for name in PATHS for k in ("ms", "status", "at")}
    result["labels"] = []
    t0 = time.monotonic()
    deadline = t0 + opts.seconds
    with httpx.Client(base_url=opts.base_url, headers=headers, timeout=10) as client:
        n = 0
        while time.monotonic() < deadline:
            name = ORDER[n % len(ORDER)]
            n += 1
            started = time.perf_counter()
            try:
                response = client.get(PATHS[name])
                status = response.status_code
                if name == "posture" and status == 200:
                    result["labels"].append(response.json().get("label", ""))
            except httpx.HTTPError as exc:
                status = f"{type(exc).__name__}"
            elapsed = (time.perf_counter() - started) * 1000
            result[f"{name}_ms"].append(round(elapsed, 2))
            result[f"{name}_status"].append(status)
            result[f"{name}_at"].append(round(time.monotonic() - t0 - elapsed / 1000, 3))
            time.sleep(max(0.0, opts.interval - elapsed / 1000))
    opts.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
