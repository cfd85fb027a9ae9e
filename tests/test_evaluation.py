"""Evaluation: ground truth as predictions gives mAP 1 (ours and pycocotools), batched dynamic evaluation equals
batch 1, validation during training, test.py end to end on coco128 with --save-json (fp32 and --bf16), the
threshold sweep, and one-line errors for bad input.

Except the ground-truth check (all 128 images), the evaluations run at 64 px on the first SUBSET images of
coco128, through one module-wide view of it: what they check (routing, batching, loss averaging, files written,
bf16 against fp32, the sweep's shares) holds on any number of images, and each image costs NMS over the many
boxes of the lively model below. test.py runs twice for the whole module (fp32, then --bf16, same flags).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import test as test_script
from models.checkpoint import half_state_dict, save_checkpoint
from tests.helpers import COCO128, coco128_view, lively_tiny_model, recording_scores, requires_coco128, tiny_config
from utils.data.dataloaders import create_dataloader
from utils.data.labels import img2label_paths, read_label_file
from utils.evaluation.coco_eval import CocoIds, evaluate_json
from utils.evaluation.validator import EvalOptions, evaluate, summarize, validate
from utils.general import xywhn2xyxy
from utils.metrics import ap_per_class, match_predictions

ANNOTATIONS = COCO128 / 'annotations' / 'instances_train2017.json'
SUBSET = 8  # coco128 images evaluated (test.py at batch 2 plots test_batch0-2 from its first three batches)


@requires_coco128
def test_ground_truth_as_predictions_gives_map_1(tmp_path: Path) -> None:
    files = sorted((COCO128 / 'images' / 'train2017').glob('*.jpg'))
    ids = CocoIds(80, ANNOTATIONS, is_coco=True)
    rows, stats = [], []
    for f in files:
        h, w = cv2.imread(str(f)).shape[:2]
        labels = read_label_file(img2label_paths([str(f)])[0], 80).labels
        boxes = torch.from_numpy(xywhn2xyxy(labels[:, 1:].astype(np.float64), w, h))
        det = torch.cat((boxes, torch.linspace(1, 0.5, len(labels), dtype=torch.float64)[:, None],
                         torch.from_numpy(labels[:, :1].astype(np.float64))), 1)
        rows += ids.rows(det, f)
        target = torch.cat((det[:, 5:6], det[:, :4]), 1)
        stats.append((match_predictions(det, target).numpy(), det[:, 4].numpy(), det[:, 5].numpy(), labels[:, 0]))
    _, _, ap, _, _ = ap_per_class(*(np.concatenate(x) for x in zip(*stats)))
    assert ap.mean() == pytest.approx(1.0)
    pred_json = tmp_path / 'pred.json'
    pred_json.write_text(json.dumps(rows))
    coco_map, coco_map50 = evaluate_json(ANNOTATIONS, pred_json, [ids.image_id(f) for f in files])
    assert coco_map == pytest.approx(1.0, abs=1e-3) and coco_map50 == pytest.approx(1.0, abs=1e-3)


@pytest.fixture(scope='module')
def coco_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable view of coco128 (folder `coco128`) whose train2017.txt lists its first SUBSET images; the list."""
    images = coco128_view(tmp_path_factory.mktemp('subset') / 'coco128')
    images.write_text(''.join(images.read_text().splitlines(keepends=True)[:SUBSET]))
    return images


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The lively tiny model as a config file and an fp16 checkpoint: (cfg, weights)."""
    folder = tmp_path_factory.mktemp('tiny')
    cfg = folder / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(dynamic=True, nc=80)))
    save_checkpoint({'model': half_state_dict(lively_tiny_model())}, folder / 'tiny.pt')
    return cfg, folder / 'tiny.pt'


@contextlib.contextmanager
def _info_log() -> Iterator[list[str]]:
    """The messages logged at INFO or above inside the block (module fixtures have no caplog)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@dataclass
class Evaluation:
    """One test.py run: what run_test returned, its folder and its log."""
    metrics: tuple
    maps: np.ndarray
    folder: Path
    log: list[str]


