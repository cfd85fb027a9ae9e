"""NMS and AP against the reference's fixtures; matching, confusion matrix and plots on hand-computed cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REFERENCE, requires_reference
from utils import general
from utils.general import non_max_suppression
from utils.metrics import ConfusionMatrix, ap_per_class, compute_ap, match_predictions


@requires_reference
@pytest.mark.parametrize('tag,kwargs', [('test', dict(conf_thres=0.001, iou_thres=0.65, multi_label=True)),
                                        ('detect', dict(conf_thres=0.25, iou_thres=0.45, multi_label=False))])
def test_nms_matches_reference(tag: str, kwargs: dict) -> None:
    with np.load(REFERENCE / 'nms.npz') as ref:
        out = non_max_suppression(torch.from_numpy(ref['prediction']), **kwargs)
        for i, det in enumerate(out):
            expected = ref[f'{tag}_{i}']
            assert det.shape == expected.shape
            np.testing.assert_allclose(det[:, :4].numpy(), expected[:, :4], atol=1e-4)
            np.testing.assert_allclose(det[:, 4].numpy(), expected[:, 4], rtol=1e-6)
            np.testing.assert_array_equal(det[:, 5].numpy(), expected[:, 5])


@requires_reference
@pytest.mark.parametrize('tag,v5', [('v7', False), ('v5', True)])
def test_ap_per_class_matches_reference(tag: str, v5: bool) -> None:
    with np.load(REFERENCE / 'ap.npz') as ref:
        p, r, ap, f1, classes = ap_per_class(ref['tp'], ref['conf'], ref['pred_cls'], ref['target_cls'], v5_metric=v5)
        for name, value in (('p', p), ('r', r), ('ap', ap), ('f1', f1)):
            np.testing.assert_allclose(value, ref[f'{tag}_{name}'], rtol=1e-6, err_msg=name)
        assert classes.dtype == np.int32 and (classes == ref[f'{tag}_classes']).all()
        assert (ap[-2:] == 0).all()  # classes with labels but no predictions


def _decoded(boxes_xyxy: list[list[float]], obj: list[float], cls_probs: list[list[float]]) -> torch.Tensor:
    b = torch.tensor(boxes_xyxy, dtype=torch.float32)
    xywh = torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]), 1)
    return torch.cat((xywh, torch.tensor(obj)[:, None], torch.tensor(cls_probs)), 1)[None]


def test_nms_hand_computed() -> None:
    # boxes 0 and 1 overlap with IoU 81/119 ≈ 0.68; box 2 is far away; class scores = obj × cls
    x = _decoded([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.8, 0.5],
                 [[0.9, 0.1], [0.9, 0.6], [0.2, 0.7]])
    det = non_max_suppression(x.clone(), conf_thres=0.3, iou_thres=0.45)[0]
    np.testing.assert_allclose(det[:, 4:].numpy(), [[0.81, 0], [0.35, 1]], rtol=1e-6)  # box 1 suppressed
    det = non_max_suppression(x.clone(), conf_thres=0.3, iou_thres=0.45, multi_label=True)[0]
    # box 1 class 1 (0.48) survives: the class offset keeps it apart from box 0 class 0
    np.testing.assert_allclose(det[:, 4:].numpy(), [[0.81, 0], [0.48, 1], [0.35, 1]], rtol=1e-6)
    det = non_max_suppression(x.clone(), conf_thres=0.3, iou_thres=0.45, multi_label=True, agnostic=True)[0]
    np.testing.assert_allclose(det[:, 4].numpy(), [0.81, 0.35], rtol=1e-6)
    det = non_max_suppression(x.clone(), conf_thres=0.3, iou_thres=0.45, classes=[1])[0]
    np.testing.assert_allclose(det[:, 4:].numpy(), [[0.35, 1]], rtol=1e-6)
    assert non_max_suppression(x.clone(), conf_thres=0.95)[0].shape == (0, 6)


def test_nms_hybrid_labels_and_single_class() -> None:
    """--save-hybrid's ground-truth rows are [cls, cx, cy, w, h] in pixels (as the reference's test.py builds them
    and its non_max_suppression copies them in): cx=cy=100, w=h=20 is the box [90, 90, 110, 110]. Before the fix
    they went through xyxy2xywh as if they were corners."""
    x = _decoded([[0, 0, 10, 10]], [0.6], [[0.5, 0.5]])
    labels = [torch.tensor([[1.0, 100, 100, 20, 20], [0.0, 35, 35, 10, 10]])]
    det = non_max_suppression(x.clone(), 0.2, 0.5, labels=labels)[0]
    np.testing.assert_allclose(det.numpy(), [[90, 90, 110, 110, 1, 1], [30, 30, 40, 40, 1, 0],
                                             [0, 0, 10, 10, 0.3, 0]], atol=1e-6)
    one_class = _decoded([[0, 0, 10, 10]], [0.6], [[0.1]])
    assert non_max_suppression(one_class, 0.2, 0.5)[0][0, 4] == pytest.approx(0.6)  # score = objectness


def test_slow_nms_warns_and_keeps_every_image(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(general, 'SLOW_NMS_S', -1.0)
    x = _decoded([[0, 0, 10, 10]], [0.9], [[0.9, 0.1]]).repeat(3, 1, 1)
    out = non_max_suppression(x, 0.25, 0.45)
    assert [len(d) for d in out] == [1, 1, 1] and 'nothing was dropped' in caplog.text


def test_matching_greedy_rule() -> None:
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 20, 0, 30, 10], [1, 0, 20, 10, 30]], dtype=torch.float32)
    det = torch.tensor([[0, 0, 10, 10, .9, 0],     # IoU 1 with label 0: correct at every threshold
                        [0, 0, 10, 9, .8, 0],      # best target is label 0 again, already taken: incorrect
                        [20, 0, 30, 7.8, .7, 0],   # IoU 0.78 with label 1: correct up to 0.75
                        [0, 20, 10, 30, .6, 0]])   # wrong class for label 2: incorrect
    correct = match_predictions(det, labels)
    assert correct[0].all() and not correct[1].any() and not correct[3].any()
    assert correct[2].tolist() == [True] * 6 + [False] * 4  # 0.50 … 0.75
    assert not match_predictions(det[:0], labels).any()


def test_ground_truth_as_predictions_gives_map_1() -> None:
    rng = np.random.default_rng(0)
    tps, confs, pcls, tcls = [], [], [], []
    for _ in range(20):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 500, (n, 2))
        boxes = np.concatenate((xy, xy + rng.uniform(10, 100, (n, 2))), 1)
        labels = torch.tensor(np.c_[rng.integers(0, 4, n), boxes], dtype=torch.float32)
        det = torch.cat((labels[:, 1:], torch.rand(n, 1), labels[:, :1]), 1)
        tps.append(match_predictions(det, labels).numpy())
        confs.append(det[:, 4].numpy())
        pcls.append(det[:, 5].numpy())
        tcls.append(labels[:, 0].numpy())
    p, r, ap, f1, _ = ap_per_class(*(np.concatenate(x) for x in (tps, confs, pcls, tcls)))
    assert ap.mean() == pytest.approx(1.0, abs=1e-9) and (p == 1).all() and (r == 1).all()


def test_compute_ap_hand_computed() -> None:
    # one label found at rank 1 of 2 predictions: recall [1, 1], precision [1, .5]; padded recall ends at 1.01,
    # and at x = 1 interp takes the last of the repeated recall-1 points (precision .5): .99 + (1 + .5) / 2 · .01
    ap, _, _ = compute_ap(np.array([1.0, 1.0]), np.array([1.0, 0.5]))
    assert ap == pytest.approx(0.9975)
    ap, _, _ = compute_ap(np.array([0.5, 0.5]), np.array([1.0, 0.5]))  # half the labels found first
    x = np.linspace(0, 1, 101)
    y = np.interp(x, [0, .5, .5, .51], [1, 1, .5, 0])
    assert ap == pytest.approx(float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum()))  # the trapezoid rule by hand


def test_confusion_matrix_hand_computed(tmp_path: Path) -> None:
    cm = ConfusionMatrix(nc=2)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]], dtype=torch.float32)
    det = torch.tensor([[0, 0, 10, 10, .9, 0],      # correct class 0
                        [20, 20, 30, 30, .8, 0],    # label 1 (class 1) predicted as class 0
                        [80, 80, 90, 90, .7, 1],    # background predicted as class 1
                        [50, 50, 60, 60, .1, 1]])   # below conf 0.25: ignored, label 2 missed
    cm.process_batch(det, labels)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    cm.plot(tmp_path, ['a', 'b'])
    assert (tmp_path / 'confusion_matrix.png').stat().st_size > 1000


def test_ap_plots_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tp = rng.random((50, 10)) < 0.6
    ap_per_class(tp, rng.random(50), rng.integers(0, 3, 50), rng.integers(0, 3, 30), plot=True, save_dir=tmp_path,
                 names=['a', 'b', 'c'])
    assert {p.name for p in tmp_path.iterdir()} == {'PR_curve.png', 'F1_curve.png', 'P_curve.png', 'R_curve.png'}
