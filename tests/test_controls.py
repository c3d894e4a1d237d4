"""Norm-matched random controls and the sign-flip / split-half tests for cos(v_EN, v_LOC)."""

from __future__ import annotations

import pytest
import torch

from interventions import controls as C
from interventions.config import AdditiveIntervention, InterventionConfig
from interventions.steer import steer
from interventions.vectors import SteeringVectors
from tiny_models import tiny_model


def _vectors():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.5, 3.0, 40.0, 7.0])[:, None]  # norms differ a lot across layers
    return SteeringVectors("en_transfer_ko", torch.randn(4, 32, generator=g) * scales, [2, 4, 6, 8], torch.ones(4),
                           {"method": "pca", "alpha_scale": [0.9, 0.8, 0.7, 0.6]}, positions="prompt")


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_random_control_has_the_vectors_norm_per_layer_and_is_seeded():
    sv = _vectors()
    ctl = C.random_control(sv, seed=3)
    assert ctl.layers == sv.layers and ctl.positions == "prompt" and torch.equal(ctl.alpha_scale, sv.alpha_scale)
    torch.testing.assert_close(ctl.vectors.norm(dim=-1), sv.vectors.norm(dim=-1), rtol=1e-6, atol=0)
    assert ctl.source["role"] == "control" and ctl.source["controls"] == "en_transfer_ko"
    assert ctl.name == "en_transfer_ko_random3"
    assert torch.equal(C.random_control(sv, seed=3).vectors, ctl.vectors)  # seeded
    assert not torch.equal(C.random_control(sv, seed=4).vectors, ctl.vectors)
    assert all(abs(_cos(ctl.vector(l), sv.vector(l))) < 0.8 for l in sv.layers)  # another direction
    # same strength: alpha gives the same coefficient, so the same added norm
    a, b = sv.intervention(6, alpha=1.5), ctl.intervention(6, alpha=1.5)
    assert a.coefficient == b.coefficient and a.delta().norm() == pytest.approx(float(b.delta().norm()), rel=1e-6)
    # a layer's control does not depend on which other layers are drawn
    sub = SteeringVectors("x", sv.vectors[2:], [6, 8], torch.ones(2), {"method": "mean_difference"})
    assert torch.equal(C.random_control(sub, seed=3).vector(6), ctl.vector(6))


def test_random_control_of_tensors():
    v = torch.randn(16, dtype=torch.float64) * 5
    r = C.random_control(v, seed=1)
    assert r.dtype == v.dtype and r.norm() == pytest.approx(float(v.norm()), rel=1e-12)
    assert torch.equal(r, C.random_control(v, seed=1)) and not torch.equal(r, C.random_control(v, seed=2))
    m = torch.randn(3, 16) * torch.tensor([[1.0], [10.0], [100.0]])
    rm = C.random_control(m, seed=1)
    torch.testing.assert_close(rm.norm(dim=-1), m.norm(dim=-1), rtol=1e-6, atol=0)
    assert C.random_control(torch.zeros(8), seed=0).norm() == 0.0
    with pytest.raises(ValueError, match="vector"):
        C.random_control(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="seed"):
        C.random_control(v, seed=1.5)


def test_control_intervention_same_layer_strength_and_positions():
    sv = _vectors()
    inter = sv.intervention(4, alpha=2.0)
    ctl = C.control_intervention(inter, seed=7)
    assert (ctl.layer, ctl.coefficient, ctl.positions, ctl.component) == (4, inter.coefficient, "prompt",
                                                                         "block_output")
    assert ctl.name == "en_transfer_ko_control" and ctl.source["role"] == "control"
    assert ctl.source["controls"] == "en_transfer_ko" and ctl.source["alpha"] == 2.0
    assert ctl.vector.norm() == pytest.approx(float(inter.vector.norm()), rel=1e-6)
    assert torch.equal(ctl.vector, C.random_control(sv, seed=7).vector(4))  # the same draw as the vectors' control
    model = tiny_model("llama")  # 4 layers: the pair at layer 2 is a valid config (distinct names)
    low = sv.intervention(2, alpha=1.0)
    with steer(model, InterventionConfig.for_model(model, [low, C.control_intervention(low, seed=7)])):
        pass
    with pytest.raises(ValueError, match="AdditiveIntervention"):
        C.control_intervention("not an intervention")
    assert isinstance(ctl, AdditiveIntervention)


def _diffs(direction, n, noise, seed, anisotropic=None):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, direction.shape[0], generator=g) * noise
    if anisotropic is not None:  # a shared noise axis, as in residual streams
        d = d + torch.randn(n, 1, generator=g) * anisotropic[None]
    return d + direction[None]


def test_cosine_test_detects_a_shared_direction():
    u = torch.zeros(64)
    u[0] = 1.0
    res = C.cosine_test(_diffs(u, 40, 0.15, 0), _diffs(u, 30, 0.15, 1), n_permutations=500, seed=0)
    assert res["cosine"] > 0.8 and res["p_value"] == pytest.approx(1 / 501)
    assert res["reliability_en"] > 0.9 and res["reliability_loc"] > 0.9 and res["ceiling"] > 0.9
    assert res["null_abs_q95"] < res["cosine"] and (res["n_en"], res["n_loc"]) == (40, 30)
    assert C.cosine_test(_diffs(u, 40, 0.15, 0), _diffs(u, 30, 0.15, 1), n_permutations=500, seed=0) == res


def test_cosine_test_null_respects_anisotropy():
    """Two sets with no consistent direction but a shared noise axis: a sizeable cosine, yet not significant."""
    axis = torch.zeros(64)
    axis[5] = 3.0
    zero = torch.zeros(64)
    res = C.cosine_test(_diffs(zero, 40, 0.3, 2, axis), _diffs(zero, 40, 0.3, 3, axis), n_permutations=1000, seed=1)
    assert abs(res["cosine"]) > 0.3 and res["p_value"] > 0.05
    assert res["null_abs_q95"] > 0.2  # far above the isotropic |cos| of random 64-d directions


def test_split_half_reliability_and_bad_input():
    u = torch.ones(16)
    assert C.split_half_reliability(_diffs(u, 50, 0.1, 0))["reliability"] > 0.99
    noisy = C.split_half_reliability(_diffs(torch.zeros(16), 50, 1.0, 0))
    assert noisy["split_half"] < 0.3 and noisy["n_items"] == 50
    with pytest.raises(ValueError, match="en_diffs"):
        C.cosine_test(torch.zeros(1, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="hidden size"):
        C.cosine_test(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="n_permutations"):
        C.cosine_test(torch.randn(3, 4), torch.randn(3, 4), n_permutations=0)
