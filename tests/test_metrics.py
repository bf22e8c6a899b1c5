"""Metrics against independent computations and constructed cases with known answers."""

import numpy as np
import pytest
import scipy.linalg
import torch

from maskgit_lab.errors import ConfigError
from maskgit_lab.eval.evaluator import FMNISTClassifier
from maskgit_lab.eval.metrics import (
    CLASS_CONSISTENCY,
    FID,
    IS_MEAN,
    KID_MEAN,
    KID_STD,
    PRECISION,
    RECALL,
    FeatureExtractor,
    Features,
    batches,
    cached_reference,
    compute_metrics,
    load_statistics,
    metrics_against_statistics,
    reference_key,
)


def metrics(gen, ref, **kw):
    return compute_metrics(gen, ref, extractor="test", reference_name="ref", seed=0, **kw)["metrics"]


def gaussian(n, mean, cov, seed):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multivariate_normal(mean, cov, size=n))


def test_fid_of_a_set_against_itself_is_zero():
    x = Features(gaussian(500, np.zeros(8), np.eye(8), 0))
    assert abs(metrics(x, x)[FID]) < 1e-6


def test_fid_matches_closed_form_with_scipy():
    d = 6
    rng = np.random.default_rng(1)
    a = rng.normal(size=(d, d))
    cov1, cov2 = np.eye(d), a @ a.T / d + 0.1 * np.eye(d)
    x, y = gaussian(3000, np.zeros(d), cov1, 2), gaussian(3000, np.ones(d) * 0.5, cov2, 3)
    # independent closed form on the sample statistics
    xn, yn = x.numpy(), y.numpy()
    m1, m2 = xn.mean(0), yn.mean(0)
    s1, s2 = np.cov(xn, rowvar=False), np.cov(yn, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert metrics(Features(x), Features(y))[FID] == pytest.approx(want, rel=1e-6)


def test_fid_against_reference_statistics_has_the_closed_form_value(tmp_path):
    """Reference statistics N(mu, s^2 I) in an .npz, features whose sample mean and covariance
    are exactly 0 and I: FID = |mu|^2 + d (1 + s^2 - 2 s), computed here by hand."""
    d, n, mu, s = 4, 800, np.array([1.0, -2.0, 0.5, 0.0]), 3.0
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, d))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # sample covariance exactly I
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=s**2 * np.eye(d))
    stats_ = load_statistics(tmp_path / "ref.npz", d)
    out = metrics_against_statistics(Features(torch.from_numpy(x)), stats_, extractor="test", reference_name="ref",
                                     seed=0)
    assert out["metrics"][FID] == pytest.approx(float(mu @ mu) + d * (1 + s**2 - 2 * s), rel=1e-9)
    assert out["metrics"][KID_MEAN] is None and "statistics only" in out["notes"][KID_MEAN]
    with pytest.raises(ConfigError, match=r"do not fit the extractor's 5-d features"):
        load_statistics(tmp_path / "ref.npz", 5)