@pytest.fixture(scope='module')
def test_py_runs(coco_subset: Path, tiny_checkpoint: tuple,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Evaluation]:
    """test.py on the subset through a coco.yaml (so --save-json is on) with --save-txt and --save-results, every
    image on the hard path (--dy-thres 2, routing aside), in fp32 and with --bf16: {'fp32' | 'bf16': the run}."""
    data = yaml.safe_load((Path(__file__).parents[1] / 'data' / 'coco.yaml').read_text())
    data.update(train='coco128/train2017.txt', val='coco128/train2017.txt')
    data.pop('test')
    coco_yaml = coco_subset.parents[1] / 'coco.yaml'  # beside the coco128 folder: its paths are relative to it
    coco_yaml.write_text(yaml.safe_dump(data))
    cfg, weights = tiny_checkpoint
    project = tmp_path_factory.mktemp('test_py')
    runs = {}
    for name, extra in (('fp32', []), ('bf16', ['--bf16'])):
        with _info_log() as log:
            metrics, maps, _ = test_script.run_test(test_script.parse_opt([
                '--img-size', '64', '--batch-size', '2', '--conf', '0.001', '--iou', '0.65', '--device', 'cpu',
                '--cfg', str(cfg), '--weight', str(weights), '--data', str(coco_yaml), '--dy-thres', '2',
                '--project', str(project), '--name', name, '--save-txt', '--save-results', *extra]))
        runs[name] = Evaluation(metrics, maps, project / name, log)
    return runs


def _widest_gap_threshold(scores: torch.Tensor) -> tuple[float, int]:
    """A threshold halfway across the widest gap between consecutive sorted scores in their middle half, and the
    number of scores above it: a float difference far smaller than the gap cannot move any score across it."""
    ordered = scores.double().sort().values
    lo, hi = len(ordered) // 4, 3 * len(ordered) // 4
    k = lo + int((ordered[lo + 1:hi + 1] - ordered[lo:hi]).argmax()) + 1  # the gap below ordered[k]
    return float(ordered[k - 1] + ordered[k]) / 2, len(ordered) - k


@requires_coco128
def test_batched_dynamic_evaluation_equals_batch_1(coco_subset: Path, tmp_path: Path) -> None:
    """Batches of 3 (a ragged last one too) route and score every image as batch 1 does."""
    model = lively_tiny_model()
    loader1, _ = create_dataloader(str(coco_subset), 64, 1, 32, pad=0.5, rect=False, workers=0)
    with torch.inference_mode():
        model.get_score = True
        scores = torch.cat([model(imgs.float() / 255) for imgs, *_ in loader1])[:, 0]
        model.get_score = False
    model.dy_thres, n_above = _widest_gap_threshold(scores)
    # batched scores differ from batch 1's by float rounding (3e-8 measured with 2 threads): the threshold keeps
    # a margin of orders of magnitude more to every score, so no route depends on it
    assert (scores.double() - model.dy_thres).abs().min() > 1e-6
    results = []
    for batch in (1, 3):
        loader, _ = create_dataloader(str(coco_subset), 64, batch, 32, pad=0.5, rect=False, workers=0)
        opt = EvalOptions(names=[str(i) for i in range(80)], plots=False, save_dir=tmp_path)
        out, confusion = evaluate(model, loader, opt)
        results.append((summarize(out, opt, confusion)[0], out.n_easy, out.n_routed))
    (m1, easy1, n1), (m3, easy3, n3) = results
    assert n1 == n3 == SUBSET and easy1 == easy3 == n_above and 0 < n_above < SUBSET  # mixed, routed alike
    assert m1[2] > 0  # the model does find something: the comparison is not between zeros
    np.testing.assert_allclose(m3, m1, atol=1e-4)


