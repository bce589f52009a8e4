"""Latents and checkpoint files name the backbone and latent space that made them (longgen/run/latent_space.py),
and decode and resume refuse another latent space in one line before writing anything (found in a red-team pass:
latents of one model decoded silently with another whose latent frames have the same shape, e.g. the tiny
HunyuanVideo 1.5 and Wan 2.2 TI2V models, both [4, 2, 2] at 32x32)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

import longgen
from longgen.run.checkpoint import load_checkpoint, save_checkpoint
from longgen.run.latent_space import check_latent_space
from longgen.errors import RunFailure, UsageError

from conftest import REPO
from test_refused_run_dir import snapshot

#: the cheapest backbone whose frames have another family's shape: a run of it takes about a second
TI2V = ["backbone=tiny-wan22-ti2v", "sampler=direct", "sampler.num_steps=2", "seed=1"]
#: what the other latent space's files record (a tiny-hunyuan15 run's, as generate writes it)
HUNYUAN = {"backbone": "tiny-hunyuan15", "model_id": "tiny-random-hunyuan15",
           "latent_space": "tiny-hunyuanvideo-1.5-vae", "latent_shape": "[4, 2, 2]"}


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def rewrite(path: Path, **meta: str) -> None:
    """The latents file at `path` again, with its metadata replaced by `meta`."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=meta or None)


