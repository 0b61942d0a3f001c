"""VCP, the Bayesian baseline: the KL term, sampling, the pruning rule, the pipeline around it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import spread_bn
from torch import nn

import ncslim
import ncslim.cli
from ncslim.sparsity.vcp import VariationalScales, vcp_scores

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")
TINY = ["--dataset", "fashion-mnist", "--arch", "vgg", "--depth", "11", "--width", "0.0625",
        "--limit-train", "192", "--limit-test", "96", "--batch-size", "32", "--epochs", "2",
        "--device", "cpu", "--penalty", "vcp", "--vcp-kl-weight", "1e-4"]


def tiny_model(arch: str = "vgg", **kwargs) -> nn.Module:
    model = ncslim.build_model(arch, num_classes=4, in_channels=3, width=0.125,
                               depth=11 if arch != "densenet" else 10, **kwargs)
    return spread_bn(model)


def test_kl_value_and_gradient():
    model = tiny_model()
    vcp = VariationalScales(model, kl_weight=0.3, sigma_init=0.2)
    with torch.no_grad():
        for s in vcp.log_sigmas:
            s.uniform_(-3, 0)
    mu = torch.cat([m.detach().flatten() for m in vcp.mus]).double()
    sigma = torch.cat([s.detach().exp().flatten() for s in vcp.log_sigmas]).double()
    expected = 0.3 * (mu ** 2 / (2 * sigma ** 2)).sum()
    kl = vcp.kl()
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)
    kl.backward()
    grad_mu = torch.cat([m.grad.flatten() for m in vcp.mus]).double()
    grad_log_sigma = torch.cat([s.grad.flatten() for s in vcp.log_sigmas]).double()
    torch.testing.assert_close(grad_mu, 0.3 * mu / sigma ** 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_log_sigma, -0.3 * mu ** 2 / sigma ** 2, rtol=1e-5, atol=1e-7)
    assert vcp.penalty_value().item() == pytest.approx(kl.item())


def test_training_samples_gamma_and_evaluation_uses_mu(images):
    model = tiny_model()
    plain = copy.deepcopy(model)
    vcp = VariationalScales(model, kl_weight=1e-3, sigma_init=0.3, seed=5)
    x = images(4)
    model.eval()
    plain.eval()
    assert torch.equal(model(x), plain(x))  # evaluation: gamma = mu, exactly
    model.train()
    plain.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first, second)  # a fresh sample each step
    vcp.reseed(5, 0)
    again = model(x)
    vcp.reseed(5, 0)
    torch.testing.assert_close(model(x), again, rtol=0, atol=0)  # noise from (seed, epoch)
    # the first BN's running statistics are the plain model's (the noise acts after them;
    # later BNs see inputs that earlier noise changed)
    modules, plain_modules = dict(model.named_modules()), dict(plain.named_modules())
    for _ in range(4):
        plain(x)
    first_bn = vcp.names[0]
    for stat in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(modules[first_bn], stat),
                                   getattr(plain_modules[first_bn], stat))
    for name in vcp.names:
        assert modules[name].num_batches_tracked == plain_modules[name].num_batches_tracked
    vcp.remove()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # sampling is gone


def test_one_sample_is_mu_plus_sigma_eps_per_channel(images):
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.1, 0.9, 5))
    net = nn.Sequential(bn)
    vcp = VariationalScales(net, kl_weight=0.0, sigma_init=0.5, seed=0)
    x = images(3)[:, :1].expand(3, 5, 32, 32).contiguous() + torch.arange(5.0).view(1, 5, 1, 1)
    vcp.reseed(0, 0)
    eps = torch.randn(5, generator=torch.Generator().manual_seed(7))  # what reseed(0, 0) draws
    expected = F.batch_norm(x, None, None, bn.weight + 0.5 * eps, bn.bias, True)
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("arch", ["vgg", "densenet", "resnet"])
def test_the_pruning_rule_and_the_pruned_model_equals_the_masked_original(images, arch):
    model = tiny_model(arch).eval()
    vcp = VariationalScales(model, kl_weight=1e-4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mu, log_sigma in zip(vcp.mus, vcp.log_sigmas):
            mu.copy_(torch.rand(mu.shape, generator=gen) * 0.04)  # |mu| around the 0.02 line
            log_sigma.copy_(torch.log(torch.rand(mu.shape, generator=gen) * 0.02 + 1e-4))
    vcp.remove()
    scores = vcp.scores()
    sigmas = vcp.sigmas()
    rule = {n: (mu.detach().abs() <= 0.02) & (sigmas[n] <= 0.01)
            for n, mu in zip(vcp.names, vcp.mus)}
    small, report = ncslim.prune_model(model, threshold=1.0, scores=scores, min_channels=1)
    removed = {layer.name: layer.total - layer.kept for layer in report.layers}
    assert removed == {n: int(r.sum()) for n, r in rule.items() if n in removed}
    assert sum(removed.values()) > 0 and report.ratio is None
    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, gone in rule.items():
            modules[name].weight[gone] = 0
            modules[name].bias[gone] = 0
    x = images(3)
    torch.testing.assert_close(small(x), masked(x), atol=1e-5, rtol=1e-5)


def test_scores_are_checked():
    model = tiny_model()
    with pytest.raises(ValueError, match="scores must hold .* values for BN features.1"):
        ncslim.prune_model(model, threshold=1.0, scores={"features.1": torch.ones(3)})
    with pytest.raises(ValueError, match="vcp thresholds must be > 0"):
        vcp_scores({}, {}, 0.0, 0.01)
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
        VariationalScales(model, kl_weight=math.nan)


def test_other_models_too(images):
    pytest.importorskip("torch_pruning")
    from test_generic import MobileNetV2Style, masked_original, trained_like

    model = trained_like(MobileNetV2Style())
    vcp = VariationalScales(model, kl_weight=1e-4)
    with torch.no_grad():
        for mu in vcp.mus:
            mu[::3] = 1e-3  # every third channel: small mu, sigma at its initial 0.01
        for log_sigma in vcp.log_sigmas:
            log_sigma.fill_(math.log(0.005))
    vcp.remove()
    x = torch.randn(2, 3, 16, 16)
    small, report = ncslim.prune_model(model, threshold=1.0, scores=vcp.scores(),
                                       example_inputs=x[:1])
    assert report.removed_fraction > 0.2
    torch.testing.assert_close(small(x), masked_original(model, small)(x), atol=1e-5, rtol=1e-5)


@needs_fashion
def test_run_with_vcp_end_to_end_then_prune_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert ncslim.cli.main(["run", *TINY, "--finetune-epochs", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["penalty"] == "vcp" and results["prune"]["ratio"] is None
    assert results["prune"]["threshold"] == 1.0
    assert 0.0 <= results["accuracy"]["pruned"] <= 1.0
    model = ncslim.load_model(out / "train" / "last.pt")  # the sigmas travel with the model
    assert set(model.channel_state["vcp_sigma"]) == {s.bn for s in model.prune_slots()}
    state = ncslim.run.train.load_checkpoint(out / "train" / "last.pt")
    assert set(state["method"]["log_sigma"]) == set(model.channel_state["vcp_sigma"])
    # ncslim prune applies the same rule to the saved model, and refuses a model without sigmas
    assert ncslim.cli.main(["prune", "--checkpoint", str(out / "train" / "last.pt"),
                            "--penalty", "vcp", "--out", str(tmp_path / "p")]) == 0
    again = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert again["params_after"] == results["params"]["pruned"]
    capsys.readouterr()
    assert ncslim.cli.main(["prune", "--checkpoint", str(out / "train" / "last.pt"),
                            "--penalty", "vcp", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("--- VCP rule\n")
    plain = tmp_path / "plain.pt"
    ncslim.save_model(ncslim.build_model("vgg", depth=11, width=0.0625, in_channels=1), plain)
    capsys.readouterr()
    assert ncslim.cli.main(["prune", "--checkpoint", str(plain), "--penalty", "vcp",
                            "--out", str(tmp_path / "q")]) == 2
    assert "needs the sigmas of a model trained with --penalty vcp" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--vcp-kl-weight", "-1"], "--vcp-kl-weight must be a finite number >= 0"),
    (["--vcp-sigma-init", "0"], "--vcp-sigma-init must be a number > 0"),
    (["--vcp-mu", "nan"], "--vcp-mu must be a number > 0"),
    (["--sync-bn"], "--penalty vcp samples each BN scale itself and does not work with"),
])
def test_bad_vcp_settings_are_one_line(tmp_path, capsys, argv, message):
    code = ncslim.cli.main(["run", "--penalty", "vcp", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err


AVERAGE_CHECK = """
import torch, torch.distributed as dist
import ncslim
from ncslim.sparsity.vcp import VariationalScales

