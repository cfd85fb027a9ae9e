"""Speed of the dynamic detector as users feel it: latency (batch 1) and throughput (larger batches) for the easy
path, the hard path and 50/50 routing, with the achieved TFLOP/s (GPU rows: the paper's V100 FPS beside them,
for orientation).

    python benchmarks/bench_speed.py                                  # CPU: Dy-YOLOv7 at 640 and 320, batch 1 and 8
    python benchmarks/bench_speed.py --onnx                           # + the exported graphs on ONNX Runtime
    python benchmarks/bench_speed.py --plain --unpacked --compile --bf16 --onnx  # CPU: every engine, one run
    python benchmarks/bench_speed.py --plain --bf16 --openvino fp32 bf16 int8 --batches 1  # CPU deployment engines
    python benchmarks/bench_speed.py --sizes 640 --batches 1 --paths easy hard --plain --onnx --bf16 \
        --openvino fp32 int8 int8-bf16 --ov-dynamic --reps 4        # OpenVINO static vs free batch axis, each hint
    python benchmarks/bench_speed.py --sizes 640 --batches 8 --paths mixed --openvino int8 --ov-both-modes
                                                                      # OpenVINO latency vs throughput mode (img/s)
    python benchmarks/bench_speed.py --device 0 --half --batches 1 32 --cfgs cfg/dy-yolov7-step2.yaml \
        cfg/dy-yolov7x-step2.yaml cfg/dy-yolov7-w6-step2.yaml           # GPU: adds fp16 and the share of peak

The model (`torch`) is the fused inference model the scripts use (channels_last, inference_mode; fp16 on CUDA;
on the CPU oneDNN-packed convolutions with SiLU fused). Weights are random (speed does not depend on them) except
the router's, drawn wide so that images of different brightness get different scores: the mixed rows route half of
each batch (batch 1: alternately one easy and one hard image). `--plain` adds the in-run baseline (the same fused
weights in NCHW, whole batches: `model.fuse().eval()`), and `x plain` each engine's speed-up over it in the same
cell; `--unpacked` the CPU preparation without packed convolutions. Within a cell the engines run in turn, one
forward each per repetition, so a slow spell of a shared machine falls on all of them. `peak` is the share of the
device's dense peak: on the CPU, of this run's fastest fp32 / bf16 dense kernel (cpu_peak_tflops).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.inference import compile_paths, prepare_for_inference, prepare_input  # noqa: E402
from models.yolo import Model  # noqa: E402
from utils.cli import HelpFormatter, add_engine_flags  # noqa: E402
from utils.torch_utils import native_bf16, select_device, time_sync  # noqa: E402

# The DynamicDet paper: FPS on one V100, batch 1, fp16; (90 % easy, 0 % easy). Shown beside GPU rows as the
# paper's figure, never divided into ours (another GPU).
REFERENCE_V100_FPS = {'dy-yolov7': (110, 83), 'dy-yolov7x': (98, 64), 'dy-yolov7-w6': (74, 46)}
OPENVINO_ROWS = ('fp32', 'bf16', 'int8', 'int8-bf16')
# Dense (no sparsity) peak TFLOP/s (fp32, fp16 tensor cores), from NVIDIA's product data sheets.
PEAK_TFLOPS = {'H100 SXM': (66.9, 989.4), 'H100 PCIe': (51.2, 756.0), 'H100': (66.9, 989.4), 'H200': (66.9, 989.4),
               'A100': (19.5, 312.0), 'V100': (15.7, 125.0), 'L4': (30.3, 121.0), 'A10': (31.2, 125.0)}


def device_peak(device: torch.device) -> tuple[float, float] | None:
    """Dense peak TFLOP/s: (fp32, fp16) for a known GPU name from its data sheet; on the CPU (fp32, bf16) as this
    run measures them (the fastest dense kernel, the best a convolution could reach)."""
    if device.type != 'cuda':  # emulated bf16 (no AVX512-BF16/AMX) runs at ~1 GFLOP/s: a small problem tells that
        return cpu_peak_tflops(torch.float32), cpu_peak_tflops(torch.bfloat16, 1 if native_bf16() else 8)
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def cpu_peak_tflops(dtype: torch.dtype, shrink: int = 1) -> float:
    """The best TFLOP/s of three dense kernels in dtype on the CPU: a 2048^3 matrix multiply (MKL's fp32 GEMM ran at
    half oneDNN's rate on an AMD EPYC), and oneDNN's channels_last 1x1 and 3x3 convolutions (2048 channels on
    32 x 64, 256 channels on 64 x 64); `shrink` divides the sizes (emulated bf16)."""
    n, c = 2048 // shrink, 256 // shrink
    a, b = (torch.rand(n, n).to(dtype) for _ in range(2))
    x1 = torch.rand(1, n, 32, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    x3 = torch.rand(1, c, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    w1, w3 = torch.rand(n, n, 1, 1).to(dtype), torch.rand(c, c, 3, 3).to(dtype)
    kernels = ((lambda: torch.mm(a, b), 2 * n ** 3), (lambda: F.conv2d(x1, w1), 2 * n * n * 32 * 64),
               (lambda: F.conv2d(x3, w3, padding=1), 2 * c * c * 9 * 64 * 64))
    with torch.inference_mode():
        return max(flops / _median_seconds(kernel) for kernel, flops in kernels) / 1e12


def _median_seconds(fn: Callable, reps: int = 5) -> float:
    """Median seconds of fn() over reps calls after a warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_model(cfg: str) -> Model:
    """Seeded random weights, eval mode, with a router whose scores spread over images."""
    torch.manual_seed(0)
    model = Model(cfg).eval()
    with torch.no_grad():
        for p in model.router.parameters():
            p.normal_(0, 1.0)
        spread_router(model)
    return model


def build(cfg: str, device: torch.device, precision: str = 'fp32', packed: bool = True,
          bf16_mode: str = 'all') -> Model:
    """The fused inference model as test.py prepares it, with random_model's weights (`packed` False: without the
    oneDNN-packed convolutions, as test.py prepared it before them; `bf16_mode`: --bf16's MODE for bf16)."""
    return prepare_for_inference(random_model(cfg), device, half=precision == 'fp16',
                                 bf16=bf16_mode if precision == 'bf16' else None, packed=packed,
                                 retain_memory=True)  # as the scripts run it


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


Timer = Callable[[int], float]  # runs batch i of a cell once, returns its seconds


def interleaved_seconds(timers: list[tuple[Timer, int]], reps: int) -> list[float]:
    """Seconds per batch of each (timer, number of batches): every engine runs once per repetition, in turn, so
    that a slow spell of the machine falls on all of them; per engine, the median of each batch (after two warm-up
    passes: oneDNN builds its kernels for a shape on the first calls), averaged over its batches (batch 1 mixed:
    one easy and one hard image)."""
    for run, n in timers:
        for i in [*range(n)] * 2:
            run(i)
    times = [[[] for _ in range(n)] for _, n in timers]
    for _ in range(reps):
        for (run, n), own in zip(timers, times):
            for i in range(n):
                own[i].append(run(i))
    return [statistics.mean(statistics.median(t) for t in own) for own in times]


def local_timer(model: Model, forward: Callable) -> Callable[[str, int, int], tuple[Timer, int]]:
    """For a (path, batch, size) cell: a Timer of forward on batches_for(model, ...) in this process, and their
    number."""
    def cell(path: str, batch: int, size: int) -> tuple[Timer, int]:
        batches, thres = batches_for(model, path, batch, size)
        device = batches[0].device

        def run(i: int) -> float:
            with torch.inference_mode():
                t0 = time_sync(device)
                forward(batches[i], thres)
                return time_sync(device) - t0
        return run, len(batches)
    return cell


class FreshProcessBaseline:
    """The plain baseline (plain_model) timed in a fresh process: prepare_for_inference changes process-wide
    state on the CPU (glibc malloc keeps freed memory), which a user's `model.fuse().eval()` process does not
    have. One forward at a time, on request, so it alternates with this process's engines."""

    def __init__(self, cfg: str) -> None:
        ctx = multiprocessing.get_context('spawn')
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_baseline_worker, args=(child, cfg, torch.get_num_threads()), daemon=True)
        self.process.start()

    def __call__(self, path: str, batch: int, size: int) -> tuple[Timer, int]:
        self.conn.send(('cell', path, batch, size))
        n = self.conn.recv()

        def run(i: int) -> float:
            self.conn.send(('run', i))
            return self.conn.recv()
        return run, n


