"""Settings validation and the `driftseg serve` command line."""
import socket

import pytest
import torch
from service_util import free_port

from driftseg import cli as driftseg_cli
from driftseg.service import cli
from driftseg.service.settings import ENV_PREFIX, Settings, flag, load_settings

# a value other than the default for every setting, as a flag takes it, and the settings it needs
FLAG_VALUES = {
    "checkpoint": (None, {}),  # the test's own checkpoint
    "method": ("ptbn", {}),
    "device": ("cpu", {}),
    "host": ("0.0.0.0", {}),
    "port": ("8123", {}),
    "log_level": ("debug", {}),
    "engine": ("onnx", {}),
    "decode": ("batched", {}),
    "precision": ("bf16", {}),
    "compile": (True, {}),
    "onnx_model": ("/tmp/model.onnx", {"engine": "onnx"}),
    "max_streams": ("5", {}),
    "state_dir": ("/tmp/driftseg-flag-state", {}),
    "state_store": ("redis://127.0.0.1:6390/1", {}),
    "state_ttl": ("3600", {}),
    "max_stored_streams": ("50", {}),
    "store_retry_seconds": ("1.5", {}),
    "snapshot_every": ("7", {}),
    "max_pending": ("9", {}),
    "max_connections": ("40", {}),
    "header_timeout": ("2.5", {}),
    "body_timeout": ("30", {}),
    "max_batch": ("3", {}),
    "max_batch_delay_ms": ("4.5", {}),
    "max_image_bytes": ("1000", {}),
    "max_image_pixels": ("2000", {}),
    "metrics_stream_cap": ("3", {}),
    "api_key": ("k3y-from-a-flag", {}),
    "api_key_everywhere": (True, {"api_key": "k3y"}),
    "require_stream_id": (True, {}),
    "model_store": ("/tmp/driftseg-models", {}),
    "max_models": ("2", {}),
    "source_data": ("/tmp/driftseg-source-data", {}),
    "adapt_iters": ("30", {}),
    "job_threads": ("2", {}),
    "record": ("drifted", {}),
    "record_dir": ("/tmp/driftseg-recordings", {}),
    "record_max_frames": ("20", {}),
    "record_max_bytes": ("123456", {}),
    "job_queue": ("redis://127.0.0.1:6379/3", {}),
    "jobs_dir": ("/tmp/driftseg-jobs", {}),
    "service_url": ("http://driftseg-router:80", {}),
    "worker_metrics_port": ("9200", {}),
    "auto_adapt": (True, {"record": "all", "source_data": "/tmp/driftseg-source-data"}),
    "auto_adapt_frames": ("50", {}),
}


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
    ({"method": "cotta"}, ["DRIFTSEG_METHOD", "backprop", "dua"]),  # CoTTA is refused, DUA named instead
    ({"max_streams": 0}, ["DRIFTSEG_MAX_STREAMS", "--max-streams"]),
    ({"device": "tpu"}, ["DRIFTSEG_DEVICE"]),
    ({"checkpoint": "/nonexistent/model.pt"}, ["DRIFTSEG_CHECKPOINT", "does not exist"]),
    ({"max_image_bytes": -1}, ["DRIFTSEG_MAX_IMAGE_BYTES"]),
    ({"snapshot_every": -5}, ["DRIFTSEG_SNAPSHOT_EVERY"]),
    ({"compile": True, "engine": "onnx"}, ["DRIFTSEG_COMPILE", "onnxruntime"]),
    ({"precision": "bf16", "engine": "onnx"}, ["DRIFTSEG_PRECISION", "float32 graph"]),
    ({"precision": "fp64"}, ["DRIFTSEG_PRECISION"]),
    ({"job_queue": "amqp://rabbit"}, ["DRIFTSEG_JOB_QUEUE", "redis://"]),
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
    port = free_port()
    cli.main(["--checkpoint", str(ckpt_file), "--port", str(port), "--device", "cpu", "--state-dir", str(tmp_path)])
    assert ran["host"] == "127.0.0.1" and ran["port"] == port
    assert ran["app"].state.settings.state_dir == tmp_path
    assert ran["log_config"]["loggers"]["driftseg"]["handlers"] == ["default"]
    assert ran["limit_concurrency"] == 512 and ran["http"].header_timeout == 10 and ran["http"].body_timeout == 60


