"""Part landmarks of fashion-mnist-clutter: defined in the object frame, mapped exactly onto the canvas."""
from __future__ import annotations

import pytest
import torch

from csg.data.clutter import (LANDMARK_DIRECTIONS, canvas_landmarks, clutter_layout, clutter_negatives,
                              frame_landmarks, load_clutter, make_clutter)


def test_frame_landmarks_are_the_extremal_points_of_the_mean_mask():
    objects = torch.zeros(5, 28, 28, dtype=torch.uint8)
    objects[:3, 5:20, 8:16] = 200  # class 0: a rectangle rows 5..19, cols 8..15
    objects[0, 3, 11] = 50  # one object in three: under the 0.5 threshold of the mean mask
    objects[3:, 10:12, 3:25] = 90  # class 1: a bar
    lm = frame_landmarks(objects, torch.tensor([0, 0, 0, 1, 1]), 3)
    assert list(LANDMARK_DIRECTIONS) == ["top", "bottom-left", "bottom-right"]
    # top: the top row (5), the tied pixel nearest the row's centre column (11.5 -> 11 or 12)
    assert lm[0, 0, 0] == 5 and lm[0, 0, 1] in (11, 12)
    assert lm[0, 1].tolist() == [19, 8] and lm[0, 2].tolist() == [19, 15]  # max row - col, max row + col
    assert lm[1, 1].tolist() == [11, 3] and lm[1, 2].tolist() == [11, 24]
    assert torch.isnan(lm[2]).all()  # a class with no objects


def test_canvas_landmarks_follow_the_resize_and_the_corner():
    frame = torch.tensor([[[5.0, 11.0], [19.0, 8.0]]])  # 1 class, 2 landmarks
    layout = torch.tensor([[28, 3, 4], [56, 0, 7]])  # side, top, left
    masks = torch.ones(2, 64, 64, dtype=torch.bool)
    pts, valid = canvas_landmarks(frame, torch.tensor([0, 0]), layout, masks)
    assert pts[0].tolist() == [[8.0, 15.0], [22.0, 12.0]]  # side 28: the frame pixel itself, shifted
    # side 56: (r + 0.5) * 2 - 0.5 = 2 r + 0.5
    assert pts[1].tolist() == [[10.5, 29.5], [38.5, 23.5]]
    assert valid.all()
    masks[0, 7:10, 14:17] = False  # the object does not cover landmark 0 nor its neighbours
    _, valid = canvas_landmarks(frame, torch.tensor([0, 0]), layout, masks)
    assert valid.tolist() == [[False, True], [True, True]]


def test_clutter_landmarks_land_on_the_object(tiny_idx_dir, tmp_path):
    ds = load_clutter("test", data_dir=tiny_idx_dir, seed=0, cache=tmp_path)
    # the layout rebuilt from the seed is the one the canvases were made with
    from csg.data import load_dataset

    src = load_dataset("fashion-mnist", "test", data_dir=tiny_idx_dir)
    out = make_clutter(src.images, seed=0 * 1_000_003 + 1)
    assert torch.equal(torch.stack([out["size"], out["y"], out["x"]], 1), ds.layout)
    assert torch.equal(clutter_layout(len(src), 1), ds.layout)
    assert torch.equal(out["masks"], ds.masks)
    assert ds.landmarks.shape == (100, 3, 2) and ds.landmark_names == list(LANDMARK_DIRECTIONS)
    assert float(ds.landmark_valid.float().mean()) > 0.8
    n = torch.arange(len(ds))[:, None]
    r, c = ds.landmarks.round().long().unbind(-1)
    near = torch.nn.functional.max_pool2d(ds.masks[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert near[n, r.clamp(0, 63), c.clamp(0, 63)][ds.landmark_valid].all()
    size, y, x = ds.layout.T
    inside = ((ds.landmarks[..., 0] >= y[:, None] - 0.5) & (ds.landmarks[..., 0] <= (y + size)[:, None] - 0.5)
              & (ds.landmarks[..., 1] >= x[:, None] - 0.5) & (ds.landmarks[..., 1] <= (x + size)[:, None] - 0.5))
    assert inside.all()
    # selections carry the annotations along
    sub = ds.select([3, 7])
    assert torch.equal(sub.landmarks, ds.landmarks[[3, 7]]) and torch.equal(sub.layout, ds.layout[[3, 7]])
    assert torch.equal(sub.landmark_valid, ds.landmark_valid[[3, 7]])


def test_clutter_negatives_have_clutter_and_no_object(tiny_idx_dir):
    a = clutter_negatives(20, "test", data_dir=tiny_idx_dir, seed=0)
    b = clutter_negatives(20, "test", data_dir=tiny_idx_dir, seed=0)
    assert a.shape == (20, 1, 64, 64) and a.dtype == torch.uint8 and torch.equal(a, b)
    # only dimmed fragments: at most 0.55 of the brightest source pixel, and no big bright object
    assert int(a.max()) <= round(255 * 0.55) and float((a > 0).float().mean()) < 0.3
    assert float((a > 0).float().mean()) > 0.01
    with pytest.raises(Exception, match="at least 2"):
        clutter_negatives(1, "test", data_dir=tiny_idx_dir)
