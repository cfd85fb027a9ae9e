"""Evaluation: the loop shared by test.py and the trainers, COCO JSON, the dynamic thresholds and sweep, plots.

Modules: `validator` (the evaluation loop: `validate`, `evaluate`, `EvalOptions`, `summarize`), `coco_eval`
(COCO-format predictions and pycocotools), `sweep` (router scores → the 11 thresholds, the speed/accuracy sweep),
`path_records` (both paths on every image in one pass, `routed_map`), `routing_quality` (random and oracle
baselines), `router_budget` (a threshold by easy share or GFLOPs), `batch_plots` (batch mosaics with boxes, for
test and train batches). Submodules are imported by their full path; this file imports nothing.
"""