def _baseline_worker(conn, cfg: str, threads: int) -> None:
    """FreshProcessBaseline's process: builds the plain model, then answers 'cell' (its batch count) and 'run'
    (one forward's seconds) until the pipe closes."""
    torch.set_num_threads(threads)
    cell = local_timer(model := plain_model(cfg, torch.device('cpu')), torch_forward(model))
    run = None
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == 'cell':
            run, n = cell(*message[1:])
            conn.send(n)
        else:
            conn.send(run(message[1]))


def torch_forward(model: Model) -> Callable:
    """The routed eval forward of the PyTorch model."""
    def forward(x: torch.Tensor, thres: float):
        model.dy_thres = thres
        return model(x)
    return forward


def exported_timer(model: Model, backend: str = 'onnx', precision: str = 'fp32', static_shapes: bool = True,
                   mode: str = 'latency') -> Callable[[str, int, int], tuple[Timer, int]]:
    """local_timer of the same model exported (export.py's three graphs, once per image size) and routed by
    models.exported: on ONNX Runtime, or OpenVINO at fp32 / bf16 / int8 / int8 with the bf16 hint for what int8
    leaves unquantized (int8: NNCF on 8 random images, which is enough for speed, not for accuracy;
    benchmarks/bench_int8.py measures that); static_shapes False: OpenVINO with the batch axis left free."""
    from models.export import export_onnx, split_model
    from models.exported import ExportedDynamicModel
    from models.openvino_export import export_openvino, quantize_int8
    folder, runners = Path(tempfile.mkdtemp()), {}

    def runner_for(size: int) -> ExportedDynamicModel:
        parts, examples, manifest = split_model(model, (size, size), 1, True)
        base = folder / f'bench{size}'
        export_onnx(parts, examples, manifest, base)
        if backend == 'openvino':
            export_openvino(manifest, base)
        path = manifest.save(folder / f'bench{size}_export.yaml')
        if precision.startswith('int8'):
            images = [torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(i)).numpy()
                      for i in range(8)]
            path = quantize_int8(manifest, folder, base, images, '8 random images (speed only)')
        hint = 'bf16' if precision in ('bf16', 'int8-bf16') else 'fp32'
        return ExportedDynamicModel(path, backend, precision=hint, threads=torch.get_num_threads(),
                                    mode=mode if backend == 'openvino' else 'latency', static_shapes=static_shapes)

    def cell(path: str, batch: int, size: int) -> tuple[Timer, int]:
        if size not in runners:
            runners[size] = runner_for(size)
        runner = runners[size]

        def forward(x: torch.Tensor, thres: float):
            runner.dy_thres = thres
            return runner(x)
        return local_timer(model, forward)(path, batch, size)
    return cell


