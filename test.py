r"""Evaluate a DynamicDet checkpoint on a split: mAP table, speed, routing; optional COCO JSON, labels, plots.

    python test.py --img-size 640 --batch-size 1 --conf 0.001 --iou 0.65 --device 0 \
        --cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --data data/coco.yaml --dy-thres 0.5

Flags are those of the reference's test.py. `--dy-thres T`: an image whose router score is ≥ T takes the easy path;
T ≤ 0 sends every image down the easy path, T > 1 every image down the hard path.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from models.exported_model import load_inference_model
from models.yolo import Model
from utils.cli import (
    HelpFormatter,
    add_detection_flags,
    add_split_flags,
    check_detection_flags,
    check_split_flags,
    check_writable,
    increment_path,
    run_cli,
    warn_existing_labels,
)
from utils.data.data_config import load_data_config
from utils.evaluation.coco_eval import CocoIds, annotation_path, evaluate_json, write_testdev_submission
from utils.evaluation.router_budget import apply_routing_flags
from utils.evaluation.validator import EvalOptions, evaluate, per_image_ms, split_loader, summarize
from utils.torch_utils import select_device

LOGGER = logging.getLogger('test')


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """The reference's flags (`--conf`/`--iou` work as prefixes); `--weights` is accepted for `--weight`."""
    p = argparse.ArgumentParser(prog='test.py', description=__doc__, formatter_class=HelpFormatter)
    add_split_flags(p)
    add_detection_flags(p, 0.001, 0.65)
    p.add_argument('--single-cls', action='store_true', help='treat as single-class dataset')
    p.add_argument('--verbose', action='store_true', help='report mAP by class')
    p.add_argument('--save-hybrid', action='store_true',
                   help='save label+prediction hybrid results to *.txt (turns on --save-txt)')
    p.add_argument('--save-json', action='store_true',
                   help='save a cocoapi-compatible JSON results file (<weights stem>_predictions.json) and score '
                        'it with pycocotools when the split has an annotation JSON; with --task test on *coco.yaml, '
                        'the COCO server\'s detections_test-dev2017_<weights stem>_results.zip instead; '
                        'turned on automatically when --data ends in coco.yaml')
    p.add_argument('--v5-metric', action='store_true', help='assume maximum recall as 1.0 in AP calculation')
    p.add_argument('--save-results', action='store_true', help='append mAP, dy_thres and speed to a results file')
    opt = p.parse_args(argv)
    check_split_flags(p, opt)
    check_detection_flags(p, opt)
    opt.save_json |= opt.data.endswith('coco.yaml')
    opt.save_txt |= opt.save_hybrid
    return opt


def load_model(opt: argparse.Namespace, nc: int, device: torch.device) -> Model:
    """Model from --cfg with --weight loaded strictly, fused, in eval mode, threshold set."""
    model = load_inference_model(opt, nc, device)
    apply_routing_flags(model, opt)
    if model.dynamic:
        LOGGER.info('Set dynamic threshold to %f', opt.dy_thres)
    return model


def routing_line(model: Model, n_easy: int, n_routed: int, img_size: int) -> str:
    """Share of images on the easy path and the mean GFLOPs per image that implies."""
    flops = model.flops(img_size)
    share = n_easy / max(n_routed, 1)
    mean = share * flops['easy'] + (1 - share) * flops['hard']
    return (f'Routing: {n_easy}/{n_routed} images easy ({100 * share:.1f}%), mean {mean:.4g} GFLOPs/image '
            f'(easy {flops["easy"]:.4g}, hard {flops["hard"]:.4g}) at dy_thres {model.dy_thres:g}')


