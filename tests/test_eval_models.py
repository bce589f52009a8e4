"""Model-based metrics from local weights: tiny random CLIP and DINO (ViT) models built from configs in code and
written with `save_pretrained`, loaded back the way a user's downloaded folder is. Oracles: VBench's consistency
formula and the CLIP similarity written out as loops, on features computed here with transformers' own image
processors (independent of longgen's preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longgen.errors import UsageError
from longgen.eval.evaluate import ModelMetrics, evaluate_target
from longgen.eval.inputs import Target
from longgen.eval.semantic import prompt_fidelity, vbench_consistency
from longgen.eval.settings import default_settings

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "a", "red", "fox", "runs", "jumps", "in", "the", "snow", "cat", "."]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("models") / "clip-tiny"
    CLIPModel(config).eval().save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4)
    path = tmp_path_factory.mktemp("models") / "dino-tiny"
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(str(path))
    return path


def consistency_loop(features: np.ndarray) -> float:
    """VBench subject/background consistency written out as its loop."""
    total = 0.0
    first = prev = None
    for i, f in enumerate(features):
        f = f / np.sqrt(np.sum(f * f))
        if i == 0:
            first = f
        else:
            total += (max(0.0, float(np.dot(prev, f))) + max(0.0, float(np.dot(first, f)))) / 2
        prev = f
    return total / (len(features) - 1)


def test_consistency_and_fidelity_formulas():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((7, 5))
    assert vbench_consistency(feats) == pytest.approx(consistency_loop(feats), abs=1e-12)
    assert vbench_consistency(np.repeat(feats[:1], 4, axis=0)) == pytest.approx(1.0)
    assert vbench_consistency(np.array([[1.0, 0], [-1.0, 0]])) == 0.0  # negative cosines count as 0
    texts = rng.standard_normal((2, 5))
    which = np.array([0, 0, 1, 1, 1, 0, 1])
    expected = []
    for p in range(2):
        cos = [np.dot(feats[t], texts[p]) / np.linalg.norm(feats[t]) / np.linalg.norm(texts[p])
               for t in range(7) if which[t] == p]
        expected.append(sum(cos) / len(cos))
    assert prompt_fidelity(feats, texts, which) == pytest.approx(expected, abs=1e-12)


def frames_32(count: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (32, 32, 3))
    return np.stack([np.clip(base + rng.integers(-40, 41, base.shape), 0, 255) for _ in range(count)]).astype(np.uint8)


def _features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_model_metrics_match_transformers_processors_and_vbench_formula(clip_dir, dino_dir):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, ViTImageProcessor, ViTModel

    frames = frames_32()
    metrics = ModelMetrics({"clip": str(clip_dir), "dino": str(dino_dir), "metrics": "auto", "device": "cpu",
                            "batch": 2})
    assert metrics.names == ["prompt_fidelity", "background_consistency", "subject_consistency"]
    metrics.load()
    glob, local = "a red fox", ["a red fox runs", "a red fox jumps in the snow"]
    which = np.array([0, 0, 1, 1, 1])
    summary, detail = metrics.measure(frames, (glob, local, which))

    # oracle features: transformers' processors (32×32 frames: no resize, no crop) and the models used directly
    clip = CLIPModel.from_pretrained(str(clip_dir)).eval()
    dino = ViTModel.from_pretrained(str(dino_dir)).eval()
    clip_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    dino_proc = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    tokenizer = AutoTokenizer.from_pretrained(str(clip_dir))
    with torch.no_grad():
        img = _features(clip.get_image_features(**clip_proc(list(frames), return_tensors="pt"))).numpy()
        cls = dino(**dino_proc(list(frames), return_tensors="pt")).last_hidden_state[:, 0].numpy()
        tokens = tokenizer([glob, *local], padding=True, return_tensors="pt")
        txt = _features(clip.get_text_features(**tokens)).numpy()
    assert summary["background_consistency"] == pytest.approx(consistency_loop(img), abs=1e-5)
    assert summary["subject_consistency"] == pytest.approx(consistency_loop(cls), abs=1e-5)

    def cos(a, b):
        return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))

    assert summary["prompt_fidelity_global"] == pytest.approx(np.mean([cos(f, txt[0]) for f in img]), abs=1e-5)
    segments = [np.mean([cos(img[t], txt[1 + p]) for t in range(5) if which[t] == p]) for p in range(2)]
    assert detail["prompt_fidelity_segments"] == pytest.approx(segments, abs=1e-5)
    assert summary["prompt_fidelity_local"] == pytest.approx(np.mean(segments), abs=1e-5)


def test_model_metrics_on_an_mp4_of_another_size(clip_dir, dino_dir, tmp_path):
    """Non-square 48×64 frames go through the resize (and CLIP's centre crop) and the whole evaluate path."""
    from longgen.writer import Mp4Writer

    frames = np.stack([np.roll(frames_32(1, seed=3)[0].repeat(2, 0).repeat(2, 1)[:48], 2 * t, axis=1)
                       for t in range(6)])
    Mp4Writer(crf=0).write([frames], tmp_path, 8, 6)
    metrics = ModelMetrics({"clip": str(clip_dir), "dino": str(dino_dir), "metrics": ["subject_consistency",
                            "prompt_fidelity"], "device": "cpu", "batch": 4})
    metrics.load()
    result = evaluate_target(Target(video=tmp_path / "video.mp4", label="clip"), default_settings(), metrics,
                             prompt="a red fox runs in the snow")
    s = result["summary"]
    assert 0.0 <= s["subject_consistency"] <= 1.0
    assert -1.0 <= s["prompt_fidelity_global"] <= 1.0
    assert s["prompt_fidelity_local"] == pytest.approx(s["prompt_fidelity_global"], abs=1e-6)  # one prompt
    assert "background_consistency" not in s
    assert result["models"]["metrics"] == ["subject_consistency", "prompt_fidelity"]


def test_weights_of_the_wrong_kind_are_a_one_line_error(clip_dir, dino_dir):
    with pytest.raises(UsageError, match="models.dino=.* could not be loaded|is a clip model"):
        ModelMetrics({"dino": str(clip_dir), "metrics": ["subject_consistency"]}).load()
    with pytest.raises(UsageError, match="models.clip=.* could not be loaded as a CLIP model"):
        ModelMetrics({"clip": str(dino_dir), "metrics": ["background_consistency"]}).load()
