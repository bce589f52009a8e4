"""Video output: decoded frames streamed into an H.264 mp4 with imageio-ffmpeg.

Frames arrive a few at a time from the backbone's streaming decode, so memory does not grow with video length. The
file is written under a unique temporary name in the run directory (`rundir.atomic_file`) and renamed only once
every frame is in and ffmpeg has exited cleanly, so a failed or interrupted run (disk full, Ctrl-C) never leaves a
truncated `video.mp4` behind. `check()` encodes two tiny frames with the chosen codec/preset/crf before any
sampling, so a bad `writer.codec` or `writer.preset` is one line in a second, not a traceback after sampling.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from longgen.errors import RunFailure, UsageError
from longgen.options import Whole, check_fields, flag, option
from longgen.rundir import atomic_file


def mp4_name(name: str, value: object) -> str:
    """Rule of `filename` (longgen.options): a plain file name ending in .mp4, written into the run directory; not
    a hidden name (`.mp4` alone would be one, and no viewer lists it)."""
    if not isinstance(value, str) or not value.endswith(".mp4") or "/" in value or value.startswith("."):
        raise UsageError(f"{name}={value!r} must be a plain file name ending in .mp4, not starting with '.' "
                         f"(e.g. video.mp4)")
    return value


@dataclass(frozen=True)
class FfmpegName:
    """Rule of a name handed to ffmpeg as it is (codec, preset): text; `check()` then tries it before any
    sampling."""

    example: str

    def __call__(self, name: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{name}={value!r} must be a name ffmpeg knows, such as {self.example}")
        return value


@dataclass(eq=False)
class Mp4Writer:
    """The options (conf/writer/mp4.yaml), each with its accepted values (longgen.options)."""

    filename: str = option("video.mp4", mp4_name)
    codec: str = option("libx264", FfmpegName("libx264"))
    crf: int = option(18, Whole(0, 51, note="0 = lossless"))
    preset: str = option("medium", FfmpegName("medium"))
    burn_frame_index: bool = option(False, flag)

    def __post_init__(self) -> None:
        check_fields(self, "writer")

    def write(
        self,
        chunks: Iterable[np.ndarray],
        out_dir: str | Path,
        fps: int,
        total_frames: int | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> dict:
        """Write uint8 frame chunks [f, H, W, 3] to `out_dir/filename`; return {path, frames, width, height, fps}.
        Raises RunFailure when ffmpeg cannot write the file (disk full, killed encoder)."""
        out_dir = Path(out_dir)
        final = out_dir / self.filename
        frames = 0
        size = None
        with atomic_file(final, suffix=".mp4") as tmp:
            writer = None
            try:
                for chunk in chunks:
                    if writer is None:
                        size = (chunk.shape[2], chunk.shape[1])  # (W, H)
                        writer = self._open(tmp, size, fps)
                    for frame in chunk:
                        if self.burn_frame_index:
                            frame = burn_index(frame, frames)
                        self._send(writer, np.ascontiguousarray(frame), out_dir)
                        frames += 1
                    if progress is not None and total_frames:
                        progress("decode", frames, total_frames)
                if writer is None:
                    raise UsageError("no frames were decoded; nothing to write")
            finally:
                if writer is not None:
                    writer.close()  # waits for ffmpeg to finish the file
            self._verify(tmp, frames, out_dir)
        return {"path": str(final), "frames": frames, "width": size[0], "height": size[1], "fps": fps}

    def _open(self, path: Path, size: tuple[int, int], fps: int):
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(
            str(path),
            size,
            fps=fps,
            codec=self.codec,
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=2,
            quality=None,
            output_params=["-crf", str(self.crf), "-preset", self.preset],
            ffmpeg_log_level="quiet",  # failures are detected and reported by _send/_verify in one line
        )
        writer.send(None)
        return writer

    @staticmethod
    def _send(writer, frame: np.ndarray, out_dir: Path) -> None:
        try:
            writer.send(frame)
        except OSError:
            raise RunFailure(f"ffmpeg stopped while writing the video ({_disk_reason(out_dir)})") from None

    @staticmethod
    def _verify(path: Path, frames: int, out_dir: Path) -> None:
        """ffmpeg's exit status is not reported by imageio-ffmpeg: read the file back and count its frames."""
        import imageio_ffmpeg

        try:
            found = imageio_ffmpeg.count_frames_and_secs(str(path))[0]
        except RuntimeError:
            found = 0
        if found != frames:
            raise RunFailure(f"the video holds {found} of {frames} frames after encoding ({_disk_reason(out_dir)})")

    def check(self) -> None:
        """Encode two 16×16 frames with these settings into a scratch directory; one line if ffmpeg refuses."""
        import imageio_ffmpeg

        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", "16x16", "-r", "8", "-i", "-", "-c:v", self.codec, "-preset", self.preset,
               "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
        if _encoded is not None and tuple(cmd) in _encoded:  # a sweep's earlier job encoded with these settings
            return
        with tempfile.TemporaryDirectory(prefix="longgen-writer-check-") as scratch:
            proc = subprocess.run([*cmd, str(Path(scratch) / "probe.mp4")], input=bytes(16 * 16 * 3 * 2),
                                  capture_output=True, timeout=60)
        if proc.returncode == 0 and _encoded is not None:
            _encoded.add(tuple(cmd))
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
            detail = next((ln for ln in lines if any(w in ln for w in ("nknown", "nvalid", "rror", "ossible"))),
                          lines[0] if lines else f"exit status {proc.returncode}")
            raise UsageError(
                f"ffmpeg cannot encode with writer.codec={self.codec} writer.preset={self.preset} "
                f"writer.crf={self.crf} ({detail[:160]}): use e.g. writer.codec=libx264 writer.preset=medium"
            )


#: inside `encoder_checks_shared()`: the ffmpeg command lines (all but the scratch file) that encoded in a check
_encoded: set[tuple[str, ...]] | None = None


@contextlib.contextmanager
def encoder_checks_shared() -> Iterator[None]:
    """Within: `Mp4Writer.check` runs ffmpeg once per distinct command line (codec, preset, crf, ffmpeg), not once
    per job of a sweep's pre-check; a command that failed is run again (it stops the sweep anyway)."""
    global _encoded
    outer, _encoded = _encoded, set()
    try:
        yield
    finally:
        _encoded = outer


def _disk_reason(out_dir: Path) -> str:
    free = shutil.disk_usage(out_dir).free
    return "no space left on the device" if free < (16 << 20) else "the encoder failed or could not write the file"


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
