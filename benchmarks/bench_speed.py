"""Speed of the dynamic detector as users feel it: latency (batch 1) and throughput (larger batches) for the easy
path, the hard path and 50/50 routing, with the achieved TFLOP/s (GPU rows: the paper's V100 FPS beside them,
for orientation).

    python benchmarks/bench_speed.py                                  # CPU: Dy-YOLOv7 at 640 and 320, batch 1 and 8
    python benchmarks/bench_speed.py --onnx                           # + the exported graphs on ONNX Runtime
    python benchmarks/bench_speed.py --plain --compile --bf16 --onnx  # CPU: every engine beside the in-run baseline
    python benchmarks/bench_speed.py --device 0 --half --batches 1 32 --cfgs cfg/dy-yolov7-step2.yaml \
        cfg/dy-yolov7x-step2.yaml cfg/dy-yolov7-w6-step2.yaml           # GPU: adds fp16 and the share of peak

The model is the fused inference model the scripts use (channels_last, inference_mode; fp16 on CUDA). Weights are
random (speed does not depend on them) except the router's, drawn wide so that images of different brightness get
different scores: the mixed rows route half of each batch (batch 1: alternately one easy and one hard image).
`--plain` adds the in-run baseline (the same fused weights in NCHW, whole batches): compare engines to it within
one run, never to times from another machine. `peak` is the share of the device's dense peak: on the CPU, of this
run's measured fp32 / bf16 matrix-multiply rate.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.inference import compile_paths, prepare_for_inference, prepare_input  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.cli import add_engine_flags  # noqa: E402
from utils.torch_utils import native_bf16, select_device, time_sync  # noqa: E402

# The DynamicDet paper: FPS on one V100, batch 1, fp16; (90 % easy, 0 % easy). Shown beside GPU rows as the
# paper's figure, never divided into ours (another GPU).
REFERENCE_V100_FPS = {'dy-yolov7': (110, 83), 'dy-yolov7x': (98, 64), 'dy-yolov7-w6': (74, 46)}
# Dense (no sparsity) peak TFLOP/s (fp32, fp16 tensor cores), from NVIDIA's product data sheets.
PEAK_TFLOPS = {'H100 SXM': (66.9, 989.4), 'H100 PCIe': (51.2, 756.0), 'H100': (66.9, 989.4), 'H200': (66.9, 989.4),
               'A100': (19.5, 312.0), 'V100': (15.7, 125.0), 'L4': (30.3, 121.0), 'A10': (31.2, 125.0)}


def device_peak(device: torch.device) -> tuple[float, float] | None:
    """Dense peak TFLOP/s: (fp32, fp16) for a known GPU name from its data sheet; on the CPU (fp32, bf16) as this
    run measures them (a large matrix multiply, the best a convolution could reach)."""
    if device.type != 'cuda':  # emulated bf16 (no AVX512-BF16/AMX) runs at ~1 GFLOP/s: a small matrix tells that
        return matmul_tflops(torch.float32), matmul_tflops(torch.bfloat16, 2048 if native_bf16() else 256)
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def matmul_tflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """TFLOP/s of an n x n matrix multiply on the CPU in dtype: the median of reps after a warm-up."""
    a, b = (torch.rand(n, n).to(dtype) for _ in range(2))
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def random_model(cfg: str) -> Model:
    """Seeded random weights, eval mode, with a router whose scores spread over images."""
    torch.manual_seed(0)
    model = Model(cfg).eval()
    with torch.no_grad():
        for p in model.router.parameters():
            p.normal_(0, 1.0)
        spread_router(model)
    return model


def build(cfg: str, device: torch.device, precision: str = 'fp32') -> Model:
    """The fused inference model as test.py prepares it, with random_model's weights."""
    return prepare_for_inference(random_model(cfg), device, half=precision == 'fp16', bf16=precision == 'bf16')


def plain_model(cfg: str, device: torch.device) -> Model:
    """The in-run baseline: random_model's weights fused, fp32, NCHW, whole batches (`model.fuse().eval()`)."""
    return random_model(cfg).fuse().eval().to(device)


