"""The README's demo, run as a user runs it, several times: each run's verdicts and figures, then their spread.

    python benchmarks/bench_demo.py                          # seeds 0-4 of the default demo (shipped detector)
    python benchmarks/bench_demo.py --modes default from-scratch --seeds 0 1 2
    python benchmarks/bench_demo.py --seeds 0 1 2 3 4 -- --router-loss adaptive   # flags after -- go to demo.py
    python benchmarks/bench_demo.py --threads 1 --repeat     # one torch thread; the first seed twice

Modes: `default` is `python demo.py` (the shipped detector, then step 2 with the seed: the seed moves only the
router's training), `from-scratch` is `python demo.py --from-scratch` (step 1 too: the seed moves the data and both
steps). Each run is its own process and folder; its figures come from its sweep (sweep.csv, router_quality.json,
router.json). One line per run: mAP@.5:.95 of all easy / all hard, at 50 % easy the router against random routing
(mean ± sd of 20 draws; how many sds apart) and the share of the oracle's gain it captures, the rank correlation of
score and oracle order, the score range, and the two verdicts the demo exists to show — the hard path pays (all
hard above all easy) and the router beats random at 50 % easy by at least 3 sds. Then, per mode, each figure's
mean ± sd (min–max) at the three printed thresholds. `--repeat` runs the first seed again and says whether its
sweep is identical (the same command on the same machine must give the same table; ms/image left out).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import HelpFormatter  # noqa: E402
from utils.demo_detector import cpu_name  # noqa: E402

MODES = {'default': [], 'from-scratch': ['--from-scratch']}
MIN_SDS = 3  # the router's lead over random routing, in sds of the random draws, for "the router beats random"
PICKS = (0, 5, 10)  # the rows demo.py prints: threshold 0, the 6th threshold (median score), threshold 1
FIGURES = ('easy_share', 'mAP@.5', 'mAP@.5:.95')
COMPARED = ('threshold', 'easy_share', 'gflops_per_image', 'mAP@.5', 'mAP@.5:.95')  # all but the timing


def machine() -> str:
    """CPU model, cores, Python, torch and the thread setting: what the figures depend on."""
    import torch
    return (f'{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, '
            f'{torch.get_num_threads()} torch threads, OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}')


def run_demo(seed: int, out: Path, demo_flags: list[str], threads: int | None = None) -> tuple[list[dict], float]:
    """demo.py --seed seed in its own process (OMP_NUM_THREADS=threads if given); its 11 sweep rows and the wall
    time in seconds."""
    env = {**os.environ, **({'OMP_NUM_THREADS': str(threads)} if threads else {})}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / 'demo.py'), '--seed', str(seed), '--out', str(out),
                           *demo_flags], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f'demo.py --seed {seed} {" ".join(demo_flags)} failed (exit {done.returncode}):\n'
                 f'{done.stderr[-2000:]}')
    with open(out / 'sweep' / 'sweep.csv', newline='') as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return rows, seconds


def verdict_line(sweep: Path, rows: list[dict]) -> str:
    """One run's verdicts and the figures behind them (at the median score: about 50 % easy)."""
    quality = json.loads((sweep / 'router_quality.json').read_text())
    scores = json.loads((sweep / 'router.json').read_text())['quantiles']
    easy, hard = quality['all_easy'][1], quality['all_hard'][1]
    mid = rows[PICKS[1]]
    sds = (mid['mAP@.5:.95'] - mid['random_mAP@.5:.95']) / max(mid['random_mAP@.5:.95_sd'], 1e-12)
    pays, beats = hard > easy, sds >= MIN_SDS
    return (f'all easy {easy:.4f}, all hard {hard:.4f} ({hard - easy:+.4f}); {100 * mid["easy_share"]:.0f}% easy: '
            f'router {mid["mAP@.5:.95"]:.4f}, random {mid["random_mAP@.5:.95"]:.4f} ± '
            f'{mid["random_mAP@.5:.95_sd"]:.4f} ({sds:+.1f} sd), captured {mid["oracle_gain_captured"]:.0%}; '
            f'rank correlation {quality["rank_correlation"]:.3f}; scores {scores[0]:.4g} … {scores[-1]:.4g} | '
            f'hard path pays: {"yes" if pays else "NO"}; router beats random by >= {MIN_SDS} sd: '
            f'{"yes" if beats else "NO"}')


