"""Result files that cannot be written, --data/--classes that do not fit the model (detect.py), and export flags,
exporter failures and unwritable export folders (export.py): each is one line, exit code 2, never a traceback."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import detect
import export
from models.checkpoint import save_checkpoint
from models.export import ExportError, export_onnx, export_torchscript, onnx_opsets, split_model
from models.yolo import Model
from tests.helpers import cli_error_line, tiny_config
from utils.detection.detector import DetectionOutputs, OutputWriteError
from utils.detection.sources import Frame

IMG = 64


@pytest.fixture(scope='module')
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Model]:
    """(config, checkpoint, model): the routed tiny config with 3 classes, saved once."""
    folder = tmp_path_factory.mktemp('tiny_outputs')
    cfg = folder / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(tiny_config(nc=3)))
    torch.manual_seed(0)
    model = Model(cfg).eval()
    save_checkpoint({'model': model.state_dict()}, folder / 'tiny.pt')
    return cfg, folder / 'tiny.pt', model


def _model_flags(tiny: tuple) -> list[str]:
    return ['--cfg', str(tiny[0]), '--weight', str(tiny[1]), '--num-classes', '3', '--img-size', str(IMG)]


# detect.py: results that were not written


def test_detect_failed_image_write_is_one_line_not_saved(tmp_path: Path, tiny: tuple, capsys, monkeypatch) -> None:
    image = tmp_path / 'photo.png'
    cv2.imwrite(str(image), np.full((IMG, IMG, 3), 90, np.uint8))
    monkeypatch.setattr(cv2, 'imwrite', lambda *args, **kwargs: False)  # what a read-only folder or full disk gives
    line = cli_error_line(detect.main, _model_flags(tiny) + [
        '--device', 'cpu', '--source', str(image), '--project', str(tmp_path / 'runs'), '--name', 'x'], capsys)
    assert line.startswith('error: ') and str(tmp_path / 'runs' / 'x' / 'photo.png') in line
    assert 'could not be written' in line and 'not writable' in line and '--project' in line


def test_outputs_into_a_removed_folder_raise_naming_the_file(tmp_path: Path) -> None:
    outputs = DetectionOutputs(tmp_path / 'removed', True, False, False, True)
    image = np.zeros((IMG, IMG, 3), np.uint8)
    with pytest.raises(OutputWriteError, match=r'removed/a\.jpg: could not be written'):
        outputs.image(Frame('src/a.jpg', image, 'image'), image)
    with pytest.raises(OutputWriteError, match=r'removed/clip\.mp4: could not be written .*mp4v'):
        outputs.image(Frame('src/clip.mp4', image, 'video', 1, 5, 'video 1/1'), image)
    assert not outputs.writers  # no writer kept that would drop every later frame


def test_crop_write_failure_raises_and_unwritable_formats_save_as_jpg(tmp_path: Path, monkeypatch) -> None:
    outputs = DetectionOutputs(tmp_path, True, False, False, True)
    image = np.zeros((IMG, IMG, 3), np.uint8)
    assert outputs.image(Frame('src/b.mpo', image, 'image'), image) == str(tmp_path / 'b.jpg')  # OpenCV reads .mpo
    assert (tmp_path / 'b.jpg').is_file()
    monkeypatch.setattr(cv2, 'imwrite', lambda *args, **kwargs: False)
    with pytest.raises(OutputWriteError, match=r'crops/car/b_0\.jpg: could not be written'):
        outputs.crops(Frame('src/b.jpg', image, 'image'), np.array([[1, 1, 20, 20, 0.9, 2]]), ['0', '1', 'car'])


# detect.py: --data and --classes that do not fit the model


def test_detect_data_with_another_class_count_is_one_line(tmp_path: Path, capsys) -> None:
    data = tmp_path / 'data.yaml'
    data.write_text(yaml.safe_dump({'nc': 80, 'names': [f'c{i}' for i in range(80)]}))
    line = cli_error_line(detect.main, ['--weight', str(tmp_path / 'none.pt'), '--num-classes', '3',
                                       '--data', str(data), '--source', str(tmp_path)], capsys)
    assert f'--data {data}: has 80 classes but --num-classes is 3' in line
    (tmp_path / 'three.yaml').write_text(yaml.safe_dump({'names': ['a', 'b', 'c']}))
    opt = detect.parse_opt(['--num-classes', '3', '--data', str(tmp_path / 'three.yaml')])
    assert detect.class_names(opt.num_classes, opt.data) == ['a', 'b', 'c']


def test_detect_classes_outside_the_model_are_one_line(capsys) -> None:
    line = cli_error_line(detect.main, ['--num-classes', '3', '--classes', '0', '9', '-1'], capsys,
                          flag_error=True)
    assert '--classes -1 9: outside 0..2 (--num-classes 3)' in line
    assert detect.parse_opt(['--num-classes', '3', '--classes', '0', '2']).classes == [0, 2]


# export.py: flag values, exporter failures, unwritable folders


@pytest.mark.parametrize('flags,expected', [
    (['--num-classes', '0'], '--num-classes 0: must be at least 1'),
    (['--opset', '5'], '--opset 5: this torch exports opsets'),
    (['--opset', '99'], '--opset 99: this torch exports opsets'),
    (['--dy-thres', 'nan'], '--dy-thres nan: give a number')])
def test_export_flag_values_are_one_line(capsys, flags: list[str], expected: str) -> None:
    assert expected in cli_error_line(export.main, flags, capsys, flag_error=True)


def test_export_opset_range_is_the_installed_exporters() -> None:
    opsets = onnx_opsets()
    assert opsets.start <= 9 and 17 in opsets and 99 not in opsets
    assert export.parse_opt(['--opset', '99', '--include', 'torchscript']).opset == 99  # no ONNX: not checked


def test_export_failures_are_export_errors(tmp_path: Path, tiny: tuple, monkeypatch) -> None:
    """The exporter refusing the graph names the file and the default opset; a path that cannot be written names
    the file and suggests --out (for ONNX and TorchScript)."""
    parts, examples, manifest = split_model(tiny[2], (IMG, IMG), 1)

    def refuse(*args, **kwargs):
        raise torch.onnx.errors.OnnxExporterError('Unsupported: ONNX export of operator upsample_nearest2d\nmore')
    with monkeypatch.context() as m:
        m.setattr(torch.onnx, 'export', refuse)
        with pytest.raises(ExportError, match=r'm_part1\.onnx: ONNX export at opset 8 failed: Unsupported: .*'
                                              r'upsample_nearest2d; try --opset 17$'):
            export_onnx(parts, examples, manifest, tmp_path / 'm', 8)
    for suffix, write in (('onnx', export_onnx), ('torchscript', export_torchscript)):
        (tmp_path / f'm_part1.{suffix}').mkdir()  # in the way of the file: the write fails as in a read-only folder
        with pytest.raises(ExportError, match=rf'm_part1\.{suffix}: cannot be written \(Is a directory\); .*--out'):
            write(parts, examples, manifest, tmp_path / 'm')


def test_export_into_an_unwritable_folder_is_one_line(tmp_path: Path, tiny: tuple, capsys, monkeypatch) -> None:
    flags = _model_flags(tiny) + ['--include', 'torchscript']
    line = cli_error_line(export.main, flags + ['--out', str(tiny[1] / 'sub')], capsys)  # below a file
    assert f'{tiny[1] / "sub"}: cannot write there' in line and '--out' in line
    weights_folder = tiny[1].parent  # the default: beside --weight; read-only as seen by a non-root user
    monkeypatch.setattr('utils.cli.os.access', lambda path, mode: Path(path) != weights_folder)
    line = cli_error_line(export.main, flags, capsys)
    assert f'{weights_folder}: cannot write there' in line and '--out' in line
    assert not list(weights_folder.glob('*.torchscript'))
