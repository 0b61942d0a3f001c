"""Pruning CNNs that are not ncslim architectures, through Torch-Pruning's dependency graph.

The models are written here (no torchvision): ResNet-18-style basic blocks and ResNet-50-style
bottlenecks with projection shortcuts, MobileNetV2-style inverted residuals with depthwise
convolutions, and an Inception-style concatenation. The oracle is independent of Torch-Pruning:
each BN of the pruned model must hold a subset of the original BN's (distinct) gammas; zeroing the
other channels' gamma and beta in the original must give the pruned model's outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ncslim
from ncslim.models.scales import find_scales

pytest.importorskip("torch_pruning")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetStyle(nn.Module):
    """ResNet-18 (basic blocks) or ResNet-50 (bottlenecks) in miniature, CIFAR stem."""

    def __init__(self, bottleneck: bool, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = width
        for stage, planes in enumerate((width, 2 * width)):
            for i in range(2):
                stride = 2 if stage and not i else 1
                if bottleneck:
                    blocks.append(Bottleneck(cin, planes, stride))
                    cin = 4 * planes
                else:
                    blocks.append(BasicBlock(cin, planes, stride))
                    cin = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Style(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(width, width, 1),
                                    InvertedResidual(width, 2 * width, 2),
                                    InvertedResidual(2 * width, 2 * width, 1))
        self.head = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 1, bias=False),
                                  nn.BatchNorm2d(4 * width), nn.ReLU6())
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


def conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class InceptionStyle(nn.Module):
    """Branches concatenated, then mixed; the classifier reads a flattened 2x2 map."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.branch1 = conv_bn(3, width, 1)
        self.branch3 = conv_bn(3, width, 3)
        self.branch5 = nn.Sequential(conv_bn(3, width // 2, 1), conv_bn(width // 2, width, 5))
        self.mix = conv_bn(3 * width, 2 * width, 1)
        self.fc = nn.Linear(2 * width * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.branch1(x), self.branch3(x), self.branch5(x)], 1)
        return self.fc(nn.functional.adaptive_avg_pool2d(self.mix(y), 2).flatten(1))


MODELS = {"resnet18": lambda: ResNetStyle(False), "resnet50": lambda: ResNetStyle(True),
          "mobilenetv2": MobileNetV2Style, "inception": InceptionStyle}


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct gammas (the oracle matches them by value) and non-trivial BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 1e-3)
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def masked_original(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """The original with every channel the pruned model lacks silenced at its BN."""
    masked = copy.deepcopy(original)
    small = dict(pruned.named_modules())
    for name, bn in masked.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        kept = small[name].weight.detach()
        hit = (bn.weight.detach()[:, None] == kept[None, :])
        assert (hit.sum(0) == 1).all(), f"{name}: pruned gammas are not a subset of the original's"
        with torch.no_grad():
            gone = ~hit.any(1)
            bn.weight[gone] = 0
            bn.bias[gone] = 0
    return masked


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_pruned_equals_the_masked_original(name, ratio):
    model = trained_like(MODELS[name]())
    before = copy.deepcopy(model.state_dict())
    small, report = ncslim.prune_model(model, ratio=ratio, example_inputs=images(1))
    x = images()
    torch.testing.assert_close(small(x), masked_original(model, small)(x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before
    assert report.removed_fraction == pytest.approx(ratio, abs=0.1)
    assert small.fc.out_features == 10  # the classifier's outputs are never pruned


def test_coupled_channels_go_together():
    """A residual stream's channels are one group, scored by the largest gamma along it."""
    model = trained_like(ResNetStyle(False))
    with torch.no_grad():  # stream channel 0: weak in the stem, strong after the first block
        model.stem[1].weight[0] = 1e-6
        model.blocks[0].bn2.weight[0] = 5.0
        model.blocks[1].bn2.weight[0] = 1e-6
    small, report = ncslim.prune_model(model, ratio=0.5, example_inputs=images(1))
    stream = next(layer for layer in report.layers if layer.name == "stem.0")
    assert 0 in stream.indices  # kept: the block needs it
    widths = {small.stem[1].num_features, small.blocks[0].bn2.num_features,
              small.blocks[1].bn2.num_features, small.blocks[2].conv1.in_channels}
    assert widths == {stream.kept}


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_min_channels_and_round_to_per_group(name):
    model = trained_like(MODELS[name]())
    small, report = ncslim.prune_model(model, ratio=0.9, min_channels=3, round_to=4,
                                       example_inputs=images(1))
    for layer in report.layers:
        assert layer.kept >= min(3, layer.total)
        assert layer.kept % 4 == 0 or layer.kept == layer.total
    x = images()
    torch.testing.assert_close(small(x), masked_original(model, small)(x), atol=1e-5, rtol=1e-5)


def test_threshold_zero_removes_exactly_the_zeroed_groups():
    model = trained_like(MobileNetV2Style())
    with torch.no_grad():  # zero channel 2 of the first expansion: its BN and the depthwise BN
        model.blocks[0].body[1].weight[2] = 0
        model.blocks[0].body[4].weight[2] = 0
        model.head[1].weight[5] = 0
    _, report = ncslim.prune_model(model, threshold=0.0, example_inputs=images(1))
    removed = {layer.name: layer.total - layer.kept for layer in report.layers if
               layer.kept < layer.total}
    assert removed == {"blocks.0.body.3": 1, "head.0": 1}


def test_ignored_layers_stay_whole_by_module_or_name():
    model = trained_like(ResNetStyle(True))
    ignored = [model.blocks[0].body[0], "blocks.1.body.3"]
    small, report = ncslim.prune_model(model, ratio=0.6, example_inputs=images(1),
                                       ignored_layers=ignored)
    assert small.blocks[0].body[0].out_channels == model.blocks[0].body[0].out_channels
    assert small.blocks[1].body[3].out_channels == model.blocks[1].body[3].out_channels
    assert {"blocks.0.body.0", "blocks.1.body.3"}.isdisjoint(la.name for la in report.layers)
    with pytest.raises(ValueError, match="ignored_layers: blocks.9 is not a layer of this model"):
        ncslim.prune_model(model, ratio=0.5, example_inputs=images(1), ignored_layers=["blocks.9"])


def test_target_flops_and_the_regularizer_work_on_other_models():
    model = trained_like(MobileNetV2Style())
    assert len(find_scales(model)) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    small, report = ncslim.prune.prune_to_flops(model, 0.5, example_inputs=images(1))
    assert report.flops_after <= 0.5 * report.flops_before < report.flops_after * 2.2
    assert small(images()).shape == (4, 10)


def test_target_params_works_on_other_models():
    model = trained_like(MobileNetV2Style())
    small, report = ncslim.prune.prune_to_budget(model, 0.5, "params",
                                                   example_inputs=images(1))
    assert report.params_after == ncslim.count_params(small) <= 0.5 * report.params_before
    channels = sum(layer.total for layer in report.layers)
    removed = int(report.ratio * channels)
    _, fewer = ncslim.prune_model(model, ratio=(removed - 0.5) / channels,
                                  example_inputs=images(1))
    assert fewer.params_after > 0.5 * report.params_before  # the smallest ratio that fits
    assert small(images()).shape == (4, 10)


class ChannelShuffle(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = conv_bn(3, 8, 3)
        self.shuffle = ChannelShuffle()
        self.second = conv_bn(8, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.second(self.shuffle(self.first(x))).mean((2, 3)))


def test_a_layer_the_graph_cannot_follow_is_named_and_can_be_ignored():
    model = trained_like(ShuffleNet())
    with pytest.raises(ValueError, match=r"the pruned ShuffleNet fails in layer shuffle "
                                         r"\(ChannelShuffle\): .*ignored_layers"):
        ncslim.prune_model(model, ratio=0.5, example_inputs=images(1))
    small, report = ncslim.prune_model(model, ratio=0.5, example_inputs=images(1),
                                       ignored_layers=["first.0"])
    assert [layer.name for layer in report.layers] == ["second.0"]
    torch.testing.assert_close(small(images()), masked_original(model, small)(images()),
                               atol=1e-5, rtol=1e-5)


def test_what_other_models_need_is_said(monkeypatch):
    model = trained_like(InceptionStyle())
    with pytest.raises(ValueError, match="compensate works for ncslim.s own architectures only"):
        ncslim.prune_model(model, ratio=0.5, compensate=True, example_inputs=images(1))
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    with pytest.raises(ValueError, match="Sequential has no prunable channels"):
        ncslim.prune_model(no_bn, ratio=0.5, example_inputs=images(1))
    with pytest.raises(ValueError, match="ignored_layers is for models that are not ncslim"):
        ncslim.prune_model(ncslim.build_model("vgg", width=0.125, depth=11), ratio=0.5,
                           ignored_layers=["features.0"])
    real = ncslim.models.graph.importlib.util.find_spec
    monkeypatch.setattr(ncslim.models.graph.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_pruning" else real(name, *a))
    with pytest.raises(ValueError, match=r"needs Torch-Pruning: pip install 'ncslim\[generic\]'"):
        ncslim.prune_model(model, ratio=0.5, example_inputs=images(1))
