"""service/admission.py: at most max_pending requests in flight, the rest turned away with a Retry-After."""
import pytest

from driftseg.service.admission import Admission
from driftseg.service.errors import Overloaded


def test_admits_up_to_max_pending_and_says_when_to_retry():
    seen = []
    admission = Admission(max_pending=2, max_batch=1, on_change=seen.append)
    for _ in range(20):
        admission.observe_batch(2.0)  # the running mean approaches 2 s a batch
    with admission.admit(), admission.admit():
        with pytest.raises(Overloaded) as e:
            with admission.admit():
                pass
        assert e.value.status_code == 503 and "DRIFTSEG_MAX_PENDING" in e.value.detail
        assert e.value.retry_after == 4  # 2 frames, a batch of 1 at a time, about 1.76 s each: 3.5 s rounded up
    assert admission.pending == 0 and seen == [1, 2, 1, 0]


def test_a_failed_request_leaves_the_count():
    admission = Admission(max_pending=1, max_batch=1)
    with pytest.raises(RuntimeError), admission.admit():
        raise RuntimeError("decode failed")
    assert admission.pending == 0
    with admission.admit():
        assert admission.pending == 1
