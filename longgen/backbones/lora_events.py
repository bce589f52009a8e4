"""A LoRA scale per story event (`backbone.lora=[{path: style.safetensors, events: [1.0, 0.0, 0.5]}]`).

The adapters stay unfused (PEFT's LoRA layers in the transformer, longgen/backbones/lora.py loads them), and each
transformer call runs under the scales of its windows' event, set through diffusers' `set_adapters`. How a row of
a call knows its event: the samplers only route ids, so the run's stages hand them, for every window, an *event
id* that names a (condition id, event) pair (`event_id`; a condition id is a prompt id or an image-to-video
(prompt, image) id). The backbone's predict turns the ids back into condition ids and a scale set per window
(`resolve`); the CFG-stacked rows take their window's scale set (the unconditional row as the conditional one),
and the micro-batch loop (longgen/backbones/micro_batch.py) runs the rows of each scale set in calls of their own,
under `scaled(...)`, the results back in row order. An id that names no event (GLC's global prompt) takes every
item's `scale`.

Each call sets its scales only where they differ from those in place (`set_adapters` walks every LoRA layer);
no call relies on scales another left, so a call's scales never leak into the next. Under `torch.compile` each
distinct scale set is a graph of its own (Dynamo guards on the layers' scaling values).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from longgen.backbones.lora import Lora

#: event ids start here; condition ids (prompts, then image-to-video (prompt, image) pairs) stay far below
FIRST_EVENT_ID = 1 << 20

Scales = tuple[float, ...]  # one scale per `backbone.lora` item, in order


class EventScales:
    """The (condition id, event) table of a run and the adapters' scale switching."""

    def __init__(self, loras: Sequence[Lora]) -> None:
        self.loras = list(loras)
        self.names = [lora.adapter(k) for k, lora in enumerate(self.loras)]
        self._pairs: list[tuple[int, int]] = []  # event id − FIRST_EVENT_ID → (condition id, event)
        self._models: list[torch.nn.Module] = []
        self._current: Scales | None = None  # the scales in place in every model

    def scales(self, event: int | None) -> Scales:
        """The items' scales in `event` (None: no event)."""
        return tuple(lora.scale_in(event) for lora in self.loras)

    def event_id(self, condition_id: int, event: int) -> int:
        """The id `predict` takes for a window of story event `event` conditioned as `condition_id` says."""
        pair = (int(condition_id), int(event))
        if pair not in self._pairs:
            self._pairs.append(pair)
        return FIRST_EVENT_ID + self._pairs.index(pair)

    def resolve(self, ids: Sequence[int]) -> tuple[list[int], list[Scales]]:
        """Each window's condition id and scale set."""
        conditions, scales = [], []
        for i in ids:
            condition, event = self._pairs[i - FIRST_EVENT_ID] if i >= FIRST_EVENT_ID else (i, None)
            conditions.append(condition)
            scales.append(self.scales(event))
        return conditions, scales

    def attach(self, models: Sequence[torch.nn.Module]) -> None:
        """The transformers holding the adapters (loaded at the items' `scale`, lora.apply_loras)."""
        self._models = list(models)
        self._current = self.scales(None)

    @contextlib.contextmanager
    def scaled(self, scales: Scales) -> Iterator[None]:
        """The adapters at `scales` for the calls inside the block."""
        if scales != self._current:
            for model in self._models:
                held = set(getattr(model, "peft_config", {}) or {})
                pairs = [(name, s) for name, s in zip(self.names, scales) if name in held]
                model.set_adapters([name for name, _ in pairs], [s for _, s in pairs])
            self._current = scales
        yield

    def describe(self) -> dict:
        """The manifest's record: the scales of each event (a list in story order, as the manifest's `events`) and
        of windows of no event, by item name."""
        count = max(len(lora.events) for lora in self.loras if lora.events is not None)
        names = [lora.name for lora in self.loras]
        return {"mode": "per event (unfused PEFT layers, scales set per transformer call)",
                "events": [dict(zip(names, self.scales(e))) for e in range(count)],
                "no_event": dict(zip(names, self.scales(None)))}
