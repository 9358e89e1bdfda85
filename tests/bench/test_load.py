"""bench/load.py: Server-Timing parsing, percentiles, and closed- and open-loop levels against a
fake server of known capacity (the run against a live server is in tests/service/test_service_e2e.py)."""
import asyncio

import httpx
import pytest

from driftseg.bench.load import _percentile, main, markdown_table, run_level, server_ms, thirds_p50_ms
from driftseg.bench.plot import plot_latency


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


def test_thirds_split_the_run_by_when_frames_were_due() -> None:
    due = [0.1, 0.2, 0.5, 1.1, 2.1, 2.5, 2.9]
    latency = [0.010, 0.030, 0.020, 0.500, 0.040, 0.060, 0.050]
    assert thirds_p50_ms(due, latency, duration=3.0) == (20.0, 50.0)
    assert thirds_p50_ms([0.1], [0.01], duration=3.0) == (10.0, None)


def fake_server(service_s: float) -> tuple[httpx.MockTransport, list[str]]:
    """A server that segments one frame at a time in `service_s` seconds (capacity 1 / service_s
    frames/s) and answers every reset; the streams it saw frames of, in order."""
    busy = asyncio.Lock()
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/adapt/reset":
            return httpx.Response(200, json={"reset": [request.url.params["stream"]]})
        async with busy:
            seen.append(request.headers["x-stream-id"])
            await asyncio.sleep(service_s)
        return httpx.Response(200, headers={"server-timing": f"model;dur={1000 * service_s}"})

    return httpx.MockTransport(handler), seen


@pytest.mark.parametrize("rate, duration, steady", [(10.0, 1.5, True), (100.0, 3.0, False)])
def test_open_loop_level_shows_whether_the_server_keeps_up(rate, duration, steady) -> None:
    transport, _ = fake_server(service_s=0.02)  # 50 frames/s
    level = asyncio.run(run_level("http://fake", 1, [b"jpeg"], duration=duration, rate=rate, transport=transport))
    assert level["rate_per_camera"] == rate and level["offered_frames_per_s"] == rate
    assert level["frames"] == int(duration * rate) and level["errors"] == 0  # every frame sent, none lost
    assert level["steady"] is steady
    first, last = level["p50_first_third_ms"], level["p50_last_third_ms"]
    if steady:  # each frame waits only for its own service
        assert 20 <= level["p50_ms"] < 60 and last < 1.5 * first
    else:
        # the queue grows by 50 frames/s: the thirds' medians lie 200 frames apart, 10 ms more each, so 2 s;
        # compared as a difference, since a pause of the test process (CI saw 1.7 s) adds to both alike
        assert last - first > 1000 and level["frames_per_s"] < 60
    due = [t for t, _ in level["latency_over_run"]]
    assert due == sorted(due) and len(due) == level["frames"]


def test_closed_loop_level_waits_for_each_answer() -> None:
    transport, seen = fake_server(service_s=0.01)
    # 2 s, so that a pause of the test process as long as CI once saw (1.7 s) still leaves over 50 frames/s
    level = asyncio.run(run_level("http://fake", 2, [b"a", b"b"], duration=2.0, transport=transport))
    assert level["rate_per_camera"] is None and "latency_over_run" not in level
    # two cameras share one frame at a time: about 100 frames/s in all, each waiting about 20 ms
    assert 50 < level["frames_per_s"] <= 110 and 10 <= level["p50_ms"] < 40 and level["steady"]
    assert level["server_p50_ms"] == 10.0 and set(seen) == {"load-2-0", "load-2-1"}


def test_open_loop_table_and_picture(tmp_path) -> None:
    closed = {"cameras": 1, "rate_per_camera": None, "frames_per_s": 30.0, "p50_ms": 30.0, "p95_ms": 35.0,
              "p99_ms": 40.0, "server_p50_ms": 25.0, "errors": 0, "p50_first_third_ms": 30.0,
              "p50_last_third_ms": 31.0, "steady": True}
    opened = {**closed, "rate_per_camera": 40.0, "offered_frames_per_s": 40.0, "p50_ms": 300.0, "errors": 3,
              "p50_last_third_ms": 900.0, "steady": False, "latency_over_run": [(0.0, 30.0), (0.5, 300.0), (1.0, 900.0)]}
    lines = markdown_table([closed, opened]).splitlines()
    assert lines[0] == ("| cameras | frames/s sent | frames/s | p50 ms | p95 ms | p99 ms | server p50 ms | errors "
                        "| p50 ms first / last third | steady |")
    assert lines[2] == "| 1 | closed loop | 30.0 | 30.0 | 35.0 | 40.0 | 25.0 | 0 | 30.0 / 31.0 | yes |"
    assert lines[3] == "| 1 | 40.0 | 30.0 | 300.0 | 35.0 | 40.0 | 25.0 | 3 | 30.0 / 900.0 | no |"
    plot_latency([closed, opened], tmp_path / "load.png")
    assert (tmp_path / "load.png").stat().st_size > 10_000


def test_a_rate_must_be_positive(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--rate", "10", "0"])
    assert "--rate takes frames/s per camera above 0" in capsys.readouterr().err
