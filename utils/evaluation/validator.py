"""The evaluation loop shared by test.py and the trainers (the reference's test.py): forward, NMS, matching, metrics,
outputs.

Faithful: the per-image procedure, the statistics, the printed table and the returned values. Fixed reference
defects: the label count is printed even when nothing is correct. Extensions: batched dynamic evaluation (each
image of a batch takes its own path; `--batch-size 32` equals batch 1), routing statistics (share of easy images).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.export import ExportError
from models.inference import prepare_input
from utils.cli import check_img_size
from utils.data.dataloaders import create_dataloader
from utils.data.labels import append_label_rows
from utils.data.letterbox import EVAL_RECT_PAD, evaluation_grid
from utils.evaluation.batch_plots import plot_batch, targets_to_boxes
from utils.evaluation.coco_eval import CocoIds
from utils.general import non_max_suppression, scale_coords, xywh2xyxy
from utils.metrics import IOU_THRESHOLDS, ConfusionMatrix, ap_per_class, match_predictions
from utils.torch_utils import de_parallel, time_sync

LOGGER = logging.getLogger(__name__)
HEADER = ('%20s' + '%12s' * 6) % ('Class', 'Images', 'Labels', 'P', 'R', 'mAP@.5', 'mAP@.5:.95')
ROW = '%20s' + '%12i' * 2 + '%12.3g' * 4
PLOTTED_BATCHES = 3  # test_batch0..2 images, as the reference


@dataclass
class EvalOptions:
    """What to compute and write besides the metrics."""
    conf_thres: float = 0.001
    iou_thres: float = 0.65
    save_dir: Path = Path('')
    names: list[str] = field(default_factory=list)
    verbose: bool = False
    training: bool = False
    plots: bool = True
    save_txt: bool = False
    save_hybrid: bool = False
    save_conf: bool = False
    coco_ids: CocoIds | None = None  # set to collect --save-json rows
    v5_metric: bool = False
    augment: bool = False


@dataclass
class EvalStats:
    """Everything collected over the loader."""
    stats: list = field(default_factory=list)
    json_rows: list = field(default_factory=list)
    seen: int = 0
    n_easy: int = 0
    n_routed: int = 0
    t_inference: float = 0.0
    t_nms: float = 0.0
    loss: torch.Tensor | None = None


def image_stats(predn: torch.Tensor, labelsn: torch.Tensor) -> tuple | None:
    """One image's (correct (n, 10), conf, class, label classes) from detections and [class, x1, y1, x2, y2] labels
    in the same pixels; None for an image with neither (it adds nothing to the metrics)."""
    tcls = labelsn[:, 0].tolist()
    if not len(predn):
        return (torch.zeros(0, len(IOU_THRESHOLDS), dtype=torch.bool), torch.Tensor(), torch.Tensor(),
                tcls) if len(labelsn) else None
    correct = match_predictions(predn, labelsn).cpu() if len(labelsn) else \
        torch.zeros(len(predn), len(IOU_THRESHOLDS), dtype=torch.bool)
    return correct, predn[:, 4].cpu(), predn[:, 5].cpu(), tcls


def to_original_pixels(pred: torch.Tensor, labels: torch.Tensor, img_hw: tuple, shapes: tuple
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Detections (x1, y1, x2, y2, conf, cls) and [class, cx, cy, w, h] labels of the letterboxed image, both
    scaled back to the original image: (predn, [class, x1, y1, x2, y2] labels)."""
    predn = pred.clone()
    scale_coords(img_hw, predn[:, :4], shapes[0], shapes[1])
    tbox = xywh2xyxy(labels[:, 1:5])
    scale_coords(img_hw, tbox, shapes[0], shapes[1])
    return predn, torch.cat((labels[:, 0:1], tbox), 1)


