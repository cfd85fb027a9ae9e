"""The training loop shared by step 1 and step 2 (the reference's train_step1.py and train_step2.py): one class,
step-specific hooks.

Faithful: warmup, accumulation to nominal batch 64, AMP, EMA, per-epoch validation of the EMA with the
reference's fitness, results.txt, checkpoint policy, stripping, the final log line. Extended: NaN/inf steps
skipped (stop after several in a row), early stopping (--patience), one-line CUDA out-of-memory errors,
results.csv, validation under autocast instead of rounding the EMA to fp16, atomic checkpoints.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from utils.data.data_config import load_data_config
from utils.data.sampling import epoch_image_weights, labels_to_class_weights, multi_scale_resize
from utils.errors import TrainOptionError, UserError
from utils.evaluation.validator import EvalOptions, validate
from utils.hyp import load_hyp, scale_hyp
from utils.metrics import fitness
from utils.torch_utils import amp_dtype, de_parallel, native_bf16
from utils.train.checkpoint import (
    checkpoint_step,
    epochs_to_train,
    non_finite_tensors,
    restore_training_state,
    save_epoch,
    strip_checkpoint,
    training_checkpoint,
)
from utils.train.distributed import DistContext, all_ranks_agree, broadcast_flag, share_failure, wants_sync_bn
from utils.train.ema import ModelEMA
from utils.train.optim import (
    apply_warmup,
    build_optimizer,
    freeze_parameters,
    lr_lambda,
    nominal_accumulate,
    warmup_iterations,
)
from utils.train.outputs import (
    ResultsLog,
    TrainWriter,
    cuda_memory_gb,
    plot_labels,
    plot_lr_schedule,
    plot_results,
    plot_train_batch,
    progress_header,
    progress_line,
)
from utils.train.setup import (
    build_train_model,
    check_label_classes,
    init_seeds,
    train_loader,
    val_loader,
    write_run_files,
)
from utils.train.wandb_logging import WandbRun, check_artifact_paths

LOGGER = logging.getLogger(__name__)
MAX_BAD_STEPS = 5  # consecutive non-finite losses before training stops
TRAIN_BATCH_PLOTS = 10  # train_batch{ni}.jpg for ni < 10, as the reference
VAL_IOU = 0.6  # the evaluation function's default during training (the CLI's is 0.65)


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite losses, out of memory): one line; checkpoints on disk are intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C while training; its message is the one line saying how to continue (a KeyboardInterrupt still, which
    run_cli prints as that line with exit code 130)."""


