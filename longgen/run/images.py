"""Key images of a run (issue 25): the video's start image (`image=start.png`) and the images story events carry
(`{"prompt": ..., "image": ...}`, longgen/story.py), for image-to-video backbones.

Part of stage 1 (plan): every image is read, fitted to the backbone's frame size and hashed before any weights
load, and routed to one window of the sampler's plan:
- `image=` conditions the window that starts at latent frame 0 (the video's first frame);
- an event's image conditions the first window of that event (the first window, in plan order, whose centre lies in
  the event's segment — the rule that gives windows their prompts).
Every other window is conditioned on its prompt alone (the backbone's zero conditioning). The samplers see only
condition ids (longgen/backbones/image_conditioning.py); the route is the table `window start → image`.

The fit (`image_fit`): `crop` scales the image to cover the frame and cuts the centre (default), `pad` scales it to
fit inside and centres it on black, `stretch` resizes it to the frame regardless of its aspect ratio. Resampling is
Lanczos, the filter diffusers' VaeImageProcessor resizes with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from longgen.errors import UsageError

FITS = ("crop", "pad", "stretch")
#: the image-to-video backbones longgen ships, named where a text-to-video backbone is given an image
I2V_BACKBONES = ("backbone=cogvideox-5b-i2v, backbone=wan2.1-i2v-14b-480p, backbone=hunyuanvideo-1.5-i2v or "
                 "backbone=wan2.2-ti2v-5b "
                 "(tiny-i2v, tiny-wan-i2v, tiny-hunyuan15-i2v, tiny-wan22-ti2v: random weights)")


@dataclass
class KeyImage:
    """One key image, read and fitted: `frame` uint8 RGB [H, W, 3] at the backbone's size."""

    source: str  # what conditions it: "image=" or "event N"
    path: str  # absolute
    sha256: str
    original: tuple[int, int]  # (width, height) of the file
    fitted: tuple[int, int]  # (width, height) after the fit
    fit: str
    frame: np.ndarray
    start: int  # first latent frame of the window it conditions

    def describe(self) -> dict:
        return {"source": self.source, "path": self.path, "sha256": self.sha256, "fit": self.fit,
                "original_size": list(self.original), "fitted_size": list(self.fitted), "window_start": self.start}


def fit_image(path: Path, width: int, height: int, fit: str, what: str) -> tuple[np.ndarray, tuple[int, int], str]:
    """(uint8 frame [height, width, 3], original (w, h), sha256 of the file) of the image at `path`; one line
    naming `what` when it is missing or not an image."""
    from PIL import Image, ImageOps

    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
        raise UsageError(f"{what} {path}: {reason}; give the path of a PNG or JPEG image") from None
    try:
        import io

        with Image.open(io.BytesIO(data)) as img:
            # upright as every viewer shows it: a phone photo stores its rotation in EXIF (diffusers' load_image
            # applies it too)
            img = eight_bit(ImageOps.exif_transpose(img)).convert("RGB")
    except Image.UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        raise UsageError(f"{what} {path} is not a readable image (an unknown or damaged image format): give a PNG "
                         f"or JPEG image") from None
    except Exception as exc:  # PIL's other failure kinds (truncated, decompression bomb)
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{what} {path} is not a readable image ({reason}): give a PNG or JPEG image") from None
    original = img.size
    lanczos = Image.Resampling.LANCZOS
    if fit == "stretch":
        out = img.resize((width, height), lanczos)
    elif fit == "crop":
        out = ImageOps.fit(img, (width, height), method=lanczos, centering=(0.5, 0.5))
    else:  # pad
        out = ImageOps.pad(img, (width, height), method=lanczos, color=(0, 0, 0), centering=(0.5, 0.5))
    return np.asarray(out, dtype=np.uint8).copy(), original, hashlib.sha256(data).hexdigest()


#: PIL's modes of 16-bit greyscale (a 16-bit grey PNG opens as I;16) and of 32-bit integers holding 0..65535,
#: which its convert("RGB") clips at 255 instead of scaling; 16-bit RGB(A) PNGs open already scaled to 8 bits
SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def eight_bit(img: Any) -> Any:
    """A 16-bit greyscale PIL image scaled to 8 bits (0..65535 → 0..255, rounded: v·257 → v), as mode L; any
    other image as it is."""
    from PIL import Image

    if img.mode not in SIXTEEN_BIT_GREY:
        return img
    grey = np.asarray(img).astype(np.float64)  # [h, w] 0..65535
    return Image.fromarray(np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8))  # [h, w] uint8: mode L


