"""Optimizer groups (decay on kernels only, backbone lr multiplier) and the lr schedule."""

from __future__ import annotations

import pytest
import torch

import cmt_deeplab
from cmt_deeplab.engine.config import OptimizerSection, ScheduleSection
from cmt_deeplab.engine.optim import (
    build_optimizer,
    build_scheduler,
    parameter_groups,
    poly_lr_factor,
)


def test_poly_with_linear_warmup_known_values():
    # deeplab2: warm-up step/warmup x lr, then PolynomialDecay over the whole run.
    assert poly_lr_factor(0, 1000, 100) == 0.0
    assert poly_lr_factor(50, 1000, 100) == pytest.approx(0.5)
    assert poly_lr_factor(99, 1000, 100) == pytest.approx(0.99)
    assert poly_lr_factor(100, 1000, 100) == pytest.approx(0.9 ** 0.9)  # 0.90953
    assert poly_lr_factor(500, 1000, 100) == pytest.approx(0.5 ** 0.9)  # 0.53589
    assert poly_lr_factor(1000, 1000, 100) == 0.0
    assert poly_lr_factor(2000, 1000, 100) == 0.0
    assert poly_lr_factor(0, 1000, 0) == 1.0
    assert poly_lr_factor(500, 1000, 0, power=1.0, end_factor=0.1) == pytest.approx(0.55)


def _tiny():
    return cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=8, num_thing_classes=4,
                                   num_slots=8)


def test_weight_decay_on_kernels_only_and_backbone_multiplier():
    model = _tiny()
    groups = {g["name"]: g for g in parameter_groups(model, 1e-3, 0.05, 0.1)}
    assert set(groups) == {"backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}

    def members(group):
        return {names[id(p)] for p in groups[group]["params"]}

    # From scratch nothing is pretrained: the multiplier slows no tensor.
    assert groups["backbone_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["head_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    assert groups["head_decay"]["weight_decay"] == 0.05
    assert "backbone.stem.0.0.weight" in members("backbone_decay")  # conv kernel
    assert "backbone.stem.0.1.weight" in members("backbone_no_decay")  # BN gamma
    no_decay = members("backbone_no_decay") | members("head_no_decay")
    assert "centers.weight" in no_decay  # slot table
    assert any(n.endswith("query_rpe") for n in no_decay)  # relative position tables
    assert any(n.endswith("class_head.bias") for n in no_decay)
    assert any(n.endswith("class_head.weight") for n in members("head_decay"))  # linear kernel
    assert not any(n.startswith("backbone.") for n in members("head_decay") | members(
        "head_no_decay"))
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))


def test_backbone_multiplier_applies_to_pretrained_tensors_only():
    model = _tiny()
    stem = {n for n, _ in model.named_parameters() if n.startswith("backbone.stem.")}
    groups = {g["name"]: g for g in parameter_groups(model, 1e-3, 0.05, 0.1, pretrained=stem)}
    assert set(groups) == {"pretrained_backbone_decay", "pretrained_backbone_no_decay",
                           "backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    slowed = {names[id(p)] for key in ("pretrained_backbone_decay", "pretrained_backbone_no_decay")
              for p in groups[key]["params"]}
    assert slowed == stem
    assert groups["pretrained_backbone_decay"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone_decay"]["lr"] == pytest.approx(1e-3)  # encoder tensors left new
    # A pretrained head tensor is not slowed: the multiplier is the encoder's.
    head = {n for n, _ in model.named_parameters() if n.startswith("predictor.")}
    groups = {g["name"]: g for g in parameter_groups(model, 1e-3, 0.05, 0.1, pretrained=head)}
    assert not any(name.startswith("pretrained") for name in groups)


def test_adam_has_no_decay_and_scheduler_follows_the_factor():
    model = _tiny()
    backbone = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    optimizer = build_optimizer(model, OptimizerSection(name="adam", lr=2e-3,
                                                        backbone_lr_multiplier=0.5), backbone)
    assert isinstance(optimizer, torch.optim.Adam)
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    scheduler = build_scheduler(optimizer, ScheduleSection(warmup_steps=4, power=0.9), 20)
    seen = []
    for _ in range(8):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for step, lrs in enumerate(seen):
        factor = poly_lr_factor(step, 20, 4, 0.9)
        expected = [2e-3 * factor * (0.5 if g["name"].startswith("pretrained") else 1.0)
                    for g in optimizer.param_groups]
        assert lrs == pytest.approx(expected)
    assert scheduler.state_dict()["last_epoch"] == 8
    adamw = build_optimizer(model, OptimizerSection(name="adamw", eps=1e-7, betas=[0.8, 0.9]))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.8, 0.9) and adamw.defaults["eps"] == 1e-7