def mmd2_unbiased_poly(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written independently."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = x.shape[0]
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kid_known_answer_and_sign():
    x, y = gaussian(200, np.zeros(4), np.eye(4), 4), gaussian(200, np.ones(4), np.eye(4), 5)
    # subsets of half the samples: each subset's estimate is unbiased, so their mean over many
    # subsets sits on the full unbiased estimate, and the subsets differ from one another
    m = metrics(Features(x), Features(y), kid_subset_size=1000, kid_subsets=400)
    assert m[KID_MEAN] == pytest.approx(mmd2_unbiased_poly(x.numpy(), y.numpy()), rel=0.05)
    assert m[KID_STD] > 0
    got = m[KID_MEAN]
    same = metrics(Features(x), Features(gaussian(200, np.zeros(4), np.eye(4), 6)), kid_subset_size=200)[KID_MEAN]
    assert abs(same) < got / 20


def test_precision_recall_constructed_cases():
    real = gaussian(400, np.zeros(3), np.eye(3), 7)
    m = metrics(Features(real.clone()), Features(real))
    assert m[PRECISION] == 1.0 and m[RECALL] == 1.0
    far = real + 100.0
    m = metrics(Features(far), Features(real))
    assert m[PRECISION] == 0.0 and m[RECALL] == 0.0
    half = torch.cat([real[:200], far[200:]])  # half on the manifold, half far away
    m = metrics(Features(half), Features(real))
    assert m[PRECISION] == pytest.approx(0.5)


def test_inception_score_and_class_consistency():
    logits = torch.eye(10).repeat(50, 1) * 30  # confident and uniform over classes
    feats = Features(torch.randn(500, 4, dtype=torch.float64), logits.double())
    labels = torch.arange(10).repeat(50)
    m = metrics(feats, Features(torch.randn(500, 4, dtype=torch.float64)), labels=labels)
    # confident predictions spread over 10 classes: IS close to, and never above, 10
    assert 8.5 < m[IS_MEAN] <= 10.0 + 1e-9
    assert m[CLASS_CONSISTENCY] == 1.0
    one_class = Features(feats.features, torch.zeros(500, 10, dtype=torch.float64).index_fill(1, torch.tensor([3]), 30.0))
    assert metrics(one_class, feats)[IS_MEAN] == pytest.approx(1.0, abs=1e-9)  # p(y|x) = p(y)
    m = metrics(feats, feats, labels=(labels + 1) % 10)
    assert m[CLASS_CONSISTENCY] == 0.0


def test_is_unavailable_without_logits():
    x = Features(torch.randn(100, 4, dtype=torch.float64))
    out = compute_metrics(x, x, extractor="no-logits", reference_name="r", seed=3)
    assert out["metrics"][IS_MEAN] is None and "unavailable" in out["notes"][IS_MEAN]
    assert out["n_generated"] == 100 and out["seed"] == 3 and out["extractor"] == "no-logits"


def test_batch_size_independence_of_features_and_metrics():
    torch.manual_seed(0)
    net = FMNISTClassifier().eval()
    ext = FeatureExtractor("cnn", "x", lambda x: net(x))
    images = torch.rand(64, 1, 32, 32) * 2 - 1
    a, b = ext(batches(images, 7)), ext(batches(images, 64))
    assert torch.allclose(a.features, b.features, atol=1e-5) and torch.allclose(a.logits, b.logits, atol=1e-5)
    ref = ext(batches(torch.rand(64, 1, 32, 32) * 2 - 1, 64))
    ma, mb = metrics(a, ref, kid_subset_size=64), metrics(b, ref, kid_subset_size=64)
    for k in (FID, KID_MEAN, PRECISION, RECALL):
        assert ma[k] == pytest.approx(mb[k], rel=1e-4, abs=1e-8)


def test_same_seed_same_numbers():
    x, y = gaussian(300, np.zeros(4), np.eye(4), 8), gaussian(300, np.ones(4), np.eye(4), 9)
    assert metrics(Features(x), Features(y)) == metrics(Features(x), Features(y))


def test_reference_cache_reused(tmp_path):
    ext = FeatureExtractor("cnn", "abc", lambda x: (x.flatten(1), None))
    key = reference_key(ext, "test", "data", 10, "pad32")
    assert key != reference_key(FeatureExtractor("cnn", "other", ext.fn), "test", "data", 10, "pad32")
    calls = []

    def compute():
        calls.append(1)
        return ext(batches(torch.rand(10, 1, 4, 4), 5))

    first, hit1 = cached_reference(tmp_path, key, compute)
    second, hit2 = cached_reference(tmp_path, key, compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(first.features, second.features)


def test_kid_from_cached_kernels_equals_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric as reference

    from maskgit_lab.eval.metrics import kid_features_to_metric

    x, y = gaussian(300, np.zeros(6), np.eye(6), 8), gaussian(250, np.full(6, 0.3), np.eye(6), 9)
    kw = {"kid_subsets": 20, "kid_subset_size": 100, "rng_seed": 3}
    ours, theirs = kid_features_to_metric(x, y, **kw), reference(x, y, **kw, verbose=False)
    for k in theirs:
        assert ours[k] == pytest.approx(theirs[k], rel=1e-9), k


def test_images_reach_the_extractor_on_the_uint8_grid():
    from maskgit_lab.eval.metrics import quantize_uint8

    real = torch.arange(256, dtype=torch.float32).div(127.5).sub(1.0).reshape(1, 1, 16, 16)
    assert torch.equal(quantize_uint8(real), real)  # real images pass unchanged
    seen = []
    ext = FeatureExtractor("probe", "x", lambda x: (seen.append(x) or x.flatten(1), None))
    ext([torch.tensor([[[[0.3001, -0.9999]]]])])
    assert torch.allclose(seen[0], torch.tensor([[[[38 / 127.5 * 1.0 + 128 / 127.5 - 1, -1.0]]]]), atol=1e-6)
    levels = (seen[0] + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
