"""Backbones: diffusers text-to-video models behind the `Denoiser` seam. Selected by `conf/backbone/*.yaml`."""
