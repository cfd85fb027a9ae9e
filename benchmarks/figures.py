"""PNG figures for the docs, each made from code or from a run's files (none drawn by hand):

    python benchmarks/figures.py                          # all four into docs/figures/
    python benchmarks/figures.py --only map_vs_gflops     # one of them (names below)

architecture     the DynamicDet architecture: rows per section, router inputs and CBLinear/CBFuse rows read from
                 cfg/dy-yolov7-step2.yaml by models.config.load_config; parameters and GFLOPs per path (fused, thop,
                 640x640) from models.yolo.Model(cfg).
map_vs_gflops    mAP@.5:.95 against mean GFLOPs per image: left, the demo's router sweep (runs/demo/sweep/sweep.csv,
                 written by `python demo.py`) with random routing (mean +- sd) and the oracle; right, the paper's COCO
                 points (copied from README.md, "Results (the paper's, COCO)").
demo_detections  the demo's detection images (runs/demo/detect/) with each image's route: detect.py logs the route but
                 does not store it, so it is recomputed here as detect.py routes (the step-2 checkpoint's router score
                 of the letterboxed sample image >= the threshold the demo detected at).
cpu_speed        CPU ms/image per engine and path, read from docs/figures/cpu_speed_2026-12-07.csv (one
                 benchmarks/bench_speed.py run; its machine, date and command are the file's '#' lines).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Polygon  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = ROOT / 'runs' / 'demo'
SWEEP_CSV = DEMO / 'sweep' / 'sweep.csv'
THRESHOLDS_TXT = DEMO / 'sweep' / 'thresholds.txt'
DETECT_DIR, SAMPLES_DIR = DEMO / 'detect', DEMO / 'samples'
STEP2_WEIGHTS = DEMO / 'train' / 'step2' / 'weights' / 'last.pt'
ARCH_CFG = ROOT / 'cfg' / 'dy-yolov7-step2.yaml'
SPEED_CSV = ROOT / 'docs' / 'figures' / 'cpu_speed_2026-12-07.csv'
IMG_SIZE = 640  # the size architecture.png counts GFLOPs at (Dy-YOLOv7's)
DPI = 110
MAX_DETECTIONS = 8
EASY, HARD, SHARED, ROUTER = '#2e7d32', '#c62828', '#37474f', '#6a1b9a'

# COCO val AP (mAP@.5:.95) against GFLOPs per image, the paper's published figures, copied from README.md's section
# README.md, "Results (the paper's, COCO)": model -> [(easy share, GFLOPs, AP val)].
PAPER_COCO: dict[str, list[tuple[str, float, float]]] = {
    'Dy-YOLOv7 (640)': [('90%', 112.4, 51.4), ('50%', 143.2, 52.7), ('10%', 174.0, 53.3), ('0%', 181.7, 53.5)],
    'Dy-YOLOv7-X (640)': [('90%', 201.7, 53.0), ('50%', 248.9, 54.2), ('10%', 296.1, 54.7), ('0%', 307.9, 54.8)],
    'Dy-YOLOv7-W6 (1280)': [('90%', 384.2, 54.9), ('50%', 480.8, 55.9), ('10%', 577.4, 56.4), ('0%', 601.6, 56.5)],
}


class MissingInput(Exception):
    """A figure's input file is absent; the message says in one line how to make it."""