@contextlib.contextmanager
def full_disk_from(write: int):
    """Checkpoint writes fail with ENOSPC from the `write`-th on (a run keeps the checkpoint before)."""
    import longgen.run.checkpoint as checkpoint

    real, count = checkpoint.write_bytes, []

    def write_bytes(path, data):
        if os.path.basename(str(path)).startswith(".checkpoint."):
            count.append(path)
            if len(count) >= write:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    checkpoint.write_bytes = write_bytes
    try:
        yield
    finally:
        checkpoint.write_bytes = real


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny-wan22-ti2v run (its latents.safetensors) and one cut after step 1 of 2 (its checkpoint)."""
    base = tmp_path_factory.mktemp("latent-space")
    longgen.generate(*TI2V, prompt="a fox", run_dir=base / "done")
    with full_disk_from(2), pytest.raises(RunFailure, match="checkpoint"):
        longgen.generate(*TI2V, prompt="a fox", run_dir=base / "cut")
    return base / "done", base / "cut"


def test_latents_and_checkpoints_record_the_backbone_that_made_them(runs):
    done, cut = runs
    record = {"backbone": "tiny-wan22-ti2v", "model_id": "tiny-random-wan22-ti2v", "latent_space": "tiny-wan2.2-vae",
              "latent_shape": "[4, 2, 2]"}
    meta = metadata(done / "latents.safetensors")
    assert {k: meta.get(k) for k in record} == record and meta["format"] == "longgen-latents-1"
    ckpt = load_checkpoint(cut / "checkpoint.safetensors")
    assert ckpt.state.done == 1 and ckpt.identity == record
    assert {k: metadata(cut / "checkpoint.safetensors").get(k) for k in record} == record


def test_decode_of_a_file_refuses_latents_of_another_latent_space_naming_both(runs, tmp_path):
    """tiny-wan22-ti2v latents decoded with backbone=tiny-hunyuan15 (same frame shape, any length decodes) became a
    video without a word; now one line naming both and the backbone to pass, and nothing written."""
    latents = runs[0] / "latents.safetensors"
    with pytest.raises(UsageError) as err:
        longgen.decode(latents, backbone="tiny-hunyuan15", out=tmp_path / "o")
    assert str(err.value) == (
        f"{latents} holds latents of backbone=tiny-wan22-ti2v (tiny-random-wan22-ti2v, latent space "
        f"tiny-wan2.2-vae), but backbone=tiny-hunyuan15 (tiny-random-hunyuan15) takes tiny-hunyuanvideo-1.5-vae "
        f"latents: pass backbone=tiny-wan22-ti2v")
    assert not any(tmp_path.iterdir())


@contextlib.contextmanager
def said():
    """The messages of the `longgen` logger inside the block (a handler of its own: the commands replace the root
    logger's handlers)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("longgen")
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_file_written_before_the_record_decodes_with_one_info_line(runs, tmp_path):
    old = tmp_path / "old.safetensors"
    shutil.copy(runs[0] / "latents.safetensors", old)
    rewrite(old)  # no metadata at all, as save_file wrote it before the record
    with said() as lines:
        video = longgen.decode(old, backbone="tiny-wan22-ti2v", out=tmp_path / "o")
    assert Path(video["path"]).is_file()
    lines = [line for line in lines if "latent space" in line]
    assert lines == [f"{old} records no latent space (an older longgen wrote it): not checked against "
                     f"backbone=tiny-wan22-ti2v"]


def test_a_run_directory_refuses_latents_another_backbone_made(runs, tmp_path):
    """A run directory whose latents.safetensors came from elsewhere: decoded with the run's own backbone, the
    video was wrong; now one line saying they are not the run's and how to decode them, the directory untouched."""
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    rewrite(run / "latents.safetensors", **HUNYUAN)
    before = snapshot(run)
    with pytest.raises(UsageError) as err:
        longgen.decode(run, writer={"filename": "again.mp4"})
    line = str(err.value)
    assert line.startswith(f"{run / 'latents.safetensors'} holds latents of backbone=tiny-hunyuan15 "
                           f"(tiny-random-hunyuan15, latent space tiny-hunyuanvideo-1.5-vae), but "
                           f"backbone=tiny-wan22-ti2v"), line
    assert line.endswith(f"they are not this run's: put the run's own latents.safetensors back, or decode them as a "
                         f"file: `longgen decode {run / 'latents.safetensors'} backbone=tiny-hunyuan15 out=DIR`"), line
    assert snapshot(run) == before


def test_resume_refuses_a_checkpoint_of_another_latent_space(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    ckpt.identity = dict(HUNYUAN)  # the same config and story: only the record differs
    save_checkpoint(run / "checkpoint.safetensors", ckpt)
    before = snapshot(run)
    with pytest.raises(UsageError) as err:
        longgen.resume(run)
    line = str(err.value)
    assert line.startswith(f"{run / 'checkpoint.safetensors'} holds latents of backbone=tiny-hunyuan15"), line
    assert "but backbone=tiny-wan22-ti2v (tiny-random-wan22-ti2v) takes" in line, line  # the run's own, named
    assert line.endswith("takes tiny-wan2.2-vae latents: it is not this run's checkpoint: put the run's own "
                         "checkpoint back, or start a new run"), line
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------ which backbones are compatible
def shipped(name: str) -> dict:
    """conf/backbone/NAME.yaml with the configs it builds on (`defaults`) merged under it."""
    data = yaml.safe_load((REPO / "conf" / "backbone" / f"{name}.yaml").read_text())
    merged: dict = {}
    for base in data.pop("defaults", []):
        if base != "_self_":
            merged.update(shipped(base))
    return {**merged, **data}


NAMES = sorted(p.stem for p in (REPO / "conf" / "backbone").glob("*.yaml"))


def test_every_shipped_backbone_names_its_latent_space():
    assert len(NAMES) >= 18
    assert all(shipped(name).get("latent_space") for name in NAMES), [n for n in NAMES if not shipped(n).get("latent_space")]


@pytest.mark.parametrize("made, other", [
    ("cogvideox-5b", "cogvideox-5b-i2v"), ("wan2.1-t2v-1.3b", "wan2.2-t2v-a14b"), ("wan2.1-t2v-1.3b", "wan2.1-i2v-14b-480p"),
    ("hunyuanvideo-1.5", "hunyuanvideo-1.5-i2v"), ("tiny", "tiny-i2v"), ("tiny-wan", "tiny-wan22-a14b"),
    ("tiny-wan", "tiny-wan-i2v"), ("tiny-hunyuan15", "tiny-hunyuan15-i2v"),
])
def test_backbones_that_share_a_vae_take_each_others_latents(made, other):
    """One VAE, one latent space: an I2V model, Wan 2.2 A14B on the Wan 2.1 VAE; random weights or a LoRA on the
    same model change nothing (the record does not depend on them)."""
    record = {"backbone": made, "latent_space": shipped(made)["latent_space"]}
    check_latent_space(record, shipped(other), other, Path("z.safetensors"))
    node = {**shipped(made), "random_weights": True, "lora": [{"path": "style.safetensors"}]}
    check_latent_space(record, node, made, Path("z.safetensors"))


@pytest.mark.parametrize("made, other", [
    ("cogvideox-2b", "cogvideox-5b"), ("wan2.1-t2v-1.3b", "wan2.2-ti2v-5b"), ("tiny-hunyuan15", "tiny-wan22-ti2v"),
    ("tiny-wan", "tiny-wan22-ti2v"), ("hunyuanvideo-1.5", "wan2.2-ti2v-5b"),
])
def test_backbones_of_other_vaes_refuse_each_others_latents(made, other):
    record = {"backbone": made, "latent_space": shipped(made)["latent_space"]}
    with pytest.raises(UsageError, match=rf"but backbone={other} .* latents: pass backbone={made}$"):
        check_latent_space(record, shipped(other), other, Path("z.safetensors"))


def test_a_backbone_config_without_a_latent_space_is_not_checked():
    """A user's own backbone config (no latent_space key): the latents are taken, with one info line."""
    with said() as lines:
        check_latent_space(HUNYUAN, {"model_id": "mine"}, "mine", Path("z.safetensors"))
    assert lines == [
        "backbone=mine names no latent_space in its config: the latents of z.safetensors (tiny-hunyuanvideo-1.5-vae) "
        "are not checked"]


def test_the_manifest_keeps_only_sampling_defaults_as_model_defaults(runs):
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert "latent_space" not in manifest["backbone"]["model_defaults"]


def test_the_same_latents_and_record_give_the_same_bytes(tmp_path):
    """safetensors writes its metadata in a hash map's order: with the record's several keys, the same latents
    written twice differed in bytes (the CLI's and the API's latents of one run; scripts/latent_hashes.py)."""
    import torch

    from longgen.run.checkpoint import write_verified

    tensors = {"latents": torch.arange(24.0).reshape(2, 3, 2, 2), "generator": torch.arange(5, dtype=torch.uint8)}
    files = set()
    for k in range(8):
        write_verified(tmp_path / f"{k}.safetensors", tensors, {**HUNYUAN, "format": "longgen-latents-1"})
        files.add((tmp_path / f"{k}.safetensors").read_bytes())
    assert len(files) == 1
    assert metadata(tmp_path / "0.safetensors")["latent_space"] == "tiny-hunyuanvideo-1.5-vae"


def test_a_run_directorys_finished_checkpoint_of_another_latent_space_is_refused(runs, tmp_path):
    """decode of a run directory with no latents.safetensors reads its finished checkpoint: that checkpoint's record
    is checked as a latents file's is (mutation audit: the checkpoint's record dropped there went unnoticed)."""
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    assert not (run / "latents.safetensors").exists()
    ckpt = load_checkpoint(run / "checkpoint.safetensors")
    ckpt.state.done = ckpt.total  # finished: decode takes its latents
    ckpt.identity = dict(HUNYUAN)
    save_checkpoint(run / "checkpoint.safetensors", ckpt)
    before = snapshot(run)
    with pytest.raises(UsageError) as err:
        longgen.decode(run, writer={"filename": "again.mp4"})
    line = str(err.value)
    assert line.startswith(f"{run / 'checkpoint.safetensors'} holds latents of backbone=tiny-hunyuan15"), line
    assert line.endswith("they are not this run's: put the run's own checkpoint.safetensors back"), line
    assert snapshot(run) == before


def test_the_sorted_header_keeps_the_safetensors_layout(tmp_path):
    """The format, written out: 8 bytes little-endian header length n, n bytes of JSON padded with spaces so that
    the tensor data starts 8-byte aligned, then the data at the header's offsets (mutation audit: a header padded to
    a wrong length still read back)."""
    import torch
    from safetensors.torch import save

    from longgen.run.checkpoint import write_verified

    tensors = {"latents": torch.arange(24.0).reshape(2, 3, 2, 2), "generator": torch.arange(5, dtype=torch.uint8)}
    for extra in ("", "x", "xy", "xyz", "wxyz"):  # records of several lengths: every padding remainder
        path = tmp_path / f"{len(extra)}.safetensors"
        write_verified(path, tensors, {**HUNYUAN, "format": "longgen-latents-1", "pad": extra})
        blob = path.read_bytes()
        n = int.from_bytes(blob[:8], "little")
        assert n % 8 == 0 and blob[8 + n - 1:8 + n] in (b"}", b" ")
        header = json.loads(blob[8:8 + n])
        assert list(header) == sorted(header)
        theirs = save(tensors, metadata=header["__metadata__"])  # safetensors' own bytes of the same content
        m = int.from_bytes(theirs[:8], "little")
        assert json.loads(theirs[8:8 + m]) == header and blob[8 + n:] == theirs[8 + m:]


def test_latents_kept_after_a_failed_decode_carry_the_record(tmp_path):
    """A decode that failed with no checkpoint to fall back on writes the sampled latents: they carry the run's record
    as the final latents do (mutation audit: written there with an empty record, no test failed)."""
    from types import SimpleNamespace

    import torch

    from longgen.run.stages import keep_latents

    job = SimpleNamespace(out_dir=tmp_path, latent_identity=lambda: dict(HUNYUAN))
    latents = torch.arange(16.0).reshape(1, 1, 4, 2, 2)
    assert keep_latents(job, latents) == f"the sampled latents are kept in {tmp_path / 'latents.safetensors'}"
    meta = metadata(tmp_path / "latents.safetensors")
    assert {k: meta.get(k) for k in HUNYUAN} == HUNYUAN
