"""COCO-format prediction JSON and pycocotools evaluation (the reference's test.py).

Faithful: the JSON rows (image_id, category_id, bbox top-left xywh rounded to 3, score rounded to 5) and the
COCOeval call restricted to the evaluated images. Fixed reference defects: the annotation path is derived from the
dataset (`<root>/annotations/instances_<split>.json`, or the data YAML's `annotations` key) instead of a hard-coded
`./coco/...`, and its absence is said plainly. Extension: image ids and category ids come from the annotation JSON
when there is one, so custom datasets whose file names are not numbers evaluate correctly. For COCO test-dev
(no public labels) the rows go to the COCO server instead: `write_testdev_submission` names and zips them as its
upload rules ask (cocodataset.org/#upload: `detections_test-dev2017_<method>_results.json`, zipped).
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

import torch

from utils.data.coco2yolo import COCO80_IDS, class_map
from utils.errors import UserError
from utils.general import xyxy2xywh

LOGGER = logging.getLogger(__name__)

# The COCO detection challenge's bounding-box server (CodaLab), which scores test-dev; test-dev2017 has 20,288
# images (image_info_test-dev2017.json), a subset of test2017's 40,670.
TESTDEV_SERVER = 'https://codalab.lisn.upsaclay.fr/competitions/7384'
TESTDEV2017_IMAGES = 20288


class SubmissionError(UserError, ValueError):
    """Detections that the COCO test-dev server cannot take; the message is one line."""


def annotation_path(data: dict, split_entries: list[str]) -> Path | None:
    """The split's COCO JSON: the YAML's `annotations` key, else `<list folder>/annotations/instances_<list stem>.json`
    (or for an image folder `<folder>/../../annotations/instances_<folder name>.json`); None when absent."""
    if data.get('annotations'):
        return Path(data['annotations'])
    entry = Path(split_entries[0])
    root = entry.parent if entry.suffix == '.txt' else entry.parent.parent
    candidate = root / 'annotations' / f'instances_{entry.stem}.json'
    return candidate if candidate.is_file() else None


class CocoIds:
    """Class index → category id and image path → image id, from an annotation JSON when available."""

    def __init__(self, nc: int, anno_json: Path | None, is_coco: bool) -> None:
        self.by_file: dict[str, int] = {}
        self.categories = list(COCO80_IDS) if is_coco and nc == 80 else list(range(nc))
        if anno_json is not None and anno_json.is_file():
            anno = json.loads(anno_json.read_text())
            self.by_file = {Path(im['file_name']).name: im['id'] for im in anno.get('images', [])}
            to_class = class_map(anno.get('categories'))
            if len(to_class) == nc:
                self.categories = [cid for cid, _ in sorted(to_class.items(), key=lambda kv: kv[1])]

    def image_id(self, path: str | Path) -> int | str:
        """The annotation's id for this file, else int(stem) when numeric, else the stem."""
        path = Path(path)
        if path.name in self.by_file:
            return self.by_file[path.name]
        return int(path.stem) if path.stem.isnumeric() else path.stem

    def rows(self, detections: torch.Tensor, path: str | Path) -> list[dict]:
        """JSON rows for one image's detections [x1, y1, x2, y2, conf, cls] in original pixels."""
        box = xyxy2xywh(detections[:, :4])
        box[:, :2] -= box[:, 2:] / 2  # centre → top-left corner
        image_id = self.image_id(path)
        return [{'image_id': image_id, 'category_id': self.categories[int(d[5])],
                 'bbox': [round(x, 3) for x in b], 'score': round(d[4], 5)}
                for d, b in zip(detections.tolist(), box.tolist())]


def evaluate_json(anno_json: Path, pred_json: Path, image_ids: list) -> tuple[float, float] | None:
    """pycocotools bbox evaluation of the predictions → (mAP@.5:.95, mAP@.5); None (with a warning) on failure."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        anno = COCO(str(anno_json))
        pred = anno.loadRes(str(pred_json))
        coco_eval = COCOeval(anno, pred, 'bbox')
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return float(coco_eval.stats[0]), float(coco_eval.stats[1])
    except Exception as e:  # noqa: BLE001 — the reference reports any pycocotools failure and goes on
        LOGGER.warning(f'pycocotools unable to run: {e}')
        return None


def submission_method(name: str) -> str:
    """The file name's <method>: letters, digits, '_' and '-' kept, any other run of characters becomes '-'."""
    return re.sub(r'[^A-Za-z0-9_-]+', '-', name).strip('-') or 'dynamicdet'


def submission_json_name(method: str) -> str:
    """The name the server requires: `detections_test-dev2017_<method>_results.json`."""
    return f'detections_test-dev2017_{submission_method(method)}_results.json'


def write_testdev_submission(rows: list[dict], save_dir: Path, method: str, n_images: int) -> Path:
    """Write the test-dev results JSON and the .zip the server takes (that JSON alone, at its top level)."""
    foreign = sorted({row['category_id'] for row in rows} - set(COCO80_IDS), key=str)
    if foreign:
        raise SubmissionError(f'category ids {", ".join(map(str, foreign[:5]))} are not COCO\'s: the test-dev '
                              f'server takes COCO\'s 91-id scheme, from a data YAML with the 80 COCO classes')
    json_path = Path(save_dir) / submission_json_name(method)
    json_path.write_text(json.dumps(rows))
    zip_path = json_path.with_suffix('.zip')
    with zipfile.ZipFile(zip_path, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(json_path, arcname=json_path.name)
    if n_images != TESTDEV2017_IMAGES:
        LOGGER.warning(f'WARNING: {n_images} images evaluated; the server scores all {TESTDEV2017_IMAGES} of '
                       f'test-dev2017 (the list from image_info_test-dev2017.json, see docs/datasets.md)')
    LOGGER.info(f'COCO test-dev: {zip_path} ({len(rows)} detections on {n_images} images) is the file to upload '
                f'to the COCO detection server, {TESTDEV_SERVER}')
    return zip_path