def _rel(path: Path) -> str:
    """path relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _need(path: Path, how: str = 'run `python demo.py` first') -> Path:
    """path, or MissingInput naming it and how to make it."""
    if not path.is_file():
        raise MissingInput(f'{_rel(path)} not found: {how}')
    return path


# ------------------------------------------------------------------------------------------------ drawing helpers
def _box(ax: Axes, center: tuple[float, float], size: tuple[float, float], text: str, colour: str,
         fontsize: float = 8.5) -> None:
    """A rounded box centred at `center` with `text` in it."""
    (x, y), (w, h) = center, size
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle='round,pad=0.04,rounding_size=0.12',
                                facecolor=to_rgba(colour, 0.12), edgecolor=colour, linewidth=1.6))
    ax.text(x, y, text, ha='center', va='center', fontsize=fontsize, color='black', linespacing=1.35)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], colour: str = SHARED,
           text: str = '', offset: tuple[float, float] = (0, 0.13), rad: float = 0.0, dashed: bool = False) -> None:
    """An arrow from start to end, optionally labelled at its midpoint (+ offset)."""
    ax.annotate('', xy=end, xytext=start, arrowprops=dict(
        arrowstyle='-|>', color=colour, lw=1.6, linestyle='--' if dashed else '-', shrinkA=0, shrinkB=0,
        connectionstyle=f'arc3,rad={rad}', mutation_scale=14))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, ha='center',
                va='center', fontsize=7.5, color=colour)


def _save(fig: plt.Figure, out: Path, name: str, dpi: int = DPI) -> Path:
    """Write fig as out/name.png and close it."""
    path = out / f'{name}.png'
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- architecture
@dataclass
class ArchFacts:
    """What architecture.png states, all read from a config and the model built from it."""
    cfg: str
    rows: dict[str, int]
    params_m: dict[str, float]
    router_ins: list[int]
    cblinear_from: list[int]
    cbfuse_rows: list[int]
    head_from: list[int]
    gflops: dict[str, float]


def arch_facts(cfg: Path = ARCH_CFG, img_size: int = IMG_SIZE) -> ArchFacts:
    """Rows per section, router inputs, CBLinear/CBFuse rows and head inputs from the config; parameters per section
    and GFLOPs per path from models.yolo.Model."""
    from models.config import load_config
    from models.yolo import Model
    data, _ = load_config(cfg)
    dual = data['dual_backbone']
    model = Model(cfg)
    params = {key: sum(p.numel() for p in s.parameters()) / 1e6 for key, s in model.sections.items()}
    params['router'] = sum(p.numel() for p in model.router.parameters()) / 1e6
    return ArchFacts(
        cfg=_rel(cfg),
        rows={name: len(data[name]) for name in ('backbone', 'dual_backbone', 'head', 'head2')},
        params_m=params, router_ins=list(data['router_ins']),
        cblinear_from=[row[0] for row in dual if row[2] == 'CBLinear'],
        cbfuse_rows=[i for i, row in enumerate(dual) if row[2] == 'CBFuse'],
        head_from=sorted({row[0] for row in data['head'] if isinstance(row[0], int) and row[0] >= 0}),
        gflops=model.flops(img_size))


def _join(values: list[int]) -> str:
    """The values comma-separated ("2, 11, 24")."""
    return ', '.join(str(v) for v in values)


def _draw_arch_boxes(ax: Axes, f: ArchFacts, img_size: int) -> None:
    """The boxes of architecture.png (positions in data units of a 12 x 6 canvas)."""
    p, r = f.params_m, f.rows
    _box(ax, (0.75, 3.0), (1.1, 0.8), f'image\n3×{img_size}×{img_size}', SHARED)
    _box(ax, (2.75, 3.0), (1.75, 1.3), f'backbone 1\n{r["backbone"]} rows\n{p["b1"]:.1f} M params', SHARED, 9.5)
    _box(ax, (5.3, 4.55), (2.3, 1.1), f'router ({p["router"]:.1f} M params)\npools backbone-1 rows\n'
         f'{_join(f.router_ins)} → score ∈ (0, 1)', ROUTER)
    ax.add_patch(Polygon([(7.9, 5.15), (9.0, 4.55), (7.9, 3.95), (6.8, 4.55)], closed=True,
                         facecolor=to_rgba(ROUTER, 0.12), edgecolor=ROUTER, linewidth=1.6))
    ax.text(7.9, 4.55, 'score ≥\ndy_thres ?', ha='center', va='center', fontsize=8.5)
    _box(ax, (10.6, 4.55), (2.2, 1.0), f'head 1 (easy path)\n{r["head"]} rows, {p["h"]:.1f} M params', EASY)
    n_other = r['dual_backbone'] - len(f.cblinear_from) - len(f.cbfuse_rows)
    _box(ax, (5.3, 1.3), (2.3, 1.1), f'CBLinear ×{len(f.cblinear_from)} (backbone-2 rows)\nprojects backbone-1 rows\n'
         f'{_join(f.cblinear_from)}', HARD)
    _box(ax, (7.9, 1.3), (2.1, 1.3), f'backbone 2 ({r["dual_backbone"]} rows)\nCBFuse ×{len(f.cbfuse_rows)} at rows '
         f'{_join(f.cbfuse_rows)}\n+ {n_other} other rows\n{p["b2"]:.1f} M params', HARD, 8)
    _box(ax, (10.6, 1.3), (2.2, 1.0), f'head 2 (hard path)\n{r["head2"]} rows, {p["h2"]:.1f} M params', HARD)


def _draw_arch_arrows(ax: Axes, f: ArchFacts) -> None:
    """The arrows and path labels of architecture.png."""
    _arrow(ax, (1.3, 3.0), (1.87, 3.0))
    _arrow(ax, (3.4, 3.65), (4.15, 4.45), rad=-0.2)
    _arrow(ax, (6.45, 4.55), (6.8, 4.55))
    _arrow(ax, (9.0, 4.55), (9.5, 4.55), EASY, 'yes', (0, 0.16))
    _arrow(ax, (7.9, 3.95), (7.9, 1.95), HARD, 'no: run backbone 2\nand head 2', (0.62, 0))
    ax.plot([2.3, 2.3, 10.6], [3.65, 5.7, 5.7], color=EASY, lw=1.6)
    _arrow(ax, (10.6, 5.7), (10.6, 5.1), EASY)
    ax.text(6.45, 5.82, f'backbone-1 rows {_join(f.head_from)} (head 1 reads them only when the image goes easy)',
            ha='center', fontsize=7.5, color=EASY)
    _arrow(ax, (3.4, 2.35), (4.15, 1.5), HARD, rad=0.2)
    _arrow(ax, (6.45, 1.3), (6.85, 1.3), HARD)
    _arrow(ax, (8.95, 1.3), (9.5, 1.3), HARD)
    ax.plot([0.75, 0.75, 7.9], [2.6, 0.25, 0.25], color=HARD, lw=1.6)
    _arrow(ax, (7.9, 0.25), (7.9, 0.65), HARD)
    ax.text(3.0, 0.4, 'the image again (keep_input)', fontsize=7.5, color=HARD, ha='center')
    g = f.gflops
    ax.text(10.6, 3.72, f'easy path: backbone 1 + router + head 1\n{g["easy"]:.1f} GFLOPs at {IMG_SIZE}',
            ha='center', va='center', fontsize=8, color=EASY, fontweight='bold')
    ax.text(10.6, 2.3, f'hard path: backbone 1 + router\n+ backbone 2 + head 2\n{g["hard"]:.1f} GFLOPs at {IMG_SIZE}',
            ha='center', va='center', fontsize=8, color=HARD, fontweight='bold')


def architecture(out: Path) -> Path:
    """architecture.png: the DynamicDet architecture with rows, parameters and GFLOPs from cfg/dy-yolov7-step2.yaml."""
    f = arch_facts(ARCH_CFG, IMG_SIZE)
    fig, ax = plt.subplots(figsize=(12, 6.3))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 6.3)
    ax.axis('off')
    _draw_arch_boxes(ax, f, IMG_SIZE)
    _draw_arch_arrows(ax, f)
    ax.set_title(f'DynamicDet (Dy-YOLOv7, {f.cfg}): each image takes the easy path when its router score ≥ dy_thres,'
                 f'\notherwise the hard path', fontsize=11)
    fig.text(0.5, 0.015, 'Rows: entries of each config section (models.config.load_config). Parameters: '
             'models.yolo.Model(cfg), unfused. GFLOPs: Model(cfg).flops(640) (fused, thop, one 640×640 image).',
             ha='center', fontsize=7.5, color='0.35')
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.05)
    return _save(fig, out, 'architecture')


# ------------------------------------------------------------------------------------------------ map_vs_gflops
def read_sweep(path: Path = SWEEP_CSV) -> dict[str, np.ndarray]:
    """sweep.csv's columns as float arrays; MissingInput when the demo has not been run."""
    with _need(path).open(newline='') as fh:
        rows = list(csv.DictReader(fh))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def _demo_run_note(sweep_csv: Path) -> str:
    """'N val images at S px' from the sweep's router.json, or '' when it is not there."""
    info = sweep_csv.parent / 'router.json'
    if not info.is_file():
        return ''
    data = json.loads(info.read_text())
    return f', {data.get("images", "?")} val images at {data.get("img_size", "?")} px'


