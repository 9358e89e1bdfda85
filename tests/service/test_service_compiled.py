"""The service with DRIFTSEG_COMPILE on the CPU: start-up compiles every padded batch size, traffic
compiles nothing more, and the compiled adapted function serves the eager one's labels and states."""
import io
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.service.app import create_app
from service_util import exported_state


def serve(settings, frames) -> tuple[list[np.ndarray], dict, int]:
    """Each frame to two streams at once (batches of two where they meet): the labels, the first
    stream's state, and the graphs compiled while serving (after the start-up's warm-up)."""
    from torch._dynamo.utils import counters

    with TestClient(create_app(settings)) as client:
        graphs = counters["stats"]["unique_graphs"]
        def post(stream, data):
            r = client.post("/segment", content=data, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
            assert r.status_code == 200, r.text
            return np.array(Image.open(io.BytesIO(r.content)))

        labels = []
        with ThreadPoolExecutor(2) as pool:
            for data in frames:
                labels += list(pool.map(post, ["a", "b"], [data, data]))
        return labels, exported_state(client, "a"), counters["stats"]["unique_graphs"] - graphs


@pytest.mark.slow
def test_compiled_service_serves_the_eager_labels(make_settings, frames, tmp_path, caplog):
    eager, eager_state, _ = serve(make_settings(state_dir=tmp_path / "eager", max_batch=3), frames)
    with caplog.at_level(logging.INFO, logger="driftseg.service"):
        compiled, compiled_state, compiled_while_serving = serve(
            make_settings(state_dir=tmp_path / "compiled", max_batch=3, compile=True, decode="batched"), frames)
    assert compiled_while_serving == 0  # the warm-up compiled every graph the traffic needs
    warmed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiled")]
    assert [m.split(" in ")[0] for m in warmed] == [f"compiled the adapted function for batches of {b}" for b in (1, 2, 4)]
    for a, b in zip(eager, compiled):
        assert (a != b).mean() < 1e-3
    stats_e, stats_c = eager_state["norm"]["stats"], compiled_state["norm"]["stats"]
    assert compiled_state["frames"] == eager_state["frames"] == len(frames)
    assert (stats_e - stats_c).abs().max() < 1e-3 * max(1.0, stats_e.abs().max().item())
