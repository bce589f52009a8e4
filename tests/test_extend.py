"""`longgen extend` (longgen/run/extend.py) on the tiny random backbones (short windows so that runs take seconds).

- per-frame context (tiny Wan, which has per-frame timesteps), t_c = 0: the output's history latents equal the VAE
  encoding of the input's last frames bit for bit; the model is told t_c for exactly the history frames; the frames
  before the join in extended.mp4 are the input's (codec tolerance), continuation.mp4 is what follows them;
- replacement context (tiny CogVideoX): after every step the history frames sit at the level the step reached,
  a·z_h + s·ε_h with the schedule's coefficients (written out here in float64), the output's history is z_h, and
  the new frames depend on the history;
- the input is fitted: a video of another size and rate is resized, center-cropped and resampled, and the manifest
  says so; bad inputs (missing, not a video, too short, wrong size with resize=false) are one line, exit status 2
  and no run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from longgen.errors import UsageError
from longgen.eval.inputs import read_video
from longgen.run.extend import HistorySampler, KnownFrames, fit_frame, plan_extend
from longgen.commands.extend import run_extend
from longgen.samplers.base import SamplingRun
from longgen.samplers.gen_l_video import GenLVideoSampler
from longgen.writer import Mp4Writer

from cli_helpers import error_lines, run_cli
from conftest import make_tiny

# tiny-wan with 6-latent-frame windows (21 frames) at stride 2; tiny CogVideoX with 5-frame windows at stride 2
WAN = ["backbone=tiny-wan", "backbone.num_frames=21", "backbone.stride=2"]
COG = ["backbone=tiny", "backbone.num_frames=17", "backbone.stride=2", "backbone.height=16", "backbone.width=16"]


def make_video(path: Path, frames: int, size: tuple[int, int], fps: int) -> np.ndarray:
    """A smooth moving colour pattern (so that frames differ from their neighbours), written with longgen's writer
    (crf 0); returns the frames as ffmpeg reads them back."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    video = np.stack([np.stack([(x * 7 + t * 9) % 256, (y * 5 + t * 4) % 256, ((x + y) * 3 + t * 6) % 256], -1)
                      for t in range(frames)]).astype(np.uint8)
    Mp4Writer(filename=path.name, crf=0).write([video], path.parent, fps)
    return read_video(path)[0]


