"""The data pipeline: data YAMLs and image lists, labels and their cache, the dataset and its loaders, augmentations.

Modules: `data_config` (`load_data_config`, `list_image_files`), `labels` (YOLO label files, `img2label_paths`),
`label_cache` (the scan and its cache), `datasets` (`LoadImagesAndLabels`), `dataloaders` (`create_dataloader`),
`letterbox` (`letterbox`, `rect_batch_shapes`), `augmentations` (perspective, HSV, mixup, flips), `mosaic` (4 and 9),
`paste_in` (paste-in, copy-paste), `sampling` (image weights, multi-scale), `coco2yolo` (COCO JSON → YOLO labels,
`python -m utils.data.coco2yolo`), `synthetic` (a dataset of shapes, `python -m utils.data.synthetic`).
Submodules are imported by their full path; this file imports nothing.
"""
