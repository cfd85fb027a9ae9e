"""Paste-in augmentation (the reference's utils/datasets.py): hand-computed geometry and synthetic masks."""
from __future__ import annotations

import random
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from utils.data.paste_in import bbox_ioa, collect_samples, copy_paste, harvest_samples, paste_in

GREY = 114



def _labels_from_polygons(classes, polygons):
    return np.array([[c, *p.min(0), *p.max(0)] for c, p in zip(classes, polygons)], dtype=np.float64)


def _squares_mosaic(n=10, size=400):
    """A grey mosaic with n coloured 20x20 squares in a row, their labels and polygons."""
    img = np.full((size, size, 3), GREY, np.uint8)
    polygons = []
    for i in range(n):
        x, y = 10 + 35 * i, 50
        polygons.append(np.array([[x, y], [x + 20, y], [x + 20, y + 20], [x, y + 20]], np.float32))
        cv2.fillPoly(img, [polygons[-1].astype(np.int32)], (40 + 10 * i, 90, 200))
    return img, _labels_from_polygons(range(n), polygons), polygons


# ---------------------------------------------------------------- bbox_ioa

def test_bbox_ioa_hand_computed() -> None:
    box1 = np.array([0, 0, 10, 10], np.float32)
    box2 = np.array([[0, 0, 10, 10],     # identical: 1
                     [5, 5, 15, 15],     # 5x5 of its 100: 0.25
                     [20, 20, 30, 30],   # disjoint: 0
                     [0, 0, 20, 20],     # box1 inside it: 100 / 400
                     [2, 2, 4, 4],       # inside box1: 1 (over box2's area, not box1's)
                     [10, 0, 20, 10]])   # touching edge: 0
    np.testing.assert_allclose(bbox_ioa(box1, box2), [1, 0.25, 0, 0.25, 1, 0], atol=1e-6)


# ---------------------------------------------------------------- harvest_samples

def test_harvest_two_polygons_masks_and_pixels() -> None:
    img = np.full((200, 200, 3), GREY, np.uint8)
    polygons = [np.array([[20, 30], [90, 40], [50, 110]], np.float32),               # triangle
                np.array([[120, 100], [180, 120], [170, 190], [110, 160]], np.float32)]  # quadrilateral
    colours = {3.0: (30, 60, 200), 5.0: (200, 100, 50)}
    for cls, poly in zip(colours, polygons):
        cv2.fillPoly(img, [poly.astype(np.int32)], colours[cls])
    labels = _labels_from_polygons(list(colours), polygons)

    random.seed(0)
    classes, crops, masks = harvest_samples(img, labels, polygons, probability=1.0)
    assert sorted(classes) == [3.0, 5.0]
    for cls, crop, mask in zip(classes, crops, masks):
        j = list(colours).index(cls)
        x1, y1, x2, y2 = labels[j, 1:].astype(int)
        assert crop.shape == mask.shape == (y2 - y1, x2 - x1, 3)
        ref = np.zeros((200, 200), np.uint8)
        cv2.fillPoly(ref, [polygons[j].astype(np.int32)], 255)
        inside = ref[y1:y2, x1:x2] > 0
        assert inside.sum() > 500
        for ch in range(3):
            np.testing.assert_array_equal(mask[..., ch] > 0, inside)
        np.testing.assert_array_equal(crop[inside], np.tile(colours[cls], (inside.sum(), 1)))
        assert (crop[~inside] == 0).all()
        np.testing.assert_array_equal(mask, crop)    # the reference's mask is a view of the sample's canvas


def test_harvest_zero_channel_becomes_255_like_reference() -> None:
    # The reference overwrites a 255 mask only where the image is non-zero, so a 0 channel reads as 255.
    img = np.full((60, 60, 3), GREY, np.uint8)
    poly = np.array([[10, 10], [50, 10], [50, 50], [10, 50]], np.float32)
    cv2.fillPoly(img, [poly.astype(np.int32)], (0, 80, 160))
    _, crops, _ = harvest_samples(img, _labels_from_polygons([1], [poly]), [poly], probability=1.0)
    assert tuple(crops[0][5, 5]) == (255, 80, 160)


