"""service/batcher.py: frames that arrive together share a batch (one per frame size, at most
max_batch), each request gets its own frame's answer, a failed batch answers each of its requests
with the error, cancelled requests never reach the network; and through the app, concurrent
streams are batched and answered as if they had come one at a time."""
import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.service.app import create_app
from driftseg.service.batcher import Batcher
from driftseg.service.errors import NotReady
from driftseg.service.segmenter import Segmenter


class FakeStep:
    """Labels = the frame's first pixel value, state = old state + 1; records the batches it saw."""

    def __init__(self, fail_on: float | None = None):
        self.batches: list[list[float]] = []
        self.models: list[str | None] = []
        self.fail_on = fail_on

    def __call__(self, frames, states, model=None):
        ids = [float(f[0, 0, 0]) for f in frames]
        self.batches.append(ids)
        self.models.append(model)
        if self.fail_on in ids:
            raise ValueError("bad frame")
        return [np.full((1, 1), i) for i in ids], [s + 1 for s in states]


def frame(value: float, size=(4, 6)) -> torch.Tensor:
    return torch.full((1, 3, *size), value)


def run(coro):
    return asyncio.run(coro)


async def _started(step, max_batch=8, max_delay=0.05):
    batcher = Batcher(step, max_batch, max_delay)
    batcher.start()
    return batcher


def test_frames_arriving_together_share_a_batch_per_size():
    async def main():
        step = FakeStep()
        batcher = await _started(step)
        requests = [batcher.submit(frame(v), 10 * v, True) for v in (1, 2, 3)]
        requests += [batcher.submit(frame(v, size=(8, 8)), 10 * v, True) for v in (4, 5)]
        answers = await asyncio.gather(*requests)
        await batcher.stop()
        return step, answers

    step, answers = run(main())
    assert sorted(map(sorted, step.batches)) == [[1, 2, 3], [4, 5]]
    for v, (labels, state, seconds) in zip((1, 2, 3, 4, 5), answers):
        assert labels.item() == v and state == 10 * v + 1 and seconds >= 0


def test_max_batch_caps_a_batch():
    async def main():
        step = FakeStep()
        batcher = await _started(step, max_batch=2)
        await asyncio.gather(*(batcher.submit(frame(v), 0, True) for v in range(5)))
        await batcher.stop()
        return step

    assert [len(b) for b in run(main()).batches] == [2, 2, 1]


def test_not_adapting_gets_its_old_state_back():
    async def main():
        batcher = await _started(FakeStep())
        answers = await asyncio.gather(batcher.submit(frame(1), 7, False), batcher.submit(frame(2), 7, True))
        await batcher.stop()
        return answers

    (_, kept, _), (_, new, _) = run(main())
    assert kept == 7 and new == 8


def test_a_failed_batch_answers_each_request_and_the_worker_goes_on():
    async def main():
        step = FakeStep(fail_on=2.0)
        batcher = await _started(step)
        failed = await asyncio.gather(batcher.submit(frame(1), 0, True), batcher.submit(frame(2), 0, True),
                                      return_exceptions=True)
        later = await batcher.submit(frame(3), 0, True)
        await batcher.stop()
        return failed, later

    failed, later = run(main())
    assert all(isinstance(e, ValueError) for e in failed)
    assert later[0].item() == 3 and later[1] == 1


def test_a_step_that_answers_too_few_fails_every_request():
    def short_step(frames, states, model):
        return [np.zeros((1, 1))], states[:1]  # one answer for two frames

    async def main():
        batcher = await _started(short_step)
        answers = await asyncio.gather(batcher.submit(frame(1), 0, True), batcher.submit(frame(2), 0, True),
                                       return_exceptions=True)
        await batcher.stop()
        return answers

    assert all(isinstance(a, RuntimeError) and "for 2 frames" in str(a) for a in run(main()))


def test_a_cancelled_request_never_reaches_the_network():
    async def main():
        step = FakeStep()
        batcher = await _started(step, max_delay=0.2)
        first = asyncio.create_task(batcher.submit(frame(1), 0, True))
        second = asyncio.create_task(batcher.submit(frame(2), 0, True))
        await asyncio.sleep(0.05)  # both queued or collected, the batch still open
        second.cancel()
        await first
        await batcher.stop()
        return step

    assert run(main()).batches == [[1.0]]


