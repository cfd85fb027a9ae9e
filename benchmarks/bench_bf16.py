"""How far `--bf16` moves the outputs of fp32, on real images: router scores and route flips, and both paths'
boxes, Dy-YOLOv7 at 640 on coco128 (the same fused weights in both precisions; both prepared as test.py prepares).

    python benchmarks/bench_bf16.py                                  # ../shared/data/coco128 images, random weights
    python benchmarks/bench_bf16.py --images DIR --weight W.pt --cfg cfg/dy-yolov7-step2.yaml --nc 80

Random weights get a router rescaled so that its scores spread over images (bench_speed.py's), else every score
is 1.0 and no route can flip. A route flips when fp32 and bf16 put an image on opposite sides of a threshold;
it is counted at each of the 11 thresholds get_dynamic_thres.py would print for the fp32 scores. Boxes: for every
prediction fp32 gives an objectness above --conf (default 0.001, test.py's), the largest and the median |Δ| of x, y, w, h in pixels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from bench_speed import build  # noqa: E402

from models.inference import load_for_inference, prepare_input  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.data.letterbox import letterbox  # noqa: E402
from utils.evaluation.path_records import STAGES  # noqa: E402
from utils.evaluation.path_records import _both_paths as both_paths  # noqa: E402
from utils.evaluation.sweep import thresholds_from_scores  # noqa: E402
from utils.torch_utils import BF16_MODES  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / 'shared' / 'data' / 'coco128' / 'images'


def load_models(opt: argparse.Namespace) -> dict[str, Model]:
    """The fp32 and the bf16 model, with the same weights."""
    if not opt.weight:
        return {p: build(opt.cfg, torch.device('cpu'), p, bf16_mode=opt.bf16) for p in ('fp32', 'bf16')}
    return {p: load_for_inference(opt.cfg, opt.weight, opt.nc, 'cpu', None, opt.bf16 if p == 'bf16' else None)
            for p in ('fp32', 'bf16')}


def outputs(model: Model, x: torch.Tensor, seconds: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """Router score and both paths' decoded predictions (fp32) for one image, through the sweep's pass over both
    paths (backbone 1 once); its stage times are added to `seconds`."""
    with torch.inference_mode():
        score, out = both_paths(model, prepare_input(x, model), seconds)
    return float(score), {path: decoded_and_raw[0].float() for path, decoded_and_raw in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--images', default=str(DEFAULT_IMAGES), help='folder of images (searched recursively)')
    p.add_argument('--cfg', default=str(ROOT / 'cfg' / 'dy-yolov7-step2.yaml'))
    p.add_argument('--weight', default='', help='step-2 weights (default: random weights, spread router)')
    p.add_argument('--nc', type=int, default=80, help='classes of --weight')
    p.add_argument('--img', type=int, default=640)
    p.add_argument('--conf', type=float, default=0.001, help='fp32 objectness above which boxes are compared')
    p.add_argument('--max-images', type=int, default=0, help='0: all')
    p.add_argument('--bf16', default='all', choices=BF16_MODES, help="--bf16's MODE (keep-routes: fp32 backbone 1)")
    opt = p.parse_args()
    files = sorted(f for f in Path(opt.images).rglob('*') if f.suffix.lower() in ('.jpg', '.jpeg', '.png'))
    files = files[:opt.max_images] if opt.max_images else files
    if not files:
        raise SystemExit(f'error: {opt.images}: no images; pass --images DIR')
    torch.manual_seed(0)
    models = load_models(opt)
    scores = {k: [] for k in models}
    deltas: dict[str, list[np.ndarray]] = {'easy': [], 'hard': []}
    stage_seconds = {k: dict.fromkeys(STAGES, 0.0) for k in models}
    for f in files:
        img = letterbox(cv2.imread(str(f)), opt.img, auto=False)[0]
        x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))[None].float() / 255
        out = {}
        for k, model in models.items():
            out[k] = outputs(model, x, stage_seconds[k])
            scores[k].append(out[k][0])
        for path in deltas:
            ref, low = out['fp32'][1][path][0], out['bf16'][1][path][0]
            keep = ref[:, 4] > opt.conf
            deltas[path].append((ref[keep, :4] - low[keep, :4]).abs().numpy())
    report(files, scores, deltas, {k: sum(v.values()) for k, v in stage_seconds.items()})


def report(files: list, scores: dict, deltas: dict, seconds: dict) -> None:
    """Print route flips per threshold and box differences per path."""
    s32, s16 = np.array(scores['fp32']), np.array(scores['bf16'])
    print(f'{len(files)} images; router scores fp32 {s32.min():.4g} … {s32.max():.4g}; '
          f'largest |Δscore| {np.abs(s32 - s16).max():.3g}; seconds fp32 {seconds["fp32"]:.0f}, bf16 {seconds["bf16"]:.0f} '
          '(both paths per image)')
    flips = [int(((s32 >= float(t)) != (s16 >= float(t))).sum()) for t in thresholds_from_scores(s32)]
    print('route flips at the 11 thresholds of the fp32 scores (0, 10th … 90th percentile, 1):', flips)
    for path, d in deltas.items():
        d = np.concatenate(d) if d else np.zeros((0, 4))
        if not len(d):
            print(f'{path} path: no prediction above --conf')
            continue
        print(f'{path} path: {len(d)} boxes above --conf; |Δ| of x, y, w, h: max {d.max():.3f} px, '
              f'median {np.median(d):.2g} px; boxes off by more than 1 px: {int((d.max(1) > 1).sum())}')


if __name__ == '__main__':
    main()
