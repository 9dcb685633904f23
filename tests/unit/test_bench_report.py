"""The bench report's two-workers section, its target row and the noisy-run flag (bench/report.py)."""

from __future__ import annotations

from typing import Any

from bench.report import _load_note, targets, workers2_section


def _run(rps: float, cpu: float, util: float, **by_process: float) -> dict[str, Any]:
    return {"rps": rps, "cpu_ms_per_req": cpu, "cpu_util": util, "cpu_ms_per_req_by_process": by_process}


def _results(nproc: int = 2, others: float = 0.004) -> dict[str, Any]:
    rounds = [
        {
            "bmo": _run(1000, 0.90, 0.95, **{"worker-1": 0.70, "projector": 0.18, "main": 0.02}),
            "bmo_w2": _run(1300, 0.95, 1.30, **{"worker-1": 0.38, "worker-2": 0.39, "projector": 0.17}),
        },
        {
            "bmo": _run(1100, 0.88, 0.97, **{"worker-1": 0.69, "projector": 0.17, "main": 0.02}),
            "bmo_w2": _run(1540, 0.93, 1.40, **{"worker-1": 0.37, "worker-2": 0.38, "projector": 0.18}),
        },
    ]
    for round_ in rounds:
        for run in round_.values():
            run["others_cores"] = others
    metric = {"key": "w2_ns_c32", "title": "1 vs 2 workers: non-streaming, c=32", "rounds": rounds}
    plan = {"workers2": True, "rounds": 2, "pin_load": "", "lag_rate": 500.0, "hold_streams": 1000}
    meta = {
        "plan": plan,
        "facts": {"nproc": nproc},
        "others_cores_before": others,
        "others_cores_after": others,
        "others_cores_during": others,
    }
    return {"meta": meta, "arms": {"bmo": {}, "bmo_w2": {}}, "metrics": [metric], "idle": {}}


def _workers_target(results: dict[str, Any]) -> Any:
    return next(t for t in targets(results) if t.label.startswith("--workers 2"))


def test_the_target_row_is_the_median_of_same_round_rps_ratios() -> None:
    target = _workers_target(_results())
    assert target.value is not None
    assert abs(target.value - (1.3 + 1.4) / 2) < 1e-9
    verdict = target.verdict()
    assert verdict.startswith("**NOT SHOWABLE HERE**") and "PASS" not in verdict and "MISS" not in verdict
    assert "1.41× the cores" in verdict and "1.06× the CPU per request" in verdict


def test_on_four_cores_the_verdict_stands_alone() -> None:
    verdict = _workers_target(_results(nproc=4)).verdict()
    assert verdict.startswith("**MISS** by 0.250×")


def test_the_section_gives_each_workers_cpu_and_the_ratios() -> None:
    text = workers2_section(_results())
    assert "| bmo (2 workers) | 1,420 (1,300 / 1,540) | 0.940 (0.950 / 0.930) | 0.375" in text
    assert "0.385 (0.390 / 0.380)" in text  # worker-2
    assert "**2 workers / 1** | 1.35 (1.30 / 1.40)" in text
    assert "What 2 cores can and cannot show" in text


def test_the_noisy_flag_follows_measured_cpu_of_others_not_the_load_average() -> None:
    quiet = _results(others=0.004)
    quiet["meta"]["uptime_before"] = "up 9:11, load average: 3.21, 2.24, 1.77"  # lagging: ignored
    assert "Noisy run" not in _load_note(quiet)
    busy = _load_note(_results(others=0.4))
    assert "Noisy run" in busy and "0.400 cores > 0.100" in busy
