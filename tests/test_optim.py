"""Optimizers by optim.name; MAE's LARS step against its formula, and why timm's Lars is not used;
the epochs / blr rule of the engine."""

import pytest
import timm.optim
import torch
from omegaconf import OmegaConf
from torch import nn

from backbones import VisionTransformer
from benchmarks.config import ConfigError
from benchmarks.engine.optim import LARS, build_optimizer
from benchmarks.engine.schedule import resolve_epochs


def mae_lars_step(weight, grad, mu, lr, wd, momentum=0.9, trust=0.001):
    """MAE's util/lars.py for one parameter, written out: (new weight, new momentum buffer)."""
    if weight.ndim > 1:
        grad = grad + wd * weight
        w_norm, g_norm = weight.norm(), grad.norm()
        if w_norm > 0 and g_norm > 0:
            grad = grad * (trust * w_norm / g_norm)
    mu = momentum * mu + grad
    return weight - lr * mu, mu


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lars_is_mae_s_formula_over_two_steps(wd):
    torch.manual_seed(0)
    linear = nn.Linear(6, 3)
    params = [linear.weight, linear.bias]
    optimizer = LARS(params, lr=0.5, weight_decay=wd)
    want = [(p.detach().clone(), torch.zeros_like(p)) for p in params]
    for _ in range(2):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        want = [mae_lars_step(w, g, mu, 0.5, wd) for (w, mu), g in zip(want, grads, strict=True)]
        for p, (w, _) in zip(params, want, strict=True):
            torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-7)
    # the bias (1-D) took the plain gradient: its step is lr * mu, not trust-scaled (about 1000x larger)
    assert (want[1][0] - linear.bias).abs().max() < 1e-6


def test_timm_lars_computes_another_step():
    """timm's Lars adapts every parameter or none: with MAE's linear-probe settings (wd 0) it does not
    adapt the weight at all; with always_adapt it also scales the bias. MAE adapts the weight only."""
    torch.manual_seed(0)
    results = {}
    for name, make in {
        "mae": lambda ps: LARS(ps, lr=0.5),
        "timm": lambda ps: timm.optim.Lars(ps, lr=0.5, momentum=0.9),
        "timm_always": lambda ps: timm.optim.Lars(ps, lr=0.5, momentum=0.9, always_adapt=True),
    }.items():
        torch.manual_seed(0)
        linear = nn.Linear(6, 3)
        linear.weight.grad, linear.bias.grad = torch.randn(3, 6), torch.randn(3)
        make(list(linear.parameters())).step()
        results[name] = (linear.weight.detach().clone(), linear.bias.detach().clone())
    (w, b), (w_t, b_t), (w_a, b_a) = results["mae"], results["timm"], results["timm_always"]
    assert not torch.allclose(w, w_t) and torch.allclose(b, b_t)  # timm at wd 0: the weight unadapted
    assert torch.allclose(w, w_a, rtol=1e-5) and not torch.allclose(b, b_a)  # always_adapt: the bias too


def optim_cfg(name, **extra):
    return OmegaConf.create(
        {
            "optim": {
                "name": name,
                "lr": 0.1,
                "betas": [0.9, 0.999],
                "weight_decay": 0.05,
                "layer_decay": 0.75,
                "wd_policy": "mae",
                "momentum": 0.9,
                **extra,
            }
        }
    )


def test_optimizer_by_name_over_the_layer_decay_groups():
    encoder = VisionTransformer(embed_dim=12, depth=2, num_heads=2, img_size=32)
    model = nn.ModuleDict({"encoder": encoder, "head": nn.Linear(12, 3)})
    kinds = {name: type(build_optimizer(optim_cfg(name), model, encoder)) for name in ("adamw", "sgd", "lars")}
    assert kinds == {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "lars": LARS}
    groups = build_optimizer(optim_cfg("lars"), model, encoder).param_groups
    assert sorted({g["lr_scale"] for g in groups})[-1] == 1.0 and min(g["lr_scale"] for g in groups) < 0.5
    encoder.requires_grad_(False)  # a linear probe: only the head is trained
    probe = build_optimizer(optim_cfg("lars"), model, encoder)
    assert sum(len(g["params"]) for g in probe.param_groups) == 2
    with pytest.raises(ConfigError, match="optim.name='lamb'"):
        build_optimizer(optim_cfg("lamb"), model, encoder)


def test_epochs_and_blr_become_iterations_and_lr():
    cfg = OmegaConf.create(
        {
            "optim": {"blr": 1e-3, "lr": None},
            "train": {
                "images_per_batch": 1024,
                "epochs": 3,
                "warmup_epochs": 1,
                "iterations": None,
                "schedule": {"name": "cosine", "warmup_iters": 0},
            },
        }
    )
    resolve_epochs(cfg, num_images=5000)  # floor(5000 / 1024) = 4 iterations an epoch (MAE drops the last batch)
    assert cfg.optim.lr == pytest.approx(4e-3) and cfg.train.iterations == 12
    assert cfg.train.schedule.warmup_iters == 4 and cfg.train.schedule.cosine_begin == 4
    with pytest.raises(ConfigError, match="1000 images.*one batch of 1024"):
        resolve_epochs(cfg, num_images=1000)
    fixed = OmegaConf.create({"optim": {"lr": 0.1}, "train": {"images_per_batch": 8, "iterations": 7}})
    resolve_epochs(fixed, num_images=100)  # an iteration-counted recipe is left as it is
    assert fixed.optim.lr == 0.1 and fixed.train.iterations == 7