@dataclass
class ImagePlan:
    """The run's key images and the window each conditions."""

    images: list[KeyImage]

    def image_at(self, start: int) -> int | None:
        """The key image (number) of the window starting at latent frame `start`, if any."""
        for k, image in enumerate(self.images):
            if image.start == start:
                return k
        return None

    def describe(self) -> list[dict]:
        return [image.describe() for image in self.images]

    def inputs(self) -> list[dict]:
        """What a checkpoint records of the images (a resume re-reads them and must find the same bytes)."""
        return [{"path": image.path, "sha256": image.sha256} for image in self.images]

    def summary(self, fit: str) -> str:
        parts = [f"{image.source} {Path(image.path).name} {image.original[0]}x{image.original[1]} → "
                 f"{image.fitted[0]}x{image.fitted[1]} (sha256 {image.sha256[:12]}) at latent frame {image.start}"
                 for image in self.images]
        return f"key images (image_fit={fit}): " + "; ".join(parts)


def check_split_calls(backbone: Any, sampler: Any, choices: dict) -> None:
    """One line where the backbone runs windows with and without an image as separate transformer calls and the
    sampler's attention must see a whole call's windows together (GLC's ABAM: its global-prompt windows have no
    image; DiTCtrl's KV sharing: pairs of windows), unless each call holds one window's rows."""
    if not backbone.image_calls_split or backbone.micro_batch <= 1:
        return
    for option, what in (("abam", "GLC's ABAM cannot follow (its global-prompt windows have no image)"),
                         ("kv_sharing", "DiTCtrl's KV sharing cannot follow")):
        if getattr(sampler, option, False):
            raise UsageError(f"backbone={choices.get('backbone')} runs windows with and without a key image in "
                             f"separate transformer calls, which {what}: set backbone.micro_batch=1, or "
                             f"sampler.{option}=false")


def plan_images(cfg: Any, choices: dict, story: Any, plan: Any, backbone: Any, sampler: Any,
                event_at: Callable[[int, int], int]) -> ImagePlan | None:
    """Stage 1 for images: check, read, fit and route them (module docstring). `choices`: the config groups'
    choices (for messages); `event_at(start, size)`: the event (local prompt index) of a window. Sets cfg.image to
    its absolute path, as the run's config keeps it."""
    fit = cfg.get("image_fit", "crop")
    if fit not in FITS:
        raise UsageError(f"image_fit={fit!r}: use {', '.join(FITS)} (crop: cover and cut the centre, pad: fit inside "
                         f"on black, stretch: ignore the aspect ratio)")
    given = cfg.get("image") not in (None, "")
    events = story.images if not story.multi_shot else None
    wanted = given or (events is not None and any(events))
    if not wanted:
        if backbone.image_conditioning and not backbone.image_optional:
            raise UsageError(f"backbone={choices.get('backbone')} is an image-to-video model: give it a start image "
                             f"(image=start.png) or story events with an `image`")
        return None
    if not backbone.image_conditioning:
        what = f"image={cfg.image} needs" if given else "the story's event images need"
        raise UsageError(f"{what} an image-to-video backbone: use {I2V_BACKBONES}")
    if story.multi_shot:
        raise UsageError("image= with a multi-shot story is not supported: give a story with local prompts (events "
                         "may carry an `image`) or drop image=")
    if not getattr(sampler, "window_images", True):
        raise UsageError(f"sampler={choices.get('sampler')} cannot take key images: {sampler.window_images_reason}; "
                         f"use sampler=syncos, gen-l-video, glc or direct")
    check_split_calls(backbone, sampler, choices)
    if given and events is not None and events[0] is not None:
        raise UsageError(f"image={cfg.image} and the story's first event image both give the start frame: drop one")
    first_window: dict[int, int] = {}  # event → start of its first window
    for start in plan.starts:
        first_window.setdefault(event_at(start, plan.window), start)
    wanted_images: list[tuple[str, str, int]] = []  # (source, path, window start)
    if given:
        cfg.image = str(Path(str(cfg.image)).expanduser().resolve())
        wanted_images.append(("image=", cfg.image, 0))
    for e, path in enumerate(events or []):
        if path is not None:
            if e not in first_window:  # check_events_fit refuses such plans first; kept for direct callers
                raise UsageError(f"story event {e + 1} has an image but no window: pass a larger num_windows")
            wanted_images.append((f"event {e + 1}", path, first_window[e]))
    images = []
    for source, path, start in wanted_images:
        what = "image=" if source == "image=" else f"story {source}'s image"
        frame, original, sha = fit_image(Path(path), backbone.width, backbone.height, fit, what)
        images.append(KeyImage(source, str(Path(path).resolve()), sha, original, (backbone.width, backbone.height),
                               fit, frame, start))
    return ImagePlan(images)