def spread(values: list[float]) -> str:
    """mean ± sample standard deviation (min–max)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f'{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}–{max(values):.3f})'


def report(runs: dict[int, tuple[list[dict], float]]) -> str:
    """Per seed, then mean ± spread, of each figure at the three printed thresholds."""
    lines = []
    for pick, name in zip(PICKS, ('threshold 0 (all easy)', '6th threshold (median score)',
                                  'threshold 1 (all hard unless scores reach 1.0)')):
        lines.append(f'\n{name}')
        lines.append(f'{"seed":>6} {"easy":>6} {"mAP@.5":>8} {"mAP@.5:.95":>11}')
        for seed, (rows, _) in runs.items():
            row = rows[pick]
            lines.append(f'{seed:>6} {100 * row["easy_share"]:>5.0f}% {row["mAP@.5"]:>8.3f} {row["mAP@.5:.95"]:>11.3f}')
        for figure in FIGURES:
            lines.append(f'  {figure:<11} {spread([rows[pick][figure] for rows, _ in runs.values()])}')
    lines.append('')
    for metric in ('mAP@.5', 'mAP@.5:.95'):
        gain = [rows[10][metric] - rows[0][metric] for rows, _ in runs.values()]
        lines.append(f'{metric} at threshold 1 minus at threshold 0 (hard path over easy path): {spread(gain)}')
    router = [rows[5]['mAP@.5:.95'] - rows[5]['random_mAP@.5:.95'] for rows, _ in runs.values()]
    band = [rows[5]['random_mAP@.5:.95_sd'] for rows, _ in runs.values()]
    lines.append(f'mAP@.5:.95 at the median score, router minus random routing: {spread(router)} '
                 f'(the random band\'s sd: {spread(band)})')
    lines.append(f'wall time per demo: {spread([seconds for _, seconds in runs.values()])} s')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every mode and seed, print each run's verdicts and the spread; --repeat checks that a seed reproduces."""
    argv = sys.argv[1:] if argv is None else argv
    demo_flags = argv[argv.index('--') + 1:] if '--' in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--modes', nargs='+', choices=list(MODES), default=['default'], help='demo modes')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='demo seeds')
    p.add_argument('--repeat', action='store_true', help='run the first seed twice and compare the sweeps')
    p.add_argument('--threads', type=int, help='OMP_NUM_THREADS of each demo (default: unset, torch decides)')
    p.add_argument('--jobs', type=int, default=1, help='demos run at once (wall times then include the sharing)')
    p.add_argument('--keep', help='write the demos\' folders here (MODE-seedN) instead of a temporary folder')
    opt = p.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    if opt.threads:
        os.environ['OMP_NUM_THREADS'] = str(opt.threads)  # so that the header shows what the demos get
    print(f'Machine: {machine()}\ndemo.py flags: {" ".join(demo_flags) or "(defaults)"}; {opt.jobs} at once',
          flush=True)
    with (contextlib.nullcontext(opt.keep) if opt.keep else tempfile.TemporaryDirectory(prefix='bench_demo_')) as tmp:
        for mode in opt.modes:
            flags = [*MODES[mode], *demo_flags]
            runs = run_mode(mode, Path(tmp), flags, opt)
            print(f'\n{mode}:' + report(runs), flush=True)


def run_mode(mode: str, tmp: Path, flags: list[str], opt: argparse.Namespace) -> dict:
    """Every seed of one mode (opt.jobs at once), a verdict line each as it ends; with --repeat the first again."""
    runs = {}
    with ThreadPoolExecutor(opt.jobs) as pool:
        jobs = {seed: pool.submit(run_demo, seed, tmp / f'{mode}-seed{seed}', flags, opt.threads)
                for seed in opt.seeds}
        for seed, job in jobs.items():
            runs[seed] = job.result()
            print(f'{mode} seed {seed} ({runs[seed][1]:.0f} s): '
                  f'{verdict_line(tmp / f"{mode}-seed{seed}" / "sweep", runs[seed][0])}', flush=True)
    if opt.repeat:
        again, seconds = run_demo(opt.seeds[0], tmp / f'{mode}-repeat', flags, opt.threads)
        same = [[r[k] for k in COMPARED] for r in again] == [[r[k] for k in COMPARED] for r in runs[opt.seeds[0]][0]]
        print(f'{mode} seed {opt.seeds[0]} again: {seconds:.0f} s, sweep {"identical" if same else "DIFFERENT"} '
              f'to the first run (all 11 thresholds, easy shares, GFLOPs, mAPs)', flush=True)
    return runs


if __name__ == '__main__':
    main()
