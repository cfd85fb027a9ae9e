"""Convert a COCO instances JSON into YOLO label files, one `<image stem>.txt` per image; write image lists.

    python -m utils.data.coco2yolo --json instances_train2017.json --out labels/train2017 [--segments]
    python -m utils.data.coco2yolo --json image_info_test-dev2017.json --image-list test-dev2017.txt

Each line is `class cx cy w h` (box, normalised by the image size, printed `%g` as the released COCO labels
are, so lines equal theirs character for character) or, with --segments, `class x1 y1 x2 y2 ...`
(normalised polygon, `%.6f`). Lines keep the order of the annotations in the JSON. Classes: when
`categories` holds exactly the 80 COCO ids, they map to 0-79 by `coco91_to_80()`; any other category set
maps its sorted ids to 0..K-1 (a missing `categories` key means the COCO map).
Crowd annotations and boxes with w <= 0 or h <= 0 are skipped, as in the released YOLO labels; an image
left with no object gets no file (a background image). An annotation with several polygons becomes one
polygon made by concatenating the parts in order (no bridging between parts); an annotation without a
polygon (RLE) falls back to the four corners of its box.

--image-list writes one `./images/test2017/<file_name>` line per image of the JSON (an instances JSON, or an
image-info JSON such as image_info_test-dev2017.json, which has no annotations), sorted by name.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from pathlib import Path

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


def load_coco_json(json_path: str | os.PathLike, keys: tuple[str, ...] = ('images', 'annotations')) -> dict:
    """Read a COCO JSON and check that it has a list under each of `keys`; CocoFormatError otherwise."""
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
        raise CocoFormatError(f'{path}: expected a JSON object with keys {" and ".join(keys)}')
    missing = [key for key in keys if not isinstance(data.get(key), list)]
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
    x, y, w, h = annotation['bbox']
    # Unrounded and %g (6 significant digits), in this order of operations: the released labels' lines
    # ('0.5955', '0.0150156'), equal character for character on coco128's 929 boxes.
    values = ((x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
    return ' '.join([str(cls)] + [f'{v:g}' for v in values])


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


def image_file_names(images: list[dict]) -> list[str]:
    """The sorted, distinct `file_name` of every image entry, checking each one."""
    names = set()
    for index, image in enumerate(images):
        name = image.get('file_name') if isinstance(image, dict) else None
        if not isinstance(name, str) or not name:
            raise CocoFormatError(f'images[{index}]: needs a file_name')
        names.add(name)
    return sorted(names)


def write_image_list(json_path: str | os.PathLike, list_path: str | os.PathLike,
                     image_dir: str = './images/test2017') -> int:
    """Write LIST with one `<image_dir>/<file_name>` line per image of a COCO JSON; return the line count."""
    names = image_file_names(load_coco_json(json_path, keys=('images',))['images'])
    out = Path(list_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = image_dir.rstrip('/')
    write_text_file(out, ''.join(f'{prefix}/{name}\n' for name in names))
    # './' lines resolve against the list's folder, so that is where the images must be for the scan.
    folder = out.parent / prefix
    if not folder.is_dir():
        logger.warning('%s does not exist yet: unzip the images there before using %s', folder, out)
    else:
        absent = sum(1 for name in names if not (folder / name).is_file())
        if absent:
            logger.warning('%d of the %d listed images are not in %s', absent, len(names), folder)
    return len(names)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: --json and exactly one of --out (labels) or --image-list."""
    parser = argparse.ArgumentParser(description='Convert a COCO instances JSON to YOLO label files, or write '
                                                 'the image list of a COCO JSON.')
    parser.add_argument('--json', required=True, help='COCO JSON, e.g. instances_train2017.json or '
                                                      'image_info_test-dev2017.json (for --image-list)')
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--out', help='folder for the <image stem>.txt label files')
    mode.add_argument('--image-list', metavar='FILE', help='write FILE listing the JSON\'s images, one '
                                                           '<image-dir>/<file_name> a line, e.g. test-dev2017.txt')
    parser.add_argument('--image-dir', default='./images/test2017',
                        help='with --image-list: the folder each line starts with, relative to FILE\'s folder '
                             '(default ./images/test2017, where the test-dev images are)')
    parser.add_argument('--segments', action='store_true', help='write polygons instead of boxes')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: convert or list, log a summary line; exit code 2 with a one-line error on bad input."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    try:
        if args.image_list:
            count = write_image_list(args.json, args.image_list, args.image_dir)
        else:
            stats = convert_coco_json(args.json, args.out, segments=args.segments)
    except (CocoFormatError, OSError) as error:
        logger.error('%s', str(error).replace('\n', ' '))
        return 2
    if args.image_list:
        logger.info('wrote %d image paths to %s', count, args.image_list)
    else:
        logger.info('wrote %d label files (%d background images, %d crowd annotations skipped) to %s',
                    stats['files'], stats['backgrounds'], stats['crowd_skipped'], args.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