@requires_coco128
def test_validate_in_memory_restores_train_mode_and_averages_losses(coco_subset: Path, tmp_path: Path) -> None:
    model = lively_tiny_model().train()
    loader, _ = create_dataloader(str(coco_subset), 64, SUBSET // 2, 32, pad=0.5, rect=True, workers=0)
    calls = []

    def constant_loss(raw: list, targets: torch.Tensor) -> tuple:
        calls.append(len(raw))
        return torch.tensor(6.0), torch.tensor([1.0, 2.0, 3.0, 6.0])

    opt = EvalOptions(names=[str(i) for i in range(80)], plots=False, save_dir=tmp_path, training=True)
    results, maps, ms = validate(model, loader, opt, compute_loss=constant_loss)
    assert model.training and all(m.training for m in model.modules())
    assert len(calls) == len(loader) == 2  # every batch's loss
    assert results[4:] == (1.0, 2.0, 3.0)  # their per-batch mean, as the reference (not per image)
    model.eval()
    out, confusion = evaluate(model, loader, opt)
    reference, _ = summarize(out, opt, confusion)
    assert reference[2] > 0  # something is found: the comparison is not between zeros
    np.testing.assert_allclose(results[:4], reference, atol=1e-9)
    assert maps.shape == (80,) and len(ms) == 3 and ms[2] >= ms[0] > 0


@requires_coco128
def test_test_py_end_to_end_with_save_json(coco_subset: Path, test_py_runs: dict) -> None:
    run = test_py_runs['fp32']
    rows = json.loads((run.folder / 'tiny_predictions.json').read_text())
    assert rows and {'image_id', 'category_id', 'bbox', 'score'} <= set(rows[0])
    assert isinstance(rows[0]['image_id'], int) and rows[0]['category_id'] in range(1, 91)
    text = '\n'.join(run.log)
    assert 'pycocotools unable to run' not in text
    assert 'Routing: ' in text and 'Speed: ' in text and ' all ' in text
    assert (run.folder / 'confusion_matrix.png').is_file()
    assert (run.folder / 'tiny_results.txt').read_text().startswith('map: ')
    # one label file per image: the lively model's confidences (objectness ~0.98) are far above --conf 0.001
    images = sorted(Path(line).stem for line in coco_subset.read_text().splitlines())
    assert sorted(p.stem for p in (run.folder / 'labels').glob('*.txt')) == images
    plotted = sorted(f.name for f in run.folder.glob('test_batch*.jpg'))
    assert plotted == [f'test_batch{i}_{kind}.jpg' for i in range(3) for kind in ('labels', 'pred')]
    assert len(run.metrics) == 4 and run.maps.shape == (80,)


@requires_coco128
def test_save_hybrid_writes_the_ground_truth_boxes(coco_subset: Path, tiny_checkpoint: tuple,
                                                   tmp_path: Path) -> None:
    """test.py --save-hybrid at --conf 0.99 (above every prediction of the lively model, objectness ~0.98) writes
    each image's labels back as its .txt rows: same class, same box within 1/640 of the image side (at 640 px,
    where coco128's images are not resized; what is left is the letterbox's half-pixel padding, which labels and
    predictions share). Before the fix the
    ground-truth rows were read as corners, so no box came back where it was."""
    cfg, weights = tiny_checkpoint
    data = tmp_path / 'subset.yaml'
    data.write_text(yaml.safe_dump({'train': str(coco_subset), 'val': str(coco_subset), 'nc': 80,
                                    'names': [f'class{k}' for k in range(80)]}))
    test_script.run_test(test_script.parse_opt([
        '--img-size', '640', '--batch-size', '4', '--conf', '0.99', '--device', 'cpu', '--cfg', str(cfg),
        '--weight', str(weights), '--data', str(data), '--dy-thres', '2',
        '--task', 'val', '--project', str(tmp_path), '--name', 'hybrid', '--save-hybrid', '--save-conf']))
    found = expected = 0
    for line in coco_subset.read_text().splitlines():
        labels = read_label_file(img2label_paths([str(coco_subset.parent / line)])[0], 80).labels
        saved_file = tmp_path / 'hybrid' / 'labels' / f'{Path(line).stem}.txt'
        saved = np.loadtxt(saved_file, ndmin=2) if saved_file.is_file() else np.zeros((0, 6))
        assert np.all(saved[:, 5] == 1.0)  # only ground truth passes --conf 0.99
        for row in saved:
            distance = np.abs(labels[:, 1:] - row[1:5]).max(1) + 1e9 * (labels[:, 0] != row[0])
            assert distance.min() < 1 / 640, (line, row)
        found, expected = found + len(saved), expected + len(labels)
    assert found >= 0.9 * expected  # a few same-class labels overlap by IoU > 0.65: NMS keeps one of them


@requires_coco128
def test_test_py_bf16_matches_fp32(test_py_runs: dict) -> None:
    """--bf16 (CPU): the same evaluation in bfloat16 backbones gives fp32's mAP@.5 and mAP@.5:.95 (pycocotools')
    within bfloat16's error, and the routing line still counts GFLOPs. P and R are only checked to be in [0, 1]:
    they are read at the confidence of the best mean F1, which on this untrained model's flat F1 curve jumps with
    any rounding change (bf16 moved R by 0.048 on 16 images here), whereas one label found one rank lower moves
    mAP by at most 0.5/80."""
    fp32, bf16 = test_py_runs['fp32'].metrics, test_py_runs['bf16'].metrics
    assert fp32[1] > 0 and fp32[2] > 0  # something is found: the comparison is not between zeros
    np.testing.assert_allclose(bf16[2:], fp32[2:], atol=0.02)
    assert all(0 <= x <= 1 for x in (*fp32, *bf16))
    for run in test_py_runs.values():
        routing = [m for m in run.log if m.startswith('Routing: ')]
        assert len(routing) == 1 and routing[0].startswith(f'Routing: 0/{SUBSET} images easy')
        assert ' GFLOPs/image ' in routing[0]


@requires_coco128
def test_test_py_augment_through_the_cli_prints_the_metrics_without_routing(
        coco_subset: Path, tiny_checkpoint: tuple, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """test.py --augment (test-time augmentation), as a user runs it: it evaluates every image, prints the metrics
    row and the speed line, and no routing line (each image is routed once per augmented copy, so an easy share of
    images would be meaningless); every image gets label rows inside its own frame."""
    # the plots (two thirds of this run's time) are test.py's with or without --augment: checked by the tests above
    monkeypatch.setattr(test_script, 'EvalOptions', lambda *a, **kw: EvalOptions(*a, **{**kw, 'plots': False}))
    cfg, weights = tiny_checkpoint
    data = tmp_path / 'subset.yaml'
    data.write_text(yaml.safe_dump({'train': str(coco_subset), 'val': str(coco_subset), 'nc': 80,
                                    'names': [f'class{k}' for k in range(80)]}))
    test_script.main(['--img-size', '64', '--batch-size', '2', '--device', 'cpu', '--cfg', str(cfg),
                      '--weight', str(weights), '--data', str(data), '--task', 'val', '--dy-thres', '0.5',
                      '--project', str(tmp_path), '--name', 'tta', '--save-txt', '--augment'])
    err = capsys.readouterr().err.splitlines()
    lines = [line.strip() for line in err]
    n_labels = sum(len(read_label_file(img2label_paths([str(coco_subset.parent / line)])[0], 80).labels)
                   for line in coco_subset.read_text().splitlines())
    (row,) = [line.split() for line in lines if line.startswith('all ')]
    assert row[:3] == ['all', str(SUBSET), str(n_labels)] and all(0 <= float(v) <= 1 for v in row[3:])
    assert any(line.startswith('Speed: ') for line in lines)
    assert not any(line.startswith('Routing: ') for line in lines)
    images = sorted(Path(line).stem for line in coco_subset.read_text().splitlines())
    saved = sorted((tmp_path / 'tta' / 'labels').glob('*.txt'))
    assert [p.stem for p in saved] == images  # objectness ~0.98 is far above --conf 0.001 on every copy
    for f in saved:
        rows = np.loadtxt(f, ndmin=2)
        assert rows.shape[1] == 5 and (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all()


def _scaled_copy(x: torch.Tensor, size: tuple[int, int], padded: tuple[int, int], flip: bool) -> torch.Tensor:
    """The reference's TTA copy built by hand: mirrored if asked, resized bilinearly to `size`, padded right and
    bottom with 0.447 to `padded` (h, w)."""
    x = x.flip(3) if flip else x
    if tuple(x.shape[2:]) == size:
        return x
    x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
    return F.pad(x, [0, padded[1] - size[1], 0, padded[0] - size[0]], value=0.447)


def test_augmented_forward_concatenates_three_scales_in_the_original_pixels() -> None:
    """Model(x, augment=True) on a 48x96 batch: the predictions of the copies at scale 1, 0.83 mirrored and 0.67
    (each padded to the stride 16), concatenated in that order (270 + 225 + 225 boxes of 3 anchors over the
    stride-8 and stride-16 grids), each mapped back to the original image's pixels: divided by its scale, the
    mirrored copy's x centres reflected about the original width (96, not the padded copy's 80 / 0.83). A box the
    mirrored copy finds on its image content lands inside the original image; a wrong scale, mirror axis or width
    would put it elsewhere."""
    model = lively_tiny_model()
    x = torch.rand(2, 3, 48, 96, generator=torch.Generator().manual_seed(0))
    copies = [(1.0, False, (48, 96), (48, 96)),
              (0.83, True, (39, 79), (48, 80)),   # int(48 * 0.83), int(96 * 0.83); padded to multiples of 16
              (0.67, False, (32, 64), (48, 80))]  # 96 * 0.67 = 64.32 pads to 80
    with torch.inference_mode():
        augmented, raw = model(x, augment=True)
        expected = []
        for scale, flip, size, padded in copies:
            pred = model(_scaled_copy(x, size, padded, flip))[0].clone()
            assert pred.shape[1] == 3 * sum((padded[0] // s) * (padded[1] // s) for s in (8, 16))
            if flip:  # boxes centred on the mirrored copy's image content (not on its padding)
                centre = pred[..., :2]
                inside = (centre[..., 0] < size[1]) & (centre[..., 1] < size[0]) & (centre >= 0).all(-1)
            pred[..., :4] /= scale
            if flip:
                pred[..., 0] = 96 - pred[..., 0]
            expected.append(pred)
    assert raw is None and augmented.shape == (2, 270 + 225 + 225, 85)
    torch.testing.assert_close(augmented, torch.cat(expected, 1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(augmented[:, :270], model(x)[0], rtol=1e-5, atol=1e-4)  # scale 1: the plain forward
    mirrored = augmented[:, 270:495][inside][:, :2]  # those boxes as the augmented forward reports them
    assert len(mirrored) > 100  # most of the mirrored copy's boxes are centred on its content
    assert (mirrored[:, 0] >= 0).all() and (mirrored[:, 0] <= 96).all()
    assert (mirrored[:, 1] >= 0).all() and (mirrored[:, 1] <= 48).all()


@pytest.mark.parametrize('args,message', [
    (['--weight', 'missing.pt'], 'missing.pt'),
    (['--cfg', 'cfg/nope.yaml'], 'cfg/nope.yaml'),
    (['--data', 'nope.yaml'], 'nope.yaml'),
    (['--data', '{empty split}'], 'no images found in'),
    (['--img-size', '0'], '--img-size must be positive'),
    (['--task', 'speed'], '--task speed: not implemented'),
])
def test_test_py_bad_input_is_one_line(tmp_path: Path, tiny_checkpoint: tuple, capsys, args: list,
                                      message: str) -> None:
    cfg, weights = tiny_checkpoint
    base = {'--cfg': str(cfg), '--weight': str(weights), '--data': 'data/coco.yaml', '--device': 'cpu',
            '--project': str(tmp_path)}
    base.update(dict(zip(args[::2], args[1::2])))
    if base['--data'] == '{empty split}':
        (tmp_path / 'empty.txt').write_text('')
        base['--data'] = str(tmp_path / 'empty.yaml')
        Path(base['--data']).write_text('train: empty.txt\nval: empty.txt\nnc: 80\n')
    with pytest.raises(SystemExit) as e:
        test_script.main([x for kv in base.items() for x in kv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1] and 'Traceback' not in '\n'.join(err)


def test_wrong_config_for_checkpoint_is_one_line(tmp_path: Path, tiny_checkpoint: tuple, capsys) -> None:
    _, weights = tiny_checkpoint
    with pytest.raises(SystemExit):
        test_script.main(['--cfg', 'cfg/dy-yolov7-step2.yaml', '--weight', str(weights), '--device', 'cpu',
                          '--data', 'data/coco.yaml', '--project', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'does not fit' in err or 'missing' in err


@requires_coco128
def test_get_dynamic_thres_prints_11_ascending_thresholds_and_sweeps(coco_subset: Path, tmp_path: Path,
                                                                     tiny_checkpoint: tuple, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The 11 thresholds printed as the reference does; --sweep writes one row per threshold, each with the easy
    share of the scores collected."""
    import get_dynamic_thres
    (tmp_path / 'data.yaml').write_text(yaml.safe_dump({'train': 'train2017.txt', 'val': 'train2017.txt', 'nc': 80,
                                                        'path': str(coco_subset.parent)}))
    cfg, weights = tiny_checkpoint
    recorded = recording_scores(monkeypatch)
    thresholds = get_dynamic_thres.run(get_dynamic_thres.parse_opt([
        '--device', 'cpu', '--batch-size', '4', '--img-size', '64', '--cfg', str(cfg), '--weight', str(weights),
        '--data', str(tmp_path / 'data.yaml'), '--task', 'val', '--sweep', '--project', str(tmp_path / 'runs')]))
    values = [float(t) for t in thresholds]
    assert len(values) == 11 and values[0] == 0 and values[-1] == 1 and values == sorted(values)
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == '*' * 51 and printed[2] == ' '.join(thresholds) and printed[-1] == '*' * 51
    assert printed[3] == 'First: 100%\tSecond: 0%\tThreshold: 0'
    with open(tmp_path / 'runs' / 'exp' / 'sweep.csv', newline='') as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert len(rows) == 11 and rows[0]['threshold'] == 0 and rows[0]['easy_share'] == 1  # every image easy
    assert rows[-1]['threshold'] == 1 and all(r['eval_ms_per_image'] > 0 for r in rows)
    for name in ('sweep.png', 'router_quality.txt', 'router.json'):
        assert (tmp_path / 'runs' / 'exp' / name).is_file(), name
    # each row's easy share is that of the scores collected (threshold 1 sends an image scoring exactly 1.0 easy:
    # a saturated router may); random routing at the ends is the router's, with no spread
    (scores,) = recorded
    assert len(scores) == SUBSET
    assert [r['easy_share'] for r in rows] == [float(np.mean(scores >= v)) for v in values]
    # (the random column is a mean over draws: equal to float rounding)
    assert rows[0]['random_mAP@.5:.95'] == pytest.approx(rows[0]['mAP@.5:.95'], rel=1e-12, abs=1e-15)
    assert rows[0]['random_mAP@.5:.95_sd'] == pytest.approx(0, abs=1e-12)
    # the percentiles beside the weights let test.py route by budget: within one image of the share asked
    flops = json.loads(weights.with_suffix('.router.json').read_text())['gflops']
    for flag, value, share in (('--easy-share', '0.5', 0.5), ('--easy-share', '0.25', 0.25),
                               ('--gflops', str(0.75 * flops['easy'] + 0.25 * flops['hard']), 0.75)):
        with _info_log() as log:
            test_script.run_test(test_script.parse_opt([
                '--img-size', '64', '--batch-size', '4', '--device', 'cpu', '--cfg', str(cfg), '--weight', str(weights),
                '--data', str(tmp_path / 'data.yaml'), '--project', str(tmp_path / 'test'), flag, value]))
        (routing,) = [m for m in log if m.startswith('Routing: ')]
        assert abs(int(routing.split()[1].split('/')[0]) - share * SUBSET) <= 1, (flag, value, routing)
