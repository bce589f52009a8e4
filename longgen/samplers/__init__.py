"""Long-video samplers over overlapping windows. Each is selected by `conf/sampler/<name>.yaml` (the only registry)
and never imports diffusers: everything model-specific is behind `longgen.denoiser.Denoiser`."""