@pytest.mark.parametrize("content", [b"# README\n\nA text file, not a checkpoint.\n", b"PK\x03\x04 cut short"])
def test_a_file_that_is_not_a_checkpoint_is_one_line_and_status_2(content, capsys, tmp_path, monkeypatch):
    (tmp_path / "README.md").write_bytes(content)
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: pytest.fail("uvicorn started"))
    with pytest.raises(SystemExit) as e:
        cli.main(["--checkpoint", str(tmp_path / "README.md"), "--port", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "README.md is not a driftseg checkpoint" in err and "--checkpoint FILE" in err
    assert "weights_only=False" not in err and "Traceback" not in err


def test_a_port_in_use_is_refused_before_the_model_loads(ckpt_file, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("driftseg.service.app.create_app", lambda *a, **kw: pytest.fail("the app was built"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            cli.main(["--checkpoint", str(ckpt_file), "--port", str(port), "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_a_port_left_in_time_wait_is_not_taken_for_one_in_use():
    """The probe binds as uvicorn does (SO_REUSEADDR): a port whose server just closed, its accepted
    connection left in TIME_WAIT, is free to listen on again."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    cli.check_port_free("127.0.0.1", port)


def test_the_help_shows_names_not_python_types_as_placeholders(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "--checkpoint CHECKPOINT" in out and "--port PORT" in out and "--api-key API_KEY" in out
    assert "--engine {torch,onnx}" in out and "--compile, --no-compile" in out
    for python in (" Path", " str ", " int ", "SecretStr", "default factory", "bundled_checkpoint"):
        assert python not in out, python


def test_every_setting_is_in_the_help_with_its_description_and_variable(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    squeezed = "".join(out.split())  # argparse wraps lines, at hyphens too
    assert set(FLAG_VALUES) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
        assert f"{flag(name)} " in out, name
        assert "".join(field.description.split()) in squeezed, name
        assert f"[env:{ENV_PREFIX}{name.upper()}]" in squeezed, name


@pytest.mark.parametrize("name", sorted(FLAG_VALUES))
def test_every_setting_is_a_flag_as_well_as_a_variable(name, ckpt_file, monkeypatch):
    value, needs = FLAG_VALUES[name]
    value = str(ckpt_file) if name == "checkpoint" else value
    given = {"checkpoint": str(ckpt_file), **needs, name: value}
    args = [arg for key, v in given.items() for arg in ((flag(key),) if v is True else (flag(key), v))]
    by_flag = load_settings(args=args)
    for key, v in given.items():
        monkeypatch.setenv(f"{ENV_PREFIX}{key.upper()}", "true" if v is True else v)
    by_variable = load_settings(args=[])
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    assert getattr(by_flag, name) == getattr(by_variable, name) != default


def test_flags_win_over_the_environment_and_are_validated(ckpt_file, monkeypatch, capsys):
    monkeypatch.setenv("DRIFTSEG_CHECKPOINT", str(ckpt_file))
    monkeypatch.setenv("DRIFTSEG_MAX_STREAMS", "5")
    monkeypatch.setenv("DRIFTSEG_COMPILE", "true")
    s = load_settings(args=["--max-streams", "7", "--no-compile"])
    assert s.max_streams == 7 and s.compile is False
    assert load_settings(args=[]).max_streams == 5
    with pytest.raises(ValueError, match="DRIFTSEG_MAX_BATCH or --max-batch"):
        load_settings(args=["--max-batch", "0"])
    with pytest.raises(ValueError, match="FDA"):
        load_settings(args=["--engine", "onnx", "--method", "auto+fda"])
    with pytest.raises(ValueError, match="DRIFTSEG_DEVICE or --device"):
        load_settings(args=["--device", "tpu"])
    with pytest.raises(SystemExit) as e:
        load_settings(args=["--max-stream", "3"])  # no such flag: argparse's usage error
    assert e.value.code == 2 and "--max-stream" in capsys.readouterr().err
