"""Evaluation of long videos: weight-free metrics (pure functions over frames or latents), optional model-based
metrics from local weights, per-run eval.json, and a comparison report for sweeps.

Modules by job: `flicker` (VBench temporal flickering), `flow` (optical flow, warping error, motion amount),
`seams` (window-boundary jumps), `drift` (colour/exposure drift), `scenes` (cut detection), `similarity` (SSIM at
growing distances, repetition, freeze), `semantic` (CLIP/DINO metrics, local weights only); `inputs` finds and
reads what to evaluate, `evaluate` runs the metrics and writes eval.json, `report` and `plots` read eval.json
results only, `command` is `longgen eval`, `callback` writes the report at the end of a multirun.
"""
