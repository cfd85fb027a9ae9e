"""Speed/accuracy sweep over dynamic thresholds (extension of get_dynamic_thres.py): mAP against mean GFLOPs."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from utils.evaluation import EvalOptions, evaluate, summarize

LOGGER = logging.getLogger(__name__)
COLUMNS = ('threshold', 'easy_share', 'gflops_per_image', 'mAP@.5', 'mAP@.5:.95')


def sweep_thresholds(model, loader, thresholds: list[str], data: dict, img_size: int, half: bool,
                     save_dir: Path) -> list[dict]:
    """Evaluate at every threshold; write sweep.csv and sweep.png into save_dir; return the rows."""
    save_dir.mkdir(parents=True, exist_ok=True)
    flops = model.flops(img_size)
    names = [str(n) for n in data['names']]
    rows = []
    for t in thresholds:
        model.dy_thres = float(t)
        opt = EvalOptions(names=names, plots=False, save_dir=save_dir, training=True, half=half)
        out, confusion = evaluate(model, loader, opt)
        (_, _, map50, map_), _ = summarize(out, opt, confusion)
        share = out.n_easy / max(out.n_routed, 1)
        rows.append(dict(zip(COLUMNS, (float(t), share, share * flops['easy'] + (1 - share) * flops['hard'],
                                       map50, map_))))
        LOGGER.info(f'dy_thres {t}: {100 * share:.0f}% easy, {rows[-1]["gflops_per_image"]:.1f} GFLOPs/image, '
                    f'mAP@.5 {map50:.4f}, mAP@.5:.95 {map_:.4f}')
    with open(save_dir / 'sweep.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, save_dir / 'sweep.png')
    LOGGER.info(f'Sweep saved to {save_dir / "sweep.csv"} and {save_dir / "sweep.png"}')
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import utils.plots  # noqa: F401  (selects the file-only matplotlib backend)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5), tight_layout=True)
    x = [r['gflops_per_image'] for r in rows]
    ax.plot(x, [r['mAP@.5:.95'] for r in rows], 'o-', label='mAP@.5:.95')
    ax.plot(x, [r['mAP@.5'] for r in rows], 's--', label='mAP@.5')
    for r in rows:
        ax.annotate(f'{r["threshold"]:.3g}', (r['gflops_per_image'], r['mAP@.5:.95']), fontsize=7,
                    textcoords='offset points', xytext=(3, 3))
    ax.set(xlabel='mean GFLOPs per image', ylabel='mAP', title='Dynamic threshold sweep (labels: dy_thres)')
    ax.legend()
    fig.savefig(path, dpi=200)
    plt.close(fig)
