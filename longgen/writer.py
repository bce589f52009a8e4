"""Video output: decoded frames streamed into an H.264 mp4 with imageio-ffmpeg.

Frames arrive a few at a time from the backbone's streaming decode, so memory does not grow with video length. The
file is written under a temporary name and renamed only once every frame is in, so an interrupted run never leaves
a truncated `video.mp4` behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from longgen.errors import UsageError


class Mp4Writer:
    def __init__(
        self,
        filename: str = "video.mp4",
        codec: str = "libx264",
        crf: int = 18,
        preset: str = "medium",
        burn_frame_index: bool = False,
    ) -> None:
        if not filename.endswith(".mp4") or "/" in filename:
            raise UsageError(f"writer.filename={filename!r} must be a plain file name ending in .mp4")
        if not 0 <= crf <= 51:
            raise UsageError(f"writer.crf={crf} must be between 0 (lossless) and 51")
        self.filename = filename
        self.codec = codec
        self.crf = crf
        self.preset = preset
        self.burn_frame_index = burn_frame_index

    def write(
        self,
        chunks: Iterable[np.ndarray],
        out_dir: str | Path,
        fps: int,
        total_frames: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict:
        """Write uint8 frame chunks [f, H, W, 3] to `out_dir/filename`; return {path, frames, width, height, fps}."""
        import imageio_ffmpeg

        out_dir = Path(out_dir)
        final = out_dir / self.filename
        tmp = out_dir / (final.stem + ".partial.mp4")
        writer = None
        frames = 0
        size = None
        try:
            for chunk in chunks:
                if writer is None:
                    size = (chunk.shape[2], chunk.shape[1])  # (W, H)
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp),
                        size,
                        fps=fps,
                        codec=self.codec,
                        pix_fmt_in="rgb24",
                        pix_fmt_out="yuv420p",
                        macro_block_size=2,
                        quality=None,
                        output_params=["-crf", str(self.crf), "-preset", self.preset],
                        ffmpeg_log_level="error",
                    )
                    writer.send(None)
                for frame in chunk:
                    if self.burn_frame_index:
                        frame = burn_index(frame, frames)
                    writer.send(np.ascontiguousarray(frame))
                    frames += 1
                if progress is not None and total_frames:
                    progress("decode", frames, total_frames)
            if writer is None:
                raise UsageError("no frames were decoded; nothing to write")
            writer.close()
            writer = None
            os.replace(tmp, final)
        finally:
            if writer is not None:
                writer.close()
            if tmp.exists():
                tmp.unlink()
        return {"path": str(final), "frames": frames, "width": size[0], "height": size[1], "fps": fps}


def burn_index(frame: np.ndarray, index: int) -> np.ndarray:
    """Draw the frame number in the top-left corner, white on a black box ([H, W, 3] uint8 → same)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    size = max(10, frame.shape[0] // 16)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    text = str(index)
    box = draw.textbbox((2, 1), text, font=font)
    draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)