def _score_image(pred: torch.Tensor, labels: torch.Tensor, img_hw: tuple, shapes: tuple, path: str,
                 opt: EvalOptions, out: EvalStats, confusion: ConfusionMatrix) -> None:
    """Match one image's detections against its labels (both in original pixels) and collect outputs."""
    out.seen += 1
    predn, labelsn = to_original_pixels(pred, labels, img_hw, shapes)
    if len(pred):
        if opt.save_txt:
            h0, w0 = shapes[0]
            append_label_rows(opt.save_dir / 'labels' / f'{Path(path).stem}.txt', predn.tolist(), w0, h0,
                              opt.save_conf)
        if opt.coco_ids is not None:
            out.json_rows += opt.coco_ids.rows(predn, path)
        if len(labels) and opt.plots:
            confusion.process_batch(predn, labelsn)
    stats = image_stats(predn, labelsn)
    if stats is not None:
        out.stats.append(stats)


def _run_batch(model, imgs: torch.Tensor, targets: torch.Tensor, opt: EvalOptions, out: EvalStats,
               compute_loss) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Forward and NMS of one batch; returns detections per image and the targets in padded-image pixels."""
    device = next(model.parameters()).device
    imgs = prepare_input(imgs, model) / 255.0  # the model's device, dtype (fp16, bf16) and memory layout
    targets = targets.to(device).clone()
    t0 = time_sync(device)
    model.last_easy = None
    decoded, raw = model(imgs, augment=opt.augment)
    out.t_inference += time_sync(device) - t0
    if getattr(model, 'dynamic', False) and not opt.augment:
        easy = model.last_easy
        out.n_easy += len(imgs) if easy is None else int(easy.sum())
        out.n_routed += len(imgs)
    if compute_loss is not None:
        loss = compute_loss([x.float() for x in raw], targets)[1][:3]
        out.loss = loss if out.loss is None else out.loss + loss
    h, w = imgs.shape[2:]
    targets[:, 2:] *= torch.tensor([w, h, w, h], device=device)
    hybrid = [targets[targets[:, 0] == i, 1:] for i in range(len(imgs))] if opt.save_hybrid else []
    t0 = time_sync(device)
    preds = non_max_suppression(decoded, opt.conf_thres, opt.iou_thres, labels=hybrid, multi_label=True)
    out.t_nms += time_sync(device) - t0
    return preds, targets


def split_loader(model, opt, data: dict, nc: int, device: torch.device) -> tuple:
    """For a loaded inference model: the checked image size, fp16 on CUDA (with a warm-up pass) and the rect val
    loader of `opt.task` → (loader, dataset, img_size)."""
    gs = evaluation_grid(int(model.stride.max()))
    fixed = getattr(model, 'fixed_size', None)  # exported graphs: one size, letterboxed squares (no rect batches)
    if fixed is not None and fixed[0] != fixed[1]:
        raise ExportError(f'the exported graphs take {fixed[0]}x{fixed[1]} images; evaluation needs a square export '
                          '(export.py --img-size N)')
    img_size = model.input_size(opt.img_size)[0] if fixed is not None else check_img_size(opt.img_size, gs)
    if device.type == 'cuda':
        model.half()
        model(prepare_input(torch.zeros(1, 3, img_size, img_size), model))
    # exported graphs: images load in this process (OpenVINO's runtime does not survive the loader's fork: its
    # workers crashed at exit); letterboxing at one size is cheap beside the graphs
    # a dynamic model: batches of one own shape, so routes (pooled features) do not depend on --batch-size
    loader, dataset = create_dataloader(data[opt.task], img_size, opt.batch_size, gs, opt, pad=EVAL_RECT_PAD,
                                        rect=fixed is None,
                                        prefix=f'{opt.task}: ', nc=nc, workers=8 if fixed is None else 0,
                                        own_shapes=bool(getattr(model, 'dynamic', False)))
    return loader, dataset, img_size


def evaluate(model, dataloader, opt: EvalOptions, compute_loss=None) -> tuple[EvalStats, ConfusionMatrix]:
    """Run the model over the loader; returns the collected statistics and the confusion matrix."""
    nc = len(opt.names)
    confusion = ConfusionMatrix(nc=nc)
    out = EvalStats()
    if opt.save_txt:
        (opt.save_dir / 'labels').mkdir(parents=True, exist_ok=True)
    batches = tqdm(dataloader, desc=HEADER, disable=not LOGGER.isEnabledFor(logging.INFO))
    with torch.inference_mode():
        for batch_i, (imgs, targets, paths, shapes) in enumerate(batches):
            preds, targets = _run_batch(model, imgs, targets, opt, out, compute_loss)
            for si, pred in enumerate(preds):
                labels = targets[targets[:, 0] == si, 1:]
                _score_image(pred.float(), labels, imgs[si].shape[1:], shapes[si], paths[si], opt, out, confusion)
            if opt.plots and batch_i < PLOTTED_BATCHES:
                _plot_batch_pair(batch_i, imgs, targets, preds, paths, opt)
    return out, confusion


def _plot_batch_pair(batch_i: int, imgs: torch.Tensor, targets: torch.Tensor, preds: list[torch.Tensor],
                     paths: list[str], opt: EvalOptions) -> None:
    """test_batch{i}_labels.jpg and test_batch{i}_pred.jpg: the same images with ground truth / detections."""
    opt.save_dir.mkdir(parents=True, exist_ok=True)
    plot_batch(imgs, targets_to_boxes(targets, len(imgs)), paths, opt.names,
               opt.save_dir / f'test_batch{batch_i}_labels.jpg')
    plot_batch(imgs, [p.float().cpu().numpy() for p in preds], paths, opt.names,
               opt.save_dir / f'test_batch{batch_i}_pred.jpg', labels=False)


def summarize(out: EvalStats, opt: EvalOptions, confusion: ConfusionMatrix) -> tuple[tuple, np.ndarray]:
    """Metrics table (logged) → ((mP, mR, mAP@.5, mAP@.5:.95), per-class maps filled with mAP@.5:.95)."""
    nc = len(opt.names)
    stats = [np.concatenate(x, 0) for x in zip(*out.stats)] if out.stats else []
    mp = mr = map50 = map_ = 0.0
    ap, ap_class, p, r = np.zeros((0, 10)), np.zeros(0, int), np.zeros(0), np.zeros(0)
    nt = np.bincount(stats[3].astype(int), minlength=nc) if len(stats) and len(stats[3]) else np.zeros(nc, int)
    if len(stats) and stats[0].any():
        p, r, ap, f1, ap_class = ap_per_class(*stats, v5_metric=opt.v5_metric, plot=opt.plots,
                                              save_dir=opt.save_dir, names=opt.names)
        mp, mr, map50, map_ = p.mean(), r.mean(), ap[:, 0].mean(), ap.mean(1).mean()
    LOGGER.info(HEADER)
    LOGGER.info(ROW % ('all', out.seen, nt.sum(), mp, mr, map50, map_))
    if (opt.verbose or (nc < 50 and not opt.training)) and nc > 1 and len(stats):
        for i, c in enumerate(ap_class):
            LOGGER.info(ROW % (opt.names[c], out.seen, nt[c], p[i], r[i], ap[i, 0], ap[i].mean()))
    if opt.plots:
        confusion.plot(opt.save_dir, opt.names)
    maps = np.zeros(nc) + map_
    for i, c in enumerate(ap_class):
        maps[c] = ap[i].mean()
    return (mp, mr, map50, map_), maps


def validate(model, dataloader, opt: EvalOptions, compute_loss=None) -> tuple[tuple, np.ndarray, tuple]:
    """Evaluate a model in memory (the trainers' per-epoch call; test.py after loading).

    Returns ((mP, mR, mAP@.5, mAP@.5:.95, box, obj, cls val losses), per-class maps, ms per image (inference,
    NMS, total)) as the reference's test(); the model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        out, confusion = evaluate(model, dataloader, opt, compute_loss)
    finally:
        model.train(was_training)
    metrics, maps = summarize(out, opt, confusion)
    if out.n_routed:
        LOGGER.info(f'Routing: {out.n_easy}/{out.n_routed} images easy ({100 * out.n_easy / out.n_routed:.1f}%) '
                    f'at dy_thres {de_parallel(model).dy_thres:g}')
    losses = (out.loss.float().cpu() / max(len(dataloader), 1)).tolist() if out.loss is not None else [0.0] * 3
    return (*metrics, *losses), maps, per_image_ms(out)


def per_image_ms(out: EvalStats) -> tuple[float, float, float]:
    """Milliseconds per image: inference, NMS, total."""
    return tuple(x / max(out.seen, 1) * 1e3 for x in (out.t_inference, out.t_nms, out.t_inference + out.t_nms))
