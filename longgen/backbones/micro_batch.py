"""The micro-batch loop of a backbone's transformer calls: the R rows of a CFG-stacked batch go through the
transformer in calls of at most `micro_batch` consecutive rows. The calls are the units of work that
longgen/parallel/units.py spreads over processes, fixed independently of the number of processes, so one GPU and N
GPUs run the same calls and produce the same bytes. With anchor attention (GLC-Diffusion's ABAM) each CFG branch
runs its anchor rows first, replicated on every process, then the other rows as units.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Sequence

import torch

from longgen.parallel.units import Units

log = logging.getLogger("longgen")


# ---------------------------------------------------------------------------------------------------- unit plans
def _take(t: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """Rows of t (the first dimension), a view when they are consecutive."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return t[rows[0] : rows[0] + len(rows)]
    return t.index_select(0, torch.as_tensor(rows, device=t.device))


def _chunks(rows: Sequence[int], size: int) -> list[list[int]]:
    rows = list(rows)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def run_stacked(
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    emb: torch.Tensor,
    ts: torch.Tensor,
    micro_batch: int,
    units: Units,
    layout: Any = None,
) -> torch.Tensor:
    """All R rows of a CFG-stacked batch through `call(x_rows, emb_rows, t_rows)` → [R, ...] in row order.

    Rows go through the transformer in calls of at most `micro_batch` consecutive rows (the units of work), spread
    over the processes by `units`. With anchor attention (`layout`, an AnchorLayout inside its predict), each branch
    runs its anchor rows first, in calls of their own on every process, then its other rows as units (module
    docstring). x: [R, F, C, H, W]; emb: [R, S, D]; ts: [R, ...]."""
    total = x.shape[0]
    out: list[torch.Tensor | None] = [None] * total
    phases = layout.phases(total) if layout is not None else [([], list(range(total)))]
    for anchors, others in phases:
        for chunk in _chunks(anchors, micro_batch):
            def anchor_call(chunk=chunk):
                with layout.running(chunk):
                    return call(_take(x, chunk), _take(emb, chunk), _take(ts, chunk))

            res = units.replicated(anchor_call)
            for i, r in enumerate(chunk):
                out[r] = res[i]
        calls = _chunks(others, micro_batch)

        def unit(k: int) -> torch.Tensor:
            rows = calls[k]
            ctx = layout.running(rows) if layout is not None else contextlib.nullcontext()
            with ctx:
                return call(_take(x, rows), _take(emb, rows), _take(ts, rows))

        for rows, res in zip(calls, units.map(unit, [len(c) for c in calls])):
            for i, r in enumerate(rows):
                out[r] = res[i]
    return torch.stack(out)  # [R, ...]
