"""Training augmentations (the reference's utils/datasets.py): hand-computed warps, boxes that enclose the warped
pixels, HSV, mixup, flips."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from utils.data.augmentations import augment_hsv, box_candidates, mixup, random_flips, random_perspective
from utils.general import segment2box, xywhn2xyxy


def _patch_uniform(monkeypatch: pytest.MonkeyPatch, *values: float) -> list[tuple[float, float]]:
    """Make random.uniform return `values` in order (perspective x, y, angle, scale, shear x, y, translate x, y)."""
    it, calls = iter(values), []

    def uniform(a: float, b: float) -> float:
        calls.append((a, b))
        return next(it)

    monkeypatch.setattr(random, 'uniform', uniform)
    return calls


def test_random_perspective_draw_order_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _patch_uniform(monkeypatch, 0, 0, 0, 1, 0, 0, .5, .5)
    random_perspective(np.zeros((8, 8, 3), np.uint8), degrees=7, translate=.2, scale=.9, shear=3, perspective=.001)
    expected = [(-.001, .001)] * 2 + [(-7, 7), (0.1, 2.0)] + [(-3, 3)] * 2 + [(.3, .7)] * 2
    np.testing.assert_allclose(np.array(calls), expected, atol=1e-12)


def test_random_perspective_scale_translate_hand_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    # h=100, w=200; s=1.5 about the centre (100, 50), then centre moved to (0.6·200, 0.4·100):
    # x' = 1.5·(x − 100) + 120 = 1.5x − 30, y' = 1.5·(y − 50) + 40 = 1.5y − 35
    _patch_uniform(monkeypatch, 0, 0, 0, 1.5, 0, 0, .6, .4)
    img = np.full((100, 200, 3), 114, np.uint8)
    img[40:60, 90:110] = (0, 0, 255)
    targets = np.array([[0, 90, 40, 110, 60],     # → [105, 25, 135, 55]
                        [1, 0, 30, 22, 50],       # → [0, 10, 3, 40] clipped: area 90 / (33·30) = 0.09 < 0.1
                        [2, 120, 10, 150, 40]],   # → [150, 0, 195, 25] clipped: 1125 / 2025 kept
                       np.float32)
    out, t = random_perspective(img, targets)
    assert out.shape == img.shape
    np.testing.assert_allclose(t, [[0, 105, 25, 135, 55], [2, 150, 0, 195, 25]], atol=1e-4)
    # rows 26 and 53 sample source rows 40.67 and 58.67 (red); rows 23 and 55 sample 38.67 and 60 (grey)
    assert (out[[26, 53], 120] == (0, 0, 255)).all() and (out[[23, 55], 120] == 114).all()
    assert (targets[1] == [1, 0, 30, 22, 50]).all()  # caller's array untouched


def test_random_perspective_rotation_and_shear_hand_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    box = np.array([[0, 10, 20, 30, 60]], np.float64)
    # +90° in OpenCV's convention (y down): (x, y) → (y, 100 − x) about the centre (50, 50)
    _patch_uniform(monkeypatch, 0, 0, 90, 1, 0, 0, .5, .5)
    np.testing.assert_allclose(random_perspective(img, box)[1], [[0, 20, 70, 60, 90]], atol=1e-9)
    # x shear tan 45° = 1: x' = x + (y − 50); the box's corners span x ∈ [40 − 10, 60 + 10]
    _patch_uniform(monkeypatch, 0, 0, 0, 1, 45, 0, .5, .5)
    np.testing.assert_allclose(random_perspective(img, np.array([[0, 40, 40, 60, 60.]]))[1],
                               [[0, 30, 40, 70, 60]], atol=1e-9)
    # both: rotation before shear (M = T·S·R·…): about the centre (px, py) → (py, −px) → (py − px, −px);
    # corners (−10, −10) (30, 0) (−10, 0) (30, −10) span x ∈ [−40, 10], y ∈ [−30, 10]
    _patch_uniform(monkeypatch, 0, 0, 90, 1, 45, 0, .5, .5)
    np.testing.assert_allclose(random_perspective(img, np.array([[0, 40, 40, 80, 50.]]))[1],
                               [[0, 10, 20, 60, 60]], atol=1e-9)
    # y shear tan 45° = 1: y' = y + (x − 50), so the same corners span y ∈ [−20, 30]
    _patch_uniform(monkeypatch, 0, 0, 0, 1, 0, 45, .5, .5)
    np.testing.assert_allclose(random_perspective(img, np.array([[0, 40, 40, 80, 50.]]))[1],
                               [[0, 40, 30, 80, 80]], atol=1e-9)


def test_random_perspective_identity_and_mosaic_border(monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    box = np.array([[3, 60, 60, 140, 140]], np.float64)
    _patch_uniform(monkeypatch, 0, 0, 0, 1, 0, 0, .5, .5)
    out, t = random_perspective(img, box)
    assert out is img and (t == box).all()  # M = I and no border: no warp at all
    # border −50: the 200×200 canvas is cropped to its central 100×100 (x' = x − 50)
    _patch_uniform(monkeypatch, 0, 0, 0, 1, 0, 0, .5, .5)
    out, t = random_perspective(img, box, border=(-50, -50))
    assert out.shape == (100, 100, 3) and (out == img[50:150, 50:150]).all()
    np.testing.assert_allclose(t, [[3, 10, 10, 90, 90]])


def test_random_perspective_segments_box_and_area_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    # s = 2 about (50, 50), x' = 2x − 50: triangle (10,10) (50,10) (10,40) → (−30,−30) (50,−30) (−30,30);
    # only its hypotenuse from (10, 0) to (0, 7.5) is inside the image: box ≈ [0, 0, 10, 7.5], area 75/4800 ≈ 0.016
    # triangle (90,90) (50,60) (90,60) → (130,130) (50,70) (130,70), traced open like the reference (last vertex
    # not joined back to the first); inside: the hypotenuse from (90, 100) to (50, 70) and the top edge up to
    # x = 100, so the box is ≈ [50, 70, 100, 100]
    tris = [np.array([[10, 10], [50, 10], [10, 40]], np.float64), np.array([[90, 90], [50, 60], [90, 60]], np.float64)]
    targets = np.array([[5, 10, 10, 50, 40], [6, 50, 60, 90, 90]], np.float64)
    img = np.zeros((100, 100, 3), np.uint8)
    _patch_uniform(monkeypatch, 0, 0, 0, 2, 0, 0, .5, .5)
    _, t = random_perspective(img, targets, segments=tris)
    np.testing.assert_allclose(t, [[5, 0, 0, 10, 7.5], [6, 50, 70, 100, 100]], atol=0.3)  # 0.01 threshold: kept
    _patch_uniform(monkeypatch, 0, 0, 0, 2, 0, 0, .5, .5)
    _, t = random_perspective(img, targets[:1])  # corner box [0, 0, 50, 30]: 1500 / 4800 kept
    np.testing.assert_allclose(t, [[5, 0, 0, 50, 30]])


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def _colour_mask(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (np.abs(img.astype(np.int16) - colour) <= 30).all(2)  # edge pixels blended with grey fall outside


def _check_boxes_enclose_pixels(out: np.ndarray, targets: np.ndarray, tight: bool) -> None:
    h, w = out.shape[:2]
    for cls, x1, y1, x2, y2 in targets:
        ys, xs = np.nonzero(_colour_mask(out, COLOURS[int(cls)]))
        assert len(xs), 'a kept box whose object is not visible'
        inside = (xs >= x1 - 1) & (xs + 1 <= x2 + 1) & (ys >= y1 - 1) & (ys + 1 <= y2 + 1)
        assert inside.mean() >= 0.97
        if tight or (x1 > 0 and y1 > 0 and x2 < w and y2 < h):  # clipped corner boxes may overhang
            np.testing.assert_allclose([x1, y1, x2, y2], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=2)


@pytest.mark.parametrize('perspective,border', [(0.0, 0), (0.0, -80), (0.0005, 0)])
def test_random_perspective_boxes_enclose_warped_rectangles(perspective: float, border: int) -> None:
    img = np.full((320, 320, 3), 114, np.uint8)
    rects = [(20, 30, 90, 80), (120, 20, 200, 60), (230, 40, 300, 140), (40, 120, 110, 250), (140, 110, 210, 220),
             (150, 250, 300, 300)]
    for colour, (x1, y1, x2, y2) in zip(COLOURS, rects):
        img[y1:y2, x1:x2] = colour
    targets = np.array([[i, *r] for i, r in enumerate(rects)], np.float32)
    kept = 0
    for seed in range(6):
        random.seed(seed)
        out, t = random_perspective(img, targets, degrees=10, translate=.1, scale=.5, shear=5,
                                    perspective=perspective, border=(border, border))
        assert out.shape == (320 + 2 * border, 320 + 2 * border, 3)
        _check_boxes_enclose_pixels(out, t, tight=False)
        kept += len(t)
    assert kept >= 15


@pytest.mark.parametrize('perspective', [0.0, 0.0005])
def test_random_perspective_segment_boxes_enclose_warped_polygons(perspective: float) -> None:
    img = np.full((320, 320, 3), 114, np.uint8)
    polys = [np.array(p, np.float64) for p in ([[100, 100], [150, 110], [110, 150]],
                                                [[170, 100], [220, 100], [220, 140], [190, 120]],
                                                [[110, 180], [150, 220], [100, 220]],
                                                [[180, 170], [220, 200], [170, 220]])]
    for colour, p in zip(COLOURS, polys):
        cv2.fillPoly(img, [p.astype(np.int32)], colour)
    targets = np.array([[i, *segment2box(p, 320, 320)] for i, p in enumerate(polys)])
    kept = 0
    for seed in range(4):
        random.seed(seed)
        out, t = random_perspective(img, targets, polys, degrees=10, translate=.1, scale=.3, shear=5,
                                    perspective=perspective)
        _check_boxes_enclose_pixels(out, t, tight=True)
        kept += len(t)
    assert kept == 16


def test_random_perspective_is_repeatable_under_seed() -> None:
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    t = np.array([[0, 10, 10, 40, 50]], np.float32)
    runs = []
    for _ in range(2):
        random.seed(7)
        runs.append(random_perspective(img, t, perspective=.001, border=(-8, -8)))
    assert (runs[0][0] == runs[1][0]).all() and (runs[0][1] == runs[1][1]).all()


@pytest.mark.parametrize('after,keep,keep_segments', [
    ([0, 0, 2, 8], False, False),         # width 2 is not > 2 (area 0.16 and aspect 4 would pass)
    ([5, 5, 7.5, 13], True, True),        # 2.5 × 8
    ([0, 0, 8, 2], False, False),         # height 2
    ([0, 0, 10, 0.5], False, False),      # height below 2 px
    ([0, 0, 60, 3], False, False),        # aspect 20 is not < 20 (area 1.8)
    ([0, 0, 57, 3], True, True),          # aspect 19
    ([0, 0, 3, 3], False, True),          # area 0.09: dropped at 0.1, kept at the segments' 0.01
    ([0, 0, 3.2, 3.2], True, True),       # area 0.1024
    ([0, 0, 3, 0.3], False, False),       # area 0.009 (and too thin)
])
def test_box_candidates_hand_computed(after: list[float], keep: bool, keep_segments: bool) -> None:
    before = np.array([[0, 0, 10, 10.]]).T  # area 100
    after = np.array([after], np.float64).T
    assert box_candidates(before, after).tolist() == [keep]
    assert box_candidates(before, after, area_thr=0.01).tolist() == [keep_segments]


def test_augment_hsv_identity_with_zero_gains() -> None:
    img = np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    expected = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), cv2.COLOR_HSV2BGR)  # uint8 round trip only
    assert augment_hsv(img, 0, 0, 0) is None
    assert (img == expected).all()


def test_augment_hsv_hand_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np.random, 'uniform', lambda *a, **k: np.array([1., -.5, 1.]))  # gains 1.5, 0.75, 1.5
    img = np.array([[[50, 100, 200], [40, 0, 255]]], np.uint8)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    # BGR (50, 100, 200): V 200, S 255·150/200 = 191, H 60°·50/150 = 20° → 10
    # BGR (40, 0, 255): V 255, S 255, H 360° − 60°·40/255 = 350.6° → 175
    assert hsv[0].tolist() == [[10, 191, 200], [175, 255, 255]]
    # hue 10 → 15; 175 → 262.5 mod 180 = 82 (a 256 wrap would give 6, another colour)
    expected = np.array([[[15, 143, 255], [82, 191, 255]]], np.uint8)
    augment_hsv(img)
    assert (img == cv2.cvtColor(expected, cv2.COLOR_HSV2BGR)).all()
    # HSV (30°, 143, 255) → B = 255·(1 − 143/255) = 112, G = 112 + 143·30/60 = 183.5, R = 255
    np.testing.assert_allclose(img[0, 0], [112, 183.5, 255], atol=1)


def test_mixup_hand_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np.random, 'beta', lambda a, b: 0.5 if (a, b) == (8.0, 8.0) else None)
    a = np.array([[[255, 3, 0]]], np.uint8)
    b = np.array([[[0, 4, 255]]], np.uint8)
    la, lb = np.array([[0, .5, .5, .1, .1]]), np.array([[1, .2, .2, .1, .1], [2, .3, .3, .1, .1]])
    img, labels = mixup(a, la, b, lb)
    assert img.dtype == np.uint8 and img.tolist() == [[[127, 3, 127]]]  # 127.5, 3.5, 127.5 truncated
    assert (labels == np.concatenate((la, lb))).all()
    monkeypatch.setattr(np.random, 'beta', lambda a, b: 0.3)
    x = np.random.default_rng(3).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    assert (mixup(x[0], la, x[1], lb)[0] == (x[0] * 0.3 + x[1] * 0.7).astype(np.uint8)).all()


def _filled(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((h, w, 3), np.uint8)
    img[5:45, 10:30] = 255  # x 10..30, y 5..45 as box edges
    return img, np.array([[0, 20 / w, 25 / h, 20 / w, 40 / h]])


@pytest.mark.parametrize('draws,flipped_ud,flipped_lr', [((.3, .7), True, False), ((.7, .3), False, True),
                                                          ((.1, .1), True, True), ((.9, .9), False, False)])
def test_random_flips_label_encloses_pixels(monkeypatch: pytest.MonkeyPatch, draws: tuple[float, float],
                                            flipped_ud: bool, flipped_lr: bool) -> None:
    img, labels = _filled(100, 80)
    it = iter(draws)
    monkeypatch.setattr(random, 'random', lambda: next(it))  # up-down drawn first, then left-right
    out, lab = random_flips(img, labels, flipud=.5, fliplr=.5)
    ys, xs = np.nonzero(out[..., 0])
    box = xywhn2xyxy(lab[:, 1:], 80, 100)[0]
    np.testing.assert_allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1e-9)
    assert (ys.min() == 55) == flipped_ud and (xs.min() == 50) == flipped_lr
    assert labels[0, 1] == 20 / 80 and labels[0, 2] == 25 / 100  # input labels not modified


def test_random_flips_probability_one_and_zero() -> None:
    img, labels = _filled(60, 60)
    out, lab = random_flips(img, labels, flipud=1.0, fliplr=1.0)
    assert (out == img[::-1, ::-1]).all()
    np.testing.assert_allclose(lab, [[0, 1 - 20 / 60, 1 - 25 / 60, 20 / 60, 40 / 60]])
    out, lab = random_flips(img, labels, flipud=0.0, fliplr=0.0)
    assert out is img and lab is labels
    out, lab = random_flips(img, np.zeros((0, 5)), flipud=1.0, fliplr=0.0)
    assert (out == img[::-1]).all() and lab.shape == (0, 5)
