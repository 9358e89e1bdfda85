"""Frames of a video file or a plain image folder, in order, for offline runs (`driftseg segment`).

An image folder is read in name order (data/folder.py's IMAGE_SUFFIXES); a video with PyAV (the
'video' extra)."""
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from driftseg.data.folder import IMAGE_SUFFIXES, list_images

VIDEO_EXTRA = "pip install 'driftseg[video]'"


def import_av():
    """PyAV, or a ValueError that names the extra to install."""
    try:
        import av
    except ModuleNotFoundError as e:
        raise ValueError(f"reading and writing video needs PyAV ({e}): {VIDEO_EXTRA}") from None
    return av


class FrameSource:
    """Frames of an image folder or a video file, in order, as (name, RGB uint8 [H, W, 3])."""

    def __init__(self, path: Path, max_frames: int | None = None):
        self.path, self.max_frames = Path(path), max_frames
        if self.path.is_dir():
            self.files = list_images(self.path)
            if not self.files:
                raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            self.count, self.fps = len(self.files), None
        elif self.path.is_file():
            self.files = None
            av = import_av()
            try:
                with av.open(str(self.path)) as container:
                    if not container.streams.video:
                        raise ValueError(f"{path} has no video stream")
                    stream = container.streams.video[0]
                    self.count = stream.frames or None  # 0 where the container does not say
                    self.fps = float(stream.average_rate) if stream.average_rate else None
            except av.FFmpegError as e:
                raise ValueError(f"cannot read {path} as a video: {e}") from None
        else:
            raise FileNotFoundError(f"{path} is neither an image folder nor a video file")
        if max_frames is not None and self.count is not None:
            self.count = min(self.count, max_frames)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        frames = self._images() if self.files is not None else self._video()
        for n, item in enumerate(frames):
            if self.max_frames is not None and n >= self.max_frames:
                return
            yield item

    def _images(self):
        for path in self.files:
            try:
                with Image.open(path) as im:
                    yield path.stem, np.array(im.convert("RGB"))
            except OSError as e:  # PIL's "cannot identify image file", "image file is truncated"...
                raise ValueError(f"{path} is not a readable image: {e}") from None

    def _video(self):
        av = import_av()
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # named by the frame's number, counted from 1 as every frame number is (service/offline.py)
            for n, frame in enumerate(container.decode(stream), start=1):
                yield f"{n:06d}", frame.to_ndarray(format="rgb24")
