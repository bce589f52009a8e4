"""Names, formats and directions of the summary numbers in eval.json, for the table, report.csv and report.html."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str          # format spec for one value
    better: str       # "high", "low" or "" (no direction)
    help: str


COLUMNS = [
    Column("flicker", "flicker", ".4f", "high", "VBench temporal flickering, (255 − mean |ΔI|)/255"),
    Column("warp_error", "warp err", ".5f", "low", "warping error (Lai et al. 2018), RGB in [0,1], occlusions masked"),
    Column("motion_px", "motion px", ".2f", "", "mean optical-flow magnitude, pixels per frame"),
    Column("dynamic_share", "dyn share", ".2f", "", "share of frame pairs above VBench's dynamic-degree threshold"),
    Column("seams_flagged", "seams", "d", "low", "window boundaries whose frame-difference or warping-error ratio exceeds the threshold"),
    Column("seam_max_ratio", "seam max", ".2f", "low", "largest boundary frame difference / local reference"),
    Column("seam_max_warp_ratio", "seam warp max", ".2f", "low", "largest boundary warping error / local reference (motion-compensated)"),
    Column("latent_seams_flagged", "lat seams", "d", "low", "flagged boundaries in the latents"),
    Column("latent_seam_max_ratio", "lat seam max", ".2f", "low", "largest boundary jump / local reference (latents)"),
    Column("drift_max_delta_e", "ΔE max", ".2f", "low", "largest CIE76 ΔE of a frame's mean colour from the first window"),
    Column("drift_L_per_s", "L*/s", "+.3f", "", "slope of mean L* (brightness), per second"),
    Column("num_scenes", "scenes", "d", "low", "scenes found by PySceneDetect ContentDetector (threshold 27)"),
    Column("ssim_long_range", "SSIM far", ".3f", "high", "mean SSIM of frame pairs at least half the video apart"),
    Column("repetition", "repeat", ".2f", "low", "share of frames that reappear ≥ 1 s away as closely as their neighbours (loops)"),
    Column("freeze_share", "frozen", ".2f", "low", "share of consecutive frames that do not change"),
    Column("subject_consistency", "subject", ".4f", "high", "VBench subject consistency (DINO)"),
    Column("background_consistency", "background", ".4f", "high", "VBench background consistency (CLIP)"),
    Column("prompt_fidelity_global", "PF global", ".4f", "high", "CLIP similarity to the global prompt"),
    Column("prompt_fidelity_local", "PF local", ".4f", "high", "CLIP similarity to each segment's local prompt"),
]


def present(results: list[dict]) -> list[Column]:
    """The columns that at least one result has a value for."""
    return [c for c in COLUMNS if any((r.get("summary") or {}).get(c.key) is not None for r in results)]


def show(column: Column, value) -> str:
    if value is None:
        return "–"
    if column.fmt == "d":
        return str(int(value))
    return format(float(value), column.fmt)


def arrow(column: Column) -> str:
    return {"high": " ↑", "low": " ↓"}.get(column.better, "")