dist.init_process_group("gloo")
rank = dist.get_rank()
model = ncslim.build_model("vgg", num_classes=4, width=0.125, depth=11)
vcp = VariationalScales(model, kl_weight=1e-3)
x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(rank))
(model(x).square().mean() + vcp.kl()).backward()
mine = torch.cat([s.grad.flatten() for s in vcp.log_sigmas])
vcp.average_gradients()
averaged = torch.cat([s.grad.flatten() for s in vcp.log_sigmas])
every = [torch.zeros_like(mine) for _ in range(2)]
dist.all_gather(every, mine)
torch.testing.assert_close(averaged, (every[0] + every[1]) / 2)
print(f"ok {rank}")  # one piece: the regex copes with interleaved lines
"""


def test_log_sigma_gradients_are_averaged_over_processes(tmp_path):
    from test_distributed import passes_on_two_ranks

    assert passes_on_two_ranks(tmp_path, AVERAGE_CHECK)


@needs_fashion
def test_a_sweep_prunes_vcp_runs_once_by_its_rule_and_reports_them(tmp_path):
    from test_sweep import write_sweep

    from ncslim.report import report

    path = write_sweep(tmp_path, '[[grid]]\npenalty = "vcp"\nvcp_kl_weight = 1e-4\n'
                                 '[[grid]]\npenalty = "l1"\n')
    assert ncslim.cli.main(["sweep", str(path)]) == 0
    runs = tmp_path / "runs"
    assert sorted(p.parent.name for p in (runs / "vcp_kl_weight0.0001_s0").rglob(
        "results.json")) == ["vcp-rule"]
    assert len(list((runs / "l1_s0").rglob("results.json"))) == 2  # ratios 0.3 and 0.6
    summary = report(runs, tmp_path / "report")["markdown"].read_text()
    assert "| vcp(kl=0.0001 sigma0=0.01) | — | VCP rule | 1 |" in summary