def _plot_sweep(ax: Axes, s: dict[str, np.ndarray], note: str) -> None:
    """Left panel: router, random band and oracle against mean GFLOPs per image."""
    x, key = s['gflops_per_image'], 'random_mAP@.5:.95'
    mean, sd = s[key], s[key + '_sd']
    ax.fill_between(x, mean - sd, mean + sd, color='0.6', alpha=0.45, lw=0, label='random routing (mean ± sd)')
    ax.plot(x, mean, color='0.45', lw=1)
    ax.plot(x, s['oracle_mAP@.5:.95'], 's--', color=EASY, ms=5, label='oracle (loss difference)')
    ax.plot(x, s['mAP@.5:.95'], 'o-', color='#1565c0', ms=5, label='router')
    for xi, yi, share in zip(x, s['mAP@.5:.95'], s['easy_share']):
        ax.annotate(f'{100 * share:.0f}%', (xi, yi), xytext=(4, -11), textcoords='offset points', fontsize=7,
                    color='#1565c0')
    ax.set_xlabel('mean GFLOPs per image')
    ax.set_ylabel('mAP@.5:.95')
    ax.set_title(f'Demo sweep (synthetic shapes, Dy-YOLOv7-tiny{note})\nlabels: share of images on the easy path',
                 fontsize=9.5)
    ax.legend(loc='upper left', fontsize=8)
    ax.grid(alpha=0.3)


