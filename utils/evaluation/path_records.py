"""Both paths of a dynamic model on every image, in one pass, and the metrics of any routing computed from them.

Extension (the reference evaluates one threshold per full pass): each image runs backbone 1 + router, head 1, and
backbone 2 + head 2 once; its router score and both heads' detections after NMS, matched against its labels, are
kept. The mAP of any routing (a threshold, a random draw, an oracle order) is then `ap_per_class` over the chosen
path's matches per image — the same numbers a routed evaluation gives, at the cost of one hard-path evaluation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from models.inference import prepare_input
from models.yolo import cat_outputs
from utils.evaluation.validator import image_stats, to_original_pixels
from utils.general import non_max_suppression
from utils.loss import ComputeLossOTADy
from utils.metrics import ap_per_class
from utils.torch_utils import time_sync

LOGGER = logging.getLogger(__name__)
PATHS = ('easy', 'hard')
STAGES = ('backbone', 'easy', 'hard', 'nms_easy', 'nms_hard')


@dataclass
class PathRecords:
    """Per image, in loader order: router score, both paths' matched detections and, with an oracle loss, head 1's
    minus head 2's detection loss on the labels (L1 - L2); seconds spent per stage over all images."""
    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # the model's dtype: compared as it does
    stats: dict = field(default_factory=lambda: {p: [] for p in PATHS})  # per path: per image tuple or None
    loss_diff: list = field(default_factory=list)
    files: list = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def __len__(self) -> int:
        return len(self.files)

    def easy_mask(self, threshold: float) -> np.ndarray:
        """Which images a threshold sends down the easy path (score >= threshold, in the scores' dtype)."""
        return (self.scores >= float(threshold)).numpy()

    def ms_per_image(self, easy_share: float) -> float:
        """Estimated routed milliseconds per image at an easy share, from the stage times of this pass."""
        s = self.seconds
        total = s['backbone'] + easy_share * (s['easy'] + s['nms_easy']) + (1 - easy_share) * (s['hard'] + s['nms_hard'])
        return 1e3 * total / max(len(self), 1)


def routed_map(records: PathRecords, easy: np.ndarray, v5_metric: bool = False) -> tuple[float, float]:
    """(mAP@.5, mAP@.5:.95) of the routing that sends the images where `easy` is True down the easy path."""
    return _map_of([records.stats['easy' if e else 'hard'][i] for i, e in enumerate(easy)], v5_metric)


def subset_map(records: PathRecords, path: str, keep: np.ndarray, v5_metric: bool = False) -> tuple[float, float]:
    """(mAP@.5, mAP@.5:.95) of one path ('easy' | 'hard') on the images where `keep` is True."""
    return _map_of([s for s, k in zip(records.stats[path], keep) if k], v5_metric)


def _map_of(chosen: list, v5_metric: bool) -> tuple[float, float]:
    chosen = [s for s in chosen if s is not None]
    if not chosen:
        return 0.0, 0.0
    stats = [np.concatenate(x, 0) for x in zip(*chosen)]
    if not stats[0].any():
        return 0.0, 0.0
    _, _, ap, _, _ = ap_per_class(*stats, v5_metric=v5_metric, plot=False)
    return float(ap[:, 0].mean()), float(ap.mean(1).mean())


def collect_path_records(model, loader, conf_thres: float = 0.001, iou_thres: float = 0.65,
                         oracle_loss: ComputeLossOTADy | None = None) -> PathRecords:
    """Run both paths on every image of a (val) loader; `oracle_loss` (a ComputeLossOTADy of the model) also
    records each image's L1 - L2."""
    records = PathRecords()
    scores = []
    with torch.inference_mode():
        for imgs, targets, paths, shapes in tqdm(loader, desc='Both paths'):
            x = prepare_input(imgs, model) / 255.0
            score, outputs = _both_paths(model, x, records.seconds)
            scores.append(score.view(-1).cpu())
            targets = targets.to(x.device)
            if oracle_loss is not None:
                maps = [[m.float() for m in outputs[p][1]] for p in PATHS]
                diff = oracle_loss.head_losses(maps[0], targets, x) - oracle_loss.head_losses(maps[1], targets, x)
                records.loss_diff += diff.tolist()
            pixels = targets.clone()
            pixels[:, 2:] *= torch.tensor([x.shape[3], x.shape[2]] * 2, device=x.device)
            labels = [pixels[pixels[:, 0] == i, 1:] for i in range(len(x))]
            for path in PATHS:
                t0 = time_sync(x.device)
                preds = non_max_suppression(outputs[path][0], conf_thres, iou_thres, multi_label=True)
                records.seconds[f'nms_{path}'] += time_sync(x.device) - t0
                for pred, image_labels, image_shapes in zip(preds, labels, shapes):
                    records.stats[path].append(image_stats(*to_original_pixels(pred.float(), image_labels,
                                                                               x.shape[2:], image_shapes)))
            records.files += list(paths)
    records.scores = torch.cat(scores) if scores else torch.zeros(0)
    return records


def _both_paths(model, x: torch.Tensor, seconds: dict) -> tuple[torch.Tensor, dict]:
    """(router scores (B, 1), {'easy': (decoded, raw maps), 'hard': ...}) for a batch, in CPU-sized chunks as the
    routed forward runs them; stage times added to `seconds`. It calls the model's own three stages (the ones
    Model.forward routes between, compiled ones included) so that backbone 1 runs once for both heads."""
    scores, parts = [], {p: [] for p in PATHS}
    for part in x.split(model.eval_chunk(x)):
        t0 = time_sync(x.device)
        b1, score = model._backbone(part)
        if score is None:  # a step-1 model: no router, both paths still evaluated
            score = part.new_zeros(len(part), 1)
        t1 = time_sync(x.device)
        parts['easy'].append(model._easy(b1))
        t2 = time_sync(x.device)
        parts['hard'].append(model._hard(part, b1))
        t3 = time_sync(x.device)
        for stage, seconds_taken in zip(STAGES[:3], (t1 - t0, t2 - t1, t3 - t2)):
            seconds[stage] += seconds_taken
        scores.append(score)
    return torch.cat(scores), {p: cat_outputs(parts[p]) for p in PATHS}

