"""Which latent space a latents or checkpoint file holds, and the check before a backbone decodes or continues it.

Latents mean something only to the VAE (and latent scaling) that made them: two backbones whose latent frames have
the same shape may still decode each other's latents into a wrong video without any error (the tiny HunyuanVideo
1.5 and Wan 2.2 TI2V models both have [4, 2, 2] frames at 32x32). So every `latents.safetensors` and
`checkpoint.safetensors` longgen writes carries, in its safetensors metadata (strings):
- `latent_space`: the backbone config's `latent_space` key (conf/backbone/*.yaml): one name per VAE and latent
  scaling. Models that share a VAE share the name (the Wan 2.1 models and Wan 2.2 T2V-A14B; CogVideoX-5B and its
  I2V; HunyuanVideo 1.5 T2V and I2V), and neither a LoRA nor random weights change it, so their latents stay
  interchangeable. This is what is compared.
- `backbone` (the config group's choice, e.g. `tiny-hunyuan15`), `model_id` and `latent_shape` ([C, h, w]): for
  the refusal line, which names the backbone to pass instead.

`check_latent_space` refuses a file of another latent space with one line, before anything is written. A file
written before longgen recorded this (no `latent_space`), or a backbone config without the key (a user's own), is
not checked: one info line says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from longgen.errors import UsageError

log = logging.getLogger("longgen")

#: the metadata keys of the record (all strings)
KEYS = ("backbone", "model_id", "latent_space", "latent_shape")


def latent_identity(node, choice: str | None, latent_shape) -> dict[str, str]:
    """The record for latents made by the backbone of config node `node` (cfg.backbone), chosen as `choice`, whose
    latent frames are `latent_shape` [C, h, w]; keys without a value are left out."""
    record = {
        "backbone": str(choice or ""),
        "model_id": str(node.get("model_id") or ""),
        "latent_space": str(node.get("latent_space") or ""),
        "latent_shape": json.dumps([int(n) for n in latent_shape]),
    }
    return {key: value for key, value in record.items() if value}


def read_identity(meta: dict[str, str] | None) -> dict[str, str]:
    """The record held in a file's safetensors metadata (empty for a file written before it was recorded)."""
    return {key: meta[key] for key in KEYS if meta and meta.get(key)}


def check_latent_space(record: dict[str, str], node, choice: str | None, path: Path, fix: str | None = None) -> None:
    """One line when the file at `path` (its `record`) holds latents of another latent space than the backbone of
    config node `node` (chosen as `choice`) decodes. `fix` is what to do instead; by default, pass the backbone
    that made them."""
    made, mine = record.get("latent_space"), str(node.get("latent_space") or "")
    name = choice or "this backbone"
    if not made:
        log.info("%s records no latent space (an older longgen wrote it): not checked against backbone=%s", path, name)
        return
    if not mine:
        log.info("backbone=%s names no latent_space in its config: the latents of %s (%s) are not checked",
                 name, path, made)
        return
    if made == mine:
        return
    maker = record.get("backbone")
    fix = fix or (f"pass backbone={maker}" if maker else "pass the backbone they were sampled with (backbone=…)")
    raise UsageError(f"{path} holds latents of {describe(record)}, but backbone={name} ({node.get('model_id')}) "
                     f"takes {mine} latents: {fix}")


def describe(record: dict[str, str]) -> str:
    """`backbone=tiny-hunyuan15 (tiny-random-hunyuan15, latent space tiny-hunyuanvideo-1.5-vae)` for a record."""
    about = ", ".join(v for v in (record.get("model_id"), f"latent space {record.get('latent_space')}") if v)
    return f"backbone={record.get('backbone') or '?'} ({about})"
