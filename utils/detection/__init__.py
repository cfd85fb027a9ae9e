"""Detection on images, videos and streams (what detect.py runs).

Modules: `detector` (`Detector`: letterboxed batches, routed forward, NMS; `DetectOptions`, `DetectionOutputs`),
`sources` (image files, folders, globs, videos, webcams and streams: `list_sources`, `iterate_batches`,
`LiveStreams`), `drawing` (`draw_detection`, `class_colours`), `predictor` (`Predictor`: images in, boxes in each
image's pixels out, the Python face of detect.py), `latency` (path timing and the `--target-ms` controller). Submodules are imported by their full path; this
file imports nothing.
"""
