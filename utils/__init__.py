"""The toolkit's library, grouped by concern: `data/`, `train/`, `evaluation/`, `detection/`.

The shared basics stay at the top level, under the reference's module names where it had them: `errors`
(`UserError`), `cli`, `torch_utils`, `general` (box maths, NMS), `metrics` (`ap_per_class`, …), `loss`
(`ComputeLoss`, `ComputeLossOTA`, `ComputeLossOTADual`, `ComputeLossOTADy`), `plots`, `yaml_io`, and `datasets`
(`LoadImagesAndLabels`, `create_dataloader`, re-exported from `data/`). This file imports nothing.
"""
