"""bench/loop.py's report (the loop through the app is in tests/service/test_service_jobs.py)."""
from driftseg.bench.loop import markdown


def result(status: str, check: dict, load: dict | None = None) -> dict:
    checks = {"source_miou": {"passed": True, "parent": 60.0, "candidate": 59.5}}
    gate = {"candidate": "trained", "passed": True, "checks": checks,
            "tried": [{"candidate": "trained", "passed": True, "checks": checks}]}
    out = {"score": "target_dusk[31:]", "check": "day", "job": {"status": status, "report": gate},
           "score_miou": {"camera": 48.25, "base": 40.0}, "check_miou": check}
    return {**out, "load": load} if load else out


def test_a_promotion_is_reported_with_its_change_on_both_streams_and_the_gate() -> None:
    text = markdown(result("promoted", {"camera": 61.0, "base": 61.75}))
    assert "| change | +8.2 | -0.8 |  |" in text  # 48.25 - 40.0 and 61.0 - 61.75
    assert "| trained | source_miou | yes | parent 60.0, candidate 59.5 |" in text


def test_a_rejection_has_no_check_on_the_camera_model() -> None:
    text = markdown(result("rejected", {"base": 61.75}))
    assert "| camera stream (after the job) | 48.2 |  | rejected |" in text and "| change | +8.2 |  |  |" in text


def test_the_load_table_shows_the_ratios() -> None:
    level = {"frames_per_s": 8.0, "p50_ms": 100.0, "p95_ms": 200.0, "p99_ms": 300.0, "errors": 0}
    load = {"cameras": 4, "rate": 2.0, "seconds": 60.0, "job_ran_throughout": True, "without_job": level,
            "with_job": {**level, "p95_ms": 260.0}, "p50_ratio": 1.0, "p95_ratio": 1.3}
    text = markdown(result("promoted", {"camera": 61.0, "base": 61.75}, load))
    assert "4 cameras on the base model at 2.0 frames/s each for 60 s" in text
    assert "| with a job | 8.0 | 100.0 | 260.0 | 300.0 | 0 |" in text and "| ratio |  | 1.00x | 1.30x |  |  |" in text
