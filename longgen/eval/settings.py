"""Settings of the weight-free metrics: the `settings` node of conf/eval.yaml, checked once.

conf/eval.yaml is the only place that holds their defaults; `generate eval=true` reads the same node.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from longgen.errors import UsageError
from longgen.eval.flow import METHODS


@dataclass(frozen=True)
class Settings:
    analysis_long_side: int
    stats_long_side: int
    flow: str
    seam_ratio: float
    seam_radius: int
    scene_threshold: float
    scene_min_len: int
    ssim_pairs_per_lag: int
    freeze_mae: float
    repetition_gap_s: float
    drift_reference_frames: int

    @classmethod
    def from_config(cls, node: Any) -> "Settings":
        values = dict(node)
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UsageError(f"unknown eval setting(s) {', '.join(unknown)}; settings are: {', '.join(names)}")
        missing = [n for n in names if n not in values]
        if missing:
            raise UsageError(f"eval settings lack {', '.join(missing)}")
        try:
            s = cls(
                analysis_long_side=int(values["analysis_long_side"]),
                stats_long_side=int(values["stats_long_side"]),
                flow=str(values["flow"]),
                seam_ratio=float(values["seam_ratio"]),
                seam_radius=int(values["seam_radius"]),
                scene_threshold=float(values["scene_threshold"]),
                scene_min_len=int(values["scene_min_len"]),
                ssim_pairs_per_lag=int(values["ssim_pairs_per_lag"]),
                freeze_mae=float(values["freeze_mae"]),
                repetition_gap_s=float(values["repetition_gap_s"]),
                drift_reference_frames=int(values["drift_reference_frames"]),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"an eval setting has the wrong type ({exc}); see `longgen eval --cfg job`") from exc
        s.check()
        return s

    def check(self) -> None:
        if self.flow not in METHODS:
            raise UsageError(f"settings.flow={self.flow!r}: choose one of {', '.join(METHODS)}")
        positive = {"analysis_long_side": 16, "stats_long_side": 16, "seam_radius": 1, "ssim_pairs_per_lag": 1, "drift_reference_frames": 1,
                    "scene_min_len": 0}
        for name, low in positive.items():
            if getattr(self, name) < low:
                raise UsageError(f"settings.{name}={getattr(self, name)} must be at least {low}")
        for name in ("seam_ratio", "scene_threshold", "freeze_mae", "repetition_gap_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"settings.{name}={getattr(self, name)} must be positive")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def default_settings() -> Settings:
    """The `settings` node of the shipped conf/eval.yaml."""
    import yaml

    data = yaml.safe_load((resources.files("longgen.conf") / "eval.yaml").read_text(encoding="utf-8"))
    return Settings.from_config(data["settings"])
