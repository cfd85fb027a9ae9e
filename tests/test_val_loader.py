"""The evaluation loader against the reference's (val_loader.npz in ../shared/reference): order, batch shapes, gains,
pads, labels, pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REFERENCE, coco128_view, requires_coco128, requires_numpy2_sort, requires_reference
from utils.data.dataloaders import create_dataloader


@pytest.fixture(scope='module')
def reference_loader() -> dict[str, np.ndarray]:
    with np.load(REFERENCE / 'val_loader.npz') as z:
        return {k: z[k] for k in z.files}


@requires_numpy2_sort
@requires_reference
@requires_coco128
@pytest.mark.parametrize('tag,size,batch', [('r320', 320, 8), ('r256', 256, 5)])
def test_val_loader_matches_reference(tmp_path: Path, reference_loader: dict, tag: str, size: int,
                                      batch: int) -> None:
    ref = {k[len(tag) + 1:]: v for k, v in reference_loader.items() if k.startswith(tag)}
    loader, dataset = create_dataloader(str(coco128_view(tmp_path)), size, batch, 32, pad=0.5, rect=True,
                                        workers=0)
    files, batch_hw, means, thumbs, shapes, labels = [], [], [], [], [], []
    seen = 0
    for imgs, targets, paths, batch_shapes in loader:
        assert imgs.dtype == torch.uint8
        files += [Path(p).name for p in paths]
        batch_hw += [list(imgs.shape[2:])] * len(imgs)
        x = imgs.double()
        means.append(x.mean((2, 3)))
        thumbs.append(torch.nn.functional.adaptive_avg_pool2d(x, 8))
        shapes += [[*hw0, *gain, *pad] for hw0, (gain, pad) in batch_shapes]
        t = targets.double()
        t[:, 0] += seen
        labels.append(t)
        seen += len(imgs)
    assert files == list(ref['files'])
    np.testing.assert_array_equal(batch_hw, ref['batch_hw'])
    np.testing.assert_allclose(shapes, ref['shapes'], rtol=1e-9)
    np.testing.assert_allclose(torch.cat(labels).numpy(), ref['labels'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch.cat(means).numpy(), ref['channel_mean'], atol=0.5)
    np.testing.assert_allclose(torch.cat(thumbs).numpy(), ref['thumb8'], atol=0.5)
    assert (tmp_path / 'train2017.cache').is_file()  # beside the list, not in the dataset folders
