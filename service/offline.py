"""`driftseg segment INPUT --out DIR`: a video file or an image folder through the adapted pipeline as
one stream, in order, with no server: what a camera posting every frame to `/segment` would get.

Writes into DIR:
    labels/NAME.png        label maps (class index per pixel), with --save labels (the default)
    overlays/NAME.jpg      the frames blended with the palette, with --save overlay
    frames.jsonl           one line per frame: frame, name, shift_score, alpha_mean, switch (the automatic
                           mode restarted from the source here), since_reset, ms

Frames are numbered from 1, here as in the server: frame N is the stream's N-th frame, which is the
stream's frame count once it is folded into the state (X-Frame-Index and the JSON summary's `frame`,
the restarts' `switches`, and this summary's "switched domains at frames"). A video's frames are
named by that number (000001, ...). One count, not a count and an index off by one from it.
    overlay.mp4            the overlays as a video, with --video
    state.pt               the stream's final state as a snapshot, the file PUT /adaptation/state imports
                           into a server running the same checkpoint and method

An image folder is read in name order, a video with PyAV (the 'video' extra): data/sources.py.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method, resolve_method
from driftseg.data.sources import FrameSource, import_av
from driftseg.device import DEVICES, resolve_device
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, file_sha256, load_checkpoint, write_atomically
from driftseg.service import adaptation, imaging, snapshots

class VideoWriter:
    """Overlays into an H.264 (else MPEG-4) video at the input's frame rate; sizes rounded down to even."""

    def __init__(self, path: Path, fps: float | None):
        av = import_av()
        self.path, self.fps = path, fps or 10.0
        self.container = av.open(str(path), mode="w")
        self.stream = None
        self.av = av

    def write(self, rgb: np.ndarray) -> None:
        h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
        if self.stream is None:
            from fractions import Fraction

            rate = Fraction(self.fps).limit_denominator(1001)
            codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            self.size = (h, w)
        if (h, w) != self.size:  # frames of another size: fit them to the first's
            rgb = np.array(Image.fromarray(rgb).resize((self.size[1], self.size[0])))
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:self.size[0], :self.size[1]]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def segment(source: FrameSource, pipeline: Pipeline, out: Path, palette: np.ndarray, save: set[str],
            video: VideoWriter | None, progress: bool = True):
    """Run the stream; per-frame records go to out/frames.jsonl. The final StreamState."""
    state = pipeline.new_state()
    if "labels" in save:
        (out / "labels").mkdir(parents=True, exist_ok=True)
    if "overlay" in save:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    dtype = torch.uint8 if pipeline.num_classes <= 256 else torch.int32
    with open(out / "frames.jsonl", "w") as log:
        for name, rgb in tqdm(source, total=source.count, unit="frame", disable=not progress):
            start = time.perf_counter()
            labels, (state,) = pipeline.step(imaging.to_frame(rgb).to(pipeline.device), [state])
            labels = labels[0].to(dtype).cpu().numpy()
            seconds = time.perf_counter() - start
            score, alpha = adaptation.shift_and_alpha(pipeline, state)
            since_reset, switches = adaptation.restarts(state)
            record = {"frame": state.frames, "name": name, "shift_score": score, "alpha_mean": alpha,
                      "switch": state.frames in switches, "since_reset": since_reset, "ms": round(1000 * seconds, 2)}
            log.write(json.dumps(record) + "\n")
            if "labels" in save:
                (out / "labels" / f"{name}.png").write_bytes(imaging.encode_labels(labels))
            if "overlay" in save or video is not None:
                blended = imaging.overlay(rgb, labels, palette)
                if "overlay" in save:
                    (out / "overlays" / f"{name}.jpg").write_bytes(imaging.encode_jpeg(blended))
                if video is not None:
                    video.write(blended)
    return state


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="a video file or a folder of images (one stream, in name order)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write into")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="the checkpoint file (default: the one the package ships)")
    p.add_argument("--method", default="auto", help="method spec (default auto, the recommended pipeline)")
    p.add_argument("--save", nargs="*", default=["labels"], choices=["labels", "overlay"],
                   help="what to write per frame (default labels; none with an empty list)")
    p.add_argument("--video", action="store_true", help="also write the overlays as DIR/overlay.mp4")
    p.add_argument("--stream", help="the stream id the state is exported under (default: the input's name)")
    p.add_argument("--max-frames", type=int, help="only the first N frames")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where the network runs (default auto: cuda where torch sees a GPU, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    method = resolve_method(args.method)  # as a server writes it in snapshots
    ckpt = load_checkpoint(args.checkpoint)
    source = FrameSource(args.input, args.max_frames)
    pipeline = Pipeline(ckpt, parse_method(method), resolve_device(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    video = VideoWriter(args.out / "overlay.mp4", source.fps) if args.video else None
    try:
        state = segment(source, pipeline, args.out, np.asarray(ckpt.palette, dtype=np.uint8), set(args.save), video,
                        not args.no_progress)
    finally:
        if video is not None:
            video.close()
    if state.frames == 0:
        raise ValueError(f"{args.input} gave no frames")
    stream = args.stream or args.input.stem or args.input.name
    data = snapshots.encode(stream, state, file_sha256(args.checkpoint), method, time.time())
    write_atomically(args.out / "state.pt", lambda f: f.write(data))
    switched = adaptation.restarts(state)[1]
    switches = f", switched domains at frames {switched}" if switched else ""
    print(f"segmented {state.frames} frames of {args.input} with {method}{switches}; wrote {args.out} "
          f"(state of stream {stream!r}: PUT /adaptation/state?stream={stream} imports it)")
