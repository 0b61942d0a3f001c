from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_IDS, TINY_MODELS, spread_bn
from torch import nn

import ncslim
from ncslim.prune.selection import DEFAULT_MIN_CHANNELS


def masked(model: nn.Module, report: ncslim.PruneReport) -> nn.Module:
    """The original model with gamma and beta of every removed channel set to zero."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    with torch.no_grad():
        for layer in report.layers:
            bn = modules[layer.name]
            removed = torch.ones(layer.total, dtype=torch.bool)
            removed[layer.indices] = False
            bn.weight[removed] = 0.0
            bn.bias[removed] = 0.0
    return out


def tiny(arch: str, kwargs: dict, seed: int = 0, dtype=torch.float64) -> ncslim.SlimmableNet:
    torch.manual_seed(seed)
    return spread_bn(ncslim.build_model(arch, num_classes=5, **kwargs), seed).to(dtype).eval()


def bn_channels(model: nn.Module, name: str) -> int:
    return dict(model.named_modules())[name].num_features


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS, ids=TINY_IDS)
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_pruned_equals_masked_original(arch, kwargs, ratio, images):
    model = tiny(arch, kwargs)
    small, report = ncslim.prune_model(model, ratio=ratio)
    x = images(2, dtype=torch.float64)
    expected = masked(model, report)(x)
    assert torch.allclose(small(x), expected, atol=1e-5, rtol=0)
    for layer in report.layers:
        assert bn_channels(small, layer.name) == layer.kept == len(layer.indices)


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS, ids=TINY_IDS)
def test_channel_counts_match_the_kept_gammas(arch, kwargs):
    model = tiny(arch, kwargs)
    _, report = ncslim.prune_model(model, ratio=0.5)
    modules = dict(model.named_modules())
    for layer in report.layers:
        gammas = modules[layer.name].weight.abs()
        above = int((gammas > report.threshold).sum())
        assert layer.kept == max(above, min(DEFAULT_MIN_CHANNELS, layer.total))
        kept = gammas[layer.indices]
        assert (kept > report.threshold).all() or layer.name in report.floored
    total = sum(layer.total for layer in report.layers)
    if not report.floored:
        assert sum(layer.kept for layer in report.layers) == total - int(0.5 * total)


def test_ratio_removes_exactly_that_share_with_ties():
    model = tiny("vgg", {"width": 0.125, "depth": 11})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(0.5)  # all tied: the rule must still remove exactly 30 %
    _, report = ncslim.prune_model(model, ratio=0.3, min_channels=1)
    total = sum(layer.total for layer in report.layers)
    # Ties go in network order, so whole early layers go and the floor gives each back 1.
    expected = total - int(0.3 * total) + len(report.floored)
    assert sum(layer.kept for layer in report.layers) == expected


def test_threshold_zero_removes_exactly_the_zero_channels(images):
    model = tiny("resnet", {"width": 0.25, "depth": 11})
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(3)
    zeros = {}
    with torch.no_grad():
        for slot in model.prune_slots():
            bn = modules[slot.bn]
            mask = torch.rand(bn.num_features, generator=gen) < 0.4
            mask[:DEFAULT_MIN_CHANNELS] = False  # the floor holds none of the zeros
            bn.weight[mask] = 0.0
            zeros[slot.bn] = int(mask.sum())
    small, report = ncslim.prune_model(model, threshold=0.0)
    for layer in report.layers:
        assert layer.total - layer.kept == zeros[layer.name]
    # Zero gamma leaves beta: the removed channels still output relu(beta), so compare with
    # the masked model, which also zeroes beta.
    x = images(2, dtype=torch.float64)
    assert torch.allclose(small(x), masked(model, report)(x), atol=1e-5, rtol=0)


def test_min_channels_floor_on_an_all_tiny_layer():
    model = tiny("vgg", {"width": 0.125, "depth": 11})
    with torch.no_grad():
        model.features[1].weight.fill_(1e-6)
    small, report = ncslim.prune_model(model, threshold=1e-3, min_channels=3)
    assert report.floored == ["features.1"]
    assert small.features[0].out_channels == 3
    assert small(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 5)


def test_default_floor_keeps_one_channel_even_at_ratio_0_99():
    model = tiny("densenet", {"width": 0.25, "depth": 10})
    small, report = ncslim.prune_model(model, ratio=0.99)
    assert all(layer.kept >= 1 for layer in report.layers)
    assert torch.isfinite(small(torch.randn(1, 3, 32, 32, dtype=torch.float64))).all()


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS, ids=TINY_IDS)
def test_round_to_gives_multiples(arch, kwargs, images):
    model = tiny(arch, kwargs)
    small, report = ncslim.prune_model(model, ratio=0.6, round_to=8)
    for layer in report.layers:
        assert layer.kept % 8 == 0 or layer.kept == layer.total
    x = images(2, dtype=torch.float64)
    assert torch.allclose(small(x), masked(model, report)(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS, ids=TINY_IDS)
def test_compensation_brings_the_output_closer(arch, kwargs, images):
    model = tiny(arch, kwargs)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():  # weak channels: tiny gamma, but a beta that matters
            if isinstance(m, nn.BatchNorm2d):
                weak = torch.rand(m.num_features, generator=gen) < 0.4
                m.weight[weak] = 1e-3 * torch.rand(int(weak.sum()), generator=gen).double()
                m.bias[weak] = 0.5 * torch.randn(int(weak.sum()), generator=gen).double().abs()
    x = images(4, dtype=torch.float64)
    reference = model(x)
    plain, _ = ncslim.prune_model(model, threshold=2e-3)
    fixed, report = ncslim.prune_model(model, threshold=2e-3, compensate=True)
    assert report.compensated
    error_plain = (plain(x) - reference).norm()
    error_fixed = (fixed(x) - reference).norm()
    assert error_fixed < 0.5 * error_plain


def test_compensation_is_exact_for_zero_gamma_into_a_linear_layer(images):
    # The last VGG layer feeds average pooling and the classifier: a removed channel with
    # gamma 0 outputs exactly relu(beta) everywhere, which the classifier bias absorbs exactly.
    model = tiny("vgg", {"width": 0.125, "depth": 11})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.clamp_min_(0.05)
        model.features[-2].weight[:3] = 0.0
    x = images(2, dtype=torch.float64)
    small, report = ncslim.prune_model(model, threshold=0.0, compensate=True)
    assert report.layers[-1].kept == report.layers[-1].total - 3
    assert torch.allclose(small(x), model(x), atol=1e-10, rtol=0)


def test_pruning_twice_composes(images):
    model = tiny("resnet", {"width": 0.25, "depth": 11})
    once, _ = ncslim.prune_model(model, ratio=0.3)
    twice, report = ncslim.prune_model(once, ratio=0.3)
    x = images(2, dtype=torch.float64)
    assert torch.allclose(twice(x), masked(once, report)(x), atol=1e-5, rtol=0)
    rebuilt = ncslim.build_model("resnet", num_classes=5, channels=twice.channels)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in twice.parameters()]


def test_report_counts_and_original_untouched():
    model = tiny("vgg", {"width": 0.125, "depth": 19}, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, report = ncslim.prune_model(model, ratio=0.5)
    assert report.params_before == ncslim.count_params(model)
    assert report.params_after == ncslim.count_params(small) < report.params_before
    assert report.flops_after == ncslim.count_flops(small, (3, 32, 32)) < report.flops_before
    assert 0 < report.flops_removed < 1 and 0 < report.params_removed < 1
    assert report.to_dict()["macs_after"] == report.flops_after // 2
    assert "threshold" in str(report) and "features.1" in str(report)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert small.training == model.training
    assert next(small.parameters()).dtype == torch.float32


def test_pruned_model_trains(images):
    model = tiny("densenet", {"width": 0.25, "depth": 10}, dtype=torch.float32).train()
    small, _ = ncslim.prune_model(model, ratio=0.5)
    out = small(images(4))
    out.sum().backward()
    assert all(p.grad is not None for p in small.parameters())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, "exactly one of ratio or threshold"),
    ({"ratio": 0.5, "threshold": 0.1}, "exactly one of ratio or threshold"),
    ({"ratio": 1.0}, "prune ratio must be in \\[0, 1\\)"),
    ({"ratio": -0.1}, "prune ratio must be in \\[0, 1\\)"),
    ({"threshold": -1.0}, "threshold must be a finite number >= 0"),
    ({"ratio": 0.5, "min_channels": 0}, "min_channels must be an int >= 1"),
    ({"ratio": 0.5, "round_to": 0}, "round_to must be an int >= 1"),
])
def test_bad_prune_arguments(kwargs, match):
    model = ncslim.build_model("vgg", width=0.125, depth=11)
    with pytest.raises(ValueError, match=match):
        ncslim.prune_model(model, **kwargs)


def test_a_model_that_is_not_ours_needs_example_inputs():
    with pytest.raises(ValueError, match="needs example_inputs .* to prune a Sequential: its "
                                         "dependency graph is traced from them"):
        ncslim.prune_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), ratio=0.5)


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), [
    (3, 1, 1, 8), (3, 2, 1, 7), (1, 1, 0, 4), (3, 1, 1, 2), (5, 2, 2, 9),
])
def test_tap_coverage_makes_the_folded_constant_the_exact_spatial_mean(kernel, stride, padding,
                                                                       size):
    from ncslim.prune.compensation import _tap_coverage

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, bias=False).double()
    constant = torch.rand(4, dtype=torch.float64)
    x = constant[None, :, None, None].expand(1, 4, size, size)
    folded = (conv.weight * _tap_coverage(conv, (size, size))).sum((2, 3)) @ constant
    assert torch.allclose(conv(x).mean((0, 2, 3)), folded.detach(), atol=1e-12)


def _dead_tail_densenet() -> tuple[ncslim.SlimmableNet, ncslim.PruneReport]:
    """A DenseNet whose head drops every channel of the last layer, which nothing else reads."""
    model = tiny("densenet", {"width": 0.34, "depth": 10})
    growth = model.channels["growth"]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.abs_().add_(1.0)
        model.head.bn.weight[-growth:] = 0.0
    return model, ncslim.prune_model(model, threshold=0.5)[1]


def test_dead_stream_channels_are_removed_from_their_producer(images, monkeypatch):
    model, _ = _dead_tail_densenet()
    small, report = ncslim.prune_model(model, threshold=0.5)
    last = f"dense3.{model.channels['layers'][2] - 1}.conv"
    assert small.channels["outputs"] == {last: 1}  # a conv keeps one channel
    assert dict(small.named_modules())[last].out_channels == 1
    monkeypatch.setattr(type(small), "compact", lambda self: self)
    loose, loose_report = ncslim.prune_model(model, threshold=0.5)
    assert "outputs" not in loose.channels
    assert report.flops_after < loose_report.flops_after
    assert report.params_after < loose_report.params_after
    x = images(3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), loose(x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(small(x), masked(model, report)(x), rtol=1e-6, atol=1e-6)


def test_compacted_model_saves_loads_and_prunes_again(tmp_path, images):
    model, _ = _dead_tail_densenet()
    small, _ = ncslim.prune_model(model, threshold=0.5)
    ncslim.save_model(small, tmp_path / "m.pt")
    loaded = ncslim.load_model(tmp_path / "m.pt").double()
    x = images(2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    spread_bn(small, seed=3)
    again, report = ncslim.prune_model(small, ratio=0.4)
    with torch.no_grad():
        torch.testing.assert_close(again(x), masked(small, report)(x), rtol=1e-6, atol=1e-6)


def test_nothing_dead_means_the_same_model_object():
    model = tiny("densenet", {"width": 0.34, "depth": 10})
    assert model.compact() is model
    assert "outputs" not in model.config()["channels"]


def _size(report: ncslim.PruneReport, measure: str) -> tuple[int, int]:
    if measure == "flops":
        return report.flops_after, report.flops_before
    return report.params_after, report.params_before


@pytest.mark.parametrize(("arch", "kwargs"), TINY_MODELS[::2], ids=TINY_IDS[::2])
@pytest.mark.parametrize("measure", ["params", "flops"])
def test_prune_to_budget_keeps_the_fraction_at_the_smallest_ratio(arch, kwargs, measure):
    from ncslim.prune import prune_to_budget

    model = tiny(arch, kwargs)
    small, report = prune_to_budget(model, 0.4, measure, min_channels=1)
    after, before = _size(report, measure)
    assert after <= 0.4 * before
    assert report.params_after == ncslim.count_params(small)
    # one channel fewer removed (the rule removes int(ratio * channels)) no longer fits
    channels = sum(layer.total for layer in report.layers)
    removed = int(report.ratio * channels)
    assert removed > 0
    _, fewer = ncslim.prune_model(model, ratio=(removed - 0.5) / channels, min_channels=1,
                                  ranking=report.ranking)
    assert _size(fewer, measure)[0] > 0.4 * before


def test_prune_to_budget_passes_the_options_and_flops_is_a_wrapper():
    from ncslim.prune import prune_to_budget, prune_to_flops

    model = tiny("vgg", {"width": 0.125, "depth": 11})
    small, report = prune_to_budget(model, 0.5, "params", round_to=4, compensate=True)
    assert report.compensated and report.params_after <= 0.5 * report.params_before
    assert all(la.kept % 4 == 0 or la.kept == la.total for la in report.layers)
    _, by_flops = prune_to_flops(model, 0.5)
    _, by_budget = prune_to_budget(model, 0.5)
    assert by_flops.ratio == by_budget.ratio and by_flops.flops_after == by_budget.flops_after
    _, whole = prune_to_budget(model, 1.0, "params")
    assert whole.ratio == 0.0


@pytest.mark.parametrize(("args", "options", "match"), [
    ((0.5, "latency"), {}, "measure must be one of flops, params, got 'latency'"),
    ((0.0, "params"), {}, "--target-params \\(the fraction of parameters kept\\) must be in"),
    ((1.5, "flops"), {}, "--target-flops \\(the fraction of FLOPs kept\\) must be in"),
    ((0.01, "params"), {"min_channels": 8},
     "parameters cannot fall to 1.0% of the original \\(--target-params\\) even at ratio ~1"),
    ((0.01, "flops"), {"min_channels": 8},
     "FLOPs cannot fall to 1.0% of the original \\(--target-flops\\) even at ratio ~1"),
])
def test_prune_to_budget_errors_name_the_flag(args, options, match):
    from ncslim.prune import prune_to_budget

    model = ncslim.build_model("vgg", width=0.125, depth=11)
    with pytest.raises(ValueError, match=match):
        prune_to_budget(model, *args, **options)