def test_harvest_probability_rounding_and_empty_boxes() -> None:
    img, labels, polygons = _squares_mosaic(n=3)
    random.seed(1)
    assert harvest_samples(img, labels[:1], polygons[:1], probability=0.5) == ([], [], [])  # round(0.5) == 0
    assert harvest_samples(img, labels[:0], [], probability=1.0) == ([], [], [])
    flat = labels.copy()
    flat[1, 4] = flat[1, 2] + 0.5        # less than a pixel high after int(): skipped
    classes, _, _ = harvest_samples(img, flat, polygons, probability=1.0)
    assert sorted(classes) == [0.0, 2.0]


# ---------------------------------------------------------------- collect_samples

def test_collect_samples_stops_once_enough() -> None:
    calls = []

    def make_mosaic():
        calls.append(1)
        return _squares_mosaic(n=10)

    random.seed(0)
    classes, crops, masks = collect_samples(make_mosaic, min_samples=30)
    assert len(calls) == 6                        # 5 samples per mosaic (half of 10)
    assert len(classes) == len(crops) == len(masks) == 30


def test_collect_samples_stops_when_nothing_found() -> None:
    calls = []

    def make_mosaic():
        calls.append(1)
        return np.full((64, 64, 3), GREY, np.uint8), np.zeros((0, 5)), []

    assert collect_samples(make_mosaic) == ([], [], [])
    assert len(calls) == 1


def test_collect_samples_keeps_going_after_a_later_empty_mosaic() -> None:
    # The reference's stop test is on the running total: once anything is collected, empty mosaics are retried.
    results = iter([_squares_mosaic(n=10), (np.full((64, 64, 3), GREY, np.uint8), np.zeros((0, 5)), [])]
                   + [_squares_mosaic(n=10)] * 10)
    random.seed(0)
    classes, _, _ = collect_samples(lambda: next(results), min_samples=12)
    assert len(classes) == 15                     # 5 + 0 + 5 + 5


# ---------------------------------------------------------------- paste_in

COLOUR = (10, 200, 30)


def _solid_sample(size=40):
    return [7.0], [np.full((size, size, 3), COLOUR, np.uint8)], [np.full((size, size, 3), 255, np.uint8)]


def _is_colour(region):
    return (region == np.array(COLOUR, np.uint8)).all(-1)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_paste_in_on_empty_image(seed) -> None:
    img = np.full((320, 320, 3), GREY, np.uint8)
    random.seed(seed)
    labels = paste_in(img, np.zeros((0, 5), np.float32), *_solid_sample())
    assert len(labels) >= 2
    assert (labels[:, 0] == 7).all()
    boxes = labels[:, 1:]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 320).all()
    assert ((boxes[:, 2] - boxes[:, 0] > 10) & (boxes[:, 3] - boxes[:, 1] > 10)).all()
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        assert _is_colour(img[y1:y2, x1:x2]).sum() > 60
        if i:  # the pasted box lies inside its placement box, which overlapped earlier labels by < 30 %
            assert (bbox_ioa(boxes[i], boxes[:i]) < 0.30).all()
    covered = np.zeros((320, 320), bool)
    for x1, y1, x2, y2 in boxes.astype(int):
        covered[y1:y2, x1:x2] = True
    assert (img[~covered] == GREY).all()
    assert _is_colour(img[covered]).all()         # a solid square mask covers its whole box


def test_paste_in_respects_existing_labels() -> None:
    # 10x10 labels tiling the image: every placement box (> 20 px each way) fully covers one (ioa 1), so no paste.
    grid = np.array([[0, x, y, x + 10, y + 10] for y in range(0, 320, 10) for x in range(0, 320, 10)], np.float32)
    img = np.full((320, 320, 3), GREY, np.uint8)
    for seed in range(5):
        random.seed(seed)
        assert len(paste_in(img, grid.copy(), *_solid_sample())) == len(grid)
    assert (img == GREY).all()


def test_paste_in_ioa_is_over_the_existing_labels_area() -> None:
    # A whole-image label is only obscured by area(box) / area(image), so pastes below 30 % of the image go through.
    img = np.full((320, 320, 3), GREY, np.uint8)
    whole = np.array([[1, 0, 0, 320, 320]], np.float32)
    random.seed(0)
    labels = paste_in(img, whole, *_solid_sample())
    assert len(labels) > 1
    np.testing.assert_array_equal(labels[0], whole[0])
    areas = (labels[1:, 3] - labels[1:, 1]) * (labels[1:, 4] - labels[1:, 2])
    assert (areas < 0.30 * 320 * 320).all()