def compose_extend(overrides: list[str]):
    """extend's config as the command line would compose it (without Hydra's own node), and the group choices."""
    with initialize_config_module("longgen.conf", version_base="1.3"):
        cfg = compose("extend", overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    return cfg, choices


def frames_of(path: Path) -> np.ndarray:
    return read_video(path)[0].astype(np.float64)


# ---------------------------------------------------------------------------------------------------- per-frame
def test_per_frame_history_is_the_encoded_input_and_the_join_shows_it(tmp_path, monkeypatch):
    from longgen.backbones.wan import WanBackbone

    source = make_video(tmp_path / "in.mp4", 21, (32, 32), 16)
    calls = []
    plain = WanBackbone.predict

    def spy(self, x_t, t, prompt_ids, guidance_scale):
        calls.append(t.tolist() if isinstance(t, torch.Tensor) else t)
        return plain(self, x_t, t, prompt_ids, guidance_scale)

    monkeypatch.setattr(WanBackbone, "predict", spy)
    out = tmp_path / "run"
    cfg, choices = compose_extend([*WAN, f"video={tmp_path / 'in.mp4'}", "prompt=the pattern drifts on",
                                   "sampler=gen-l-video", "sampler.num_steps=3", "num_windows=2", "history=3",
                                   "t_c=0", "save_latents=true", "writer.crf=0"])
    manifest = run_extend(cfg, out, choices)
    assert manifest["history"] == {"latent_frames": 3, "video_frames": 9, "context": "per-frame", "t_c": 0}
    # the history latents are the VAE's encoding of the input's last 9 frames, bit for bit
    from safetensors.torch import load_file

    from test_wan import make_tiny_wan

    wan = make_tiny_wan()
    expected = wan.encode_frames(source[-9:])[0]  # [3, C, h, w]
    latents = load_file(out / "latents.safetensors")["latents"]  # [8, C, h, w]
    assert latents.shape[0] == 8 and torch.equal(latents[:3], expected)
    # the model saw those frames at t_c = 0 (per-frame timesteps), the new frames at the step's t
    per_frame = [t for t in calls if isinstance(t, list)]  # a window starting at s holds 3 − s history frames
    known = sorted({sum(v == 0.0 for v in t) for t in per_frame})
    assert known == [1, 3]  # windows at 0 and 2 (stride 2) over the 8 latent frames
    assert all(t[: k] == [0.0] * k and min(t[k:]) > 0 for t in per_frame for k in [sum(v == 0.0 for v in t)])
    # extended.mp4 = the input, then continuation.mp4
    extended, cont = frames_of(out / "extended.mp4"), frames_of(out / "continuation.mp4")
    assert len(extended) == 21 + 20 == manifest["frames"] and len(cont) == 20
    assert np.abs(extended[:21] - source).mean() < 3.0  # codec tolerance (yuv420p again, crf 0)
    assert np.abs(extended[1:21] - source[:20]).mean() > 3 * 3.0  # (the pattern moves: a shifted match fails)
    assert np.abs(extended[21:] - cont).mean() < 3.0
    assert manifest["join"]["video_frame"] == 21 and manifest["join"]["seam"]["ratio"] is not None


def test_known_frames_tell_each_window_its_levels():
    class Spy:
        window, latent_shape, device = 4, (1, 1, 1), torch.device("cpu")
        units = None

        def __init__(self):
            self.calls = []

        def predict(self, x, t, ids, g):
            from longgen.denoiser import Prediction

            self.calls.append((x.clone(), t, list(ids)))
            return Prediction(x * 2, x * 3)

    known = torch.tensor([[[[5.0]]], [[[6.0]]]])  # two known frames [2, 1, 1, 1]
    den = KnownFrames(Spy(), known, t_c=100.0)
    x = torch.tensor([[5.0, 6.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [6.0, 1.0, 2.0, 3.0]])[:, :, None, None, None]
    pred = den.predict(x, 700.0, [0, 1, 2], 6.0)
    assert torch.equal(pred.x0, x * 2) and torch.equal(pred.eps, x * 3)  # results back in batch order
    levels = {tuple(ids): (t.tolist() if isinstance(t, torch.Tensor) else t) for _, t, ids in den.backbone.calls}
    assert levels == {(0,): [100.0, 100.0, 700.0, 700.0], (1,): 700.0, (2,): [100.0, 700.0, 700.0, 700.0]}


def test_a_frame_is_known_only_when_all_of_it_is_the_history():
    """Known means bit for bit the whole frame: a frame that shares one latent channel with a history frame (and
    differs in the other) is a new frame, told the step's t."""
    backbone = SimpleNamespace(window=3, latent_shape=(2, 1, 1), device=torch.device("cpu"), units=None)
    known = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[:, :, None, None]  # [h = 2, C = 2, 1, 1]
    x = torch.tensor([[[1.0, 2.0], [1.0, 9.0], [3.0, 4.0]]])[..., None, None]  # [1, 3, 2, 1, 1]
    assert KnownFrames(backbone, known, t_c=100.0).known_mask(x).tolist() == [[True, False, True]]


# ---------------------------------------------------------------------------------------------------- replace
def test_replacement_keeps_the_history_at_each_steps_level():
    tiny = make_tiny(prompts=("a", "b"), height=16, width=16, num_frames=17)  # windows of 5 latent frames
    h, length, steps = 3, 9, 4
    g = torch.Generator().manual_seed(1)
    history = torch.randn((h, *tiny.latent_shape), generator=g)
    noise = torch.randn((1, length, *tiny.latent_shape), generator=g)
    sched = tiny.schedule(steps)
    seen = []

    def run(hist):
        sampler = HistorySampler(GenLVideoSampler(num_steps=steps, stride=2), h, "replace", 0)
        sampler.history = hist
        r = SamplingRun(tiny, noise.clone(), lambda s, m: int(s >= 4), torch.Generator().manual_seed(2))
        r.after_step = lambda state, total: seen.append(state.tensors["x"][:h].double().clone())
        return sampler.sample(r)

    out = run(history)
    z, eps = history.double(), noise[0, :h].double()
    for i, x in enumerate(seen):  # after step i the history is at the level step i moved to
        a, s = sched.a_prev[i], sched.s_prev[i]
        torch.testing.assert_close(x, a * z + s * eps, atol=1e-6, rtol=0)
    # and before step 0 at step 0's own level (on the tiny model's zero-terminal-SNR schedule, a = 0: x_T itself)
    first = HistorySampler(GenLVideoSampler(num_steps=steps, stride=2), h, "replace", 0)
    first.history = history
    start = SamplingRun(tiny, noise.clone(), lambda s, m: int(s >= 4), torch.Generator().manual_seed(2))
    first.begin(start)
    torch.testing.assert_close(first.initial_state(start)["x"][:h].double(), sched.a[0] * z + sched.s[0] * eps,
                               atol=1e-6, rtol=0)
    assert torch.equal(out[0, :h], history)
    other = run(history.flip(0))  # another history: other new frames
    assert not torch.allclose(other[0, h:], out[0, h:], atol=1e-3)
    plain = GenLVideoSampler(num_steps=steps, stride=2).sample(
        SamplingRun(tiny, noise.clone(), lambda s, m: int(s >= 4), torch.Generator().manual_seed(2)))
    assert not torch.allclose(plain[0, h:], out[0, h:], atol=1e-3)


# ---------------------------------------------------------------------------------------------------- the input
def test_the_input_is_fitted_and_the_fit_is_reported(tmp_path):
    make_video(tmp_path / "wide.mp4", 40, (48, 32), 16)  # 48×32 at 16 fps → 16×16 at 8 fps
    cfg, choices = compose_extend([*COG, f"video={tmp_path / 'wide.mp4'}", "prompt=a cat", "history=2"])
    job = plan_extend(cfg, tmp_path / "x", choices)
    src = job.source
    assert src.frames == 20 and src.tail.shape == (5, 16, 16, 3)  # 40 frames at half the rate, last 4·1+1 kept
    assert src.describe_fit() == ("resized 48×32 → 24×16 and center-cropped to 16×16; "
                                  "resampled 16 → 8 fps (nearest frame in time)")
    frame = np.arange(32 * 48 * 3, dtype=np.uint8).reshape(32, 48, 3)
    assert fit_frame(frame, 16, 16).shape == (16, 16, 3)
    assert np.array_equal(fit_frame(frame, 48, 32), frame)


def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path):
    make_video(tmp_path / "short.mp4", 4, (16, 16), 8)
    make_video(tmp_path / "big.mp4", 20, (32, 32), 8)
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    cases = [
        (tmp_path / "missing.mp4", [], "no such file"),
        (tmp_path / "text.mp4", [], "is not a video ffmpeg can read"),
        (tmp_path / "short.mp4", [], "has 4 frame"),
        (tmp_path / "big.mp4", ["resize=false"], "is 32×32 but"),
    ]
    for video, extra, message in cases:
        cfg, choices = compose_extend([*COG, f"video={video}", "prompt=a cat", *extra])
        with pytest.raises(UsageError, match=message):
            plan_extend(cfg, tmp_path / "x", choices)
    out = tmp_path / "run"
    proc = run_cli("extend", str(tmp_path / "short.mp4"), *COG, "prompt=a cat", f"hydra.run.dir={out}")
    assert proc.returncode == 2 and len(error_lines(proc)) == 1 and "has 4 frame" in error_lines(proc)[0]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_fifo_is_refused_in_one_line_before_anything_is_written(tmp_path):
    """FIFO's steps are queue iterations, not the DDIM steps the history is kept at: extend with sampler=fifo
    crashed (a traceback, TypeError from the scheduler) after writing story.json and the log into the run
    directory, on every backbone with per-frame timesteps."""
    make_video(tmp_path / "in.mp4", 20, (16, 16), 8)
    cfg, choices = compose_extend([*COG, f"video={tmp_path / 'in.mp4'}", "prompt=a cat", "sampler=fifo",
                                   "sampler.num_partitions=1"])
    with pytest.raises(UsageError, match="^sampler=fifo runs one queue iteration per latent frame, but longgen extend"):
        plan_extend(cfg, tmp_path / "x", choices)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------- noise group
def test_extend_plans_like_generate_and_takes_the_noise_group(tmp_path):
    """extend builds its parts through generate's stage 1 (run/job.py), so noise=freenoise works: the new part's
    starting noise changes, the history stays the input's encoding bit for bit, and the manifest names the noise."""
    from safetensors.torch import load_file

    make_video(tmp_path / "in.mp4", 17, (16, 16), 8)
    common = [*COG, f"video={tmp_path / 'in.mp4'}", "prompt=the pattern drifts on", "sampler=gen-l-video",
              "sampler.num_steps=2", "num_windows=3", "context=replace", "save_latents=true"]
    runs = {}
    for noise in ("gaussian", "freenoise"):
        cfg, choices = compose_extend([*common, f"noise={noise}"])
        manifest = run_extend(cfg, tmp_path / noise, choices)
        assert manifest["noise"]["name"] == noise
        runs[noise] = (manifest, load_file(tmp_path / noise / "latents.safetensors")["latents"])
    h = runs["gaussian"][0]["history"]["latent_frames"]
    (_, plain), (_, rescheduled) = runs["gaussian"], runs["freenoise"]
    assert torch.equal(plain[:h], rescheduled[:h])  # the history is the input's encoding either way
    assert not torch.allclose(plain[h:], rescheduled[h:])  # the new part started from other noise
    assert runs["freenoise"][0]["noise"]["kind"] == "freenoise"
    # extend's latents record the backbone that made them, as generate's do (run/latent_space.py; mutation audit:
    # extend wrote them with an empty record and no test failed)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gaussian" / "latents.safetensors"), framework="pt") as f:
        meta = f.metadata()
    tiny = OmegaConf.load(Path(__file__).parents[1] / "conf" / "backbone" / "tiny.yaml")
    assert (meta["backbone"], meta["latent_space"], meta["model_id"]) == ("tiny", tiny.latent_space, tiny.model_id)
    assert json.loads(meta["latent_shape"]) == list(plain.shape[1:])


def test_the_join_line_says_an_unmeasured_ratio_in_words():
    """A seam ratio join_seam could not measure (None: the manifest's null) is said, not logged as nan; a
    one-frame input (join at frame 1) is named."""
    from longgen.run.extend import join_line

    seam = {"ratio": 3.75, "warp_ratio": None, "threshold": 2.0}
    still = join_line(1, seam)
    assert still == ("join at frame 1: seam ratio 3.75 (frame difference), no warping error to measure (from the "
                     "one-frame input's still image, the optical flow matched no pixel across the join, or too few "
                     "frames lie around it); flagged above 2.0")
    assert "nan" not in join_line(40, {**seam, "ratio": None}) and "one-frame" not in join_line(40, seam)
    assert join_line(40, {**seam, "warp_ratio": 24.45}).endswith("3.75 (frame difference), 24.45 (warping error); "
                                                                 "flagged above 2.0")
