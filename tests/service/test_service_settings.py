"""Settings validation and the `driftseg serve` command line."""
import pytest
import torch

from driftseg import cli as driftseg_cli
from driftseg.service import cli
from driftseg.service.settings import load_settings


def test_defaults_and_environment(ckpt_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTSEG_CHECKPOINT", str(ckpt_file))
    monkeypatch.setenv("DRIFTSEG_STATE_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("DRIFTSEG_MAX_STREAMS", "5")
    s = load_settings()
    assert s.method == "auto" and s.method_string.startswith("auto(") and s.spec.config("lc")
    assert s.max_streams == 5 and s.state_dir == tmp_path / "s" and s.checkpoint == ckpt_file
    assert s.snapshot_every == 100 and s.max_image_bytes == 20 * 1024 * 1024 and s.metrics_stream_cap == 32
    assert load_settings(max_streams=7).max_streams == 7  # arguments win over the environment


@pytest.mark.parametrize("overrides, words", [
    ({"method": "bogus"}, ["DRIFTSEG_METHOD", "unknown method component"]),
    ({"method": "ema(m=2)"}, ["DRIFTSEG_METHOD", "[0, 1]"]),
    ({"method": "tent"}, ["DRIFTSEG_METHOD", "backprop"]),
    ({"max_streams": 0}, ["DRIFTSEG_MAX_STREAMS"]),
    ({"device": "tpu"}, ["DRIFTSEG_DEVICE"]),
    ({"checkpoint": "/nonexistent/model.pt"}, ["DRIFTSEG_CHECKPOINT", "does not exist"]),
    ({"max_image_bytes": -1}, ["DRIFTSEG_MAX_IMAGE_BYTES"]),
    ({"snapshot_every": -5}, ["DRIFTSEG_SNAPSHOT_EVERY"]),
    ({"compile": True, "engine": "onnx"}, ["DRIFTSEG_COMPILE", "onnxruntime"]),
    ({"precision": "bf16", "engine": "onnx"}, ["DRIFTSEG_PRECISION", "float32 graph"]),
    ({"precision": "fp64"}, ["DRIFTSEG_PRECISION"]),
])
def test_invalid_settings_say_which_and_why(ckpt_file, overrides, words):
    with pytest.raises(ValueError) as e:
        load_settings(**{"checkpoint": ckpt_file, **overrides})
    for word in words:
        assert word in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")
def test_cuda_without_a_gpu_is_refused(ckpt_file):
    with pytest.raises(ValueError, match="DRIFTSEG_DEVICE=cpu"):
        load_settings(checkpoint=ckpt_file, device="cuda")


def test_serve_command(capsys, monkeypatch, ckpt_file, tmp_path):
    assert driftseg_cli.COMMANDS[("serve",)][0] == "driftseg.service.cli:main"
    with pytest.raises(SystemExit) as e:
        driftseg_cli.main(["serve", "--help"])
    assert e.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["--checkpoint", str(tmp_path / "missing.pt")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err

    ran = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **kw: ran.update(host=host, port=port, app=app, **kw))
    cli.main(["--checkpoint", str(ckpt_file), "--port", "8123", "--device", "cpu", "--state-dir", str(tmp_path)])
    assert ran["host"] == "127.0.0.1" and ran["port"] == 8123
    assert ran["app"].state.settings.state_dir == tmp_path
    assert ran["log_config"]["loggers"]["driftseg"]["handlers"] == ["default"]
