from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import spread_bn
from test_penalties import CASE_IDS, CASES
from torch import nn

import ncslim

# Every registered penalty with each parameter set of its line in test_penalties.TABLE.
PENALTY_CASES, PENALTY_IDS = CASES, CASE_IDS


def tiny_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return spread_bn(ncslim.build_model("resnet", num_classes=3, width=0.25, depth=11), seed)


def backward(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    y = torch.randint(0, 3, (4,), generator=gen)
    F.cross_entropy(model(x), y).backward()


def bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize(("name", "params"), PENALTY_CASES, ids=PENALTY_IDS)
def test_subgradient_equals_the_per_layer_update(name, params):
    penalty = ncslim.make_penalty(name, lam=0.3, **params)
    model = tiny_resnet()
    backward(model)
    expected = [bn.weight.grad + penalty.grad(bn.weight.detach()) for bn in bns(model)]
    others = {n: p.grad.clone() for n, p in model.named_parameters() if not n.endswith("weight")}
    ncslim.SparsityRegularizer(model, penalty).apply_gradient()
    for bn, want in zip(bns(model), expected):  # vectorised pow may differ by one ulp
        torch.testing.assert_close(bn.weight.grad, want, rtol=1e-6, atol=1e-7)
    for n, p in model.named_parameters():  # nothing but the gammas is touched
        if n in others:
            assert torch.equal(p.grad, others[n])


@pytest.mark.parametrize(("name", "params"), PENALTY_CASES, ids=PENALTY_IDS)
def test_proximal_step_equals_per_layer_prox_and_leaves_exact_zeros(name, params):
    penalty = ncslim.make_penalty(name, lam=2.0, **params)
    model = tiny_resnet()
    lr = 0.1
    expected = [penalty.prox(bn.weight.detach(), lr) for bn in bns(model)]
    reg = ncslim.SparsityRegularizer(model, penalty, mode="proximal")
    reg.proximal_step(lr)
    for bn, want in zip(bns(model), expected):
        torch.testing.assert_close(bn.weight.detach(), want, rtol=1e-6, atol=1e-7)
    gammas = reg.scales()
    assert (gammas == 0).sum() > 0.1 * gammas.numel()
    small, report = ncslim.prune_model(model, threshold=0.0, min_channels=1)
    assert report.removed_fraction == pytest.approx(float((gammas == 0).float().mean()), abs=0.02)


def test_penalty_value_sums_every_layer():
    penalty = ncslim.make_penalty("tl1", lam=1e-2, a=0.5)
    model = tiny_resnet()
    reg = ncslim.SparsityRegularizer(model, penalty)
    want = sum(penalty.value(bn.weight.detach()).sum() for bn in bns(model))
    assert reg.penalty_value().shape == ()
    assert torch.allclose(reg.penalty_value(), want)


def test_amp_grad_scaler_order_keeps_the_penalty_strength():
    """After scaler.unscale_(opt) the penalty acts on true gradients; before it, it would be
    divided by the loss scale. Same update as without AMP only in the documented order."""
    penalty = ncslim.make_penalty("l1", lam=1e-2)

    def run(order: str) -> torch.Tensor:
        model = tiny_resnet()
        reg = ncslim.SparsityRegularizer(model, penalty)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=order != "plain")
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 3, (4,), generator=gen)
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if order == "wrong":
            reg.apply_gradient()
        scaler.unscale_(opt)
        if order != "wrong":
            reg.apply_gradient()
        scaler.step(opt)
        scaler.update()
        return torch.cat([bn.weight.detach() for bn in bns(model)])

    plain, documented, wrong = run("plain"), run("documented"), run("wrong")
    assert torch.allclose(documented, plain, atol=1e-6)
    assert not torch.allclose(wrong, plain, atol=1e-4)


