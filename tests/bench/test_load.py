"""bench/load.py: Server-Timing parsing and percentiles (the run against a live server is in
tests/service/test_service_e2e.py)."""
import httpx

from bench.load import _percentile, markdown_table, server_ms


def test_server_ms_sums_the_server_timing_stages() -> None:
    r = httpx.Response(200, headers={"server-timing": "wait;dur=0.50, decode;dur=2.25, model;dur=20.00, encode;dur=1.25"})
    assert server_ms(r) == 24.0
    assert server_ms(httpx.Response(200)) == 0.0


def test_percentiles_and_table() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert round(_percentile(values, 50), 6) == 0.0505 and round(_percentile(values, 99), 6) == 0.09901
    assert _percentile([0.003], 99) == 0.003
    row = {"cameras": 2, "frames_per_s": 10.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "server_p50_ms": 0.5,
           "errors": 0}
    assert markdown_table([row]).splitlines()[-1] == "| 2 | 10.0 | 1.0 | 2.0 | 3.0 | 0.5 | 0 |"


def test_table_with_the_raw_model_share() -> None:
    row = {"cameras": 8, "frames_per_s": 30.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "server_p50_ms": 0.5,
           "errors": 0}
    lines = markdown_table([row], {"batch": 8, "frames_per_s": 60.0}).splitlines()
    assert lines[0].endswith("| x raw model (batch 8) |") and lines[-1].endswith("| 0.50 |")
