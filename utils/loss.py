"""Training losses (the reference's utils/loss.py): one candidate search, one SimOTA assigner and one per-head loss,
combined by
ComputeLossOTA (one head), ComputeLossOTADual (step 1, both heads), ComputeLossOTADy (step 2, router only) and
ComputeLoss (validation losses).

Faithful to the reference: names, constructors `(model, autobalance=False)`, call forms and return values
`(loss · batch_size, [box, obj, cls, total])`; the "find 3 positive" candidates and their order, SimOTA (dynamic k,
cost = class BCE + 3·IoU cost, conflicts to the cheapest GT), CIoU, level balance, label smoothing, focal variant,
autobalance, the step-2 median tracker. The returned loss keeps the reference's shape (1,).

Fixed (the reference's utils/loss.py::ComputeLossOTA): empty index tensors live on the targets' device (the reference
hard-codes `cuda:0`), so a batch
without targets or candidates gives a finite, objectness-only loss on any device; ground-truth boxes go to pixels
with the image width for x/w and the height for y/h (the reference used the height for all four). Predictions
are cast to float32 (AMP), and a map count that does not match the detection layer is a clear error.

Extended (the reference's utils/loss.py::ComputeLossOTADy): ComputeLossOTADy accepts B > 1. Head losses L1 and L2 are
computed per image (each image
reduced as if it were a batch of one), the difference list receives one entry per image in batch order and the
adaptive formula is applied per image, so a batch of B gives the same per-image losses and tracker state as B
consecutive batch-1 calls. It returns (Σ_b adaptive_b, mean over images of [L1 − L2, s, 1 − s, adaptive]);
for B = 1 that is the reference's (adaptive · 1, items).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from utils.general import box_iou, xywh2xyxy

# Neighbour offsets of the candidate search: centre, then left, up, right, down (the reference's
# utils/loss.py::ComputeLossOTA).
_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))
_FOCAL_ALPHA = 0.25
_SIMOTA_TOPK = 10  # IoUs summed for the dynamic k
_MEDIAN_EVERY_CALL_UNTIL = 10000  # step 2: the tracked median is refreshed on every call up to here,
_MEDIAN_EVERY = 1000  # then every this many calls
_SCORE_EPS = 1e-6  # --router-loss bce: scores clamped off 0 and 1 before the log
# --router-loss bce: labels 0.05 / 0.95, so an image labelled easy (or hard) every epoch settles at a score of 0.95
# (0.05) instead of driving its logit up until the score rounds to exactly 1.0 (0.0) and ties with others
ROUTER_LABEL_SMOOTHING = 0.05


def objects_per_image(targets: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Labelled objects per image of a batch (targets rows: image index, class, box), at least 1 each."""
    counts = torch.bincount(targets[:, 0].long(), minlength=batch_size)[:batch_size]
    return counts.to(targets.dtype).clamp(min=1)


