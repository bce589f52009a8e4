"""Model-based metrics from local weights only (never downloaded): CLIP prompt fidelity, DINO subject consistency,
CLIP background consistency.

Subject and background consistency follow VBench (Huang et al., CVPR 2024; `vbench/subject_consistency.py`,
`vbench/background_consistency.py`): with unit-norm image features f_0 … f_{T−1} of the frames,

    score = mean over i = 1 … T−1 of ( max(0, cos(f_{i−1}, f_i)) + max(0, cos(f_0, f_i)) ) / 2

with DINO ViT-B/16 features (the [CLS] token of the last layer) for subjects and CLIP ViT-B/32 image embeddings
for backgrounds. Frames are prepared as VBench's transforms do: DINO — resize the short side to the model's image
size (bilinear, no antialiasing), scale to [0, 1], ImageNet mean/std; CLIP — resize the short side (bicubic, no
antialiasing), centre crop to a square, scale to [0, 1], CLIP's mean/std. The whole video is one clip (VBench-Long
would first cut it at scene changes; see scenes.py for the cut count).

Prompt fidelity (SynCoS Table 1 "Glb / Loc Prompt Fidelity"): CLIP similarity, the cosine of the CLIP image
embedding of a frame and the CLIP text embedding of a prompt (CLIPScore of Hessel et al., EMNLP 2021, without its
2.5 weight), averaged over frames. Global: every frame against the global prompt. Local: each local prompt against
the frames of its segment of the story, then averaged over segments. Prompts longer than CLIP's text window
(77 tokens) are truncated by its tokenizer.

Weights: a transformers folder (`save_pretrained` layout: config.json + weights, with the tokenizer for CLIP),
e.g. `hf download openai/clip-vit-base-patch32 --local-dir DIR` (or facebook/dino-vitb16) on a
machine with network. Loaded with `local_files_only=True`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from longgen.errors import UsageError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODEL_METRICS = {  # metric → the weights it needs (the key under `models.` in conf/eval.yaml)
    "prompt_fidelity": "clip",
    "background_consistency": "clip",
    "subject_consistency": "dino",
}


def vbench_consistency(features: np.ndarray) -> float:
    """VBench's consistency score of features [T, D] (normalised here); 1.0 for a single frame."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    if len(f) < 2:
        return 1.0
    to_previous = np.maximum(0.0, np.sum(f[1:] * f[:-1], axis=1))
    to_first = np.maximum(0.0, f[1:] @ f[0])
    return float(np.mean((to_previous + to_first) / 2))


def prompt_fidelity(image_features: np.ndarray, text_features: np.ndarray, frame_prompt: np.ndarray) -> list[float]:
    """Mean cosine of frames [T, D] with their prompt: text_features [P, D], frame_prompt [T] (prompt index of each
    frame). One value per prompt index 0 … P−1 (NaN for a prompt with no frames)."""
    img = image_features / np.linalg.norm(image_features, axis=1, keepdims=True)
    txt = text_features / np.linalg.norm(text_features, axis=1, keepdims=True)
    cos = np.sum(img * txt[frame_prompt], axis=1)  # [T]
    return [float(cos[frame_prompt == p].mean()) if np.any(frame_prompt == p) else float("nan")
            for p in range(len(txt))]


def _check_folder(path: str | None, key: str, metric: str) -> Path:
    example = "openai/clip-vit-base-patch32" if key == "clip" else "facebook/dino-vitb16"
    if path in (None, ""):
        raise UsageError(
            f"{metric} needs local {key.upper()} weights: pass models.{key}=/path/to/folder (a transformers folder, "
            f"e.g. `hf download {example} --local-dir DIR` on a machine with network); nothing is downloaded"
        )
    folder = Path(str(path)).expanduser()
    if not (folder / "config.json").is_file():
        raise UsageError(f"models.{key}={path} is not a transformers model folder (no config.json there)")
    return folder


def _resize_short_side(x, size: int, mode: str):
    """[B, 3, H, W] float → short side `size`, long side int(size · long / short), like torchvision's Resize(size)."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if h <= w:
        new = (size, int(size * w / h))
    else:
        new = (int(size * h / w), size)
    if new == (h, w):
        return x
    return F.interpolate(x, size=new, mode=mode, align_corners=False, antialias=False)


def _normalise(x, mean, std):
    import torch

    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def _pixels(frames: np.ndarray):
    """uint8 [B, H, W, 3] → float32 [B, 3, H, W] in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def _as_tensor(output):
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output holds it (5)."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class Clip:
    """A local CLIP model: image embeddings (VBench's CLIP transform) and text embeddings."""

    def __init__(self, path: str | None, device: str, metric: str) -> None:
        folder = _check_folder(path, "clip", metric)
        try:
            from transformers import AutoTokenizer, CLIPModel

            self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"models.clip={path} could not be loaded as a CLIP model with its tokenizer: "
                             f"{str(exc).splitlines()[0]}") from exc
        self.device = device
        self.size = int(self.model.config.vision_config.image_size)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    def preprocess(self, frames: np.ndarray):
        x = _resize_short_side(_pixels(frames), self.size, "bicubic")
        h, w = x.shape[-2:]
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        x = x[..., top: top + self.size, left: left + self.size]  # [B, 3, size, size] centre crop
        return _normalise(x, CLIP_MEAN, CLIP_STD)

    def image_features(self, frames: np.ndarray, batch: int) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), batch):
                pixels = self.preprocess(frames[i: i + batch]).to(self.device)
                out.append(_as_tensor(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return np.concatenate(out)

    def text_features(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        with torch.inference_mode():
            feats = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                 attention_mask=tokens["attention_mask"].to(self.device))
        return _as_tensor(feats).float().cpu().numpy()


class Dino:
    """A local DINO ViT (any transformers vision backbone with a [CLS] token): last-layer [CLS] features."""

    def __init__(self, path: str | None, device: str, metric: str) -> None:
        folder = _check_folder(path, "dino", metric)
        try:
            from transformers import AutoConfig, AutoModel

            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}  # only [CLS] is used
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, **extra).to(device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"models.dino={path} could not be loaded as a vision transformer: "
                             f"{str(exc).splitlines()[0]}") from exc
        if not hasattr(self.model.config, "image_size"):
            raise UsageError(f"models.dino={path} is a {self.model.config.model_type} model, not a vision transformer")
        self.device = device
        self.size = int(self.model.config.image_size)
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters

    def preprocess(self, frames: np.ndarray):
        return _normalise(_resize_short_side(_pixels(frames), self.size, "bilinear"), IMAGENET_MEAN, IMAGENET_STD)

    def image_features(self, frames: np.ndarray, batch: int) -> np.ndarray:
        import torch

        extra = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), batch):
                pixels = self.preprocess(frames[i: i + batch]).to(self.device)
                hidden = self.model(pixel_values=pixels, **extra).last_hidden_state  # [B, 1 + patches, D]
                out.append(hidden[:, 0].float().cpu().numpy())  # [B, D] the [CLS] token
        return np.concatenate(out)