def _plot_paper(ax: Axes) -> None:
    """Right panel: the paper's COCO points (not reproduced here)."""
    for (name, points), colour in zip(PAPER_COCO.items(), ('#1565c0', '#ef6c00', '#6a1b9a')):
        shares, gflops, ap = zip(*points)
        ax.plot(gflops, ap, 'o-', color=colour, ms=5, label=name)
        for k, (share, xi, yi) in enumerate(zip(shares, gflops, ap)):
            last = k == len(points) - 1  # the all-hard point sits close to the 10 % one: its label goes right
            ax.annotate(share, (xi, yi), xytext=(5, -3) if last else (-4, 4), textcoords='offset points',
                        fontsize=7, color=colour, ha='left' if last else 'right')
    ax.set_xlabel('GFLOPs per image')
    ax.set_ylabel('COCO val AP (mAP@.5:.95)')
    ax.set_title("COCO, from the paper (not reproduced here)\nlabels: share of images on the easy path",
                 fontsize=9.5, color=HARD)
    ax.legend(loc='lower right', fontsize=8)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.1)


def map_vs_gflops(out: Path) -> Path:
    """map_vs_gflops.png: the demo's sweep (left) and the paper's COCO figures (right)."""
    sweep = read_sweep(SWEEP_CSV)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    _plot_sweep(left, sweep, _demo_run_note(SWEEP_CSV))
    _plot_paper(right)
    fig.suptitle('mAP@.5:.95 against GFLOPs per image: left, a run of this repository (python demo.py); '
                 'right, the paper\'s COCO figures', fontsize=11)
    fig.tight_layout()
    return _save(fig, out, 'map_vs_gflops')


# ---------------------------------------------------------------------------------------------- demo_detections
def _floats(line: str) -> list[float] | None:
    """The line's whitespace-separated numbers, or None when any token is not a number."""
    try:
        return [float(t) for t in line.split()]
    except ValueError:
        return None


def demo_threshold(path: Path = THRESHOLDS_TXT) -> float:
    """The threshold the demo's detect stage used: the TABLE_PICKS[1]-th (median) of thresholds.txt's 11 values."""
    from demo import TABLE_PICKS
    values = next((v for v in map(_floats, _need(path).read_text().splitlines()) if v is not None and len(v) == 11),
                  None)
    if values is None:
        raise MissingInput(f'{_rel(path)}: no line of 11 thresholds; run `python demo.py` again')
    return values[TABLE_PICKS[1]]


def detection_routes(names: list[str], dy_thres: float) -> dict[str, tuple[str, float]]:
    """name -> (route, router score) as detect.py routes runs/demo/samples/<name>: the step-2 model's score of the
    letterboxed image (batch 1) against dy_thres."""
    import cv2
    import torch

    from demo import CFG2
    from models.inference import load_for_inference, prepare_input
    from utils.data.data_config import load_data_config
    from utils.detection.detector import Detector
    from utils.detection.sources import Frame
    nc = int(load_data_config(str(_need(DEMO / 'data' / 'data.yaml')))['nc'])
    img_size = json.loads(_need(SWEEP_CSV.parent / 'router.json').read_text())['img_size']  # the demo's --img
    model = load_for_inference(str(CFG2), str(_need(STEP2_WEIGHTS)), nc)
    detector = Detector(model, img_size, int(model.stride.max()))
    model.get_score, routes = True, {}
    with torch.inference_mode():
        for name in names:
            source = str(_need(SAMPLES_DIR / name))  # detect.py's input image (runs/demo/detect/ has it drawn)
            frame = Frame(source, cv2.imread(source), 'image')
            score = float(model(prepare_input(detector.letterbox([frame])[0].boxed, model) / 255.0).view(-1)[0])
            routes[name] = ('easy' if score >= dy_thres else 'hard', score)
    return routes