def smooth_BCE(eps: float = 0.1) -> tuple[float, float]:  # noqa: N802 (the reference's name)
    """Label-smoothed (positive, negative) BCE targets."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, x1y1x2y2: bool = True, GIoU: bool = False,  # noqa: N803
             DIoU: bool = False, CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:  # noqa: N803
    """IoU (or GIoU/DIoU/CIoU) of box1 (4,) or (4, n) against box2 (n, 4), elementwise, as the reference."""
    box2 = box2.T
    if x1y1x2y2:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1[0], box1[1], box1[2], box1[3]
        b2_x1, b2_y1, b2_x2, b2_y2 = box2[0], box2[1], box2[2], box2[3]
    else:
        b1_x1, b1_x2 = box1[0] - box1[2] / 2, box1[0] + box1[2] / 2
        b1_y1, b1_y2 = box1[1] - box1[3] / 2, box1[1] + box1[3] / 2
        b2_x1, b2_x2 = box2[0] - box2[2] / 2, box2[0] + box2[2] / 2
        b2_y1, b2_y2 = box2[1] - box2[3] / 2, box2[1] + box2[3] / 2
    inter = ((torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0)
             * (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0))
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing box
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    if GIoU:
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    if DIoU:
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps)), 2)
    with torch.no_grad():  # the aspect term's weight is a constant, as in the CIoU paper
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


@dataclass(frozen=True)
class Assignment:
    """Positives of one level, all (n,): image `b`, anchor `a`, cell row `gj` / column `gi` (clamped into the
    map), target row `t` (index into the targets tensor), and `anchor` (n, 2) in grid units."""

    b: torch.Tensor
    a: torch.Tensor
    gj: torch.Tensor
    gi: torch.Tensor
    t: torch.Tensor
    anchor: torch.Tensor

    def select(self, idx: torch.Tensor) -> Assignment:
        """The rows picked by an index or boolean mask, in order."""
        return Assignment(self.b[idx], self.a[idx], self.gj[idx], self.gi[idx], self.t[idx], self.anchor[idx])

    @staticmethod
    def cat(parts: Sequence[Assignment]) -> Assignment:
        """All rows of `parts`, one after the other."""
        return Assignment(*(torch.cat([getattr(p, f) for p in parts]) for f in ('b', 'a', 'gj', 'gi', 't', 'anchor')))


def find_3_positive(shapes: Sequence[tuple[int, int]], targets: torch.Tensor, anchors: torch.Tensor,
                    anchor_t: float) -> list[Assignment]:
    """The candidate cells per level of the reference's utils/loss.py::ComputeLossOTA: every (target, anchor) pair
    whose w/h ratios pass
    anchor_t gives its centre cell and the two nearest neighbours.

    shapes: (H, W) per level; targets (N, 6) [image, class, cx, cy, w, h] normalised; anchors (nl, na, 2) in grid
    units. Order per level: centre cells, then left, up, right, down neighbours, each anchor-major.
    """
    dev = targets.device
    na, nt = anchors.shape[1], targets.shape[0]
    ai = torch.arange(na, device=dev, dtype=torch.float32).view(na, 1).repeat(1, nt)
    ti = torch.arange(nt, device=dev, dtype=torch.float32).view(1, nt).repeat(na, 1)
    rows = torch.cat((targets.repeat(na, 1, 1), ai[:, :, None], ti[:, :, None]), 2)  # (na, nt, 8)
    off = torch.tensor(_OFFSETS, device=dev) * 0.5
    out = []
    for level, (h, w) in enumerate(shapes):
        gain = torch.tensor([1, 1, w, h, w, h, 1, 1], device=dev, dtype=torch.float32)
        t = rows * gain
        r = t[:, :, 4:6] / anchors[level][:, None]
        t = t[torch.max(r, 1.0 / r).max(2)[0] < anchor_t]
        gxy = t[:, 2:4]
        gxi = gain[[2, 3]] - gxy
        j, k = ((gxy % 1.0 < 0.5) & (gxy > 1.0)).T
        l, m = ((gxi % 1.0 < 0.5) & (gxi > 1.0)).T
        keep = torch.stack((torch.ones_like(j), j, k, l, m))
        t = t.repeat((5, 1, 1))[keep]
        offsets = (torch.zeros_like(gxy)[None] + off[:, None])[keep]
        gij = (t[:, 2:4] - offsets).long()
        a = t[:, 6].long()
        out.append(Assignment(t[:, 0].long(), a, gij[:, 1].clamp(0, h - 1), gij[:, 0].clamp(0, w - 1),
                              t[:, 7].long(), anchors[level][a]))
    return out


def _decode_candidates(maps: Sequence[torch.Tensor], cands: Sequence[Assignment], stride: Sequence[float]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates of all levels → (boxes (n, 4) xyxy in pixels, logit of sqrt(cls·obj) (n, nc))."""
    boxes, logits = [], []
    for pi, c, s in zip(maps, cands, stride):
        fg = pi[c.b, c.a, c.gj, c.gi]
        grid = torch.stack((c.gi, c.gj), 1)
        pxy = (fg[:, :2].sigmoid() * 2.0 - 0.5 + grid) * s
        pwh = (fg[:, 2:4].sigmoid() * 2) ** 2 * c.anchor * s
        boxes.append(xywh2xyxy(torch.cat((pxy, pwh), 1)))
        y = (fg[:, 5:].sigmoid() * fg[:, 4:5].sigmoid()).sqrt()
        logits.append(torch.log(y / (1 - y)))  # the reference's BCE-on-probability, written as BCE-with-logits
    return torch.cat(boxes), torch.cat(logits)


