"""Letterbox and rectangular batch shapes: hand-computed cases and the reference's val-loader geometry."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.helpers import COCO128, REFERENCE, requires_numpy2_sort
from utils.data.letterbox import letterbox, rect_batch_shapes


@pytest.mark.parametrize('h0,w0,new,auto,scaleup,out_hw,ratio,pad', [
    (480, 640, 640, False, True, (640, 640), 1.0, (0.0, 80.0)),     # pad 160 rows, 80 each side
    (480, 640, 640, True, True, (480, 640), 1.0, (0.0, 0.0)),       # 160 % 32 == 0: no padding with auto
    (100, 50, 64, False, True, (64, 64), 0.64, (16.0, 0.0)),        # 50·0.64 = 32 wide, 16 px each side
    (9, 16, 16, False, True, (16, 16), 1.0, (0.0, 3.5)),            # odd padding: 3 top, 4 bottom
    (20, 30, 64, False, False, (64, 64), 1.0, (17.0, 22.0)),        # no upscaling: padded around 20x30
    (20, 30, 64, False, True, (64, 64), 64 / 30, (0.0, 10.5)),      # upscaled to 43x64, then padded
])
def test_letterbox_hand_computed(h0, w0, new, auto, scaleup, out_hw, ratio, pad) -> None:
    img = np.full((h0, w0, 3), 7, np.uint8)
    out, r, p = letterbox(img, new, auto=auto, scaleup=scaleup)
    assert out.shape[:2] == out_hw
    assert r == pytest.approx((ratio, ratio))
    assert p == pytest.approx(pad)
    top = int(round(p[1] - 0.1))
    left = int(round(p[0] - 0.1))
    assert (out[:top] == 114).all() and (out[:, :left] == 114).all()
    assert (out[top, left] == 7).all()  # first image pixel right after the padding


def test_letterbox_odd_padding_goes_bottom_right() -> None:
    out, _, _ = letterbox(np.zeros((9, 16, 3), np.uint8), 16, auto=False)
    rows = (out[:, 8, 0] == 114)
    assert rows[:3].all() and not rows[3:12].any() and rows[12:].all()  # 3 top, 9 image rows, 4 bottom


def test_rect_batch_shapes_hand_computed() -> None:
    shapes = rect_batch_shapes(np.array([0.5, 0.75, 1.0, 1.5, 2.0]), 2, 640, 32, pad=0.5)
    # [0.75, 1]·20 + 0.5 → ceil(15.5), ceil(20.5); mixed → square; [1, 0.5]·20 + 0.5 → 21, 11
    assert shapes.tolist() == [[512, 672], [672, 672], [672, 352]]
    assert rect_batch_shapes(np.array([0.5, 0.75]), 2, 640, 32).tolist() == [[480, 640]]


@requires_numpy2_sort
@pytest.mark.skipif(not (REFERENCE / 'val_loader.npz').is_file() or not COCO128.is_dir(),
                    reason='../shared reference val_loader.npz or coco128 not found')
@pytest.mark.parametrize('tag,size,batch', [('r320', 320, 8), ('r256', 256, 5)])
def test_val_geometry_matches_reference(tag: str, size: int, batch: int) -> None:
    """Order by aspect ratio, batch shapes, resize gains, pads and pixel means of the reference's val loader."""
    ref = np.load(REFERENCE / 'val_loader.npz')
    files = sorted((COCO128 / 'images' / 'train2017').glob('*.jpg'))
    images = [cv2.imread(str(f)) for f in files]
    aspect = np.array([im.shape[0] / im.shape[1] for im in images])
    order = aspect.argsort()
    assert [files[i].name for i in order] == list(ref[f'{tag}_files'])
    batch_hw = np.repeat(rect_batch_shapes(aspect[order], batch, size, 32, 0.5), batch, axis=0)[:len(files)]
    np.testing.assert_array_equal(batch_hw, ref[f'{tag}_batch_hw'])
    for k, i in enumerate(order):
        img = images[i]
        h0, w0 = img.shape[:2]
        r = size / max(h0, w0)
        img = cv2.resize(img, (int(w0 * r), int(h0 * r)), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        out, ratio, pad = letterbox(img, tuple(batch_hw[k]), auto=False, scaleup=False)
        shapes = [h0, w0, img.shape[0] / h0 * ratio[1], img.shape[1] / w0 * ratio[0], *pad]
        np.testing.assert_allclose(shapes, ref[f'{tag}_shapes'][k], rtol=1e-9)
        np.testing.assert_allclose(out[:, :, ::-1].reshape(-1, 3).mean(0), ref[f'{tag}_channel_mean'][k], atol=0.5)
