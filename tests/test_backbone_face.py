"""The backbone's declared face, its shared options and its one attention resolution (issue 24).

- The stages (longgen/run/, longgen/commands/, longgen/parallel/, longgen/eval/) read and call nothing of a backbone
  that `longgen.backbones.face.Backbone` (with the seam it extends) does not declare; both diffusers families are
  such a backbone and set every declared attribute.
- The options every diffusers family shares are one `DiffusersOptions`: each family's constructor shows them with its
  own defaults (what `longgen.build` checks config keys and kinds against), and a bad value of any of them is the
  same one line on either family.
- The model's sampling defaults (stride, guidance_scale, negative_prompt, syncos_t_min) stay keys of the backbone
  config but are not the backbone's options.
- `backbone.attention` is resolved in one step at load: what each value becomes per family and device.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from longgen.backbones import attention
from longgen.backbones.attention import SDPA_KERNELS, AttentionChoice, Kernel, resolve_attention
from longgen.backbones.cogvideox import CogVideoXBackbone
from longgen.backbones.diffusers_base import DiffusersOptions
from longgen.backbones.face import SAMPLING_DEFAULTS, Backbone
from longgen.backbones.wan import WanBackbone
from longgen.build import build
from longgen.denoiser import Denoiser
from longgen.errors import UsageError

from conftest import REPO, make_tiny, tiny_config

#: the packages whose code uses a backbone without being one
STAGES = ("longgen/run", "longgen/commands", "longgen/parallel", "longgen/eval")
FAMILIES = {"tiny": CogVideoXBackbone, "tiny-wan": WanBackbone}


def declared() -> set[str]:
    """Every name the face declares: methods, properties, class attributes and annotated attributes (its own and
    the seam's)."""
    names = {name for name in dir(Backbone) if not name.startswith("__")}
    for cls in (Backbone, Denoiser):
        names |= set(inspect.get_annotations(cls))
    return names


def backbone_uses(root: Path) -> list[tuple[str, str]]:
    """(file:line, attribute) of every `backbone.X`, `<anything>.backbone.X` and getattr(backbone, "X", ...) under
    `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and is_backbone(node.value):
                found.append((where, node.attr))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                  and len(node.args) >= 2 and is_backbone(node.args[0]) and isinstance(node.args[1], ast.Constant)):
                found.append((where, node.args[1].value))
    return found


def is_backbone(node: ast.AST) -> bool:
    """`backbone` or `<x>.backbone`, but not the config node `cfg.backbone` / `<x>.cfg.backbone`."""
    if isinstance(node, ast.Name):
        return node.id == "backbone"
    if not isinstance(node, ast.Attribute) or node.attr != "backbone":
        return False
    owner = node.value
    return not ((isinstance(owner, ast.Name) and owner.id == "cfg") or
                (isinstance(owner, ast.Attribute) and owner.attr == "cfg"))


def test_the_stages_use_only_the_declared_face():
    uses = [use for package in STAGES for use in backbone_uses(REPO / package)]
    assert len(uses) > 50  # the scan sees the stages' uses (a wrong pattern would leave nothing to check)
    undeclared = sorted(f"{where}: backbone.{name}" for where, name in uses if name not in declared())
    assert not undeclared, "the stages use what longgen/backbones/face.py does not declare:\n" + "\n".join(undeclared)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_the_face_and_sets_what_it_declares(name):
    backbone = build(OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml"), "backbone", name)
    assert isinstance(backbone, Backbone) and isinstance(backbone, FAMILIES[name])
    assert not inspect.isabstract(FAMILIES[name])
    before_load = set(inspect.get_annotations(Backbone)) | {"window", "latent_shape", "units", "label"}
    missing = sorted(attr for attr in before_load if not hasattr(backbone, attr))
    assert not missing, f"{name} does not set {missing} of the face"


# ---------------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("family", [CogVideoXBackbone, WanBackbone], ids=lambda f: f.family)
def test_a_family_shows_every_shared_option_with_its_own_defaults(family):
    params = inspect.signature(family).parameters
    shared = [f.name for f in fields(DiffusersOptions)]
    assert set(shared) <= set(params) and not any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in family.option_defaults.items():
        assert params[key].default == value, key
    built = family()  # every shared option has a default on every family
    assert (built.micro_batch, built.fps) == (family.option_defaults["micro_batch"], family.option_defaults["fps"])


SHARED_ERRORS = [
    ("dtype", "int8", "backbone.dtype='int8' is not supported: use float16, bfloat16 or float32"),
    ("text_encoder", "drop", "backbone.text_encoder='drop': use release, cpu or keep"),
    ("num_frames", 48, "backbone.num_frames=48 must be 4·k+1 (e.g. 49 or 81) for this VAE"),
    ("height", 100, "backbone.height/width (100×"),
    ("height", 0, "backbone.height=0 must be a whole number >= 1"),  # 0 and negatives pass the multiple check
    ("width", -32, "backbone.width=-32 must be a whole number >= 1"),
    ("fps", 0, "backbone.fps=0 must be a whole number >= 1"),
    ("num_frames", -3, "backbone.num_frames=-3 must be a whole number >= 1"),
    ("max_text_tokens", 0, "backbone.max_text_tokens=0 must be a whole number >= 1"),  # HunyuanVideo: a traceback
    ("spatial_compression", 0, "backbone.spatial_compression=0 must be a whole number >= 1"),  # "modulo by zero"
    ("micro_batch", 0, "backbone.micro_batch=0 must be a whole number >= 1"),
    ("latent_channels", 0, "backbone.latent_channels=0 must be a whole number >= 1"),
    ("temporal_compression", -4, "backbone.temporal_compression=-4 must be a whole number >= 1"),
    ("compile", "sometimes", "backbone.compile='sometimes': use auto, true or false"),
    ("vae_tiling", "sometimes", "backbone.vae_tiling='sometimes': use auto, true or false"),
    ("fused_gelu", "sometimes", "backbone.fused_gelu='sometimes': use auto, true or false"),
    ("attention", "fa4", "backbone.attention='fa4': use one of auto, sdpa, cudnn, flash, efficient, math, fa3"),
    ("architecture", None, "backbone.random_weights=true needs an `architecture` section (see conf/backbone/tiny"),
]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("key,value,message", SHARED_ERRORS, ids=[e[0] for e in SHARED_ERRORS])
def test_a_bad_shared_option_is_one_line_on_every_family(name, key, value, message):
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml")
    OmegaConf.update(cfg, key, value, merge=False)
    with pytest.raises(UsageError) as err:
        build(cfg, "backbone", name)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_whole_float_size_is_taken_as_its_integer():
    """`backbone.height=32.0` reached torch.randn as a float size, `micro_batch=1.0` a slice (each a traceback after
    the run directory was made)."""
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan22-a14b.yaml")
    cfg.height, cfg.width, cfg.micro_batch = 32.0, 16.0, 1.0
    backbone = build(cfg, "backbone", "tiny-wan22-a14b")
    assert (backbone.height, backbone.width, backbone.micro_batch) == (32, 16, 1) and isinstance(backbone.height, int)
    assert backbone.latent_shape == (4, 4, 2)


def test_the_sampling_defaults_are_config_keys_not_backbone_options():
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "tiny-wan.yaml")
    assert set(SAMPLING_DEFAULTS) <= set(cfg)  # the keys users type stay in the backbone config
    wan = build(cfg, "backbone", "tiny-wan")
    assert not any(hasattr(wan, key) for key in SAMPLING_DEFAULTS)
    assert not set(SAMPLING_DEFAULTS) & set(inspect.signature(WanBackbone).parameters)
    with pytest.raises(UsageError, match="has no option 'strde'"):  # the other keys are still checked
        build(tiny_config(strde=2), "backbone", "tiny")


# ---------------------------------------------------------------------------------------------------- attention
class Stub(Kernel):
    """A family kernel that runs where `runs` says."""

    def __init__(self, name: str, runs: bool) -> None:
        super().__init__(name, f"stub {name}")
        self.runs = runs

    def check(self, device: torch.device) -> None:
        if not self.runs:
            raise UsageError(f"backbone.attention={self.name} cannot run here")

    def install(self, transformer) -> None:
        raise AssertionError("resolution installs nothing")


CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object only: nothing runs on it here


@pytest.mark.parametrize("asked", list(SDPA_KERNELS))
def test_the_sdpa_sets_apply_on_cuda_only(asked):
    assert resolve_attention(asked, CPU, {}, ()) == AttentionChoice(asked, "sdpa")
    on_gpu = resolve_attention(asked, CUDA, {}, ())
    assert on_gpu.sdpa == SDPA_KERNELS[asked] and on_gpu.kernel is None
    assert on_gpu.used == ("cudnn-first" if asked == "auto" else asked)
    assert on_gpu.description == (list(SDPA_KERNELS[asked]) or "torch default")


def test_auto_takes_the_first_family_kernel_that_runs():
    slow, fast, broken = Stub("slow", True), Stub("fast", True), Stub("broken", False)
    kernels = {"slow": slow, "fast": fast, "broken": broken}
    assert resolve_attention("auto", CUDA, kernels, ("broken", "fast", "slow")).kernel is fast
    none_runs = resolve_attention("auto", CUDA, kernels, ("broken",))
    assert (none_runs.used, none_runs.kernel) == ("cudnn-first", None)
    assert resolve_attention("auto", CUDA, kernels, ()).used == "cudnn-first"  # a kernel not listed for auto
    assert resolve_attention("slow", CPU, kernels, ()).description == "stub slow"
    with pytest.raises(UsageError, match="broken cannot run here"):  # asked by name: its one line
        resolve_attention("broken", CUDA, kernels, ())


@pytest.mark.parametrize("fa3_runs", [True, False])
def test_what_auto_picks_on_each_family(monkeypatch, fa3_runs):
    """CogVideoX's auto takes FlashAttention-3 wherever it runs; Wan's never does; off CUDA both run torch's SDPA."""
    def check_fa3(device):
        if not fa3_runs or device.type != "cuda":
            raise UsageError("no FlashAttention-3 here")

    monkeypatch.setattr(attention, "check_fa3", check_fa3)
    cog = resolve_attention("auto", CUDA, CogVideoXBackbone.attention_kernels, CogVideoXBackbone.auto_attention)
    assert cog.used == ("fa3" if fa3_runs else "cudnn-first")
    wan = resolve_attention("auto", CUDA, WanBackbone.attention_kernels, WanBackbone.auto_attention)
    assert (wan.used, wan.sdpa) == ("cudnn-first", SDPA_KERNELS["auto"])
    for family in (CogVideoXBackbone, WanBackbone):
        assert resolve_attention("auto", CPU, family.attention_kernels, family.auto_attention).used == "sdpa"


def test_the_loaded_backbone_records_the_resolved_choice():
    info = make_tiny(attention="cudnn").describe()  # cuDNN is a CUDA kernel: on the CPU torch's SDPA runs
    assert (info["attention"], info["attention_used"], info["attention_kernels"]) == ("cudnn", "sdpa", "torch default")
    fa3 = build(tiny_config(attention="fa3"), "backbone", "tiny")
    with pytest.raises(UsageError, match="runs on NVIDIA Hopper GPUs"):
        fa3.load()
    assert fa3.pipe is None  # refused before any weights load
