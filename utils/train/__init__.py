"""Training, step 1 and step 2 (what train_step1.py and train_step2.py run).

Modules: `trainer` (`Trainer`, the loop shared by both steps, and `train`), `step2` (`Step2Trainer`: the router on
the frozen detector), `options` (flags, checks, `--resume`), `setup` (what a run builds before its first step:
model, loaders, hyp scaling), `checkpoint` (what is saved when, stripping, restoring), `outputs` (progress text,
results.txt/.csv, run plots, TensorBoard), `optim` (freezing, parameter groups, lr schedule, warmup), `ema`
(`ModelEMA`, `de_parallel`), `autoanchor` (`check_anchors`), `distributed` (process groups, one process per
device), `wandb_logging` (optional Weights & Biases). Submodules are imported by their full path; this file imports
nothing.
"""
