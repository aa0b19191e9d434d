"""Mining the explanatory graph on hand-built maps with known answers (METHOD.md section 9)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csg.graph.mining import (MiningSettings, candidate_offsets, e_step, filter_node_count, infer_graph, link_parents,
                              mine_graph, mine_layer, normal_pdf, parent_priors)


def blob(centre, size: int, sd: float = 1.0) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32)
    return torch.exp(-((r[:, None] - centre[0]) ** 2 + (r[None, :] - centre[1]) ** 2) / (2 * sd * sd))


def test_two_jittered_blobs_give_two_nodes_at_their_centres():
    g = torch.Generator().manual_seed(0)
    n, h = 24, 24
    a, b = torch.tensor([6.0, 7.0]), torch.tensor([16.0, 15.0])
    jitter = torch.randn(n, 2, 2, generator=g) * 0.7
    maps = torch.stack([blob(a + jitter[i, 0], h) + blob(b + jitter[i, 1], h) for i in range(n)])[:, None]
    maps = maps + 0.02 * torch.rand(maps.shape, generator=g)
    lay = mine_layer("toy", maps, filter_node_count((h, h), 0.1), (1.0, 1.0), MiningSettings(iterations=25, chunk=24))
    strength = lay.scores.mean(1)
    for centre in (a + jitter[:, 0].mean(0), b + jitter[:, 1].mean(0)):  # the blobs' mean centres
        dist = (lay.mu - centre).norm(dim=1)
        assert float(dist.min()) < 0.15
        # the node on the blob scores far above the nodes that found nothing
        assert float(strength[dist.argmin()]) > 5 * float(strength[(lay.mu - a).norm(dim=1).gt(4)
                                                                    & (lay.mu - b).norm(dim=1).gt(4)].mean())
        # its inferred position follows the blob image by image
        pos = lay.positions[dist.argmin()]
        jit = jitter[:, 0] if centre[0] < 10 else jitter[:, 1]
        true = (a if centre[0] < 10 else b) + jit
        assert float((pos - true).norm(dim=1).mean()) < 0.6
    assert lay.scores.mean().item() == pytest.approx(1.0, rel=1e-5)  # scores are divided by their mean


@pytest.mark.parametrize("compete", [True, False])
def test_competition_gives_one_blob_to_one_node(compete):
    # node 0 sits on blob A; node 1 starts 2 cells from A and 5 from B. Alone, node 1 would join A; with the
    # competition A is node 0's (its geometric term is larger there) and node 1 takes B.
    h = 32
    a, b = torch.tensor([12.0, 12.0]), torch.tensor([12.0, 19.0])
    maps = (blob(a, h) + blob(b, h))[None, None].expand(20, 1, h, h).contiguous()
    init = torch.tensor([[12.0, 12.0], [12.0, 14.0]])
    lay = mine_layer("toy", maps, 2, (1.0, 1.0), MiningSettings(iterations=20, compete=compete, tau=0.01),
                     init_mu=init)
    assert float((lay.mu[0] - a).norm()) < 0.3
    if compete:
        assert float((lay.mu[1] - b).norm()) < 0.3
    else:
        assert float((lay.mu[1] - a).norm()) < 1.0


def test_e_step_matches_the_formulas_written_out():
    # one filter, two nodes, one image: g, e (bilinear), D, r, S and the position computed by loops
    torch.manual_seed(0)
    h, w = 9, 11
    ev = torch.rand(1, 1, h, w)
    mu = torch.tensor([[[3.3, 4.6], [4.1, 5.9]]])  # K=1 x nf=2 x 2
    sigma = torch.tensor([[0.9, 0.6]])
    st = MiningSettings(candidates=4, tau=0.1)
    spread = torch.tensor([[[1.7], [1.2]]])  # K x nf x B
    weight = torch.tensor([[[0.8], [1.3]]])
    shift = torch.tensor([[[[0.4, -0.3]], [[-0.2, 0.5]]]])  # K x nf x B x 2
    out = e_step(ev, mu, sigma, shift, spread, weight, st)

    x = ev[0, 0].double().numpy()

    def bilinear(field, r, c):
        r0, c0 = math.floor(r), math.floor(c)
        total = 0.0
        for rr in (r0, r0 + 1):
            for cc in (c0, c0 + 1):
                if 0 <= rr < field.shape[0] and 0 <= cc < field.shape[1]:
                    total += (1 - abs(r - rr)) * (1 - abs(c - cc)) * field[rr, cc]
        return total

    def pdf(d, s):
        return math.exp(-d * d / (2 * s * s)) / (math.sqrt(2 * math.pi) * s)

    nodes = []
    for v in range(2):
        c = (float(mu[0, v, 0] + shift[0, v, 0, 0]), float(mu[0, v, 1] + shift[0, v, 0, 1]))
        R = round(min(0.15 * 9, 3 * float(sigma[0, v])))
        offs = [-R + (2 * k + 1) * R / 4 for k in range(4)]
        nodes.append((c, R, offs, float(spread[0, v, 0]), float(weight[0, v, 0])))
    field = np.zeros((h, w))
    for c, R, _, dl, lam in nodes:
        for r in range(h):
            for q in range(w):
                if abs(r - c[0]) <= R and abs(q - c[1]) <= R:
                    field[r, q] += lam * pdf(r - c[0], dl) * pdf(q - c[1], dl)
    tau = 0.1 * np.mean([lam * sum(pdf(i, dl) * pdf(j, dl) for i in offs for j in offs)
                         for _, _, offs, dl, lam in nodes])
    for v, (c, R, offs, dl, lam) in enumerate(nodes):
        S, best, sw, swd, sge, sgd2 = 0.0, (-1.0, None), 0.0, np.zeros(2), 0.0, 0.0
        for di in offs:
            for dj in offs:
                g = lam * pdf(di, dl) * pdf(dj, dl)
                e = bilinear(x, c[0] + di, c[1] + dj)
                r = g / (bilinear(field, c[0] + di, c[1] + dj) + tau)
                S += g * e
                sw += r * e
                swd += r * e * np.array([di, dj]) / dl ** 2
                sge += g * e
                sgd2 += g * e * (di * di + dj * dj)
                if g * e > best[0]:
                    best = (g * e, (c[0] + di, c[1] + dj))
        assert float(out.scores[0, v, 0]) == pytest.approx(S, rel=1e-4)
        assert out.positions[0, v, 0].tolist() == pytest.approx(list(best[1]), abs=1e-5)
        assert float(out.sum_w[0, v]) == pytest.approx(sw, rel=1e-4)
        assert out.sum_wd[0, v].tolist() == pytest.approx(swd.tolist(), rel=1e-4, abs=1e-7)
        assert float(out.sum_ge_d2[0, v]) == pytest.approx(sgd2, rel=1e-4)


def test_the_score_includes_the_geometric_term():
    # a 16 x 16 map: R = round(min(0.15 * 16, 3 * 2)) = 2, candidates at offsets -1, +1 (P = 2); the only
    # evidence sits on the candidate (+1, +1): S = lambda N(1; delta)^2 x, not x
    ev = torch.zeros(1, 1, 16, 16)
    ev[0, 0, 8, 8] = 3.0
    mu = torch.tensor([[[7.0, 7.0]]])
    out = e_step(ev, mu, torch.tensor([[2.0]]), None, 1.5, 0.7, MiningSettings(candidates=2))
    expected = 0.7 * float(normal_pdf(torch.tensor(1.0), torch.tensor(1.5))) ** 2 * 3.0
    assert float(out.scores[0, 0, 0]) == pytest.approx(expected, rel=1e-5)
    assert out.positions[0, 0, 0].tolist() == [8.0, 8.0]
    assert candidate_offsets(torch.tensor([2.0]), 2).tolist() == [[-1.0, 1.0]]


def test_a_parent_moving_by_d_moves_its_childs_prior_by_d():
    g = torch.Generator().manual_seed(1)
    m, b = 7, 5
    dp = torch.randn(m, b, 2, generator=g) * 3  # parents' displacements, input pixels
    sig = torch.rand(m, generator=g) * 2 + 1
    parents = torch.tensor([[0, 3, 5], [2, 2, 6]])
    child_stride = (2.0, 2.0)  # the parents' layer has stride 4: displacements are compared in pixels
    shift, spread, weight = parent_priors(dp, sig, parents, child_stride)
    d = torch.tensor([4.0, -6.0])
    moved = dp.clone()
    moved[:, 2] += d  # every parent moves by d pixels in image 2
    shift2, spread2, weight2 = parent_priors(moved, sig, parents, child_stride)
    assert torch.allclose(shift2[:, 2] - shift[:, 2], (d / 2.0).expand(2, 2), atol=1e-5)
    assert torch.allclose(shift2[:, [0, 1, 3, 4]], shift[:, [0, 1, 3, 4]])
    assert torch.allclose(spread2, spread) and torch.allclose(weight2, weight, rtol=1e-5)
    # one parent (N = 1) moving by d alone moves the prior by d
    one = torch.tensor([[4]])
    s1, _, _ = parent_priors(dp, sig, one, (1.0, 1.0))
    s2, _, _ = parent_priors(moved, sig, one, (1.0, 1.0))
    assert (s2[0, 2] - s1[0, 2]).tolist() == pytest.approx(d.tolist(), abs=1e-5)
    # the formulas by hand for child 0 on image 0
    p = [0, 3, 5]
    prec = sig[p] ** -2
    m0 = (prec[:, None] * dp[p, 0]).sum(0) / prec.sum()
    assert shift[0, 0].tolist() == pytest.approx((m0 / 2.0).tolist(), rel=1e-5)
    delta = float(prec.mean() ** -0.5)
    assert float(spread[0, 0]) == pytest.approx(delta / 2.0, rel=1e-5)
    lam = delta * math.exp(-float(torch.log(sig[p]).mean())) * math.exp(
        -float((((m0 - dp[p, 0]) ** 2).sum(1) / (2 * sig[p] ** 2)).mean()))
    assert float(weight[0, 0]) == pytest.approx(lam, rel=1e-5)
    # parents that agree, with equal spreads, give lambda = 1
    same = torch.ones(3, b, 2)
    _, _, w1 = parent_priors(same, torch.full((3,), 2.0), torch.tensor([[0, 1, 2]]), (1.0, 1.0))
    assert torch.allclose(w1, torch.ones_like(w1))


def test_link_parents_matches_the_direct_sum():
    g = torch.Generator().manual_seed(2)
    n, m, num = 30, 40, 12
    child = torch.randn(n, num, 2, generator=g) * 3
    peaks = torch.rand(n, num, generator=g)
    upper = torch.randn(m, num, 2, generator=g) * 3
    upper[5] = child[0] + 0.01  # a parent that moves exactly with child 0
    cand = torch.randperm(m, generator=g)[:25]
    if 5 not in cand.tolist():
        cand[0] = 5
    got = link_parents(child, peaks, upper, cand, 4)
    sq = ((child[:, None] - upper[cand][None]) ** 2).sum(-1)  # n x M x N
    affinity = (torch.exp(-sq / (2 * sq.mean(dim=(1, 2), keepdim=True))) * peaks[:, None]).sum(-1)
    expected = cand[affinity.topk(4, dim=1).indices]
    assert torch.equal(got, expected)
    assert int(got[0, 0]) == 5


def test_mine_graph_links_layers_and_infers_new_images():
    # two layers; the upper one at half the resolution. A blob moves image by image; the lower layer's nodes
    # on it get parents on the upper layer's node that tracks the same blob
    g = torch.Generator().manual_seed(3)
    n = 24
    centres = torch.tensor([10.0, 10.0]) + torch.randn(n, 2, generator=g) * 1.5
    low = torch.stack([blob(c, 24, 1.2) for c in centres])[:, None]
    high = torch.stack([blob((c + 0.5) / 2 - 0.5, 12, 0.8) for c in centres])[:, None]
    st = MiningSettings(iterations=6, parents=2, parent_candidates=50, stable_share=0.0, border=0.0, chunk=8)
    graph = mine_graph([low, high], [(1.0, 1.0), (2.0, 2.0)], names=["low", "high"], nodes_per_filter=[20, 8],
                       settings=st)
    low_l, high_l = graph.layers
    assert high_l.parents is None and low_l.parents.shape == (20, 2)
    assert graph.image_size == (24, 24) and graph.settings["nodes_per_filter"] == [20, 8]
    best_low = int(low_l.scores.mean(1).argmax())
    best_high = int(high_l.scores.mean(1).argmax())
    assert best_high in low_l.parents[best_low].tolist()
    # both track the blob in input pixels
    assert float((low_l.positions_px()[best_low] - centres).norm(dim=1).mean()) < 1.0
    assert float((high_l.positions_px()[best_high] - centres).norm(dim=1).mean()) < 1.5
    # inference on the mined images reproduces the records
    again = infer_graph(graph, [low, high])
    assert torch.allclose(again[0]["positions"], low_l.positions, atol=1e-4)
    assert torch.allclose(again[1]["scores"], high_l.scores, rtol=1e-4)


def test_mine_graph_refuses_bad_input():
    from csg.core.errors import CsgError

    maps = torch.rand(4, 2, 8, 8)
    with pytest.raises(CsgError, match="strides"):
        mine_graph([maps], [(1, 1), (2, 2)])
    with pytest.raises(CsgError, match="same images"):
        mine_graph([maps, torch.rand(3, 2, 4, 4)], [(1, 1), (2, 2)])
    with pytest.raises(CsgError, match="estimated"):
        mine_graph([maps], [(1, 1)], nodes_per_filter=2, max_seconds=1e-9)