def test_param_groups_and_gamma_weight_decay():
    model = tiny_resnet()
    penalty = ncslim.make_penalty("l1", lam=1e-4)
    groups = ncslim.SparsityRegularizer(model, penalty, decay_gammas=False).param_groups(1e-4)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert {id(bn.weight) for bn in bns(model)} == {id(p) for p in groups[1]["params"]}
    decayed = ncslim.SparsityRegularizer(model, penalty).param_groups(1e-4)
    assert decayed[1]["weight_decay"] == 1e-4


def test_layer_selection():
    model = tiny_resnet()
    penalty = ncslim.make_penalty("l1", lam=1e-4)
    reg = ncslim.SparsityRegularizer(model, penalty, layers=["head.bn", "layer1.0.bn2"])
    assert reg.names == ["head.bn", "layer1.0.bn2"]
    reg = ncslim.SparsityRegularizer(model, penalty, layers=lambda name, m: "layer3" in name)
    assert reg.names and all("layer3" in n for n in reg.names)
    with pytest.raises(ValueError, match="not affine BatchNorm layers"):
        ncslim.SparsityRegularizer(model, penalty, layers=["fc"])
    with pytest.raises(ValueError, match="no BatchNorm"):
        ncslim.SparsityRegularizer(nn.Linear(2, 2), penalty)


def test_wrong_call_for_the_mode_and_bad_mode():
    model = tiny_resnet()
    penalty = ncslim.make_penalty("l1", lam=1e-4)
    with pytest.raises(RuntimeError, match="proximal_step"):
        ncslim.SparsityRegularizer(model, penalty, mode="proximal").apply_gradient()
    with pytest.raises(RuntimeError, match="apply_gradient"):
        ncslim.SparsityRegularizer(model, penalty).proximal_step(0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        ncslim.SparsityRegularizer(model, penalty, mode="prox")
    with pytest.raises(TypeError, match="make_penalty"):
        ncslim.SparsityRegularizer(model, "l1")


def test_layer_without_gradient_gets_the_penalty_alone():
    model = tiny_resnet()
    penalty = ncslim.make_penalty("l1", lam=0.5)
    reg = ncslim.SparsityRegularizer(model, penalty)
    reg.apply_gradient()  # no backward at all: every .grad is None
    for bn in bns(model):
        assert torch.equal(bn.weight.grad, penalty.grad(bn.weight.detach()))


def test_follows_the_model_to_another_dtype():
    model = tiny_resnet()
    penalty = ncslim.make_penalty("l1", lam=0.5)
    reg = ncslim.SparsityRegularizer(model, penalty, mode="proximal")
    reg.proximal_step(0.1)
    model.double()
    reg.proximal_step(0.1)
    assert reg.scales().dtype == torch.float64


def test_works_through_distributed_data_parallel(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = tiny_resnet()
        reference = tiny_resnet()
        ddp = nn.parallel.DistributedDataParallel(model)
        penalty = ncslim.make_penalty("tl1", lam=0.1)
        reg = ncslim.SparsityRegularizer(ddp, penalty)
        assert reg.names == ncslim.SparsityRegularizer(reference, penalty).names
        backward(ddp)
        reg.apply_gradient()
        backward(reference)
        ncslim.SparsityRegularizer(reference, penalty).apply_gradient()
        for a, b in zip(bns(model), bns(reference)):
            assert torch.allclose(a.weight.grad, b.weight.grad, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_grad_floor_bounds_the_subgradient_below_it_and_is_exact_above():
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.0, 1e-30, -0.005, 0.01, 0.2, -0.5]))
    penalty = ncslim.make_penalty("lp", lam=0.1, p=0.5)
    reg = ncslim.SparsityRegularizer(nn.Sequential(bn), penalty)
    reg.grad_floor = 0.01
    bn.weight.grad = torch.zeros(6)
    reg.apply_gradient()
    at_floor = float(penalty.grad(torch.tensor(0.01)))
    expected = torch.tensor([0.0, at_floor * 1e-28, -at_floor / 2, at_floor,
                             float(penalty.grad(torch.tensor(0.2))),
                             float(penalty.grad(torch.tensor(-0.5)))])
    torch.testing.assert_close(bn.weight.grad, expected)
