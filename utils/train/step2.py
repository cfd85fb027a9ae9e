"""Step 2 (the reference's train_step2.py): train only the router on the frozen step-1 detector, with the adaptive loss
(the reference's utils/loss.py::ComputeLossOTADy).

Faithful at batch 1: detector frozen and every BatchNorm kept in eval mode each epoch, router-only AdamW/SGD with
two groups (weights with decay, biases), linear schedule, EMA with decay 0 (an exact copy), batch-1 validation at
dy_thres 0.5. Fixed: a step-1 checkpoint's optimizer, epoch and EMA never carry into step 2 (the reference then
crashed on the group count); --weight is required and every detector tensor must be in it (the router may be
absent); autoanchor only reports (re-fitting replaced the frozen detector's anchors, so its boxes came out wrong). Extended:
--batch-size B > 1 applies the adaptive formula per image (the reference refuses B != 1).
"""
from __future__ import annotations

import logging

import torch

from models.checkpoint import CheckpointError, load_weights, read_checkpoint
from models.yolo import Model
from utils.torch_utils import de_parallel
from utils.train.checkpoint import ROUTER
from utils.train.optim import lr_lambda, scaled_weight_decay
from utils.train.trainer import Trainer

LOGGER = logging.getLogger(__name__)


def load_detector(model: Model, weights: str) -> dict:
    """Copy --weight's fitting tensors (the router's too when present); every detector tensor must be among them."""
    ckpt = read_checkpoint(weights)
    loaded = set(load_weights(model, ckpt, strict=False))
    unfilled = [k for k in model.state_dict() if ROUTER not in k and k not in loaded]
    if unfilled:
        raise CheckpointError(f'{weights} does not fit {model.yaml_file}: {len(unfilled)} detector tensors missing '
                              f'or of another shape (e.g. {", ".join(unfilled[:3])}); use the step-2 config of '
                              'the step-1 config it was trained with')
    routed = any(ROUTER in k for k in loaded)
    LOGGER.info(f'Transferred {len(loaded)}/{len(model.state_dict())} items from {weights}'
                f'{"" if routed else " (router absent: freshly initialised)"}')
    return ckpt


class Step2Trainer(Trainer):
    """The router's training: frozen detector, adaptive loss, batch-1 validation."""
    step = 2
    loss_names = ('diff', 'score.0', 'score.1', 'total')
    ema_decay = 0.0  # the "EMA" is an exact copy of the model after every step
    refit_anchors = False  # the anchors belong to the frozen detector, whose boxes were trained with them

    def build_model(self) -> tuple[torch.nn.Module, dict]:
        """The step-2 model with the step-1 detector loaded strictly (the options checks made --cfg a step-2
        config and --weight given)."""
        model = Model(self.opt.cfg, ch=3, nc=self.nc, anchors=self.hyp.get('anchors'))
        ckpt = load_detector(model, self.opt.weight)
        return model.to(self.device), ckpt

    def restorable(self, ckpt: dict) -> dict:
        """Only a resumed step-2 run continues its optimizer / epoch / EMA; a step-1 checkpoint brings weights."""
        return ckpt if self.opt.resume else {}

    def prepare_model(self, model: torch.nn.Module) -> None:
        """--freeze as step 1, then everything but the router frozen."""
        super().prepare_model(model)
        for name, p in model.named_parameters():
            p.requires_grad_(ROUTER in name)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """AdamW (--adam) or Nesterov SGD over the router: weights with decay, then biases."""
        router = de_parallel(model).router
        weights = [p for n, p in router.named_parameters() if not n.endswith('bias')]
        biases = [p for n, p in router.named_parameters() if n.endswith('bias')]
        decay = scaled_weight_decay(self.hyp['weight_decay'], self.opt.total_batch_size, self.nbs)
        h = self.hyp
        if self.opt.adam:
            optimizer = torch.optim.AdamW(weights, lr=h['lr0'], betas=(h['momentum'], 0.999), weight_decay=decay)
        else:
            optimizer = torch.optim.SGD(weights, lr=h['lr0'], momentum=h['momentum'], nesterov=True,
                                        weight_decay=decay)
        if biases:
            optimizer.add_param_group({'params': biases, 'weight_decay': 0.0})
        for group in optimizer.param_groups:
            group.setdefault('initial_lr', group['lr'])
        LOGGER.info(f'Optimizer groups: {len(biases)} .bias, {len(weights)} router weights')
        return optimizer

    def lr_function(self):
        """Always linear (constant lr0 with the finetune hyp's lrf 1)."""
        return lr_lambda(self.opt.epochs, self.hyp['lrf'], linear=True)

    def build_losses(self, model: torch.nn.Module) -> tuple:
        """The adaptive router loss and, for validation, the plain loss on whichever head ran."""
        from utils.loss import ComputeLoss, ComputeLossOTADy
        return ComputeLossOTADy(model, router_loss=getattr(self.opt, 'router_loss', 'adaptive')), ComputeLoss(model)

    def on_epoch_start(self, model: torch.nn.Module) -> None:
        """Train mode, then every BatchNorm back to eval: detector statistics are used and kept."""
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()

    def val_batch_size(self) -> int:
        """Batch 1, as the reference (each val image routed by its own score)."""
        return 1
