"""Evaluation: ground truth as predictions gives mAP 1 (ours and pycocotools), batched dynamic evaluation equals
batch 1, test.py end to end on coco128 with --save-json, and one-line errors for bad input."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import test as test_script
from models.checkpoint import half_state_dict, save_checkpoint
from models.yolo import Model
from tests.helpers import COCO128, coco128_view, requires_coco128, tiny_config
from utils.coco_eval import CocoIds, evaluate_json
from utils.dataloaders import create_dataloader
from utils.evaluation import EvalOptions, evaluate, summarize, validate
from utils.general import xywhn2xyxy
from utils.labels import img2label_paths, read_label_file
from utils.metrics import ap_per_class, match_predictions

ANNOTATIONS = COCO128 / 'annotations' / 'instances_train2017.json'


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


def _lively_tiny_model(nc: int = 80) -> Model:
    """A tiny dynamic model whose heads predict many boxes (objectness biases raised) and whose router splits."""
    torch.manual_seed(0)
    model = Model(tiny_config(dynamic=True, nc=nc))
    for det in model.detect_layers:
        for conv in det.m:
            conv.bias.data.view(det.na, -1)[:, 4] += 4.0
    return model.eval()


@requires_coco128
def test_batched_dynamic_evaluation_equals_batch_1(tmp_path: Path) -> None:
    model = _lively_tiny_model()
    data = str(coco128_view(tmp_path))
    loader1, _ = create_dataloader(data, 64, 1, 32, pad=0.5, rect=False, workers=0)
    with torch.inference_mode():
        model.get_score = True
        scores = torch.cat([model(imgs.float() / 255) for imgs, *_ in loader1])[:, 0]
        model.get_score = False
    model.dy_thres = float(scores.median())
    results = []
    for batch in (1, 8):
        loader, _ = create_dataloader(data, 64, batch, 32, pad=0.5, rect=False, workers=0)
        opt = EvalOptions(names=[str(i) for i in range(80)], plots=False, save_dir=tmp_path)
        out, confusion = evaluate(model, loader, opt)
        results.append((summarize(out, opt, confusion)[0], out.n_easy, out.n_routed))
    (m1, easy1, n1), (m8, easy8, n8) = results
    assert n1 == n8 == 128 and easy1 == easy8 and 0 < easy1 < 128  # a mixed split, routed the same way
    assert m1[2] > 0  # the model does find something: the comparison is not between zeros
    np.testing.assert_allclose(m8, m1, atol=1e-4)


@requires_coco128
def test_validate_in_memory_restores_train_mode_and_averages_losses(tmp_path: Path) -> None:
    model = _lively_tiny_model().train()
    loader, _ = create_dataloader(str(coco128_view(tmp_path)), 64, 16, 32, pad=0.5, rect=True, workers=0)
    calls = []

    def constant_loss(raw: list, targets: torch.Tensor) -> tuple:
        calls.append(len(raw))
        return torch.tensor(6.0), torch.tensor([1.0, 2.0, 3.0, 6.0])

    opt = EvalOptions(names=[str(i) for i in range(80)], plots=False, save_dir=tmp_path, training=True)
    results, maps, ms = validate(model, loader, opt, compute_loss=constant_loss)
    assert model.training and all(m.training for m in model.modules())
    assert len(calls) == len(loader) == 8 and results[4:] == (1.0, 2.0, 3.0)  # per-batch mean, as the reference
    model.eval()
    out, confusion = evaluate(model, loader, opt)
    reference, _ = summarize(out, opt, confusion)
    assert reference[2] > 0  # something is found: the comparison is not between zeros
    np.testing.assert_allclose(results[:4], reference, atol=1e-9)
    assert maps.shape == (80,) and len(ms) == 3 and ms[2] >= ms[0] > 0


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp('tiny')
    cfg = folder / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(dynamic=True, nc=80)))
    save_checkpoint({'model': half_state_dict(_lively_tiny_model())}, folder / 'tiny.pt')
    return cfg, folder / 'tiny.pt'


@requires_coco128
def test_test_py_end_to_end_with_save_json(tmp_path: Path, tiny_checkpoint: tuple, caplog) -> None:
    coco128_view(tmp_path / 'coco128')
    data = yaml.safe_load((Path(__file__).parents[1] / 'data' / 'coco.yaml').read_text())
    data.update(train='coco128/train2017.txt', val='coco128/train2017.txt')
    data.pop('test')
    (tmp_path / 'coco.yaml').write_text(yaml.safe_dump(data))
    cfg, weights = tiny_checkpoint
    caplog.set_level(logging.INFO)
    metrics, maps, times = test_script.run_test(test_script.parse_opt([
        '--img-size', '64', '--batch-size', '8', '--conf', '0.001', '--iou', '0.65', '--device', 'cpu', '--cfg',
        str(cfg), '--weight', str(weights), '--data', str(tmp_path / 'coco.yaml'), '--dy-thres', '0.5',
        '--project', str(tmp_path / 'runs'), '--save-txt', '--save-results']))
    run = tmp_path / 'runs' / 'exp'
    rows = json.loads((run / 'tiny_predictions.json').read_text())
    assert rows and {'image_id', 'category_id', 'bbox', 'score'} <= set(rows[0])
    assert isinstance(rows[0]['image_id'], int) and rows[0]['category_id'] in range(1, 91)
    text = caplog.text
    assert 'pycocotools unable to run' not in text
    assert 'Routing: ' in text and 'Speed: ' in text and ' all ' in text
    assert (run / 'confusion_matrix.png').is_file() and (run / 'tiny_results.txt').read_text().startswith('map: ')
    assert len(list((run / 'labels').glob('*.txt'))) > 100
    plotted = sorted(f.name for f in run.glob('test_batch*.jpg'))
    assert plotted == [f'test_batch{i}_{kind}.jpg' for i in range(3) for kind in ('labels', 'pred')]
    assert len(metrics) == 4 and maps.shape == (80,)


@requires_coco128
def test_test_py_bf16_matches_fp32(tmp_path: Path, tiny_checkpoint: tuple, caplog) -> None:
    """--bf16 (CPU): the same evaluation in bfloat16 backbones gives fp32's metrics within bfloat16's error, and the
    routing line still counts GFLOPs."""
    coco128_view(tmp_path / 'coco128')
    (tmp_path / 'data.yaml').write_text(yaml.safe_dump({'train': 'coco128/train2017.txt', 'nc': 80,
                                                        'val': 'coco128/train2017.txt', 'path': str(tmp_path)}))
    cfg, weights = tiny_checkpoint
    caplog.set_level(logging.INFO)
    results = []
    for extra in ([], ['--bf16']):
        results.append(test_script.run_test(test_script.parse_opt([
            '--img-size', '64', '--batch-size', '16', '--device', 'cpu', '--cfg', str(cfg), '--weight', str(weights),
            '--data', str(tmp_path / 'data.yaml'), '--dy-thres', '2', '--project', str(tmp_path / 'runs'), *extra]))[0])
    assert results[0][1] > 0  # something is found
    np.testing.assert_allclose(results[1], results[0], atol=0.02)
    assert caplog.text.count('Routing: 0/128 images easy') == 2


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
def test_get_dynamic_thres_prints_11_ascending_thresholds_and_sweeps(tmp_path: Path, tiny_checkpoint: tuple,
                                                                     capsys) -> None:
    import get_dynamic_thres
    coco128_view(tmp_path / 'coco128')
    lines = (tmp_path / 'coco128' / 'train2017.txt').read_text().splitlines()[:12]
    (tmp_path / 'coco128' / 'few.txt').write_text('\n'.join(lines) + '\n')
    (tmp_path / 'data.yaml').write_text(yaml.safe_dump({'train': 'coco128/few.txt', 'val': 'coco128/few.txt',
                                                        'nc': 80}))
    cfg, weights = tiny_checkpoint
    thresholds = get_dynamic_thres.run(get_dynamic_thres.parse_opt([
        '--device', 'cpu', '--batch-size', '4', '--img-size', '64', '--cfg', str(cfg), '--weight', str(weights),
        '--data', str(tmp_path / 'data.yaml'), '--task', 'val', '--sweep', '--project', str(tmp_path / 'runs')]))
    values = [float(t) for t in thresholds]
    assert len(values) == 11 and values[0] == 0 and values[-1] == 1 and values == sorted(values)
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == '*' * 51 and printed[2] == ' '.join(thresholds) and printed[-1] == '*' * 51
    assert printed[3] == 'First: 100%\tSecond: 0%\tThreshold: 0'
    rows = (tmp_path / 'runs' / 'exp' / 'sweep.csv').read_text().splitlines()
    assert len(rows) == 12 and rows[1].startswith('0.0,1.0,')  # threshold 0: every image easy
    assert rows[0].endswith(',ms_per_image') and all(float(r.split(',')[-1]) > 0 for r in rows[1:])
    assert rows[-1].startswith('1.0,0.0,') and (tmp_path / 'runs' / 'exp' / 'sweep.png').is_file()
