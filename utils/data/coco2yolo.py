"""Convert a COCO instances JSON into YOLO label files, one `<image stem>.txt` per image.

    python -m utils.data.coco2yolo --json instances_train2017.json --out labels/train2017 [--segments]

Each line is `class cx cy w h` (box, normalised by the image size, rounded to 6 decimals) or, with
--segments, `class x1 y1 x2 y2 ...` (normalised polygon, `%.6f`). Lines keep the order of the annotations
in the JSON. Classes: when `categories` holds exactly the 80 COCO ids, they map to 0-79 by `coco91_to_80()`;
any other category set maps its sorted ids to 0..K-1 (a missing `categories` key means the COCO map).
Crowd annotations and boxes with w <= 0 or h <= 0 are skipped, as in the released YOLO labels; an image
left with no object gets no file (a background image). An annotation with several polygons becomes one
polygon made by concatenating the parts in order (no bridging between parts); an annotation without a
polygon (RLE) falls back to the four corners of its box.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path

from utils.data.labels import topleft_box_to_yolo
from utils.errors import UserError

logger = logging.getLogger(__name__)

# Ids of the 80 COCO categories among the 91 of the paper, in class order 0..79.
COCO80_IDS = (list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
              + [67, 70] + list(range(72, 83)) + list(range(84, 91)))


class CocoFormatError(UserError, ValueError):
    """A COCO JSON that cannot be converted; the message is one line."""


def coco91_to_80() -> dict[int, int]:
    """Map each of the 80 used COCO category ids (1-90) to its contiguous class 0-79."""
    return {category_id: index for index, category_id in enumerate(COCO80_IDS)}


def class_map(categories: list[dict] | None) -> dict[int, int]:
    """Category id -> class index: the COCO map for the 80 COCO ids, else sorted ids -> 0..K-1."""
    if not categories:
        return coco91_to_80()
    ids = sorted({int(category['id']) for category in categories})
    if ids == sorted(COCO80_IDS):
        return coco91_to_80()
    return {category_id: index for index, category_id in enumerate(ids)}


def load_coco_json(json_path: str | os.PathLike) -> dict:
    """Read and check a COCO instances JSON; CocoFormatError on anything unusable."""
    path = Path(json_path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CocoFormatError(f'{path}: no such file') from None
    except OSError as error:
        raise CocoFormatError(f'{path}: cannot read ({error.strerror})') from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoFormatError(f'{path}: not valid JSON ({error})') from None
    if not isinstance(data, dict):
        raise CocoFormatError(f'{path}: expected a JSON object with keys images and annotations')
    missing = [key for key in ('images', 'annotations') if not isinstance(data.get(key), list)]
    if missing:
        raise CocoFormatError(f'{path}: no list under key(s) {", ".join(missing)}')
    return data


def image_table(images: list[dict]) -> dict[int, tuple[str, float, float]]:
    """Image id -> (label file stem, width, height), checking every entry."""
    table = {}
    for index, image in enumerate(images):
        try:
            stem, width, height = Path(image['file_name']).stem, float(image['width']), float(image['height'])
            table[image['id']] = (stem, width, height)
        except (KeyError, TypeError, ValueError) as error:
            raise CocoFormatError(f'images[{index}]: needs id, file_name, width and height ({error!r})') from None
        if width <= 0 or height <= 0:
            raise CocoFormatError(f'images[{index}] ({stem}): width and height must be positive')
    return table


def polygon_values(annotation: dict, width: float, height: float) -> list[float]:
    """Normalised polygon of an annotation: its parts joined in order, or its box corners for RLE."""
    segmentation = annotation.get('segmentation')
    if isinstance(segmentation, list) and any(segmentation):
        points = [p for part in segmentation for p in part]
    else:
        x, y, w, h = annotation['bbox']
        points = [x, y, x + w, y, x + w, y + h, x, y + h]
    return [p / (width if i % 2 == 0 else height) for i, p in enumerate(points)]


def label_line(annotation: dict, cls: int, width: float, height: float, segments: bool) -> str:
    """One label file line for an annotation already known to be usable."""
    if segments:
        return ' '.join([str(cls)] + [f'{v:.6f}' for v in polygon_values(annotation, width, height)])
    values = topleft_box_to_yolo(annotation['bbox'], width, height)
    # Trailing zeros dropped, like the released labels ('0.5955', not '0.595500').
    return ' '.join([str(cls)] + [f'{v:.6f}'.rstrip('0').rstrip('.') for v in values])


def skip_reason(annotation: dict, images: dict, classes: dict[int, int]) -> str | None:
    """Why an annotation yields no label line (a stats key), or None when it is usable."""
    if annotation.get('iscrowd'):
        return 'crowd_skipped'
    if annotation.get('image_id') not in images:
        logger.warning('annotation %s: unknown image id %s, skipped', annotation.get('id'), annotation.get('image_id'))
        return 'unknown_image'
    if annotation.get('category_id') not in classes:
        logger.warning('annotation %s: unknown category id %s, skipped',
                       annotation.get('id'), annotation.get('category_id'))
        return 'unknown_category'
    bbox = annotation.get('bbox')
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        logger.warning('annotation %s: bbox is not [x, y, w, h], skipped', annotation.get('id'))
        return 'bad_bbox'
    return 'empty_skipped' if bbox[2] <= 0 or bbox[3] <= 0 else None


def write_text_file(path: Path, text: str) -> None:
    """Write a whole file under a temporary name, then move it into place."""
    temporary = path.with_name(path.name + '.tmp')
    temporary.write_text(text, encoding='utf-8')
    os.replace(temporary, path)


def convert_coco_json(json_path: str | os.PathLike, out_dir: str | os.PathLike, segments: bool = False) -> dict:
    """Write DIR/<stem>.txt YOLO labels for every annotated image of a COCO JSON; return counts."""
    data = load_coco_json(json_path)
    images = image_table(data['images'])
    classes = class_map(data.get('categories'))
    lines: dict[int, list[str]] = {image_id: [] for image_id in images}
    stats = Counter()
    for annotation in data['annotations']:
        reason = skip_reason(annotation, images, classes)
        if reason:
            stats[reason] += 1
            continue
        _, width, height = images[annotation['image_id']]
        cls = classes[annotation['category_id']]
        lines[annotation['image_id']].append(label_line(annotation, cls, width, height, segments))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for image_id, image_lines in lines.items():
        if image_lines:
            write_text_file(out / f'{images[image_id][0]}.txt', '\n'.join(image_lines) + '\n')
    stats['files'] = sum(1 for image_lines in lines.values() if image_lines)
    stats['backgrounds'] = len(lines) - stats['files']
    stats['objects'] = sum(len(image_lines) for image_lines in lines.values())
    for key in ('crowd_skipped', 'empty_skipped', 'unknown_image', 'unknown_category', 'bad_bbox'):
        stats.setdefault(key, 0)
    return dict(stats)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: convert, log a summary line; exit code 2 with a one-line error on bad input."""
    parser = argparse.ArgumentParser(description='Convert a COCO instances JSON to YOLO label files.')
    parser.add_argument('--json', required=True, help='COCO instances JSON, e.g. instances_train2017.json')
    parser.add_argument('--out', required=True, help='folder for the <image stem>.txt label files')
    parser.add_argument('--segments', action='store_true', help='write polygons instead of boxes')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    try:
        stats = convert_coco_json(args.json, args.out, segments=args.segments)
    except (CocoFormatError, OSError) as error:
        logger.error('%s', str(error).replace('\n', ' '))
        return 2
    logger.info('wrote %d label files (%d background images, %d crowd annotations skipped) to %s',
                stats['files'], stats['backgrounds'], stats['crowd_skipped'], args.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
