"""The suite's own scores: masked-token NLL and the classification accuracy score (CAS)."""

import math

import pytest
import torch

from maskgit_lab.config import EvaluatorConfig
from maskgit_lab.eval.evaluator import classification_accuracy_score
from maskgit_lab.eval.nll import masked_token_nll
from maskgit_lab.models.transformer import MaskGITTransformer, TransformerConfig


def tiny_transformer(k=16, n=16):
    cfg = TransformerConfig(preset="tiny", codebook_size=k, num_tokens=n, num_classes=3).resolved()
    torch.manual_seed(0)
    return MaskGITTransformer(cfg).eval()


def test_uniform_model_scores_log_k_and_seed_determinism():
    model = tiny_transformer()
    codes = torch.randint(0, 16, (40, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.arange(40) % 3
    a = masked_token_nll(model, codes, labels, "cosine", seed=5, batch_size=7)
    assert a == masked_token_nll(model, codes, labels, "cosine", seed=5, batch_size=7)
    assert a["nll"] != masked_token_nll(model, codes, labels, "cosine", seed=6, batch_size=7)["nll"]
    # Zero the output head: constant logits, so the NLL is exactly log K whatever the mask.
    with torch.no_grad():
        model.head[2].weight.zero_()
        model.head[2].bias.zero_()
        model.bias.zero_()
    assert masked_token_nll(model, codes, labels, "cosine")["nll"] == pytest.approx(math.log(16), abs=1e-6)


def test_nll_masks_with_the_schedule():
    model = tiny_transformer(n=64)
    codes = torch.randint(0, 16, (400, 64), generator=torch.Generator().manual_seed(2))
    labels = torch.zeros(400, dtype=torch.long)
    frac = {}
    for s in ("linear", "cubic"):
        out = masked_token_nll(model, codes, labels, s, draws=2, seed=0, batch_size=200)
        frac[s] = out["masked_tokens"] / (2 * 400 * 64)
        assert out["draws"] == 2 and out["schedule"] == s
    # E[gamma(r)]: linear 1 - r -> 1/2; cubic 1 - r^3 -> 3/4 (plus the ceil's ~1/(2N)).
    assert frac["linear"] == pytest.approx(0.5 + 1 / 128, abs=0.03)
    assert frac["cubic"] == pytest.approx(0.75 + 1 / 128, abs=0.03)
    with pytest.raises(ValueError, match="unknown mask schedule"):
        masked_token_nll(model, codes, labels, "zigzag")


def _bar_images(n, seed):
    """Class c = a bright bar at row 3c of a noisy 32x32 image in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 32, 32, generator=g) * 0.3 - 1
    for i, c in enumerate(labels.tolist()):
        x[i, 0, 3 * c : 3 * c + 2, 4:28] = 1
    return x, labels


def test_cas_learns_from_informative_samples_and_not_from_shuffled_labels():
    from torch.utils.data import TensorDataset

    e = EvaluatorConfig(batch_size=64, width=8, feature_dim=32)
    train_x, train_y = _bar_images(640, 0)
    test = TensorDataset(*_bar_images(300, 1))
    good = classification_accuracy_score(train_x, train_y, test, e, steps=40)
    shuffled = train_y[torch.randperm(640, generator=torch.Generator().manual_seed(3))]
    bad = classification_accuracy_score(train_x, shuffled, test, e, steps=40)
    assert good["cas_top1"] > 0.9 and good["cas_top5"] >= good["cas_top1"]
    assert bad["cas_top1"] < 0.35
    assert good["cas_train_images"] == 640 and good["cas_steps"] == 40
