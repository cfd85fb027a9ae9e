"""Reproducibility of the README's demo: `python demo.py` over several seeds, each figure's mean and spread.

    python benchmarks/bench_demo.py                          # seeds 0 1 2, the default demo (~5 min each, 2 cores)
    python benchmarks/bench_demo.py --seeds 0 1 2 3 4 --repeat
    python benchmarks/bench_demo.py --threads 1 --jobs 2          # two demos at once, one thread each
    python benchmarks/bench_demo.py --seeds 0 1 -- --images 1280 --epochs 40   # flags after -- go to demo.py

Each seed runs demo.py in its own process and folder; the figures come from its sweep.csv (all 11 thresholds).
The table shows, at the demo's three printed thresholds (all easy, the median score, all hard), the share of easy
images, mAP@.5 and mAP@.5:.95 per seed, then mean ± standard deviation and min–max over the seeds. `--repeat` runs
the first seed a second time and says whether its sweep equals the first run's (the same seed on the same machine
must give the same table; ms/image is a timing and is left out). The training figures differ between machines
(instruction sets, thread counts and library builds change float rounding, which 1280 training steps amplify), so
quote the spread with the machine it was measured on; the header prints it.
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
PICKS = (0, 5, 10)  # the rows demo.py prints: threshold 0, the 6th threshold (median score), threshold 1
FIGURES = ('easy_share', 'mAP@.5', 'mAP@.5:.95')
COMPARED = ('threshold', 'easy_share', 'gflops_per_image', 'mAP@.5', 'mAP@.5:.95')  # all but the timing


def machine() -> str:
    """CPU model, cores, Python, torch and the thread setting: what the figures depend on."""
    import torch
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                     if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return (f'{model}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, '
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
        sys.exit(f'demo.py --seed {seed} failed (exit {done.returncode}):\n{done.stderr[-2000:]}')
    with open(out / 'sweep' / 'sweep.csv', newline='') as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    print(f'seed {seed}: {routing_summary(out / "sweep", rows)}', flush=True)
    return rows, seconds


def routing_summary(sweep: Path, rows: list[dict]) -> str:
    """Both ends, the score range, and at 90 / 50 / 10 % easy the router's mAP@.5:.95 against random's and the
    oracle's, with the share of the oracle's gain captured (from router_quality.txt, router.json, sweep.csv)."""
    quality = (sweep / 'router_quality.txt').read_text().splitlines()
    scores = json.loads((sweep / 'router.json').read_text())['quantiles']
    lines = [quality[0], f'  scores {scores[0]:.4g} … {scores[-1]:.4g}; {quality[-1]}']
    for k in (1, 5, 9):
        r = rows[k]
        lines.append(f'  {100 * r["easy_share"]:.0f}% easy: router {r["mAP@.5:.95"]:.4f}, random '
                     f'{r["random_mAP@.5:.95"]:.4f} ± {r["random_mAP@.5:.95_sd"]:.4f}, oracle {r["oracle_mAP@.5:.95"]:.4f}, '
                     f'captured {r["oracle_gain_captured"]:.0%}')
    return '\n'.join(lines)


def row_summary(rows: list[dict]) -> str:
    """One line per run: easy share and mAPs at the three printed thresholds (so a stopped run keeps its figures)."""
    return ' | '.join(f'{100 * rows[k]["easy_share"]:.0f}% easy mAP@.5 {rows[k]["mAP@.5"]:.3f} '
                      f'mAP@.5:.95 {rows[k]["mAP@.5:.95"]:.3f}' for k in PICKS)


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
    """Run the seeds, print the table; --repeat checks that a seed reproduces."""
    argv = sys.argv[1:] if argv is None else argv
    demo_flags = argv[argv.index('--') + 1:] if '--' in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='demo seeds (default 0 1 2)')
    p.add_argument('--repeat', action='store_true', help='run the first seed twice and compare the sweeps')
    p.add_argument('--threads', type=int, help='OMP_NUM_THREADS of each demo (default: unset, torch decides)')
    p.add_argument('--jobs', type=int, default=1, help='demos run at once (wall times then include the sharing)')
    p.add_argument('--keep', help='write the demos\' folders here (seed0, seed1, ...) instead of a temporary folder')
    opt = p.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    if opt.threads:
        os.environ['OMP_NUM_THREADS'] = str(opt.threads)  # so that the header shows what the demos get
    print(f'Machine: {machine()}\ndemo.py flags: {" ".join(demo_flags) or "(defaults)"}; {opt.jobs} at once',
          flush=True)
    runs = {}
    with (contextlib.nullcontext(opt.keep) if opt.keep else tempfile.TemporaryDirectory(prefix='bench_demo_')) as tmp, \
            ThreadPoolExecutor(opt.jobs) as pool:
        jobs = {seed: pool.submit(run_demo, seed, Path(tmp) / f'seed{seed}', demo_flags, opt.threads)
                for seed in opt.seeds}
        for seed, job in jobs.items():
            runs[seed] = job.result()
            print(f'seed {seed}: {runs[seed][1]:.0f} s, {row_summary(runs[seed][0])}', flush=True)
        if opt.repeat:
            again, seconds = run_demo(opt.seeds[0], Path(tmp) / 'repeat', demo_flags, opt.threads)
            same = [[r[k] for k in COMPARED] for r in again] == [[r[k] for k in COMPARED] for r in runs[opt.seeds[0]][0]]
            print(f'seed {opt.seeds[0]} again: {seconds:.0f} s, sweep {"identical" if same else "DIFFERENT"} '
                  f'to the first run (all 11 thresholds, easy shares, GFLOPs, mAPs)', flush=True)
    print(report(runs))


if __name__ == '__main__':
    main()
