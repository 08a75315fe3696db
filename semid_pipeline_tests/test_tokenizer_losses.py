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


@pytest.mark.parametrize("supervise_encoder", [True, False])
def test_tag_losses_reach_the_encoder_only_through_the_straight_through_route(supervise_encoder):
    from semid_pipeline.core.tokenizers.rqvae import RQVAE
    from semid_pipeline.core.tokenizers.supervision import SupervisedLoss, SupervisionParams

    torch.manual_seed(0)
    model = RQVAE(input_dim=8, hidden_dims=[16], latent_dim=4, n_levels=2, codebook_size=4)
    labels = np.array([[0, 0], [1, 2], [0, 1], [1, 3]])
    sup = SupervisionParams(tag_alignment=True, tag_prediction=True, supervise_encoder=supervise_encoder)
    loss_fn = SupervisedLoss(sup, 4, 2, labels, tag_embeddings=[np.eye(2, 3, dtype=np.float32), np.eye(4, 3, dtype=np.float32)], n_classes=[2, 4])
    x = torch.randn(4, 8)
    out = model(x)
    loss_fn.eval()  # no classifier dropout: the two routes are compared on equal terms below
    h = loss_fn.hidvae_terms(torch.arange(4), out)
    h.total.backward()
    enc_grad = sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None)
    assert float(model.codebooks.grad.abs().sum()) > 0  # the codewords are always supervised
    assert (enc_grad > 0) == supervise_encoder
    # the straight-through input has the codewords' values: same loss either way
    out2 = model(x)
    other = SupervisedLoss(sup.model_copy(update={"supervise_encoder": not supervise_encoder}), 4, 2, labels,
                           tag_embeddings=[np.eye(2, 3, dtype=np.float32), np.eye(4, 3, dtype=np.float32)], n_classes=[2, 4])
    other.load_state_dict(loss_fn.state_dict())
    other.eval()
    assert other.hidvae_terms(torch.arange(4), out2).total.item() == pytest.approx(h.total.item(), rel=1e-6)


def test_probe_heads_width_cap_keeps_paper_width_below_it():
    from semid_pipeline.core.tokenizers.supervision import TagHeads

    paper = TagHeads(latent_dim=32, n_classes=[3, 5, 7], tag_dim=1)
    capped = TagHeads(latent_dim=32, n_classes=[3, 5, 7], tag_dim=1, max_hidden=512)
    assert [c.feature[0].out_features for c in paper.classifiers] == [64, 128, 192]  # 2 x input width
    assert [c.feature[0].out_features for c in capped.classifiers] == [64, 128, 192]  # cap not reached
    wide = TagHeads(latent_dim=384, n_classes=[3, 5, 7], tag_dim=1, max_hidden=512)
    assert [c.feature[0].out_features for c in wide.classifiers] == [512, 512, 512]
    assert wide.logits(torch.zeros(2, 3, 384), 2).shape == (2, 7)
