"""Live preview of a run while it samples: `preview.jpg`, a contact sheet of the current clean estimate x̂0.

Every `preview_every` steps the middle latent frame of each window of x̂0 is decoded on its own by the backbone's
VAE (a one-latent-frame clip decodes to one image; `preview_scale` < 1 shrinks the latent first, so the decode
costs scale² as much) and the images are tiled into one JPEG, written atomically so that an image viewer that
reloads the file never sees half of it. The cost is measured on the GPU in benchmarks/README.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from longgen.backbones.face import Backbone
from longgen.rundir import atomic_file
from longgen.samplers.base import SamplerState
from longgen.windows import WindowPlan


def preview_frames(estimate: torch.Tensor, plan: WindowPlan, scale: float) -> torch.Tensor:
    """Middle latent frame of each window of x̂0 [L, C, H, W], optionally shrunk → [N, C, h, w]."""
    middle = torch.tensor([s + plan.window // 2 for s in plan.starts], device=estimate.device)
    frames = estimate.index_select(0, middle)  # [N, C, H, W]
    if scale < 1.0:
        h, w = frames.shape[-2:]
        size = (max(2, 2 * round(h * scale / 2)), max(2, 2 * round(w * scale / 2)))
        frames = F.interpolate(frames, size=size, mode="area")  # [N, C, h, w]
    return frames


def contact_sheet(images: list[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Tile uint8 images [h, w, 3] into one [rows·h, cols·w, 3] sheet (row-major, blank cells black)."""
    n = len(images)
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images[0].shape[:2]
    sheet = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    return sheet


class Preview:
    """After-step callback that writes `out_dir/preview.jpg` every `every` steps (and after the last)."""

    def __init__(self, backbone: Backbone, plan: WindowPlan, out_dir: Path, every: int, scale: float = 0.5) -> None:
        self.backbone, self.plan, self.path = backbone, plan, Path(out_dir) / "preview.jpg"
        self.every, self.scale = every, scale
        self.written = 0

    def __call__(self, state: SamplerState, total: int) -> None:
        if self.every <= 0 or state.estimate is None:
            return
        if state.done % self.every and state.done != total:
            return
        self.write(state.estimate)

    @torch.no_grad()
    def write(self, estimate: torch.Tensor) -> None:
        from PIL import Image

        frames = preview_frames(estimate, self.plan, self.scale)  # [N, C, h, w]
        images = [next(iter(self.backbone.decode_stream(f[None, None])))[0] for f in frames]  # N × [h', w', 3]
        with atomic_file(self.path, suffix=".jpg") as tmp:
            Image.fromarray(contact_sheet(images)).save(tmp, format="JPEG", quality=85)
        self.written += 1