class Engine(NamedTuple):
    """One timed column: its name, dtype, the Model it times (None in another process) and its timer factory."""
    name: str
    precision: str
    model: Model | None
    cell: Callable[[str, int, int], tuple[Timer, int]]


def cell_rows(cfg: str, engines: list[Engine], size: int, flops: dict[str, float], batch: int, path: str,
              reps: int, peak: tuple[float, float] | None) -> list[str]:
    """The printed lines of one (size, batch, path) cell, every engine timed in turn (flops: the model's GFLOPs
    per path at size); `x plain` is the speed-up over the plain engine of this cell when there is one."""
    seconds = interleaved_seconds([e.cell(path, batch, size) for e in engines], reps)
    base = next((s for e, s in zip(engines, seconds) if e.name == 'plain'), None)
    model = next(e.model for e in engines if e.model is not None)
    device_type = next(model.parameters()).device.type
    gflops = {'easy': flops['easy'], 'hard': flops['hard'], 'mixed': (flops['easy'] + flops['hard']) / 2}[path]
    name = Path(cfg).stem.rsplit('-step', 1)[0]
    ref = reference_figure(name, path, size, batch, model)
    lines = []
    for engine, s in zip(engines, seconds):
        ips = batch / s
        tflops = gflops * ips / 1e3
        peak_of = {'fp32': 0, 'fp16': 1, 'bf16': 1}.get(engine.precision)  # no int8 peak is measured
        if engine.precision == 'bf16' and device_type == 'cpu' and not native_bf16():
            peak_of = None  # the bf16 peak is torch's emulation; OpenVINO runs such rows in fp32 instead
        share = f'{100 * tflops / peak[peak_of]:5.1f}%' if peak and peak_of is not None else '     -'
        ratio = f'{base / s:6.2f}x' if base else '      -'
        lines.append(f'{name:<14} {size:>5} {batch:>5} {path:<6} {engine.precision:<5} {engine.name:<6} '
                     f'{1e3 * s / batch:>10.2f} {ips:>9.1f} {gflops:>8.4g} {tflops:>8.3f} {share} {ratio} {ref}')
    return lines


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--cfgs', nargs='+', default=['cfg/dy-yolov7-step2.yaml'])
    p.add_argument('--sizes', type=int, nargs='+', default=[640, 320])
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    p.add_argument('--paths', nargs='+', choices=('easy', 'hard', 'mixed'), default=['easy', 'hard', 'mixed'])
    p.add_argument('--reps', type=int, default=3, help='timed repetitions per cell')
    p.add_argument('--device', default='cpu')
    p.add_argument('--half', action='store_true', help='also fp16 rows (CUDA)')
    p.add_argument('--onnx', action='store_true', help='also the exported graphs on ONNX Runtime (fp32)')
    p.add_argument('--openvino', nargs='*', choices=OPENVINO_ROWS, default=None,
                   help='also the exported graphs on OpenVINO at these precisions (CPU; int8-bf16: int8 with the bf16 '
                        'hint for the ops left unquantized; default: fp32 bf16 int8)')
    p.add_argument('--ov-both-modes', action='store_true',
                   help='each OpenVINO row in latency mode and in throughput mode (engine ovtp), in the same run')
    p.add_argument('--ov-dynamic', action='store_true',
                   help='also each OpenVINO row with the batch axis left free (as it ran before static shapes)')
    p.add_argument('--whole-batch', action='store_true', help='also rows without CPU chunking (chunk_pixels 0)')
    p.add_argument('--plain', action='store_true',
                   help='also the in-run baseline: the fused model in NCHW, whole batches (fp32 rows)')
    p.add_argument('--unpacked', action='store_true',
                   help='also the CPU preparation without the oneDNN-packed convolutions (as before them)')
    add_engine_flags(p)  # --compile [MODE]: compiled rows; --bf16: bfloat16 rows (CPU); --threads; --ov-mode
    opt = p.parse_args()
    if opt.openvino == []:
        opt.openvino = ['fp32', 'bf16', 'int8']
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = select_device(opt.device)
    peak = device_peak(device)
    kinds = 'fp16 data sheet' if device.type == 'cuda' else 'bf16, measured: best of matmul, 1x1 and 3x3 conv'
    print(f'device: {torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}; peak TFLOP/s (fp32, {kinds}): '
          + (f'{peak[0]:.3f}, {peak[1]:.3f}' if peak else 'unknown'))
    print(f'{"model":<14} {"size":>5} {"batch":>5} {"path":<6} {"dtype":<5} {"engine":<6} {"ms/img":>10} {"img/s":>9} '
          f'{"GFLOPs":>8} {"TFLOP/s":>8} {"peak":>6} {"x plain":>7} reference')
    for cfg in opt.cfgs:
        engines = engines_for(cfg, opt, device)
        for size in opt.sizes:
            flops = next(e.model for e in engines if e.model is not None).flops(size)  # the same in every dtype
            for batch in opt.batches:
                for path in opt.paths:
                    print('\n'.join(cell_rows(cfg, engines, size, flops, batch, path, opt.reps, peak)), flush=True)


