"""driftseg/device.py: what --device auto|cpu|cuda resolves to."""
import pytest
import torch

from driftseg.device import resolve_device


def test_auto_is_cuda_where_torch_sees_a_gpu_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_what_to_use():
    with pytest.raises(ValueError, match="use cpu or auto"):
        resolve_device("cuda")


def test_an_unknown_device_is_refused():
    with pytest.raises(ValueError, match="one of"):
        resolve_device("tpu")
