from __future__ import annotations

import pytest
import torch
from conftest import TINY_IDS, TINY_MODELS

import ncslim
from ncslim.models.base import BN_INIT_SCALE


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS, ids=TINY_IDS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_shape_and_gradients(arch, kwargs, in_channels, images):
    torch.manual_seed(0)
    model = ncslim.build_model(arch, num_classes=7, in_channels=in_channels, **kwargs)
    out = model(images(3, in_channels))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize(("arch", "expected"), [
    ("vgg", 20.04e6), ("densenet", 1.059e6), ("resnet", 1.70e6),
])
def test_parameter_counts_at_width_one(arch, expected):
    params = ncslim.count_params(ncslim.build_model(arch, num_classes=10))
    assert abs(params - expected) / expected < 0.02


def test_densenet40_parameter_count_by_hand():
    # Stem conv 3->24, 3 blocks of 12 conv3x3 layers (growth 12), two same-width 1x1
    # transitions, final BN and Linear(456 -> 10), as SPEC.md describes it.
    convs = 3 * 24 * 9 + transitions_and_layers()
    bn_channels = sum(24 + 12 * i for i in range(12)) + sum(168 + 12 * i for i in range(12))
    bn_channels += sum(312 + 12 * i for i in range(12)) + 168 + 312 + 456
    expected = convs + 2 * bn_channels + 456 * 10 + 10
    assert ncslim.count_params(ncslim.build_model("densenet")) == expected


def transitions_and_layers() -> int:
    layers = sum((start + 12 * i) * 12 * 9 for start in (24, 168, 312) for i in range(12))
    return layers + 168 * 168 + 312 * 312


def test_densenet40_with_original_16_channel_stem_matches_paper_count():
    # Liu et al.'s 1.02M counts DenseNet-40 with a 16-channel stem (the original DenseNet);
    # the PyTorch reference (and our default) uses 24. The spec lets users build either.
    spec = ncslim.build_model("densenet").channels | {"stem": 16}
    params = ncslim.count_params(ncslim.build_model("densenet", channels=spec))
    assert abs(params - 1.02e6) / 1.02e6 < 0.02


@pytest.mark.parametrize(("arch", "depth", "bns"), [
    ("vgg", 11, 8), ("vgg", 13, 10), ("vgg", 16, 13), ("vgg", 19, 16),
    ("densenet", 40, 39), ("densenet", 22, 21), ("resnet", 164, 163), ("resnet", 56, 55),
])
def test_depths_and_prunable_bns(arch, depth, bns):
    model = ncslim.build_model(arch, width=0.125, depth=depth)
    slots = model.prune_slots()
    assert len(slots) == bns
    every_bn = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert sorted(s.bn for s in slots) == sorted(every_bn)


def test_bn_gammas_start_at_half():
    model = ncslim.build_model("resnet", width=0.25, depth=11)
    gammas = torch.cat([m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert torch.equal(gammas, torch.full_like(gammas, BN_INIT_SCALE))


def test_vgg19_geometry():
    model = ncslim.build_model("vgg", num_classes=100)
    assert model.channels == [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                              512, 512, 512, 512, "M", 512, 512, 512, 512]
    assert model.classifier.in_features == 512 and model.classifier.out_features == 100


def test_width_scales_channels():
    model = ncslim.build_model("resnet", width=0.5, depth=11)
    assert model.channels["planes"] == [8, 16, 32] and model.channels["stem"] == 8
    assert model.fc.in_features == 128


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "vgg", "depth": 17}, "vgg depth must be one of"),
    ({"name": "densenet", "depth": 41}, "densenet depth must be 3n\\+4"),
    ({"name": "resnet", "depth": 100}, "resnet depth must be 9n\\+2"),
    ({"name": "vgg", "width": 0.0}, "width must be a positive"),
    ({"name": "resnet", "width": float("nan")}, "width must be a positive"),
    ({"name": "vgg", "num_classes": 0}, "num_classes must be in \\[1, 100000\\]"),
    ({"name": "vggg"}, "unknown architecture 'vggg' \\(did you mean vgg"),
    ({"name": "vgg", "channels": [64, "M", -1]}, "each entry must be an int >= 1"),
    ({"name": "densenet", "channels": {"stem": 16}}, "densenet channels must be a dict"),
    ({"name": "densenet", "channels": {"stem": 4, "growth": 2, "layers": [1, 1, 1], "select": {},
                                       "stream_bias": False, "outputs": {"conv9": 1}}},
     "names convs it lacks: \\['conv9'\\]"),
    ({"name": "densenet", "channels": {"stem": 4, "growth": 2, "layers": [1, 1, 1], "select": {},
                                       "stream_bias": False, "outputs": {"conv1": 0}}},
     "must map conv names to ints >= 1"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        ncslim.build_model(name, **kwargs)


def test_bad_channel_selection_is_rejected():
    spec = ncslim.build_model("densenet", width=0.25, depth=10).channels
    spec = spec | {"select": {"head.bn": [3, 1]}}
    with pytest.raises(ValueError, match="sorted list of distinct channel indices"):
        ncslim.build_model("densenet", channels=spec)
    spec = spec | {"select": {"nowhere.bn": [1]}}
    with pytest.raises(ValueError, match="names layers this architecture lacks"):
        ncslim.build_model("densenet", channels=spec)


def test_model_names():
    assert ncslim.model_names() == ["densenet", "resnet", "vgg"]


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_select_gathers_in_either_layout_and_keeps_it(channels_last):
    from ncslim.models.base import ChannelSelect

    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 7, 5, 4, generator=gen).contiguous(memory_format=fmt).requires_grad_()
    index = [0, 2, 3, 6]
    out = ChannelSelect(index)(x)
    assert torch.equal(out, x.detach()[:, index])
    assert out.is_contiguous(memory_format=fmt)
    grad = torch.randn(out.shape, generator=gen)
    out.backward(grad)
    expected = torch.zeros(x.shape)
    expected[:, index] = grad
    assert torch.equal(x.grad, expected)


def test_pruned_preact_net_is_the_same_function_in_channels_last(spread, images):
    model = spread(ncslim.build_model("densenet", width=0.34, depth=10)).eval()
    small = ncslim.prune_model(model, ratio=0.5)[0].eval()
    x = images(2)
    with torch.no_grad():
        expected = small(x)
        small.to(memory_format=torch.channels_last)
        got = small(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