def spread_router(model: Model, size: int = 256, gap: float = 4.0) -> None:
    """Rescale the router's last layer so that a dark and a bright random image score `gap` logits apart around 0:
    random weights alone saturate the sigmoid on the wide models (every score 1.0, no mixed routing)."""
    logits = []
    hook = model.router.layer2.register_forward_hook(lambda module, args, out: logits.append(out.flatten()))
    probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    model.get_score = True
    model(probe * torch.tensor([0.05, 1.0]).view(2, 1, 1, 1))
    model.get_score = False
    hook.remove()
    z, layer = logits[0].double(), model.router.layer2
    factor = gap / float(z[1] - z[0])
    layer.weight.mul_(factor)
    layer.bias.copy_(factor * (layer.bias - z.mean()))


def batches_for(model: Model, path: str, batch: int, size: int) -> tuple[list[torch.Tensor], float]:
    """The batches timed in turn and the threshold: all easy (0), all hard (2) or half of the images easy."""
    n = max(batch, 2)
    brightness = torch.linspace(0.05, 1.0, n).view(n, 1, 1, 1)
    pool = prepare_input(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * brightness,
                         model)
    if path != 'mixed':
        return [pool[:batch]], (0.0 if path == 'easy' else 2.0)
    with torch.inference_mode():
        model.get_score = True
        scores = model(pool)[:, 0].float()
        model.get_score = False
    order = scores.argsort()
    if batch == 1:  # the lowest and the highest score, alternately, threshold between them
        return [pool[order[:1]], pool[order[-1:]]], float(scores[order[:2]].mean())
    lo, hi = scores[order[batch // 2 - 1]], scores[order[batch // 2]]
    if not lo < hi:
        raise SystemExit(f'error: router scores tie at the median ({float(lo)}): no 50/50 split to time')
    return [pool], float((lo + hi) / 2)


def seconds_per_batch(forward: Callable, batches: list[torch.Tensor], thres: float, reps: int) -> float:
    """Seconds per batch of forward(x, thres): the median of each batch (after two warm-up passes), averaged over
    the batches."""
    device = batches[0].device
    times: list[list[float]] = [[] for _ in batches]
    with torch.inference_mode():
        for _ in range(2):  # oneDNN builds its kernels for a shape on the first calls
            for x in batches:
                forward(x, thres)
        for _ in range(reps):
            for x, own in zip(batches, times):
                t0 = time_sync(device)
                forward(x, thres)
                own.append(time_sync(device) - t0)
    return statistics.mean(statistics.median(own) for own in times)  # batch 1 mixed: one easy, one hard image


def torch_forward(model: Model) -> Callable:
    """The routed eval forward of the PyTorch model."""
    def forward(x: torch.Tensor, thres: float):
        model.dy_thres = thres
        return model(x)
    return forward


def onnx_forward(model: Model, size: int, folder: Path) -> Callable:
    """The same model exported (export.py's three graphs) and routed by models.exported on ONNX Runtime."""
    from models.export import export_onnx, split_model
    from models.exported import ExportedDynamicModel
    parts, examples, manifest = split_model(model, (size, size), 1, True)
    export_onnx(parts, examples, manifest, folder / f'bench{size}')
    runner = ExportedDynamicModel(manifest.save(folder / f'bench{size}_export.yaml'), 'onnx')

    def forward(x: torch.Tensor, thres: float):
        runner.dy_thres = thres
        return runner(x)
    return forward


def row(cfg: str, model: Model, forward: tuple[str, Callable], size: int, flops: dict[str, float], batch: int,
        path: str, precision: str, reps: int, peak: tuple[float, float] | None) -> str:
    """One printed line of the table (flops: the model's GFLOPs per path at size)."""
    batches, thres = batches_for(model, path, batch, size)
    s = seconds_per_batch(forward[1], batches, thres, reps)
    gflops = {'easy': flops['easy'], 'hard': flops['hard'], 'mixed': (flops['easy'] + flops['hard']) / 2}[path]
    ips = batch / s
    tflops = gflops * ips / 1e3
    share = f'{100 * tflops / peak[precision != "fp32"]:5.1f}%' if peak else '     -'
    name = Path(cfg).stem.rsplit('-step', 1)[0]
    ref = reference_figure(name, path, size, batch, model)
    return (f'{name:<14} {size:>5} {batch:>5} {path:<6} {precision:<5} {forward[0]:<6} '
            f'{1e3 * s / batch:>10.2f} '
            f'{ips:>9.1f} {gflops:>8.4g} {tflops:>8.3f} {share} {ref}')


def reference_figure(name: str, path: str, size: int, batch: int, model: Model) -> str:
    """The paper's V100 figure for GPU rows at batch 1 (for orientation: another GPU, not a ratio)."""
    device = next(model.parameters()).device
    if device.type == 'cuda' and batch == 1 and name in REFERENCE_V100_FPS and path in ('easy', 'hard'):
        return f'paper {REFERENCE_V100_FPS[name][path == "hard"]} FPS (V100, {"90" if path == "easy" else "0"}% easy)'
    return ''


def precisions(opt: argparse.Namespace, device: torch.device) -> list[str]:
    """fp32, plus fp16 (--half, CUDA) and bf16 (--bf16, CPU)."""
    cuda = device.type == 'cuda'
    return ['fp32'] + (['fp16'] if opt.half and cuda else []) + (['bf16'] if opt.bf16 and not cuda else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfgs', nargs='+', default=['cfg/dy-yolov7-step2.yaml'])
    p.add_argument('--sizes', type=int, nargs='+', default=[640, 320])
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    p.add_argument('--paths', nargs='+', choices=('easy', 'hard', 'mixed'), default=['easy', 'hard', 'mixed'])
    p.add_argument('--reps', type=int, default=3, help='timed repetitions per cell')
    p.add_argument('--device', default='cpu')
    p.add_argument('--half', action='store_true', help='also fp16 rows (CUDA)')
    p.add_argument('--onnx', action='store_true', help='also the exported graphs on ONNX Runtime (fp32)')
    p.add_argument('--whole-batch', action='store_true', help='also rows without CPU chunking (chunk_pixels 0)')
    p.add_argument('--plain', action='store_true',
                   help='also the in-run baseline: the fused model in NCHW, whole batches (fp32 rows)')
    add_engine_flags(p)  # --compile [MODE]: also compiled rows; --bf16: also bfloat16 rows (CPU)
    opt = p.parse_args()
    device = select_device(opt.device)
    peak = device_peak(device)
    kinds = 'fp16 data sheet' if device.type == 'cuda' else 'bf16, measured: 2048x2048 matmul'
    print(f'device: {torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}; peak TFLOP/s (fp32, {kinds}): '
          + (f'{peak[0]:.3f}, {peak[1]:.3f}' if peak else 'unknown'))
    print(f'{"model":<14} {"size":>5} {"batch":>5} {"path":<6} {"dtype":<5} {"engine":<6} {"ms/img":>10} {"img/s":>9} '
          f'{"GFLOPs":>8} {"TFLOP/s":>8} {"peak":>6} reference')
    for cfg in opt.cfgs:
        for precision in precisions(opt, device):
            model = build(cfg, device, precision)
            for size in opt.sizes:
                engines, flops = [('torch', torch_forward(model))], model.flops(size)
                if opt.plain and precision == 'fp32':
                    engines.insert(0, ('plain', torch_forward(plain_model(cfg, device))))
                if opt.whole_batch and model.chunk_pixels:
                    whole = copy.copy(model)  # a shallow copy: same weights, own chunk setting
                    whole.chunk_pixels = 0
                    engines.append(('whole', torch_forward(whole)))
                if opt.compile:
                    compiled = compile_paths(copy.copy(model), opt.compile)  # a shallow copy: same weights, own compiled stages
                    engines.append(('compil', torch_forward(compiled)))
                if opt.onnx and precision == 'fp32':
                    engines.append(('ort', onnx_forward(model, size, Path(tempfile.mkdtemp()))))
                for batch in opt.batches:
                    for path in opt.paths:
                        for engine in engines:
                            print(row(cfg, model, engine, size, flops, batch, path, precision, opt.reps, peak), flush=True)


if __name__ == '__main__':
    main()