def demo_detections(out: Path) -> Path:
    """demo_detections.png: the demo's detection images, each titled and framed with its route."""
    import cv2
    files = sorted(DETECT_DIR.glob('*.jpg'))[:MAX_DETECTIONS]
    if not files:
        raise MissingInput(f'{_rel(DETECT_DIR)} has no images: run `python demo.py` first')
    dy_thres = demo_threshold(THRESHOLDS_TXT)
    routes = detection_routes([f.name for f in files], dy_thres)
    cols = min(4, len(files)) if len(files) > 6 else 3
    rows = -(-len(files) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.9 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(files):]:
        ax.axis('off')
    for ax, f in zip(axes.flat, files):
        route, score = routes[f.name]
        colour = EASY if route == 'easy' else HARD
        # nearest: the small demo images shown as their pixels (smoothing them made the PNG twice as large)
        ax.imshow(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), interpolation='nearest')
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set(color=colour, linewidth=4)
        ax.set_title(f'{f.name}: {route} path\nscore {score:.3f}', fontsize=9, color=colour)
    fig.suptitle(f'Demo detections ({_rel(DETECT_DIR)}), routed at dy_thres {dy_thres:.4g}\n'
                 f'(score ≥ dy_thres: easy path, green; otherwise hard path, red)', fontsize=10)
    fig.tight_layout(h_pad=1.5, w_pad=1.2)
    return _save(fig, out, 'demo_detections', dpi=100)  # photos compress poorly: 100 dpi keeps it < 300 KB


# ---------------------------------------------------------------------------------------------------- cpu_speed
def read_speed_csv(path: Path = SPEED_CSV) -> tuple[dict[str, str], list[dict[str, str]]]:
    """({key: value} of the file's '# key: value' lines, rows with engine, easy_ms, hard_ms)."""
    lines = _need(path, 'store a benchmarks/bench_speed.py table there').read_text().splitlines()
    meta = dict(line.lstrip('# ').split(': ', 1) for line in lines if line.startswith('#') and ': ' in line)
    rows = list(csv.DictReader(line for line in lines if line.strip() and not line.startswith('#')))
    return meta, rows


def cpu_speed(out: Path) -> Path:
    """cpu_speed.png: horizontal bars of CPU ms/image per engine, easy and hard path."""
    meta, rows = read_speed_csv(SPEED_CSV)
    engines = [r['engine'] for r in rows][::-1]
    y, h = np.arange(len(engines)), 0.38
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(engines) + 2.2))
    for shift, key, colour, label in ((h / 2, 'easy_ms', EASY, 'easy path'), (-h / 2, 'hard_ms', HARD, 'hard path')):
        values = [float(r[key]) for r in rows][::-1]
        bars = ax.barh(y + shift, values, h, color=colour, alpha=0.8, label=label)
        ax.bar_label(bars, fmt='%.0f', padding=3, fontsize=8)
    ax.set_yticks(y, engines, fontsize=9)
    ax.set_xlabel('ms per image (lower is better)')
    ax.margins(x=0.08)
    ax.legend(loc='lower right', fontsize=9)
    ax.grid(axis='x', alpha=0.3)
    fig.suptitle(f'CPU latency: {meta.get("model", "?")}\n{meta.get("machine", "?")}, {meta.get("date", "?")}\n'
                 f'{meta.get("command", "?")}', fontsize=9)
    fig.tight_layout()
    return _save(fig, out, 'cpu_speed')


# --------------------------------------------------------------------------------------------------------- main
FIGURES: dict[str, Callable[[Path], Path]] = {
    'architecture': architecture, 'map_vs_gflops': map_vs_gflops, 'demo_detections': demo_detections,
    'cpu_speed': cpu_speed}


def main(argv: list[str] | None = None) -> None:
    """Make the chosen figures; a figure whose input is missing is skipped with one line saying how to make it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', type=Path, default=ROOT / 'docs' / 'figures', help='folder for the PNGs')
    p.add_argument('--only', nargs='+', choices=list(FIGURES), metavar='NAME',
                   help=f'make only these figures ({", ".join(FIGURES)})')
    opt = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    opt.out.mkdir(parents=True, exist_ok=True)
    for name in opt.only or FIGURES:
        try:
            print(f'{name}: wrote {FIGURES[name](opt.out)}')
        except MissingInput as e:
            print(f'{name}: skipped ({e})')


if __name__ == '__main__':
    main()
