"""Compiled transformer blocks that compute the same bytes in every process.

longgen promises that a resumed run, a multi-GPU run and a fresh run of the same seed produce identical latents.
With `torch.compile`, Inductor generates Triton kernels and, for a kernel with several candidate launch
configurations, times them on the device the first time it runs and keeps the fastest. For pointwise kernels the
choice changes only speed. For reductions it changes the numbers: the block size along the reduced axis (R0_BLOCK)
and the warp count set the order in which a row's terms are summed, so two processes that time the candidates
differently (another job on the GPU, clock noise) sum the same layer norm in a different order.

Measured on one H200 (torch 2.11, `scripts/compile_probe.py`, CogVideoX-2B blocks, calls of 4 and 2 samples,
fresh processes): with Inductor's `deterministic` mode on, the fused modulation + layer-norm reductions still chose
R0_BLOCK 1024 in some processes and 2048 in others, and the latents differed by up to 0.12 after a SynCoS run
(benchmarks/gpu-lane.md). Inductor's own filter for deterministic reductions did not apply to those kernels.

What this module does, on top of Inductor's deterministic mode: every reduction kernel launches with the first of
its candidate configurations (Inductor lists them in a fixed order from the shapes alone), with no timing. Pointwise
kernels still take the fastest candidate. `install()` returns False when this torch lacks the hooks (the caller
then warns that compiled runs may differ in the last bits between processes).
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

_INSTALLED = False


def install() -> bool:
    """Turn on Inductor's deterministic mode and fix every reduction kernel's launch configuration. Idempotent."""
    global _INSTALLED
    if _INSTALLED:
        return True
    try:
        import torch._inductor.config as inductor
        from torch._inductor.runtime import triton_heuristics
        from torch._inductor.runtime.hints import HeuristicType
    except ImportError:  # a torch without Inductor's Triton runtime (no GPU support built in)
        return False
    autotuner = getattr(triton_heuristics, "CachingAutotuner", None)
    if not hasattr(inductor, "deterministic") or autotuner is None or not hasattr(autotuner, "autotune_to_one_config"):
        return False
    inductor.deterministic = True
    reductions = {getattr(HeuristicType, name) for name in ("REDUCTION", "PERSISTENT_REDUCTION", "SPLIT_SCAN")
                  if hasattr(HeuristicType, name)}
    timed = autotuner.autotune_to_one_config

    @functools.wraps(timed)
    def untimed_reductions(self, *args, **kwargs):
        if getattr(self, "heuristic_type", None) in reductions and len(self.launchers) > 1:
            self.launchers = self.launchers[:1]  # the first candidate, the same in every process
            return None
        return timed(self, *args, **kwargs)

    autotuner.autotune_to_one_config = untimed_reductions
    _INSTALLED = True
    return True
