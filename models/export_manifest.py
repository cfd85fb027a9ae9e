"""The export manifest (extension: the reference has no export): what a runner needs besides the three graphs,
written as YAML beside them with the SHA-256 of every file, and read back with every field and file checked."""
from __future__ import annotations

import logging
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from utils.errors import UserError
from utils.general import file_digest

LOGGER = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """A graph that cannot be exported or written, or a manifest or graph that cannot be used; one line naming the
    file and the fix."""


@dataclass
class ExportManifest:
    """What the runner needs besides the graphs; written as YAML beside them."""
    cfg: str
    img_size: list[int]
    batch: int
    dynamic_batch: bool
    dy_thres: float
    stride: list[float]
    nc: int
    features: list[int]  # backbone-1 layer indices returned by part 1, in order
    easy_features: list[int]
    hard_features: list[int]
    files: dict[str, str] = field(default_factory=dict)
    detect_index: dict[str, int] = field(default_factory=dict)  # IDetect's layer index in model_h / model_h2
    gflops: dict[str, float] = field(default_factory=dict)  # per path at img_size, as Model.flops counts them
    precision: str = 'fp32'  # 'int8': NNCF-quantized OpenVINO graphs
    calibration: dict = field(default_factory=dict)  # int8: images used and where they came from
    digests: dict[str, str] = field(default_factory=dict)  # SHA-256 of each file, checked when loaded

    def save(self, path: Path) -> Path:
        """Write as YAML (plain types only, safe to read back) with the SHA-256 of every listed file (OpenVINO's
        .bin beside its .xml), which loading checks; returns path."""
        self.digests = {}
        for name in self.files.values():
            for file in [path.parent / name] + ([(path.parent / name).with_suffix('.bin')] if name.endswith('.xml')
                                                else []):
                self.digests[file.name] = file_digest(file)
        path.write_text(yaml.safe_dump(asdict(self), sort_keys=False))
        return path


# the YAML types of each field (bool is an int in Python: checked apart)
_TYPES = {'cfg': str, 'img_size': list, 'batch': int, 'dynamic_batch': bool, 'dy_thres': (int, float),
          'stride': list, 'nc': int, 'features': list, 'easy_features': list, 'hard_features': list, 'files': dict,
          'detect_index': dict, 'gflops': dict, 'precision': str, 'calibration': dict, 'digests': dict}


def _malformed(spec: object) -> str | None:
    """What is wrong with a loaded manifest's structure, or None."""
    if not isinstance(spec, dict):
        return f'a {type(spec).__name__}, not a mapping'
    names = {f.name for f in fields(ExportManifest)}
    required = {f.name for f in fields(ExportManifest) if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = set(spec) - names, required - set(spec)
    if unknown or missing:
        return f'{"unknown" if unknown else "missing"} fields {", ".join(sorted(unknown or missing))}'
    for name, value in spec.items():
        if not isinstance(value, _TYPES[name]) or (isinstance(value, bool) and _TYPES[name] is not bool):
            return f'{name} is a {type(value).__name__}'
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in spec.get('files', {}).items()):
        return 'files must map names to file names'
    if len(spec['img_size']) != 2 or not all(isinstance(s, int) for s in spec['img_size']):
        return 'img_size must be [height, width]'
    return None


def read_manifest(path: Path) -> ExportManifest:
    """An export manifest, or one line naming it and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f'{path}: no such export manifest; run export.py first')
    try:
        spec = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ExportError(f'{path}: not an export manifest ({type(e).__name__}); rerun export.py') from None
    problem = _malformed(spec)
    if problem:
        raise ExportError(f'{path}: not an export manifest of this version ({problem}); rerun export.py')
    return ExportManifest(**spec)


def manifest_file(manifest_path: Path, name: str) -> Path:
    """The file a manifest names, which must lie in the manifest's folder (or below it): a manifest is never a way
    to load a graph from elsewhere."""
    normal = os.path.normpath(name)
    if Path(name).is_absolute() or normal.split(os.sep)[0] == '..':
        raise ExportError(f'{manifest_path}: lists {name!r}, outside its own folder; the graphs must sit beside the '
                          'manifest (move them there, or rerun export.py)')
    return manifest_path.parent / normal


def check_digest(manifest_path: Path, manifest: ExportManifest, file: Path) -> None:
    """`file`'s SHA-256 against the manifest's; a file without one is used with a warning saying so."""
    expected = manifest.digests.get(file.name)
    if expected is None:
        LOGGER.warning(f'WARNING: {file}: {manifest_path.name} records no SHA-256 for it, so it is used unchecked '
                       '(rerun export.py to record one)')
    elif not file.is_file() or file_digest(file) != expected:
        raise ExportError(f'{file}: missing or not the file {manifest_path.name} was written with (SHA-256 '
                          'differs); rerun export.py')
