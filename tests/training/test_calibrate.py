"""`driftseg calibrate --frames DIR`: the shift calibration measured on a plain folder of frames (a camera's),
against shift_calibration on the same frames; the momentum the checkpoint was calibrated for is kept."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import load_checkpoint, save_checkpoint
from driftseg.training.calibrate import main, shift_calibration


def test_calibrate_on_a_folder_of_frames(tiny_ckpt, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(4)]
    (tmp_path / "frames").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "frames" / f"{i:02d}.png")
    ckpt = dataclasses.replace(tiny_ckpt, extra={**tiny_ckpt.extra, "shift": {**tiny_ckpt.extra["shift"], "momentum": 0.3}})
    save_checkpoint(ckpt, tmp_path / "camera.pt")
    main(["--checkpoint", str(tmp_path / "camera.pt"), "--frames", str(tmp_path / "frames")])
    got = load_checkpoint(tmp_path / "camera.pt").extra["shift"]
    want = shift_calibration(ckpt, (to_tensor(image) for image in images), 0.3, str(tmp_path / "frames")).to_dict()
    assert got["momentum"] == 0.3 and got["frames"] == 4 and got["split"] == str(tmp_path / "frames")
    assert got["tau"] == pytest.approx(want["tau"]) and got["kappa"] == pytest.approx(want["kappa"])
    assert got["tau"] != pytest.approx(tiny_ckpt.extra["shift"]["tau"])  # measured anew
    assert "4 frames of" in capsys.readouterr().out


def test_calibrate_refuses_a_folder_that_is_not_one_of_images(tiny_ckpt, tmp_path, capsys):
    save_checkpoint(tiny_ckpt, tmp_path / "camera.pt")
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(tmp_path / "camera.pt"), "--frames", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "expected a folder of images" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "camera.pt").extra["shift"] == tiny_ckpt.extra["shift"]  # left as it was
