"""The micro-batch loop of a backbone's transformer calls: the R rows of a CFG-stacked batch go through the
transformer in calls of at most `micro_batch` consecutive rows. The calls are the units of work that
longgen/parallel/units.py spreads over processes, fixed independently of the number of processes, so one GPU and N
GPUs run the same calls and produce the same bytes. With anchor attention (GLC-Diffusion's ABAM) each CFG branch
runs its anchor rows first, replicated on every process, then the other rows as units. With a LoRA scale per event
(longgen/backbones/lora_events.py) the rows of each scale set (`groups`) run in calls of their own, each call inside
`around(its group)`; without, all rows are one group and the calls are as before.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Hashable, Sequence

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


def _grouped_chunks(rows: Sequence[int], size: int, groups: Sequence[Hashable] | None) -> list[tuple[Any, list[int]]]:
    """(group, rows) of each call: the rows of each group (groups by first appearance, rows in order) in chunks of
    at most `size`; one group (None) when `groups` is None."""
    if groups is None:
        return [(None, chunk) for chunk in _chunks(rows, size)]
    parts: dict[Hashable, list[int]] = {}
    for r in rows:
        parts.setdefault(groups[r], []).append(r)
    return [(group, chunk) for group, part in parts.items() for chunk in _chunks(part, size)]


def run_stacked(
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    emb: torch.Tensor,
    ts: torch.Tensor,
    micro_batch: int,
    units: Units,
    layout: Any = None,
    groups: Sequence[Hashable] | None = None,
    around: Callable[[Any], contextlib.AbstractContextManager] | None = None,
) -> torch.Tensor:
    """All R rows of a CFG-stacked batch through `call(x_rows, emb_rows, t_rows)` → [R, ...] in row order.

    Rows go through the transformer in calls of at most `micro_batch` consecutive rows (the units of work), spread
    over the processes by `units`. With anchor attention (`layout`, an AnchorLayout inside its predict), each branch
    runs its anchor rows first, in calls of their own on every process, then its other rows as units (module
    docstring). `groups` (a key per row) with `around(key)`: each call holds rows of one group and runs inside
    `around` of it. x: [R, F, C, H, W]; emb: [R, S, D]; ts: [R, ...]."""
    total = x.shape[0]
    out: list[torch.Tensor | None] = [None] * total
    phases = layout.phases(total) if layout is not None else [([], list(range(total)))]
    scaled = around if around is not None else (lambda group: contextlib.nullcontext())
    for anchors, others in phases:
        for group, chunk in _grouped_chunks(anchors, micro_batch, groups):
            def anchor_call(chunk=chunk, group=group):
                with layout.running(chunk), scaled(group):
                    return call(_take(x, chunk), _take(emb, chunk), _take(ts, chunk))

            res = units.replicated(anchor_call)
            for i, r in enumerate(chunk):
                out[r] = res[i]
        calls = _grouped_chunks(others, micro_batch, groups)

        def unit(k: int) -> torch.Tensor:
            group, rows = calls[k]
            ctx = layout.running(rows) if layout is not None else contextlib.nullcontext()
            with ctx, scaled(group):
                return call(_take(x, rows), _take(emb, rows), _take(ts, rows))

        for (_, rows), res in zip(calls, units.map(unit, [len(c) for _, c in calls])):
            for i, r in enumerate(rows):
                out[r] = res[i]
    return torch.stack(out)  # [R, ...]
