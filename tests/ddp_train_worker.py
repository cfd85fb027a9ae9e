"""Run step-1 training under torchrun and save this rank's final parameters, anchor buffers and the anchors its
training loss used (for the 2-process DDP test)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_step1  # noqa: E402
from tests.train_helpers import skip_run_plots  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.torch_utils import de_parallel, select_device  # noqa: E402
from utils.train.distributed import cleanup, init_distributed  # noqa: E402
from utils.train.options import prepare_options  # noqa: E402
from utils.train.trainer import Trainer, TrainingError  # noqa: E402


class FailingSave(Trainer):
    """Rank 0's checkpoint save fails as non-finite weights make it fail."""

    def save(self, epoch: int, is_best: bool) -> None:
        raise TrainingError(f'the weights became NaN/inf at epoch {epoch} (test)')


def main() -> None:
    """argv: <output folder> <train_step1 flags...>."""
    out = Path(sys.argv[1])
    opt = prepare_options(train_step1.parse_opt(sys.argv[2:]))
    ctx = init_distributed(opt.global_rank, opt.local_rank, opt.world_size, select_device(opt.device))
    skip_run_plots(pytest.MonkeyPatch())  # the test compares weights; figures would only cost rank 0 time
    trainer = (FailingSave if os.environ.get('DDP_TEST_FAIL_SAVE') else Trainer)(opt, ctx)
    try:
        trainer.run()
    except UserError as e:  # what run_cli prints, with the rank
        sys.stderr.write(f'rank {ctx.rank}: error: {e}\n')
        cleanup(ctx)
        sys.exit(2)
    model = de_parallel(trainer.model)
    saved = {k: v.detach().cpu() for k, v in model.named_parameters()}
    saved.update({f'buffer {k}': v.detach().cpu() for k, v in model.named_buffers() if k.endswith('anchors')})
    saved['loss anchors'] = trainer.compute_loss.anchors.cpu()  # what the training loss assigned boxes with
    torch.save(saved, out / f'rank{ctx.rank}.pt')
    cleanup(ctx)


if __name__ == '__main__':
    main()
