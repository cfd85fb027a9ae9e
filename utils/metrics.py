"""Detection metrics: prediction-to-target matching, AP per class, confusion matrix, fitness (the reference's test.py).

Names, arguments and return values are the reference's. Fixed reference defect: `np.trapz` (renamed `np.trapezoid`
in numpy 2, then removed) is whichever of the two this numpy has: the same function, identical results.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.general import box_iou

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP@.5:.95 columns
CURVE_POINTS = 1000


trapezoid = getattr(np, 'trapezoid', None) or getattr(np, 'trapz')  # the trapezoid rule: numpy >= 2 / numpy 1.x

def fitness(x: np.ndarray) -> np.ndarray:
    """Model fitness: 0.1·mAP@.5 + 0.9·mAP@.5:.95 of rows [P, R, mAP@.5, mAP@.5:.95, …]."""
    return (np.asarray(x)[:, :4] * [0.0, 0.0, 0.1, 0.9]).sum(1)


def match_predictions(detections: torch.Tensor, labels: torch.Tensor,
                      iouv: torch.Tensor = IOU_THRESHOLDS) -> torch.Tensor:
    """(n, len(iouv)) correct flags for one image's detections [x1, y1, x2, y2, conf, cls] (NMS order) against
    its labels [cls, x1, y1, x2, y2], with the greedy rule of the reference's test.py."""
    correct = torch.zeros(len(detections), len(iouv), dtype=torch.bool, device=detections.device)
    iouv = iouv.to(detections.device)
    taken: set[int] = set()
    for cls in torch.unique(labels[:, 0]):
        ti = (labels[:, 0] == cls).nonzero(as_tuple=False).view(-1)
        pi = (detections[:, 5] == cls).nonzero(as_tuple=False).view(-1)
        if not len(pi):
            continue
        ious, best = box_iou(detections[pi, :4], labels[ti, 1:5]).max(1)
        for j in (ious > iouv[0]).nonzero(as_tuple=False).view(-1):
            target = int(ti[best[j]])
            if target in taken:
                continue
            taken.add(target)
            correct[pi[j]] = ious[j] > iouv
            if len(taken) == len(labels):
                return correct
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray, v5_metric: bool = False
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one recall/precision curve: 101-point interpolation of the precision envelope, trapezoid rule.

    Returns (ap, padded envelope, padded recall). The v7 metric ends the recall at last + 0.01, v5 at 1.0.
    """
    mrec = np.concatenate(([0.0], recall, [1.0 if v5_metric else recall[-1] + 0.01]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(trapezoid(np.interp(x, mrec, mpre), x)), mpre, mrec


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 v5_metric: bool = False, plot: bool = False, save_dir: str | Path = '.',
                 names: dict | list | tuple = ()) -> tuple[np.ndarray, ...]:
    """(p, r, ap (n, 10), f1, classes int32) per target class; P, R, F1 at the confidence of best mean F1."""
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes = np.unique(target_cls)
    px, py = np.linspace(0, 1, CURVE_POINTS), []
    ap = np.zeros((len(classes), tp.shape[1]))
    p, r = np.zeros((len(classes), CURVE_POINTS)), np.zeros((len(classes), CURVE_POINTS))
    for ci, c in enumerate(classes):
        mine = pred_cls == c
        n_labels, n_preds = (target_cls == c).sum(), mine.sum()
        if n_preds == 0 or n_labels == 0:
            continue
        fpc = (1 - tp[mine]).cumsum(0)
        tpc = tp[mine].cumsum(0)
        recall = tpc / (n_labels + 1e-16)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-px, -conf[mine], recall[:, 0], left=0)  # conf decreases: negate for interp
        p[ci] = np.interp(-px, -conf[mine], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j], v5_metric)
            if plot and j == 0:
                py.append(np.interp(px, mrec, mpre))
    f1 = 2 * p * r / (p + r + 1e-16)
    if plot:
        from utils.plots import plot_mc_curve, plot_pr_curve
        plot_pr_curve(px, py, ap, Path(save_dir) / 'PR_curve.png', names)
        for curve, name, ylabel in ((f1, 'F1_curve.png', 'F1'), (p, 'P_curve.png', 'Precision'),
                                    (r, 'R_curve.png', 'Recall')):
            plot_mc_curve(px, curve, Path(save_dir) / name, names, ylabel=ylabel)
    best = f1.mean(0).argmax()
    return p[:, best], r[:, best], ap, f1[:, best], classes.astype('int32')


class ConfusionMatrix:
    """(nc + 1)² counts, rows predicted class, columns true class; the last row/column is background."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one image: detections [x1, y1, x2, y2, conf, cls], labels [cls, x1, y1, x2, y2]."""
        detections = detections[detections[:, 4] > self.conf]
        gt_classes = labels[:, 0].int().tolist()
        det_classes = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:], detections[:, :4])
        x = torch.where(iou > self.iou_thres)
        matches = np.zeros((0, 3))
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()
            if x[0].shape[0] > 1:  # one detection per label and one label per detection, best IoU first
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        m0, m1 = matches[:, 0].astype(int), matches[:, 1].astype(int)
        for i, gc in enumerate(gt_classes):
            j = m0 == i
            if j.sum() == 1:
                self.matrix[det_classes[m1[j][0]], gc] += 1  # correct or confused
            else:
                self.matrix[self.nc, gc] += 1  # missed: background predicted
        for i, dc in enumerate(det_classes):
            if len(matches) and not (m1 == i).any():
                self.matrix[dc, self.nc] += 1  # false alarm on background

    def plot(self, save_dir: str | Path = '.', names: list | tuple = ()) -> None:
        """Save confusion_matrix.png (columns normalised to 1)."""
        from utils.plots import plot_confusion_matrix
        plot_confusion_matrix(self.matrix, Path(save_dir) / 'confusion_matrix.png', names)