def simota(p_xyxy: torch.Tensor, p_logit: torch.Tensor, gt_xyxy: torch.Tensor, gt_cls: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """SimOTA for one image: candidates (n, 4) pixels + (n, nc) logits vs GTs (g, 4) pixels + (g,) classes →
    (matched candidate indices, their GT indices), candidates in ascending order."""
    n_gt, n_c = gt_xyxy.shape[0], p_xyxy.shape[0]
    iou = box_iou(gt_xyxy, p_xyxy)
    k = iou.topk(min(_SIMOTA_TOPK, n_c), dim=1)[0].sum(1).int().clamp(min=1)
    onehot = F.one_hot(gt_cls, p_logit.shape[1]).float()
    cls_cost = F.binary_cross_entropy_with_logits(p_logit[None].expand(n_gt, -1, -1),
                                                  onehot[:, None].expand(-1, n_c, -1), reduction='none').sum(-1)
    cost = cls_cost + 3.0 * -torch.log(iou + 1e-8)
    kmax = int(k.max())
    order = cost.topk(kmax, dim=1, largest=False)[1]
    take = torch.arange(kmax, device=cost.device)[None] < k[:, None]
    matching = torch.zeros_like(cost, dtype=torch.bool).scatter_(1, order, take)
    multi = matching.sum(0) > 1
    if multi.any():  # a candidate claimed by several GTs goes to the cheapest one
        matching[:, multi] = F.one_hot(cost[:, multi].argmin(0), n_gt).T.bool()
    fg = matching.any(0)
    return fg.nonzero()[:, 0], matching[:, fg].int().argmax(0)


@torch.no_grad()
def ota_assign(maps: Sequence[torch.Tensor], cands: Sequence[Assignment], targets: torch.Tensor,
               img_hw: tuple[int, int], stride: Sequence[float]) -> list[Assignment]:
    """SimOTA positives per level: each image's candidates of all levels compete for all its GTs.

    img_hw: the input's (height, width) in pixels; the GT boxes go to pixels with width for x/w, height for y/h.
    Per level, positives are listed image by image, in candidate order.
    """
    allc = Assignment.cat(cands)
    level = torch.cat([torch.full_like(c.b, i) for i, c in enumerate(cands)])
    p_xyxy, p_logit = _decode_candidates(maps, cands, stride)
    h, w = img_hw
    gt_xyxy = xywh2xyxy(targets[:, 2:6] * targets.new_tensor([w, h, w, h]))
    img_of_target = targets[:, 0].long()
    picked, gts = [allc.b[:0]], [allc.b[:0]]  # empty starts keep the device when nothing matches
    for img in img_of_target.unique().tolist():
        ci = (allc.b == img).nonzero()[:, 0]
        if ci.numel() == 0:
            continue
        gi = (img_of_target == img).nonzero()[:, 0]
        cand, gt = simota(p_xyxy[ci], p_logit[ci], gt_xyxy[gi], targets[gi, 1].long())
        picked.append(ci[cand])
        gts.append(gi[gt])
    picked = torch.cat(picked)
    m = allc.select(picked)
    matched = Assignment(m.b, m.a, m.gj, m.gi, torch.cat(gts), m.anchor)
    return [matched.select(level[picked] == i) for i in range(len(maps))]


def _group_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of `values` (n,) per group id in [0, n_groups); 0 for an empty group."""
    sums = values.new_zeros(n_groups).index_add(0, groups, values)
    return sums / torch.bincount(groups, minlength=n_groups).clamp(min=1)


def _model_attr(model: Any, inner: Any, name: str) -> Any:
    """An attribute set on the (possibly DDP-wrapped) model, looked up on the wrapper first."""
    return getattr(model, name) if hasattr(model, name) else getattr(inner, name)


class _LossBase:
    """What every loss reads from the model, and the loss of one head given its positives."""

    def __init__(self, model: Any, autobalance: bool = False):
        inner = model.module if hasattr(model, 'module') else model
        det = inner.model_h2[-1]
        self.hyp: dict = _model_attr(model, inner, 'hyp')
        self.gr = float(_model_attr(model, inner, 'gr'))
        self.cp, self.cn = smooth_BCE(eps=self.hyp.get('label_smoothing', 0.0))
        self.na, self.nc, self.nl = det.na, det.nc, det.nl
        self.anchors = det.anchors.detach().float().clone()
        self.stride = [float(s) for s in det.stride]
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
        self.autobalance = autobalance
        self.ssi = self.stride.index(16) if autobalance else 0
        self.gains = (self.hyp['box'], self.hyp['obj'], self.hyp['cls'])

    def _bce(self, logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
        """Elementwise BCE-with-logits, focal-weighted when hyp fl_gamma > 0."""
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=logits.new_tensor([pos_weight]),
                                                  reduction='none')
        gamma = self.hyp.get('fl_gamma', 0.0)
        if gamma > 0:
            p = logits.sigmoid()
            p_t = target * p + (1 - target) * (1 - p)
            alpha_t = target * _FOCAL_ALPHA + (1 - target) * (1 - _FOCAL_ALPHA)
            loss = loss * alpha_t * (1.0 - p_t) ** gamma
        return loss

    def _check_maps(self, p: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
        if len(p) != n:
            raise ValueError(f'{type(self).__name__} expects {n} prediction maps, got {len(p)}')
        return [pi.float() for pi in p]  # AMP maps may be fp16; the loss runs in float32

    def _level(self, pi: torch.Tensor, asg: Assignment, targets: torch.Tensor, groups: torch.Tensor,
               n_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unscaled (box, obj, cls) of one level, each (n_groups,)."""
        ps = pi[asg.b, asg.a, asg.gj, asg.gi]
        pbox = torch.cat((ps[:, :2].sigmoid() * 2.0 - 0.5, (ps[:, 2:4].sigmoid() * 2) ** 2 * asg.anchor), 1)
        h, w = pi.shape[2:4]
        tbox = targets[asg.t, 2:6] * targets.new_tensor([w, h, w, h])
        tbox[:, :2] -= torch.stack((asg.gi, asg.gj), 1)
        iou = bbox_iou(pbox.T, tbox, x1y1x2y2=False, CIoU=True)
        box = _group_mean(1.0 - iou, groups, n_groups)
        tobj = torch.zeros_like(pi[..., 0])
        tobj[asg.b, asg.a, asg.gj, asg.gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0).type(tobj.dtype)
        obj = self._bce(pi[..., 4], tobj, self.hyp['obj_pw']).view(n_groups, -1).mean(1)
        cls = torch.zeros_like(box)
        if self.nc > 1:  # one class: the objectness already says it all
            t = torch.full_like(ps[:, 5:], self.cn)
            t[torch.arange(len(t), device=t.device), targets[asg.t, 1].long()] = self.cp
            cls = _group_mean(self._bce(ps[:, 5:], t, self.hyp['cls_pw']).mean(1), groups, n_groups)
        return box, obj, cls

    def head_loss(self, maps: Sequence[torch.Tensor], assigned: Sequence[Assignment], targets: torch.Tensor,
                  per_image: bool = False) -> torch.Tensor:
        """Unscaled [box, obj, cls] of one head: (1, 3), or (B, 3) with `per_image` (each image reduced as a
        batch of one)."""
        n_groups = maps[0].shape[0] if per_image else 1
        total = maps[0].new_zeros(n_groups, 3)
        for i, (pi, asg) in enumerate(zip(maps, assigned)):
            groups = asg.b if per_image else torch.zeros_like(asg.b)
            box, obj, cls = self._level(pi, asg, targets, groups, n_groups)
            total = total + torch.stack((box, obj * self.balance[i], cls), 1)
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / obj.detach().mean().item()
        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        return total

    def ota(self, maps: Sequence[torch.Tensor], targets: torch.Tensor, imgs: torch.Tensor) -> list[Assignment]:
        """SimOTA positives of one head's maps."""
        shapes = [tuple(pi.shape[2:4]) for pi in maps]
        cands = find_3_positive(shapes, targets, self.anchors.to(targets.device), self.hyp['anchor_t'])
        return ota_assign(maps, cands, targets, tuple(imgs.shape[-2:]), self.stride)

    def scaled(self, parts: torch.Tensor) -> torch.Tensor:
        """Unscaled [box, obj, cls] (..., 3) → [box, obj, cls, total] (..., 4) with the hyp gains."""
        parts = parts * parts.new_tensor(self.gains)
        return torch.cat((parts, parts.sum(-1, keepdim=True)), -1)

    def result(self, parts: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss · batch size of shape (1,), [box, obj, cls, total] detached) from unscaled (1, 3) parts."""
        items = self.scaled(parts[0])
        return items[3:] * batch_size, items.detach()


class ComputeLoss(_LossBase):
    """YOLOv5-style loss, every candidate a positive; used for validation losses (the reference's
    utils/loss.py::ComputeLoss)."""

    def __call__(self, p: Sequence[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p: nl raw maps (B, na, H, W, nc+5); targets (N, 6) → (loss · B, [box, obj, cls, total])."""
        maps = self._check_maps(p, self.nl)
        targets = targets.float()
        assigned = find_3_positive([tuple(pi.shape[2:4]) for pi in maps], targets,
                                   self.anchors.to(targets.device), self.hyp['anchor_t'])
        return self.result(self.head_loss(maps, assigned, targets), maps[0].shape[0])


class ComputeLossOTA(_LossBase):
    """SimOTA loss of one head (the reference's utils/loss.py::ComputeLossOTA)."""

    def __call__(self, p: Sequence[torch.Tensor], targets: torch.Tensor, imgs: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """p: nl raw maps; targets (N, 6); imgs (B, 3, H, W) (shape only) → (loss · B, [box, obj, cls, total])."""
        maps = self._check_maps(p, self.nl)
        targets = targets.float()
        return self.result(self.head_loss(maps, self.ota(maps, targets, imgs), targets), maps[0].shape[0])


class ComputeLossOTADual(_LossBase):
    """Step 1: SimOTA loss of both heads, matched separately and summed (the reference's
    utils/loss.py::ComputeLossOTADual)."""

    def __call__(self, p: Sequence[torch.Tensor], targets: torch.Tensor, imgs: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """p: 2·nl raw maps, head 1's levels first → (loss · B, [box, obj, cls, total])."""
        maps = self._check_maps(p, 2 * self.nl)
        targets = targets.float()
        parts = sum(self.head_loss(head, self.ota(head, targets, imgs), targets)
                    for head in (maps[self.nl:], maps[:self.nl]))
        return self.result(parts, maps[0].shape[0])


def score_cross_entropy(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-image binary cross-entropy of router scores (probabilities, clamped off 0 and 1) against soft labels:
    the values of F.binary_cross_entropy(score, label, reduction='none'), written out in fp32 because CUDA autocast
    refuses that op on probabilities ('unsafe to autocast': step 2 with --router-loss bce crashed under AMP, the
    default on CUDA)."""
    s = score.float().clamp(_SCORE_EPS, 1 - _SCORE_EPS)
    return -(label * s.log() + (1 - label) * (1 - s).log())


class ComputeLossOTADy(_LossBase):
    """Step 2: the router's adaptive loss from the detached losses of both heads (the reference's
    utils/loss.py::ComputeLossOTADy), per image.

    State: `iter_count`, `diff_list` (every L1 − L2 so far, one per image) and `tracked_diff` (their median,
    refreshed on every image until 10000, then every 1000th). Returns (Σ_b adaptive_b of shape (1,),
    mean over images of [L1 − L2, s, 1 − s, adaptive]); with B = 1 exactly the reference's values.
    Only the router score receives a gradient.

    router_loss 'bce' (extension, train_step2.py --router-loss bce): the loss is instead the binary cross-entropy of
    s against the label "(L1 − L2) · n below its tracked median", smoothed to 0.05 / 0.95, where n is the image's
    number of labelled objects (at least 1). The per-image losses are means over the image's targets, but the
    pooled mAP counts every object once, so an image's stake in it grows with n: the gap weighted by n stands for
    what head 2 gains on that image in the pooled metric (an image with fifteen objects where head 2 is slightly
    better gains more than an image with one). The adaptive loss is linear in s: its gradient on the
    score's logit is (d − m)·s·(1 − s), whose sum over images is not 0 when the differences' mean is not their
    median, so every score drifts to 0 or 1 together; the cross-entropy's gradient s − label balances at scores
    that are probabilities, half the images labelled easy.
    """

    def __init__(self, model: Any, autobalance: bool = False, router_loss: str = 'adaptive'):
        super().__init__(model, autobalance)
        if router_loss not in ('adaptive', 'bce'):
            raise ValueError(f"router_loss must be 'adaptive' or 'bce', got {router_loss!r}")
        self.router_loss = router_loss
        self.iter_count = 0
        self.diff_list: list[float] = []
        self.tracked_diff = 0.0

    def head_losses(self, maps: Sequence[torch.Tensor], targets: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """Scaled total loss of one head per image, (B,), without gradient."""
        with torch.no_grad():
            return self.scaled(self.head_loss(maps, self.ota(maps, targets, imgs), targets, per_image=True))[:, 3]

    def track(self, diffs: Sequence[float]) -> list[float]:
        """Append each image's L1 − L2 in order; the tracked median each image sees."""
        seen = []
        for d in diffs:
            self.iter_count += 1
            self.diff_list.append(d)
            if self.iter_count < _MEDIAN_EVERY_CALL_UNTIL or self.iter_count % _MEDIAN_EVERY == 0:
                self.tracked_diff = float(np.median(self.diff_list))
            seen.append(self.tracked_diff)
        return seen

    def __call__(self, p: tuple[Sequence[torch.Tensor], torch.Tensor], targets: torch.Tensor, imgs: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """p: (2·nl raw maps, router score (B, 1)) → (Σ adaptive, mean [L1 − L2, s, 1 − s, adaptive])."""
        raw, score = p
        maps = self._check_maps(raw, 2 * self.nl)
        targets = targets.float()
        l1 = self.head_losses(maps[:self.nl], targets, imgs)
        l2 = self.head_losses(maps[self.nl:], targets, imgs)
        diff = l1 - l2
        s = score.float().view(-1)
        if self.router_loss == 'bce':  # extension: a proper scoring rule on "head 1 is relatively good here"
            gap = diff * objects_per_image(targets, len(diff))
            median = gap.new_tensor(self.track(gap.tolist()))
            eps = ROUTER_LABEL_SMOOTHING
            easy = (gap < median).float() * (1 - 2 * eps) + eps
            adaptive = score_cross_entropy(s, easy)
        else:
            half = l1.new_tensor(self.track(diff.tolist())) / 2
            adaptive = s * (l1 - half) + (1 - s) * (l2 + half)
        items = torch.stack((diff, s, 1 - s, adaptive)).detach().mean(1)
        return adaptive.sum().view(1), items
