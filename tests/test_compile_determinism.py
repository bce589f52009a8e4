"""Compiled blocks never choose a reduction kernel's launch configuration by timing (issue 23: two GPU processes
summed CogVideoX's layer norms in different orders). The hook is exercised on stand-in autotuners: no GPU needed."""

from __future__ import annotations

import pytest

pytest.importorskip("torch._inductor.runtime.triton_heuristics")

from torch._inductor.runtime import triton_heuristics  # noqa: E402
from torch._inductor.runtime.hints import HeuristicType  # noqa: E402

from longgen.backbones import compile_determinism  # noqa: E402


class StandIn:
    """What autotune_to_one_config reads of a CachingAutotuner: its kind and its compiled candidates."""

    def __init__(self, kind):
        self.heuristic_type = kind
        self.launchers = ["first", "second", "third"]
        self.timed = False

    def benchmark_all_configs(self, *args, **kwargs):
        self.timed = True
        raise RuntimeError("timed")  # stops the original autotuner right after it decided to time


@pytest.fixture(scope="module")
def autotune():
    assert compile_determinism.install()
    assert compile_determinism.install()  # a second install keeps one wrapper
    import torch._inductor.config as inductor

    assert inductor.deterministic
    return triton_heuristics.CachingAutotuner.autotune_to_one_config


@pytest.mark.parametrize("kind", ["REDUCTION", "PERSISTENT_REDUCTION"])
def test_reductions_take_the_first_candidate_untimed(autotune, kind):
    tuner = StandIn(getattr(HeuristicType, kind))
    autotune(tuner)
    assert tuner.launchers == ["first"] and not tuner.timed


def test_pointwise_kernels_are_still_timed(autotune):
    tuner = StandIn(HeuristicType.POINTWISE)
    with pytest.raises(RuntimeError, match="timed"):
        autotune(tuner)
    assert tuner.timed and len(tuner.launchers) == 3