def test_frames_of_different_models_never_share_a_batch():
    async def main():
        step = FakeStep()
        batcher = await _started(step)
        await asyncio.gather(*[batcher.submit(frame(v), 0, True, model) for v, model in
                               ((1, None), (2, "a" * 64), (3, None), (4, "a" * 64), (5, "b" * 64))])
        await batcher.stop()
        return step

    step = run(main())
    assert sorted(zip(step.models, step.batches), key=str) == sorted(
        [(None, [1.0, 3.0]), ("a" * 64, [2.0, 4.0]), ("b" * 64, [5.0])], key=str)


def test_not_started_or_stopped_is_not_ready():
    async def main():
        batcher = Batcher(FakeStep(), 4, 0.0)
        with pytest.raises(NotReady):
            await batcher.submit(frame(1), 0, True)

    run(main())
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(FakeStep(), 0, 0.0)


def test_the_network_runs_in_one_thread_that_is_not_the_event_loops():
    threads = []

    def prepare(frames):
        threads.append(threading.get_ident())
        return frames

    step = FakeStep()

    def recording_step(frames, states, model):
        threads.append(threading.get_ident())
        return step(frames, states, model)

    async def main():
        batcher = Batcher(recording_step, 2, 0.0, prepare=prepare)
        batcher.start()
        for _ in range(3):  # several batches, of three sizes
            await asyncio.gather(*[batcher.submit(frame(v, size=(4, 4 + v)), 0, True) for v in (1, 2, 3)])
        await batcher.stop()
        return threading.get_ident()

    loop_thread = run(main())
    assert len(threads) >= 12 and len(set(threads)) == 1 and threads[0] != loop_thread


def test_the_app_loads_and_runs_the_model_in_its_model_thread(make_settings, frames, tmp_path, monkeypatch):
    """The engine's warm-up and every step share one thread (torch keeps one OpenMP team)."""
    names = []
    for method in ("warm_up", "step"):
        original = getattr(Segmenter, method)

        def recorded(self, *args, _original=original):
            names.append(threading.current_thread().name)
            return _original(self, *args)
        monkeypatch.setattr(Segmenter, method, recorded)
    with TestClient(create_app(make_settings(state_dir=tmp_path))) as client:
        for i, data in enumerate(frames[:2]):
            r = client.post("/segment", content=data, headers={"Content-Type": "image/jpeg", "X-Stream-Id": f"cam{i}"})
            assert r.status_code == 200, r.text
    assert len(names) >= 4 and len(set(names)) == 1 and names[0].startswith("driftseg-model")


def _png_labels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(Image.open(io.BytesIO(response.content)))


def test_concurrent_streams_are_batched_and_answered_as_if_alone(make_settings, frames, tmp_path):
    streams = [f"cam{i}" for i in range(4)]

    def serve(settings, concurrently: bool) -> dict[str, list[np.ndarray]]:
        out = {s: [] for s in streams}
        with TestClient(create_app(settings)) as client:
            def one(stream, data):
                r = client.post("/segment", content=data, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
                return stream, _png_labels(r)

            for k in range(3):
                data = [frames[(k + i) % len(frames)] for i in range(len(streams))]  # each stream its own sequence
                if concurrently:
                    with ThreadPoolExecutor(len(streams)) as pool:
                        answers = list(pool.map(one, streams, data))
                else:
                    answers = list(map(one, streams, data))
                for stream, labels in answers:
                    out[stream].append(labels)
            text = client.get("/metrics").text
        return out, text

    alone, _ = serve(make_settings(max_batch=1, state_dir=tmp_path / "alone"), concurrently=False)
    batched, text = serve(make_settings(max_batch=4, max_batch_delay_ms=200, state_dir=tmp_path / "batched"),
                          concurrently=True)
    count = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("driftseg_batch_size_count")))
    total = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("driftseg_batch_size_sum")))
    assert total == 12 and count < 12  # some frames shared a batch
    for stream in streams:
        for a, b in zip(alone[stream], batched[stream]):
            assert (a != b).mean() < 1e-3  # batched convolutions sum in another order: near-ties may flip