def engines_for(cfg: str, opt: argparse.Namespace, device: torch.device) -> list[Engine]:
    """The engines the flags ask for, the in-run baseline first."""
    engines = []
    if opt.plain and device.type == 'cpu':
        engines.append(Engine('plain', 'fp32', None, FreshProcessBaseline(cfg)))
    elif opt.plain:
        engines.append(torch_engine('plain', 'fp32', plain_model(cfg, device)))
    if opt.unpacked and device.type == 'cpu':
        engines.append(torch_engine('unpack', 'fp32', build(cfg, device, packed=False)))
    for precision in precisions(opt, device):
        model = build(cfg, device, precision, bf16_mode=opt.bf16 or 'all')
        name = 'keeprt' if precision == 'bf16' and opt.bf16 == 'keep-routes' else 'torch'
        engines.append(torch_engine(name, precision, model))
        if opt.whole_batch and model.chunk_pixels:
            whole = copy.copy(model)  # a shallow copy: same weights, own chunk setting
            whole.chunk_pixels = 0
            engines.append(torch_engine('whole', precision, whole))
        if opt.compile:  # a shallow copy: same weights, own compiled stages
            engines.append(torch_engine('compil', precision, compile_paths(copy.copy(model), opt.compile)))
        if opt.onnx and precision == 'fp32':
            engines.append(Engine('ort', precision, model, exported_timer(model)))
    if opt.openvino and device.type == 'cpu':
        fp32 = next((e.model for e in engines if e.model is not None and e.precision == 'fp32'), None) \
            or build(cfg, device)
        modes = ('latency', 'throughput') if opt.ov_both_modes else (opt.ov_mode,)
        for precision, static, mode in itertools.product(opt.openvino, (True, False)[:1 + opt.ov_dynamic], modes):
            name = ('ov' if static else 'ovdyn') + ('tp' if mode == 'throughput' else '')
            engines.append(Engine(name, precision.replace('int8-bf16', 'i8bf'), fp32,
                                  exported_timer(fp32, 'openvino', precision, static, mode)))
    return engines


def torch_engine(name: str, precision: str, model: Model) -> Engine:
    """An Engine timing the PyTorch model's routed forward in this process."""
    return Engine(name, precision, model, local_timer(model, torch_forward(model)))

if __name__ == '__main__':
    main()
