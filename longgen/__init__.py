"""longgen: tuning-free multi-event long video generation over diffusers text-to-video models."""

__version__ = "0.1.0"