class Trainer:
    """Step-1 training (the cascaded detector); step 2 overrides the hooks marked as such."""
    step = 1  # which training script's options and checkpoints this trainer takes
    refit_anchors = True  # step 2: only report how well the frozen detector's anchors fit
    loss_names = ('box', 'obj', 'cls', 'total')
    ema_decay = 0.9999

    def __init__(self, opt: argparse.Namespace, ctx: DistContext) -> None:
        self.opt, self.ctx, self.device = opt, ctx, ctx.device
        self.save_dir = Path(opt.save_dir)
        self.weights_dir = self.save_dir / 'weights'
        self.amp_dtype = amp_dtype(self.device, getattr(opt, 'no_amp', False), getattr(opt, 'amp', False))
        self.bad_steps = 0
        self.wandb: WandbRun | None = None

    @property
    def amp(self) -> bool:
        """Whether training runs under autocast (float16 on CUDA, bfloat16 on the CPU)."""
        return self.amp_dtype is not None

    # ------------------------------------------------------------------ hooks (step 2 overrides these)
    def build_model(self) -> tuple[torch.nn.Module, dict]:
        """The model from --cfg with --weight's matching tensors; returns it and the checkpoint read."""
        return build_train_model(self.opt, self.hyp, self.nc, self.device)

    def restorable(self, ckpt: dict) -> dict:
        """The checkpoint whose optimizer / EMA / epoch / results continue here (step 1: any given .pt but an
        unfinished step-2 run's, whose optimizer trains the router)."""
        if ckpt.get('optimizer') is not None and checkpoint_step(ckpt) == 2:
            raise TrainOptionError(f'--weight {self.opt.weight}: an unfinished step-2 run\'s checkpoint (its '
                                   f'optimizer trains the router); continue it with train_step2.py --resume '
                                   f'{self.opt.weight}, or give step 1 a step-1 checkpoint')
        return ckpt

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Freeze what --freeze names."""
        freeze_parameters(model, self.opt.freeze)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The reference's three parameter groups with SGD or Adam (three more with hyp hard_path_lr_gain)."""
        return build_optimizer(model, self.hyp, self.opt.adam, self.opt.total_batch_size, self.nbs)

    def lr_function(self):
        """One-cycle cosine, or linear with --linear-lr, over --epochs (fine-tuning an unstripped checkpoint
        trains past it, as in the reference, whose schedule is made before the count is extended)."""
        return lr_lambda(self.opt.epochs, self.hyp['lrf'], getattr(self.opt, 'linear_lr', False))

    def build_losses(self, model: torch.nn.Module) -> tuple:
        """(training loss, validation loss) objects."""
        from utils.loss import ComputeLoss, ComputeLossOTA, ComputeLossOTADual
        single = getattr(self.opt, 'single_backbone', False)
        # the plain OTA loss sees only nl of the 2·nl maps (the reference's utils/loss.py::ComputeLossOTADual)
        if single and len(model.model_b2):
            raise TrainOptionError(f'--single-backbone: {self.opt.cfg} has a second backbone and head; '
                                   'use it without --single-backbone (a single-backbone config is needed for it)')
        return (ComputeLossOTA if single else ComputeLossOTADual)(model), ComputeLoss(model)

    def check_anchors(self, model: torch.nn.Module) -> None:
        """Autoanchor: re-fit the anchors to the labels when they fit badly (not with --noautoanchor)."""
        from utils.train.autoanchor import check_anchors
        if not self.opt.noautoanchor:
            check_anchors(self.dataset, model, thr=self.hyp['anchor_t'], imgsz=self.img_size,
                          refit=self.refit_anchors)

    def on_epoch_start(self, model: torch.nn.Module) -> None:
        """Train mode for the whole model."""
        model.train()

    def val_batch_size(self) -> int:
        """Twice the per-rank training batch."""
        return self.opt.batch_size // self.opt.world_size * 2

    def forward_loss(self, model: torch.nn.Module, imgs: torch.Tensor, targets: torch.Tensor):
        """Training forward and loss of one batch."""
        return self.compute_loss(model(imgs), targets, imgs)

    # ------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Data, model, optimizer, schedule, EMA, restored state, loaders, losses."""
        opt, ctx = self.opt, self.ctx
        init_seeds(opt.seed + 2 + ctx.rank)
        self.hyp = load_hyp(opt.hyp)
        self.nbs = int(self.hyp.get('nbs', 64))  # nominal batch per optimizer step (hyp `nbs`: our extension)
        self.data = load_data_config(opt.data, required=('train', 'val'))
        self.nc = 1 if opt.single_cls else int(self.data['nc'])
        self.names = ['item'] if opt.single_cls else [str(n) for n in self.data['names']]
        model, ckpt = self.build_model()
        ckpt = self.restorable(ckpt)
        self.prepare_model(model)
        self.epochs = epochs_to_train(ckpt, opt.epochs, opt.weight)
        self.optimizer = self.build_optimizer(model)
        self.ema = ModelEMA(model, self.ema_decay) if ctx.main else None
        self.lf = self.lr_function()
        # LambdaLR sets every group's lr to initial_lr·lf(0): created before the optimizer state is loaded (the
        # reference's order), so a resumed run keeps the rates it saved
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        state = restore_training_state(ckpt, self.optimizer, self.ema, f'--weight {opt.weight}')
        if opt.resume and state.start_epoch <= 0:
            raise TrainingError(f'--resume {opt.weight}: nothing to resume (training to {self.epochs} epochs '
                                'is finished)')
        if ctx.main:  # only now that model, weights and optimizer state are in place: a failed start leaves no run
            write_run_files(opt, self.hyp, self.save_dir)
        self._start_wandb(ckpt.get('wandb_id') if opt.resume and ckpt else None)
        self.start_epoch, self.best_fitness = state.start_epoch, state.best_fitness
        self.best_epoch = int(ckpt.get('best_epoch', self.start_epoch - 1)) if ckpt else -1
        self.last_saved: dict | None = None  # the checkpoint this process last wrote to last.pt
        self.scheduler.last_epoch = self.start_epoch - 1
        groups = len(self.optimizer.param_groups)
        self.results = ResultsLog(self.save_dir, self.loss_names, groups) if ctx.main else None
        if ctx.main:
            self.results.restore(state.results_text or '')
        self._setup_data(model)
        self.model = self._wrap(model)
        # after DDP's broadcast: the losses copy the anchors, which only rank 0's autoanchor re-fitted
        self.compute_loss, self.val_loss = self.build_losses(model)

    def _start_wandb(self, resume_id: str | None) -> None:
        """W&B on rank 0 when it is installed (a resumed run continues its W&B run); artifact data paths resolved."""
        self.wandb = WandbRun.start(self.opt, self.hyp, self.save_dir, resume_id) if self.ctx.main else None
        check_artifact_paths(self.data, self.wandb is not None and not self.ctx.distributed)
        if self.wandb is not None:
            self.data = self.wandb.resolve_data(self.data)
            if self.opt.upload_dataset and not resume_id:
                self.wandb.upload_dataset(self.opt.data, self.data)

    def _setup_data(self, model) -> None:
        opt, ctx = self.opt, self.ctx
        self.gs = max(int(model.stride.max()), 32)
        self.nl = model.model_h2[-1].nl
        self.img_size, self.img_size_test = [math.ceil(x / self.gs) * self.gs for x in opt.img_size]
        self.loader, self.dataset = train_loader(opt, self.data, self.hyp, self.img_size, self.gs, ctx.rank)
        check_label_classes(self.dataset.labels, self.nc, opt.data, self.dataset.label_files)
        self.nb = len(self.loader)
        self.val_loader = None
        if ctx.main:
            self.val_loader = val_loader(opt, self.data, self.hyp, self.img_size_test, self.gs, self.val_batch_size())
            if not opt.resume:
                self._first_run_checks(model)
        self.hyp = scale_hyp(self.hyp, self.nl, self.nc, self.img_size, opt.label_smoothing)
        model.nc, model.hyp, model.gr, model.names = self.nc, self.hyp, 1.0, self.names
        model.class_weights = labels_to_class_weights(self.dataset.labels, self.nc).to(self.device) * self.nc

    def _first_run_checks(self, model) -> None:
        labels = np.concatenate([x for x in self.dataset.labels if len(x)] or [np.zeros((0, 5))])
        plot_labels(labels, self.names, self.save_dir)
        plot_lr_schedule(self.lf, self.epochs, self.hyp['lr0'], self.save_dir)
        self.check_anchors(model)
        model.half().float()  # the reference rounds the fresh weights through fp16 once

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if wants_sync_bn(self.opt.sync_bn, self.ctx):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).to(self.device)
            LOGGER.info('Using SyncBatchNorm()')
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            model = DDP(model, device_ids=ids, output_device=ids[0] if ids else None)
        return model

    # -------------------------------------------------------------------------------------------- loop
    def run(self) -> Path:
        """Set up, train every epoch, finish; returns the run folder."""
        self.setup()
        t0 = time.time()
        self.writer = TrainWriter(self.save_dir, enabled=self.ctx.main)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype == torch.float16)  # bf16 needs no scaling
        self.nw = warmup_iterations(self.hyp, self.nb)
        self.accumulate = nominal_accumulate(self.opt.total_batch_size, self.nbs)
        self.maps = np.zeros(self.nc)
        if self.ctx.main:
            LOGGER.info(f'AMP: {self.amp_description()}')
            LOGGER.info(f'Image sizes {self.img_size} train, {self.img_size_test} test\nUsing '
                        f'{self.loader.num_workers} dataloader workers\nLogging results to {self.save_dir}\n'
                        f'Starting training for {self.epochs} epochs...')
        epoch = self.start_epoch - 1
        try:
            for epoch in range(self.start_epoch, self.epochs):
                mloss, last_line = self.train_epoch(epoch)
                if self.end_epoch(epoch, mloss, last_line):
                    break
        except torch.cuda.OutOfMemoryError as e:
            if self.wandb is not None:
                self.wandb.finish(ok=False)
            raise TrainingError(f'CUDA out of memory at --batch-size {self.opt.batch_size} ({str(e).splitlines()[0]}); '
                                f'try --batch-size {max(self.opt.batch_size // 2, 1)}') from None
        except BaseException as e:
            if self.wandb is not None:
                self.wandb.finish(ok=False)
            if isinstance(e, KeyboardInterrupt):  # the checkpoints are whole (atomic writes): say how to continue
                raise TrainingInterrupted(self.interrupted_message(epoch)) from None
            raise
        finally:
            self.writer.close()
        if self.ctx.main:
            self.finish(epoch - self.start_epoch + 1, t0)
        return self.save_dir

    def train_epoch(self, epoch: int) -> tuple[torch.Tensor, str]:
        """One pass over the training loader; returns the mean loss items and the last progress line."""
        model = self.model
        self.on_epoch_start(model)
        self._set_sampling(epoch)
        mloss = torch.zeros(4, device=self.device)
        batches = enumerate(self.loader)
        if self.ctx.main:
            LOGGER.info(progress_header(self.loss_names))
            batches = self.batch_progress(batches)
        self.optimizer.zero_grad()
        line = ''
        for i, (imgs, targets, paths, _) in batches:
            ni = i + self.nb * epoch
            items = self.train_step(ni, epoch, imgs, targets)
            if items is not None:
                mloss = (mloss * i + items) / (i + 1)
            if self.ctx.main:
                line = progress_line(epoch, self.epochs, cuda_memory_gb(), mloss.tolist(), len(targets),
                                     imgs.shape[-1])
                if hasattr(batches, 'set_description'):
                    batches.set_description(line)
                if ni < TRAIN_BATCH_PLOTS:
                    plot_train_batch(imgs, targets, paths, self.save_dir / f'train_batch{ni}.jpg', self.names)
        return mloss, line

    def batch_progress(self, batches: Iterable) -> Iterable:
        """The epoch's progress bar on rank 0 (set_description gets the progress line); hook for other displays."""
        return tqdm(batches, total=self.nb, bar_format='{l_bar}{bar:10}{r_bar}')

    def train_step(self, ni: int, epoch: int, imgs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Forward, backward and (when due) an optimizer step; returns the loss items, None for a skipped step."""
        imgs = imgs.to(self.device, non_blocking=True).float() / 255.0
        if ni <= self.nw:
            self.accumulate = apply_warmup(self.optimizer, ni, self.nw, epoch, self.lf, self.hyp,
                                           self.opt.total_batch_size, self.nbs)
        if self.opt.multi_scale:
            imgs = multi_scale_resize(imgs, self.img_size, self.gs)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            loss, items = self.forward_loss(self.model, imgs, targets.to(self.device))
        loss = loss * self.ctx.world_size * (4.0 if self.opt.quad else 1.0)
        if not all_ranks_agree(bool(torch.isfinite(loss.detach()).all()), self.ctx):
            self._bad_step(ni, epoch)
            return None
        self.bad_steps = 0
        self.scaler.scale(loss).backward()
        if ni % self.accumulate == 0:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad()
            if self.ema is not None:
                self.ema.update(self.model)
        return items.detach().to(self.device)

    def interrupted_message(self, epoch: int) -> str:
        """The line a Ctrl-C at `epoch` ends with: how to continue from the last checkpoint saved, if any."""
        last = self.weights_dir / 'last.pt'
        if not last.is_file():
            return f'interrupted at epoch {epoch}, before any checkpoint was saved; nothing to resume'
        return f'interrupted at epoch {epoch}; continue with: python train_step{self.step}.py --resume {last}'

    def amp_description(self) -> str:
        """Which mixed precision trains, and why (the first log lines say it)."""
        if self.amp_dtype == torch.float16:
            return 'float16 autocast with loss scaling (CUDA); --no-amp for fp32'
        if self.amp_dtype == torch.bfloat16:
            native = 'native' if native_bf16() else 'emulated, slower than fp32 here'
            return f'bfloat16 autocast on the CPU ({native} bf16, --amp); leave --amp out for fp32'
        if getattr(self.opt, 'no_amp', False):
            return 'off (fp32: --no-amp)'
        if self.device.type == 'cpu':
            native = 'native bf16 here' if native_bf16() else 'no native bf16 here: slower'
            return f'off (fp32 on the CPU, as the reference; --amp for bfloat16 autocast, {native})'
        return 'off'

    def _bad_step(self, ni: int, epoch: int) -> None:
        self.bad_steps += 1
        LOGGER.warning(f'WARNING: non-finite loss at epoch {epoch}, iteration {ni}: step skipped '
                       f'({self.bad_steps}/{MAX_BAD_STEPS} in a row)')
        if self.bad_steps >= MAX_BAD_STEPS:
            hint = ('AMP overflows on some GPUs: rerun with --no-amp (fp32)' if self.amp
                    else 'lower lr0 in --hyp or check the labels')
            raise TrainingError(f'loss was NaN/inf for {MAX_BAD_STEPS} steps in a row (epoch {epoch}); {hint}; '
                                f'the last good checkpoint is {self.weights_dir / "last.pt"}')

    def _set_sampling(self, epoch: int) -> None:
        sampler = self.loader.sampler
        if self.opt.image_weights:
            maps = torch.tensor(self.maps, device=self.device, dtype=torch.float64)
            if self.ctx.distributed:
                torch.distributed.broadcast(maps, 0)  # rank 0 validated: every rank draws with its maps
            cw = de_parallel(self.model).class_weights.cpu().numpy()
            sampler.set_weights(epoch_image_weights(self.dataset.labels, cw, maps.cpu().numpy(), self.nc))
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)  # the same order on every rank, a new one each epoch

    # ------------------------------------------------------------------------------------- epoch end
    def end_epoch(self, epoch: int, mloss: torch.Tensor, line: str) -> bool:
        """Schedule step, validation, logs and checkpoints (rank 0); returns whether to stop early."""
        lrs = [group['lr'] for group in self.optimizer.param_groups]
        self.scheduler.step()
        stop, error = False, None
        if self.ctx.main:
            try:
                stop = self._log_and_save(epoch, mloss, line, lrs)
            except BaseException as e:  # non-finite weights, a full disk, a bug, Ctrl-C: the other ranks wait below
                error = e
        message = share_failure(error, self.ctx)  # every rank stops with rank 0's line
        if error is not None:
            raise error  # rank 0's own: run_cli prints it as that line
        if message is not None:
            raise TrainingError(message)
        return broadcast_flag(stop, self.ctx)

    def _log_and_save(self, epoch: int, mloss: torch.Tensor, line: str, lrs: list[float]) -> bool:
        """Rank 0's end of an epoch: validation, logs, checkpoints; returns whether to stop early."""
        final = epoch + 1 == self.epochs
        results = self.validate_epoch(epoch, final) if (not self.opt.notest or final) else (0.0,) * 7
        scalars = self.results.log(epoch, line, mloss.tolist(), results, lrs)
        self.writer.scalars(scalars, epoch)
        if self.wandb is not None:
            self.wandb.log_epoch(scalars, epoch)
        fi = float(fitness(np.array(results).reshape(1, -1))[0])
        if fi >= self.best_fitness:  # ties count, as the reference's best.pt rule
            self.best_fitness, self.best_epoch = fi, epoch
        if not self.opt.nosave or final:
            self.save(epoch, fi == self.best_fitness)
        patience = getattr(self.opt, 'patience', 0)
        stop = bool(patience) and epoch - self.best_epoch >= patience and not final
        if stop:
            LOGGER.info(f'Stopping early: no better fitness for {patience} epochs (best {self.best_fitness:.4f} '
                        f'at epoch {self.best_epoch}); best.pt holds it')
        return stop

    def validate_epoch(self, epoch: int, final: bool) -> tuple:
        """Validate the EMA model: (P, R, mAP@.5, mAP@.5:.95, val box, obj, cls)."""
        self.ema.update_attr(self.model)
        bbox_images = self.wandb is not None and self.wandb.bbox_due(epoch)
        opt = EvalOptions(iou_thres=VAL_IOU, save_dir=self.save_dir, names=self.names, training=True,
                          plots=final or bbox_images, v5_metric=self.opt.v5_metric, verbose=final and self.nc < 50)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            results, self.maps, _ = validate(self.ema.ema, self.val_loader, opt, compute_loss=self.val_loss)
        return tuple(float(x) for x in results)

    def save(self, epoch: int, is_best: bool) -> None:
        """last.pt (+ best / epoch copies), atomically."""
        ckpt = training_checkpoint(epoch, self.best_fitness, self.results.read_text(), self.model, self.ema,
                                   self.optimizer)
        bad = non_finite_tensors(ckpt)
        if bad:  # saving them would overwrite the last good last.pt with weights nothing can use
            raise TrainingError(f'the weights became NaN/inf at epoch {epoch} ({len(bad)} tensors, e.g. {bad[0]}); '
                                f'lower lr0 in --hyp (or check the labels); the last good checkpoint is '
                                f'{self.weights_dir / "last.pt"}')
        ckpt.update(best_epoch=self.best_epoch, wandb_id=self.wandb.id if self.wandb is not None else None)
        save_epoch(ckpt, self.weights_dir, epoch, self.epochs, is_best, self.opt.save_period)
        self.last_saved = ckpt
        period = self.opt.save_period
        if self.wandb is not None and period > 0 and (epoch + 1) % period == 0:
            self.wandb.log_model(self.weights_dir / 'last.pt', epoch, is_best)

    def finish(self, epochs_run: int, t0: float) -> None:
        """Plots, stripped final checkpoints and the reference's closing line."""
        plot_results(self.save_dir)
        saved = self.last_saved  # also what best.pt holds when the best epoch is the last saved one
        for name in ('last.pt', 'best.pt'):
            same = saved is not None and (name == 'last.pt' or self.best_epoch == saved['epoch'])
            if (self.weights_dir / name).is_file():
                strip_checkpoint(self.weights_dir / name, saved if same else None)
        if self.wandb is not None:
            final = self.weights_dir / ('best.pt' if (self.weights_dir / 'best.pt').is_file() else 'last.pt')
            self.wandb.log_model(final, self.start_epoch + epochs_run - 1, best=True, final=True)
            self.wandb.finish(ok=True)
        LOGGER.info(f'{epochs_run} epochs completed in {(time.time() - t0) / 3600:.3f} hours.\n'
                    f'Results saved to {self.save_dir}')


def train(opt: argparse.Namespace, trainer_cls: type[Trainer] = Trainer, configure_logging: bool = True) -> Path:
    """Options → distributed context → trainer; the process group is left however training ends. A caller with
    its own logging set-up (the demo) passes configure_logging=False."""
    from utils.cli import setup_logging
    from utils.torch_utils import select_device
    from utils.train.distributed import cleanup, init_distributed
    from utils.train.options import prepare_options
    opt = prepare_options(opt, trainer_cls.step)
    if configure_logging:
        setup_logging(verbose=opt.global_rank in (-1, 0))
    device = select_device(opt.device, opt.batch_size if opt.world_size == 1 else None)
    ctx = init_distributed(opt.global_rank, opt.local_rank, opt.world_size, device)
    try:
        return trainer_cls(opt, ctx).run()
    finally:
        cleanup(ctx)
