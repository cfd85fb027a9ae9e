"""Batched routing (our extension; the reference routes batch size 1 only): each image takes its own path; easy images skip backbone 2."""
from __future__ import annotations

import torch

from models.yolo import Model
from tests.helpers import fill_by_name, tiny_config


def _model() -> Model:
    torch.manual_seed(0)
    model = Model(tiny_config()).double()
    fill_by_name(model)  # name-keyed weights spread the router scores apart
    return model.eval()


def _images(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    base = torch.rand(n, 3, 64, 96, generator=g, dtype=torch.float64)
    return base * torch.linspace(0.1, 1.0, n, dtype=torch.float64).view(n, 1, 1, 1)


def _route_between_middle_scores(model: Model, x: torch.Tensor) -> torch.Tensor:
    """Set dy_thres halfway between the two middle scores of x; returns the per-image easy mask (half easy).

    A threshold equal to one image's score (the median) would leave that image's route to the last bit of its
    score, which a run of a different batch size, or another CPU, may compute one rounding apart."""
    model.get_score = True
    with torch.no_grad():
        scores = model(x)[:, 0]
    model.get_score = False
    below, above = scores.sort()[0][len(x) // 2 - 1:len(x) // 2 + 1].tolist()
    assert above - below > 1e-6  # every score is far from the threshold compared with float64 rounding
    model.dy_thres = (below + above) / 2
    easy = scores >= model.dy_thres
    assert int(easy.sum()) == len(x) // 2
    return easy


class CallCounter:
    """Counts forward calls of a module and the batch sizes it saw."""

    def __init__(self, module: torch.nn.Module):
        self.batches: list[int] = []
        module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.batches.append(int(output.shape[0]) if torch.is_tensor(output) else -1)


def test_scores_differ_between_images() -> None:
    model, x = _model(), _images()
    model.get_score = True
    with torch.no_grad():
        scores = model(x)[:, 0]
    assert scores.shape == (6,)
    assert float(scores.max() - scores.min()) > 1e-3


def test_mixed_batch_equals_per_image_runs() -> None:
    model, x = _model(), _images()
    easy = _route_between_middle_scores(model, x)
    with torch.no_grad():
        decoded, raw = model(x)
        for i in range(len(x)):
            dec_i, raw_i = model(x[i:i + 1])
            torch.testing.assert_close(decoded[i:i + 1], dec_i, rtol=1e-10, atol=1e-12)
            for level, level_i in zip(raw, raw_i):
                torch.testing.assert_close(level[i:i + 1], level_i, rtol=1e-10, atol=1e-12)
            path = model.forward_path(x[i:i + 1], 'easy' if easy[i] else 'hard')[0]
            torch.testing.assert_close(dec_i, path, rtol=1e-10, atol=1e-12)


def test_all_easy_batch_never_runs_backbone2_or_head2() -> None:
    model, x = _model(), _images()
    b2_conv, h1_det, h2_det = CallCounter(model.model_b2[2]), CallCounter(model.model_h[-1]), CallCounter(model.model_h2[-1])
    model.dy_thres = 0.0
    with torch.no_grad():
        model(x)
    assert b2_conv.batches == [] and h2_det.batches == []
    assert h1_det.batches == [-1]  # eval IDetect returns a tuple
    model.dy_thres = 1.01
    with torch.no_grad():
        model(x)
    assert b2_conv.batches == [len(x)] and len(h1_det.batches) == 1


def test_mixed_batch_runs_backbone2_on_hard_images_only() -> None:
    model, x = _model(), _images()
    n_hard = int((~_route_between_middle_scores(model, x)).sum())
    b2_conv, h1_conv = CallCounter(model.model_b2[2]), CallCounter(model.model_h[3])
    with torch.no_grad():
        model(x)
    assert b2_conv.batches == [n_hard]
    assert h1_conv.batches == [len(x) - n_hard]


def test_step1_model_eval_runs_hard_path_only() -> None:
    torch.manual_seed(0)
    model = Model(tiny_config(dynamic=False)).eval()
    h1 = CallCounter(model.model_h[-1])
    with torch.no_grad():
        decoded, raw = model(torch.rand(2, 3, 64, 64))
    assert h1.batches == []
    assert decoded.shape == (2, 3 * (8 * 8 + 4 * 4), 8) and len(raw) == 2


def test_train_forward_returns_both_heads_and_score() -> None:
    torch.manual_seed(0)  # the same weights and input whichever tests ran before
    model = Model(tiny_config()).train()
    maps, score = model(torch.rand(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 3, 8, 8, 8), (2, 3, 4, 4, 8)] * 2
    assert score.shape == (2, 1) and bool(((score > 0) & (score < 1)).all())


def test_augmented_forward_concatenates_three_scales() -> None:
    model, x = _model(), _images(2)
    model.dy_thres = 0.0
    with torch.no_grad():
        augmented, second = model(x, augment=True)
        plain = model(x)[0]
    n = plain.shape[1]
    assert second is None and augmented.shape[1] > n
    torch.testing.assert_close(augmented[:, :n], plain)  # scale 1 comes first, unflipped