def write_json(opt: argparse.Namespace, rows: list, save_dir: Path, anno: Path | None, seen_ids: list) -> tuple | None:
    """Write `<weights stem>_predictions.json` and evaluate it with pycocotools; COCO --task test: the server's zip."""
    if opt.task == 'test' and opt.data.endswith('coco.yaml') and not opt.single_cls:
        # test-dev has no public labels: the COCO server scores it, from a file named and zipped its way
        write_testdev_submission(rows, save_dir, Path(opt.weight).stem, len(seen_ids))
        return None
    pred_json = save_dir / f'{Path(opt.weight).stem}_predictions.json'
    LOGGER.info(f'\nEvaluating pycocotools mAP... saving {pred_json}...')
    pred_json.write_text(json.dumps(rows))
    if opt.task == 'test':
        return None
    if not rows:
        LOGGER.warning('WARNING: no detections above --conf-thres: pycocotools skipped (mAP 0)')
        return 0.0, 0.0
    if anno is None:
        LOGGER.warning('WARNING: no annotation JSON for this split (looked for <dataset>/annotations/instances_'
                       '<split>.json; set `annotations:` in the data YAML): pycocotools skipped')
        return None
    return evaluate_json(anno, pred_json, seen_ids)


def run_test(opt: argparse.Namespace) -> tuple:
    """Standalone evaluation; returns ((mP, mR, mAP@.5, mAP@.5:.95), per-class maps, (ms inference, NMS, total))."""
    data = load_data_config(opt.data, required=(opt.task,))
    check_writable(Path(opt.project) / opt.name)
    device = select_device(opt.device, opt.batch_size)
    # rect batches change shape: cuDNN autotuning would re-tune for each one (the reference's test.py leaves it off)
    torch.backends.cudnn.benchmark = False
    nc = 1 if opt.single_cls else data['nc']
    names = ['item'] if opt.single_cls else [str(n) for n in data['names']]
    model = load_model(opt, nc, device)
    loader, dataset, img_size = split_loader(model, opt, data, nc, device)
    save_dir = increment_path(Path(opt.project) / opt.name, opt.exist_ok)  # made once the inputs are known good
    save_dir.mkdir(parents=True, exist_ok=True)
    if opt.save_txt:
        warn_existing_labels(save_dir)
    anno = annotation_path(data, data[opt.task])
    coco_ids = CocoIds(nc, anno, opt.data.endswith('coco.yaml')) if opt.save_json else None
    eval_opt = EvalOptions(opt.conf_thres, opt.iou_thres, save_dir, names, opt.verbose, plots=True,
                           save_txt=opt.save_txt, save_hybrid=opt.save_hybrid, save_conf=opt.save_conf,
                           coco_ids=coco_ids, v5_metric=opt.v5_metric, augment=opt.augment)
    out, confusion = evaluate(model, loader, eval_opt)
    metrics, maps = summarize(out, eval_opt, confusion)
    t = per_image_ms(out)
    speed = (f'Speed: {t[0]:.1f}/{t[1]:.1f}/{t[2]:.1f} ms inference/NMS/total per {img_size:g}x{img_size:g} image '
             f'at batch-size {opt.batch_size:g}')
    LOGGER.info(speed)
    if model.dynamic and out.n_routed:
        LOGGER.info(routing_line(model, out.n_easy, out.n_routed, img_size))
    if opt.save_json:
        seen_ids = [coco_ids.image_id(p) for p in dataset.img_files]
        coco = write_json(opt, out.json_rows, save_dir, anno, seen_ids)
        if coco is not None:
            metrics = (*metrics[:2], coco[1], coco[0])
    if opt.save_results:
        with open(save_dir / f'{Path(opt.weight).stem}_results.txt', 'a') as f:
            f.write(f'map: {round(metrics[3], 3)}, map50: {round(metrics[2], 3)}, dy_thres: {opt.dy_thres}\n'
                    f'{speed}\n{"*" * 83}\n')
    labels_note = f", {len(list((save_dir / 'labels').glob('*.txt')))} labels saved" if opt.save_txt else ''
    LOGGER.info(f'Results saved to {save_dir}{labels_note}')
    return metrics, maps, t


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    run_cli(run_test, parse_opt(argv), LOGGER)

if __name__ == '__main__':
    main()
