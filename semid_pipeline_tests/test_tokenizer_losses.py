"""HiD-VAE and CAT-ID2 loss terms on tiny tensors, against hand-computed values."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semid_pipeline.core.tokenizers.supervision import (
    build_tag_vocab,
    cluster_scale_constraint_loss,
    dispersion_loss,
    focal_cross_entropy,
    heldout_mask,
    hierarchical_class_constraint_loss,
    tag_alignment_loss,
    uniqueness_loss,
)


def test_uniqueness_zero_without_collisions_and_positive_for_colliding_similar_latents():
    z = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    distinct = torch.tensor([[0, 1], [0, 2], [1, 1]])
    assert uniqueness_loss(z, distinct, margin=0.9).item() == 0.0
    colliding = torch.tensor([[0, 1], [0, 1], [1, 1]])
    cos = F.cosine_similarity(z[0:1], z[1:2]).item()
    # pairs (0,1) and (1,0): mean of max(0, cos - 0.9) twice
    assert uniqueness_loss(z, colliding, margin=0.9).item() == pytest.approx(cos - 0.9, rel=1e-5)
    # dissimilar colliding latents (cos 0 < margin) cost nothing
    assert uniqueness_loss(z[[0, 2]], torch.tensor([[3, 3], [3, 3]]), margin=0.9).item() == 0.0
    # and the gradient pushes the colliding pair apart
    zg = z.clone().requires_grad_(True)
    uniqueness_loss(zg, colliding, 0.9).backward()
    assert zg.grad[0].abs().sum() > 0 and zg.grad[2].abs().sum() == 0


def test_cluster_scale_kl_zero_for_uniform_and_matches_hand_value():
    # equal distances -> softmax uniform -> mean uniform -> both KLs zero
    assert cluster_scale_constraint_loss(torch.zeros(5, 4)).item() == pytest.approx(0.0, abs=1e-7)
    # two items, both certain of code 0 among K=2: q ~ (1, 0) -> KL(q||U) = log 2, KL(U||q) large
    d = torch.tensor([[0.0, 10.0], [0.0, 10.0]])
    q = torch.softmax(-d, -1).mean(0)
    expected = float((q * (q / 0.5).log()).sum() + (0.5 * (0.5 / q).log()).sum())
    assert cluster_scale_constraint_loss(d).item() == pytest.approx(expected, rel=1e-5)
    assert expected > math.log(2)


def test_tag_alignment_is_info_nce_over_labelled_items():
    zq = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    tags = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    labels = torch.tensor([0, 1, -1])  # third item unlabelled: left out
    tau = 0.5
    # cos = identity on the two kept items: loss = -log(e^{2} / (e^{2} + e^{0}))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert tag_alignment_loss(zq, tags, labels, tau).item() == pytest.approx(expected, rel=1e-5)
    assert tag_alignment_loss(zq, tags, torch.tensor([-1, -1, -1]), tau).item() == 0.0


def test_hcc_uses_hard_negatives_from_the_same_parent():
    # 4 items at level 2: classes (a, a, b, c); parents (P, P, P, Q). Anchor 0's hard negative is item 2
    # (same parent P, other class); item 3 (other parent) must not enter its denominator.
    r = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    parents = torch.tensor([0, 0, 0, 1])
    tau = 1.0
    rn = F.normalize(r, dim=-1)
    s = rn @ rn.T
    # positives: (0,1) and (1,0); for both anchors the hard negative set is {2}
    l01 = -(s[0, 1] - torch.logaddexp(s[0, 1], s[0, 2]))
    l10 = -(s[1, 0] - torch.logaddexp(s[1, 0], s[1, 2]))
    expected = float((l01 + l10) / 2)
    assert hierarchical_class_constraint_loss(r, labels, parents, tau, hard_negatives=True).item() == pytest.approx(expected, rel=1e-5)
    # without hard negatives, item 3 (identical to the anchor: a very hard negative) raises the loss
    soft = hierarchical_class_constraint_loss(r, labels, parents, tau, hard_negatives=False).item()
    assert soft > expected
    # no positives at all -> zero
    assert hierarchical_class_constraint_loss(r, torch.tensor([0, 1, 2, 3]), None, tau).item() == 0.0


def test_dispersion_and_focal_loss_values():
    x = torch.eye(3)
    # perfect reconstructions, orthogonal inputs: -log(e^{1/t} / (e^{1/t} + 2))
    t = 0.5
    assert dispersion_loss(x, x, t).item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2)), rel=1e-5)
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, -1])
    p = math.exp(2) / (math.exp(2) + 1)
    assert focal_cross_entropy(logits, target, 0.0).item() == pytest.approx(-math.log(p), rel=1e-5)
    assert focal_cross_entropy(logits, target, 2.0).item() == pytest.approx(-((1 - p) ** 2) * math.log(p), rel=1e-5)


def test_tag_vocab_levels_parents_and_rare_filter():
    paths = [["A", "x", "1"], ["A", "x", "2"], ["A", "y"], ["B"], [], ["A", "x", "1"]]
    v = build_tag_vocab(paths, n_levels=3)
    assert v.keys[0] == ["A", "B"] and v.keys[1] == ["A > x", "A > y"] and v.keys[2] == ["A > x > 1", "A > x > 2"]
    np.testing.assert_array_equal(v.labels[:, 0], [0, 0, 0, 1, -1, 0])
    np.testing.assert_array_equal(v.labels[:, 2], [0, 1, -1, -1, -1, 0])
    np.testing.assert_array_equal(v.parents[2], [0, 0])
    rare = build_tag_vocab(paths, n_levels=3, min_items=2)
    assert rare.keys[2] == ["A > x > 1"] and rare.keys[1] == ["A > x"]
    assert rare.labels[2].tolist() == [0, -1, -1]
    m = heldout_mask(1000, 0.1, seed=3)
    np.testing.assert_array_equal(m, heldout_mask(1000, 0.1, seed=3))
    assert 50 < m.sum() < 150
