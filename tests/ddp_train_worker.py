"""Run training under torchrun and save what each rank ended with (for the 2-process DDP tests).

argv: <output folder> <train_step1 flags...> [--then-step2 <train_step2 flags...>] [--then-failing-step1 <train_step1
flags...>]: the stages in turn, in one process group. After the first two, <output>/rank<R>.pt gets: parameters,
anchor buffers, the anchors step 1's training loss used, the epochs this rank ran, the image weights its sampler
drew with, and after step 2 the router's parameters. The failing stage reaches the branches a test cannot reach with
real data in seconds: rank 1's loss is NaN at every step (rank 0's finite), and rank 0's checkpoint save raises as
non-finite weights make it raise; each rank then writes its one-line error and exits 2. DDP_TEST_SCRIPTED_VALIDATION
makes rank 0's validation return fitness 0.5 then 0.1 (so --patience stops) and set per-class mAPs that differ by
class (so --image-weights has non-uniform maps to share)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_step1  # noqa: E402
import train_step2  # noqa: E402
from tests.train_helpers import skip_run_plots  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.torch_utils import de_parallel, select_device  # noqa: E402
from utils.train.distributed import cleanup, init_distributed  # noqa: E402
from utils.train.options import prepare_options  # noqa: E402
from utils.train.step2 import Step2Trainer  # noqa: E402
from utils.train.trainer import Trainer, TrainingError  # noqa: E402


def scripted(base: type[Trainer], failing: bool = False) -> type[Trainer]:
    """`base` counting the epochs it runs, with scripted validation if asked and, `failing`, the failing stage's
    NaN losses on rank 1 and failing save on rank 0."""
    class Scripted(base):
        epochs_run = 0

        def on_epoch_start(self, model) -> None:
            super().on_epoch_start(model)
            self.epochs_run += 1

        def forward_loss(self, model, imgs, targets):
            loss, items = super().forward_loss(model, imgs, targets)
            return (loss * float('nan'), items) if failing and self.ctx.rank == 1 else (loss, items)

        def validate_epoch(self, epoch: int, final: bool) -> tuple:
            if not os.environ.get('DDP_TEST_SCRIPTED_VALIDATION'):
                return super().validate_epoch(epoch, final)
            self.maps = np.linspace(0.9, 0.1, self.nc) / (epoch + 1)
            return (0.0, 0.0, 0.0, 0.5 if epoch == 0 else 0.1, 0.0, 0.0, 0.0)

        def save(self, epoch: int, is_best: bool) -> None:
            if failing:
                raise TrainingError(f'the weights became NaN/inf at epoch {epoch} (test)')
            super().save(epoch, is_best)
    return Scripted


def step1_results(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Step 1's parameters, anchor buffers, loss anchors, epochs run and sampler weights on this rank."""
    model = de_parallel(trainer.model)
    saved = {k: v.detach().cpu() for k, v in model.named_parameters()}
    saved.update({f'buffer {k}': v.detach().cpu() for k, v in model.named_buffers() if k.endswith('anchors')})
    saved['loss anchors'] = trainer.compute_loss.anchors.cpu()  # what the training loss assigned boxes with
    saved['epochs run'] = torch.tensor(trainer.epochs_run)
    saved['sampler weights'] = torch.as_tensor(np.asarray(getattr(trainer.loader.sampler, 'weights', [])))
    return saved


def stages(argv: list[str]) -> dict[str, list[str]]:
    """argv split at --then-step2 / --then-failing-step1: {'step1': [...], 'step2': [...], 'failing': [...]}."""
    parts, name = {'step1': []}, 'step1'
    for word in argv:
        if word in ('--then-step2', '--then-failing-step1'):
            name = 'step2' if word == '--then-step2' else 'failing'
            parts[name] = []
        else:
            parts[name].append(word)
    return parts


def main() -> None:
    """Train as argv says, save this rank's results, leave the process group."""
    out, argv = Path(sys.argv[1]), stages(sys.argv[2:])
    opt = prepare_options(train_step1.parse_opt(argv['step1']))
    ctx = init_distributed(opt.global_rank, opt.local_rank, opt.world_size, select_device(opt.device))
    skip_run_plots(pytest.MonkeyPatch())  # the tests compare weights; figures would only cost rank 0 time
    try:
        trainer = scripted(Trainer)(opt, ctx)
        trainer.run()
        saved = step1_results(trainer)
        if 'step2' in argv:
            router = scripted(Step2Trainer)(prepare_options(train_step2.parse_opt(argv['step2']), 2), ctx)
            router.run()
            saved.update({f'router {k}': v.detach().cpu() for k, v in de_parallel(router.model).named_parameters()
                          if v.requires_grad})
        torch.save(saved, out / f'rank{ctx.rank}.pt')
        if 'failing' in argv:
            scripted(Trainer, failing=True)(prepare_options(train_step1.parse_opt(argv['failing'])), ctx).run()
    except UserError as e:  # what run_cli prints, with the rank
        sys.stderr.write(f'rank {ctx.rank}: error: {e}\n')
        cleanup(ctx)
        sys.exit(2)
    cleanup(ctx)


if __name__ == '__main__':
    main()
