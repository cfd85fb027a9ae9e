r"""Export a dynamic model (step 2) as three graphs — backbone 1 + router, head 1, backbone 2 + head 2 — and a
manifest, so that ONNX Runtime, OpenVINO or TorchScript runs the network and each image is still routed by its own
score (extension; the reference has no export). The runner routes in NumPy but imports torch (it accepts torch
tensors and loads TorchScript), so PyTorch must still be installed where it runs.

    python export.py --cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --num-classes 80 \
        --img-size 640 --include onnx torchscript

Writes <weight stem>_part1/_easy/_hard.onnx (and .torchscript, OpenVINO .xml/.bin) and <weight stem>_export.yaml
beside --weight (or in --out). Run them with models.exported.ExportedDynamicModel(manifest, 'onnx' | 'torchscript' |
'openvino'), or evaluate them with test.py / get_dynamic_thres.py / detect.py --weight <manifest>.

int8 for CPUs (OpenVINO + NNCF post-training quantization; router and box decode kept in fp32):

    python export.py --cfg cfg/dy-yolov7-step2.yaml --weight weights/dy-yolov7.pt --num-classes 80 \
        --img-size 640 --include openvino --int8 --data data/coco.yaml --calib-images 300

also writes <weight stem>_int8_part1/_easy/_hard.xml and <weight stem>_int8_export.yaml. `--int8 keep-routes` leaves backbone 1
and the router in fp32, so every route is fp32's and only the heads run int8.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from models.export import DEFAULT_OPSET, ExportError, export_onnx, export_torchscript, onnx_opsets, split_model
from models.graph import ConfigError
from models.inference import load_for_inference
from models.openvino_export import DEFAULT_CALIB_IMAGES, export_openvino, quantize_int8
from utils.cli import (
    DEFAULT_DY_THRES,
    HelpFormatter,
    check_img_size,
    check_writable,
    fail,
    refuse_nan_dy_thres,
    run_cli,
)
from utils.data.calibration import calibration_images
from utils.torch_utils import select_device

LOGGER = logging.getLogger('export')
FORMATS = ('onnx', 'torchscript', 'openvino')


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """Export flags."""
    p = argparse.ArgumentParser(prog='export.py', description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--cfg', default='', help='step-2 model.yaml path')
    p.add_argument('--weight', '--weights', default='', help='model.pt path')
    p.add_argument('--num-classes', type=int, default=80, help='number of classes')
    p.add_argument('--img-size', nargs='+', type=int, default=[640], help='image size: one value or h w')
    p.add_argument('--batch-size', type=int, default=1, help='example batch (the batch axis stays dynamic)')
    p.add_argument('--static-batch', action='store_true', help='fix the batch axis to --batch-size')
    p.add_argument('--dy-thres', type=float, default=DEFAULT_DY_THRES,
                   help='threshold written to the manifest: ExportedDynamicModel\'s unless given another (test.py '
                        'and detect.py apply their own --dy-thres)')
    p.add_argument('--include', nargs='+', default=['onnx'], choices=FORMATS,
                   help='formats to write (openvino is converted from the ONNX graphs, which are written too)')
    p.add_argument('--int8', nargs='?', const='all', default=None, choices=('all', 'keep-routes'), metavar='MODE',
                   help='also quantize the OpenVINO graphs to int8 (needs --data); MODE all (when --int8 is given '
                        'alone): only the router and the box decode stay fp32; keep-routes: backbone 1 and the router '
                        'stay fp32 too, so every route is fp32\'s')
    p.add_argument('--data', default='', help='data.yaml whose train split calibrates --int8')
    p.add_argument('--calib-images', type=int, default=DEFAULT_CALIB_IMAGES,
                   help='calibration images for --int8 (evenly spaced over the train split)')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset')
    p.add_argument('--device', default='cpu', help='device to trace on (cpu or a cuda index)')
    p.add_argument('--out', default='', help='output folder (default: beside --weight)')
    opt = p.parse_args(argv)
    check_export_flags(p, opt)
    return opt


def check_export_flags(p: argparse.ArgumentParser, opt: argparse.Namespace) -> None:
    """argparse-style one-line errors for values no export can use (before the model is loaded)."""
    if len(opt.img_size) not in (1, 2) or min(opt.img_size) < 32 or opt.batch_size < 1:
        p.error('--img-size takes one or two sizes of at least 32, --batch-size at least 1')
    if opt.num_classes < 1:
        p.error(f'--num-classes {opt.num_classes}: must be at least 1 (the class count the checkpoint was trained for)')
    opsets = onnx_opsets()
    if 'onnx' in opt.include and opt.opset not in opsets:
        p.error(f'--opset {opt.opset}: this torch exports opsets {opsets.start} to {opsets.stop - 1}; '
                f'the default is {DEFAULT_OPSET}')
    refuse_nan_dy_thres(p, opt.dy_thres)
    if opt.int8 and not opt.data:
        p.error('--int8 calibrates on images: pass --data DATA.yaml (its train split is used)')
    if opt.int8 and 'openvino' not in opt.include:
        opt.include.append('openvino')
    if 'openvino' in opt.include and 'onnx' not in opt.include:
        opt.include.append('onnx')  # the OpenVINO graphs are converted from them
    if opt.calib_images < 1:
        p.error(f'--calib-images {opt.calib_images}: must be at least 1 (about 300 is usual)')


def run(opt: argparse.Namespace) -> Path:
    """Load strictly, split, export each format, write the manifest; returns the manifest path."""
    device = select_device(opt.device)
    model = load_for_inference(opt.cfg, opt.weight, opt.num_classes, device)
    model.dy_thres = opt.dy_thres
    stride = int(model.stride.max())
    size = [check_img_size(s, stride) for s in (opt.img_size * 2)[:2]]
    if not model.dynamic:
        raise ConfigError(f'{opt.cfg}: has no router (not a step-2 config); export a step-2 model')
    folder = Path(opt.out) if opt.out else Path(opt.weight).parent
    check_writable(folder, '--out')  # by default beside --weight, which may be a read-only folder
    parts, examples, manifest = split_model(model, tuple(size), opt.batch_size, not opt.static_batch)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / Path(opt.weight).stem
    written = []
    if 'onnx' in opt.include:
        if importlib.util.find_spec('onnx') is None:
            raise ExportError('ONNX export needs the onnx package: pip install onnx (or --include torchscript)')
        written += export_onnx(parts, examples, manifest, base, opt.opset)
    if 'torchscript' in opt.include:
        written += export_torchscript(parts, examples, manifest, base)
    if 'openvino' in opt.include:
        written += export_openvino(manifest, base)
    manifest.gflops = model.flops(tuple(size))
    path = manifest.save(base.with_name(f'{base.name}_export.yaml'))
    LOGGER.info('Exported %s and the manifest %s', ', '.join(str(p) for p in written), path)
    if opt.int8:
        images, source = calibration_images(opt.data, tuple(size), opt.calib_images)
        LOGGER.info(f'int8: quantizing the three graphs with NNCF on {source}')
        int8 = quantize_int8(manifest, folder, base, images, source, keep_routes=opt.int8 == 'keep-routes')
        LOGGER.info('int8 graphs and their manifest: %s (run with --engine openvino)', int8)
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI entry: one-line errors for bad input, never a traceback."""
    try:
        run_cli(run, parse_opt(argv), LOGGER)
    except ExportError as e:
        fail(str(e))


if __name__ == '__main__':
    main()
