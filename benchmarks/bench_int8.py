"""What int8 costs in accuracy and routes: the project's evaluator on a trained model, PyTorch fp32 against its
OpenVINO graphs at fp32, int8 (export.py --int8), int8 with backbone 1 + router in fp32 (--int8 keep-routes), and the
alternatives export.py does not take: NNCF's defaults (the recipe before: overflow fix on the first layer only,
activation ranges as the mean over images of each one's min/max),
each head's 1x1 output convolutions quantized, nothing kept in fp32 (router and IDetect layer quantized too), on the
same letterboxed images.

    python benchmarks/bench_int8.py        # the demo's model: runs/demo (python demo.py), its 128 held-out images
    python benchmarks/bench_int8.py --weight W.pt --cfg cfg/dy-yolov7-step2.yaml --data data/coco.yaml --img 640

For each engine: mAP@.5:.95 (and @.5) with every image on the easy path, every image on the hard path, and at the
threshold that sends half of the PyTorch model's images down the easy path; the largest router score change; and
route flips against PyTorch fp32 at the 11 thresholds get_dynamic_thres.py prints for its scores. Every engine
sees the same square letterboxed images (the exported graphs take one size), so the differences are the engine's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.export import export_onnx, split_model  # noqa: E402
from models.exported_model import ExportedModel  # noqa: E402
from models.inference import load_for_inference  # noqa: E402
from models.openvino_export import DEFAULT_CALIB_IMAGES, export_openvino, quantize_int8  # noqa: E402
from utils.cli import HelpFormatter  # noqa: E402
from utils.data.calibration import calibration_images  # noqa: E402
from utils.data.data_config import load_data_config  # noqa: E402
from utils.data.dataloaders import create_dataloader  # noqa: E402
from utils.evaluation.path_records import collect_path_records, routed_map  # noqa: E402
from utils.evaluation.sweep import thresholds_from_scores  # noqa: E402

DEMO = ROOT / 'runs' / 'demo'


def exported_engines(model, opt: argparse.Namespace, folder: Path) -> dict[str, ExportedModel]:
    """The model's OpenVINO graphs: fp32, int8 (router and decode in fp32), int8 with nothing kept in fp32."""
    parts, examples, manifest = split_model(model, (opt.img, opt.img), 1, True)
    base = folder / 'model'
    export_onnx(parts, examples, manifest, base)
    export_openvino(manifest, base)
    fp32 = manifest.save(folder / 'model_export.yaml')
    images, source = calibration_images(opt.data, (opt.img, opt.img), opt.calib_images)
    print(f'calibration: {source}', flush=True)
    variants = {'openvino fp32': fp32,
                'openvino int8': quantize_int8(manifest, folder, base, images, source),
                'int8 keep-routes': quantize_int8(manifest, folder, folder / 'routes', images, source,
                                                  keep_routes=True),
                'int8, NNCF defaults': quantize_int8(manifest, folder, folder / 'nncf', images, source,
                                                     recipe='nncf'),
                'int8, head convs int8': quantize_int8(manifest, folder, folder / 'convs', images, source,
                                                       head_convs=False),
                'int8, nothing kept fp32': quantize_int8(manifest, folder, folder / 'bare', images, source,
                                                         keep_fp32=False)}
    if opt.bias_correction:
        variants['int8, full bias correction'] = quantize_int8(manifest, folder, folder / 'bc', images, source,
                                                               fast_bias_correction=False)
    return {name: ExportedModel(path, 'openvino') for name, path in variants.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--cfg', default=str(ROOT / 'cfg' / 'dy-yolov7-tiny-step2.yaml'))
    p.add_argument('--weight', default=str(DEMO / 'train' / 'step2' / 'weights' / 'last.pt'))
    p.add_argument('--data', default=str(DEMO / 'data' / 'data.yaml'))
    p.add_argument('--img', type=int, default=128)
    p.add_argument('--calib-images', type=int, default=DEFAULT_CALIB_IMAGES)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--bias-correction', action='store_true', help="also NNCF's full (slow) bias correction")
    opt = p.parse_args()
    if not Path(opt.weight).is_file():
        sys.exit(f'{opt.weight}: no such checkpoint; run python demo.py first (or pass --weight/--cfg/--data)')
    data = load_data_config(opt.data)
    model = load_for_inference(opt.cfg, opt.weight, int(data['nc']), torch.device('cpu'))
    engines = {'pytorch fp32': model, **exported_engines(model, opt, Path(tempfile.mkdtemp()))}
    loader = create_dataloader(data['val'], opt.img, opt.batch_size, 32, pad=0.5, rect=False, workers=0)[0]
    records = {name: collect_path_records(engine, loader) for name, engine in engines.items()}
    reference = records['pytorch fp32']
    thresholds = [float(t) for t in thresholds_from_scores(reference.scores.numpy())]
    print(f'{len(reference)} images of {opt.data} at {opt.img}x{opt.img}; torch {torch.__version__}')
    print(f'{"engine":<26} {"all easy":>15} {"all hard":>15} {"50 % easy":>15} {"max |Δscore|":>12}  '
          'route flips at the 11 thresholds')
    for name, rec in records.items():
        half = rec.scores.numpy() >= thresholds[5]
        cells = [routed_map(rec, mask) for mask in (np.ones(len(rec), bool), np.zeros(len(rec), bool), half)]
        flips = [int(((rec.scores.numpy() >= t) != (reference.scores.numpy() >= t)).sum()) for t in thresholds]
        delta = float(np.abs(rec.scores.numpy() - reference.scores.numpy()).max())
        print(f'{name:<26} ' + ' '.join(f'{m:.4f}/{m50:.3f}'.rjust(15) for m50, m in cells)
              + f' {delta:>12.4f}  {" ".join(map(str, flips))}')


if __name__ == '__main__':
    main()
