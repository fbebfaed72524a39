"""Property tests of the augmentation MDP's action algebra (many random draws, plain pytest)."""

import math

import pytest
import torch

from vispre.views.boxes import (
    apply_action,
    box_iou,
    candidate_actions,
    candidate_boxes,
    compose_actions,
    inverse_action,
    relative_action,
    sample_boxes,
)

N = 4096  # random draws per property


def views(seed: int, n: int = N, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    boxes, flips = candidate_boxes(n, 1, (0.02, 1.0), (0.3, 3.0), generator=g)
    return boxes[:, 0].to(dtype), flips[:, 0]


def close(a, b, tol=1e-9):
    return torch.allclose(a, b, atol=tol, rtol=tol)


def test_relative_action_by_hand():
    b1, b2 = torch.tensor([0.0, 0.0, 0.5, 0.5]), torch.tensor([0.25, 0.5, 0.5, 1.0])
    # centres (0.25, 0.25) -> (0.375, 0.75), sizes (0.5, 0.5) -> (0.25, 0.5)
    expect = torch.tensor([0.25, 1.0, math.log(0.5), 0.0, 0.0])
    assert close(relative_action(b1, b2), expect, 1e-6)
    mirrored = relative_action(b1, b2, torch.tensor(True), torch.tensor(False))
    # right in the image is left on screen
    assert close(mirrored, torch.tensor([-0.25, 1.0, math.log(0.5), 0.0, 1.0]), 1e-6)
    assert relative_action(b1, b1, torch.tensor(True), torch.tensor(True)).abs().max() == 0


@pytest.mark.parametrize("seed", range(3))
def test_apply_inverts_relative(seed):
    (b1, f1), (b2, f2) = views(2 * seed), views(2 * seed + 1)
    b, f = apply_action(b1, relative_action(b1, b2, f1, f2), f1)
    assert close(b, b2) and torch.equal(f, f2)
    b, f = apply_action(b1, relative_action(b1, b2))  # flips default to False
    assert close(b, b2) and not f.any()


@pytest.mark.parametrize("seed", range(3))
def test_compose_with_inverse_is_identity(seed):
    (b1, f1), (b2, f2) = views(2 * seed), views(2 * seed + 1)
    a = relative_action(b1, b2, f1, f2)
    assert close(compose_actions(a, inverse_action(a)), torch.zeros_like(a))
    assert close(compose_actions(inverse_action(a), a), torch.zeros_like(a))
    assert close(inverse_action(inverse_action(a)), a)


@pytest.mark.parametrize("seed", range(3))
def test_inverse_is_the_reverse_action(seed):
    (b1, f1), (b2, f2) = views(2 * seed), views(2 * seed + 1)
    assert close(inverse_action(relative_action(b1, b2, f1, f2)), relative_action(b2, b1, f2, f1))


@pytest.mark.parametrize("seed", range(3))
def test_compose_follows_the_path(seed):
    (b1, f1), (b2, f2), (b3, f3) = views(3 * seed), views(3 * seed + 1), views(3 * seed + 2)
    a, b = relative_action(b1, b2, f1, f2), relative_action(b2, b3, f2, f3)
    c = compose_actions(a, b)
    assert close(c, relative_action(b1, b3, f1, f3))
    box, flip = apply_action(b1, c, f1)
    assert close(box, b3) and torch.equal(flip, f3)
    # associativity: (a b) c == a (b c)
    d = relative_action(b3, b1, f3, f1)
    assert close(compose_actions(compose_actions(a, b), d), compose_actions(a, compose_actions(b, d)))


def test_actions_broadcast_over_leading_dims():
    g = torch.Generator().manual_seed(0)
    boxes, flips = candidate_boxes((2, 3), 5, generator=g)
    pairwise = relative_action(boxes[..., :, None, :], boxes[..., None, :, :], flips[..., :, None], flips[..., None, :])
    assert pairwise.shape == (2, 3, 5, 5, 5)
    assert close(pairwise.diagonal(dim1=2, dim2=3), torch.zeros(2, 3, 5, 5), 1e-6)
    assert close(pairwise, inverse_action(pairwise.transpose(2, 3)), 1e-5)
    cand = candidate_actions(boxes[..., 0, :], flips[..., 0], boxes, flips)
    assert cand.shape == (2, 3, 5, 5) and close(cand, pairwise[..., 0, :, :])


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.2, 0.5), (0.5, 2.0)),
                                         ((0.9, 1.0), (2.0, 3.0))])
def test_candidate_boxes_stay_inside_and_in_range(scale, ratio):
    g = torch.Generator().manual_seed(1)
    boxes, flips = candidate_boxes((20, 10), 50, scale, ratio, generator=g)
    assert boxes.shape == (20, 10, 50, 4) and flips.shape == (20, 10, 50) and flips.dtype == torch.bool
    assert (boxes >= 0).all() and (boxes <= 1).all()
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    area, aspect = w * h, w / h
    fallback = (w > 1 - 1e-6) | (h > 1 - 1e-6)  # a box that fits in no try falls back to a full side
    inside = ~fallback
    assert (area[inside] >= scale[0] - 1e-5).all() and (area <= scale[1] + 1e-5).all()
    r = min(max(1.0, ratio[0]), ratio[1])
    assert (aspect >= min(ratio[0], r) - 1e-4).all() and (aspect <= max(ratio[1], r) + 1e-4).all()
    assert abs(flips.float().mean().item() - 0.5) < 0.02
    if scale[1] < 0.6:  # all draws fit: the area and position are uniform
        assert abs(area.mean().item() - sum(scale) / 2) < 0.005
        centre = (boxes[..., 0] + boxes[..., 2]) / 2
        assert abs(centre.mean().item() - 0.5) < 0.01


def test_candidate_boxes_are_reproducible():
    a = candidate_boxes(4, 8, generator=torch.Generator().manual_seed(3))
    b = candidate_boxes(4, 8, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert candidate_boxes(4, 8)[0].shape == (4, 8, 4)  # global RNG


def test_iou_identical_and_disjoint():
    boxes, _ = views(5, 1000, torch.float32)
    assert box_iou(boxes, boxes).allclose(torch.ones(1000))
    left = boxes * torch.tensor([0.5, 1, 0.5, 1])  # squeezed into x < 0.5
    right = left + torch.tensor([0.5, 0, 0.5, 0])  # shifted into x >= 0.5
    assert (box_iou(left, right) == 0).all()
    assert box_iou(torch.tensor([0, 0, 1.0, 1]), torch.tensor([0, 0, 0.5, 1.0])).item() == pytest.approx(0.5)


def test_sample_boxes_pixel_aligned_and_fallback():
    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(500, 300, 200, generator=g)
    px = boxes * torch.tensor([300, 200, 300, 200])
    assert torch.allclose(px, px.round(), atol=1e-3)
    # no draw fits (ratio >= 20 at area >= 90% of a 100x10 image): the fallback is the full width at the
    # clamped ratio 20 (100 x 5 px), centred: y0 = floor(0.5 (10 - 5 + 1)) = 3
    wide = sample_boxes(8, 100, 10, scale=(0.9, 1.0), ratio=(20.0, 30.0), generator=g)
    assert torch.allclose(wide, torch.tensor([0.0, 0.3, 1.0, 0.8]).expand(8, 4))