def test_paste_in_mask_count_on_numpy2() -> None:
    # The reference's np.int raised AttributeError on numpy >= 1.24 at the first paste.
    assert not hasattr(np, 'int')
    img = np.full((200, 200, 3), GREY, np.uint8)
    random.seed(0)
    assert len(paste_in(img, np.zeros((0, 5)), *_solid_sample())) > 0


@pytest.mark.parametrize('blob_hw,pasted', [((4, 5), False), ((5, 5), True), ((3, 7), True)])
def test_paste_in_mask_threshold_counts_elements(monkeypatch, blob_hw, pasted) -> None:
    # Scripted draws: the first try places a 100x100 box at (50, 50) and picks the only (100x100) sample, so the
    # resize is the identity; every later try is skipped. "> 60" counts 3-channel mask elements: 20 px = 60 fails,
    # 21 px (63) and 25 px (75) pass.
    floats = iter([0.5] + [0.1] * 19)
    ints = iter([100, 100, 100, 100, 0])
    monkeypatch.setattr('utils.data.paste_in.random',
                        SimpleNamespace(random=lambda: next(floats), randint=lambda a, b: next(ints)))
    crop = np.full((100, 100, 3), COLOUR, np.uint8)
    mask = np.zeros((100, 100, 3), np.uint8)
    mask[40:40 + blob_hw[0], 40:40 + blob_hw[1]] = 255
    img = np.full((200, 200, 3), GREY, np.uint8)
    labels = paste_in(img, np.zeros((0, 5)), [3.0], [crop], [mask])
    if pasted:
        np.testing.assert_array_equal(labels, [[3, 50, 50, 150, 150]])
        assert _is_colour(img).sum() == blob_hw[0] * blob_hw[1]
        assert _is_colour(img[90:90 + blob_hw[0], 90:90 + blob_hw[1]]).all()
    else:
        assert len(labels) == 0 and (img == GREY).all()



def test_copy_paste_mirrors_objects_into_free_space() -> None:
    img = np.full((100, 100, 3), GREY, np.uint8)
    square = np.array([[10, 20], [30, 20], [30, 40], [10, 40]], np.float32)
    cv2.fillPoly(img, [square.astype(np.int32)], COLOUR)
    labels = np.array([[4, 10, 20, 30, 40]], np.float64)
    random.seed(0)
    img, out, segments = copy_paste(img, labels, [square], probability=1.0)
    np.testing.assert_allclose(out, [[4, 10, 20, 30, 40], [4, 70, 20, 90, 40]])  # x → 100 − x
    assert len(segments) == 2 and _is_colour(img[21:40, 71:90]).all() and _is_colour(img[20:40, 10:30]).all()
    # each object's mirror place holds the other: overlap over the existing label's area 1 and 256/400
    small = np.array([[72, 22], [88, 22], [88, 38], [72, 38]], np.float32)
    blocked = np.array([[4, 10, 20, 30, 40], [1, 72, 22, 88, 38]], np.float64)
    _, out, _ = copy_paste(img.copy(), blocked, [square, small], probability=1.0)
    assert len(out) == 2


def test_local_polygon_fill_equals_full_canvas_fill() -> None:
    """The small-canvas fill used for speed gives the reference's full-canvas pixels, border polygons included."""
    from utils.data.paste_in import _filled_polygon
    rng = np.random.default_rng(0)
    size = 256
    for _ in range(300):
        k = int(rng.integers(3, 20))
        centre, radius = rng.uniform(-40, size + 40, 2), rng.uniform(2, 120)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        spread = rng.uniform(.3, 1, (2, k))
        poly = np.stack([centre[0] + radius * np.cos(angles) * spread[0],
                         centre[1] + radius * np.sin(angles) * spread[1]], 1).clip(0, size).astype(np.int32)
        x1, y1 = poly.min(0).clip(0, size - 1)
        x2, y2 = poly.max(0).clip(0, size - 1)
        if x2 <= x1 or y2 <= y1:
            continue
        full = np.zeros((size, size, 3), np.uint8)
        cv2.drawContours(full, [poly], -1, (255, 255, 255), cv2.FILLED)
        np.testing.assert_array_equal(_filled_polygon(poly, full.shape, x1, y1, x2, y2), full[y1:y2, x1:x2])
