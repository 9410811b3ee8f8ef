"""Training, evaluation and knowledge-distillation fine-tuning (SGD + cosine)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from gaprune.utils.errors import GapruneError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GapruneError(f"device={name} but no CUDA GPU is visible; use device=auto or device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy."""
    model.eval()
    correct, loss, total = 0, 0.0, 0
    for x, y in batches:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    if total == 0:
        raise GapruneError("evaluation got no samples; the split is empty")
    return {"acc": correct / total, "loss": loss / total, "images": total}


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""
    soft = F.kl_div(F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1), reduction="batchmean")
    return alpha * temperature**2 * soft + (1.0 - alpha) * F.cross_entropy(student, target)


@dataclass
class TrainConfig:
    """An SGD + cosine recipe (`trainer`, `finetune` or a fitness's short fine-tune); epochs and lr
    have no default here, the recipes' YAML gives them."""

    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    bn_sparsity: float = 0.0  # L1 on BN gammas (network slimming)
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    steps: int | None = None  # stop after this many SGD steps in all (a fractional last epoch); None: every epoch

    def validate(self) -> None:
        if self.epochs < 0:
            raise GapruneError(f"epochs={self.epochs} must be >= 0")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise GapruneError(f"steps={self.steps!r} must be a whole number >= 1 (or null: every epoch)")
        if not self.lr > 0:
            raise GapruneError(f"lr={self.lr} must be > 0")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise GapruneError(f"kd_alpha={self.kd_alpha} must be in [0, 1]")
        if not self.kd_temperature > 0:
            raise GapruneError(f"kd_temperature={self.kd_temperature} must be > 0")


def make_optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    return optimizer, scheduler


def train(
    model: nn.Module,
    train_batches: Iterable,
    val_batches: Iterable,
    config: TrainConfig,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    desc: str = "train",
    start_epoch: int = 0,
    optimizer_state: tuple[torch.optim.Optimizer, Any] | None = None,
    after_step: Callable[[], None] | None = None,
    skip_steps: int = 0,
) -> list[dict[str, float]]:
    """Train in place; returns per-epoch history. KD from `teacher` when given; `after_step`
    runs after every optimizer step (e.g. to re-apply unstructured weight masks). `skip_steps`:
    the first batches of `start_epoch` were already trained on (a warm start that continues a
    finalist's fine-tune); they are drawn, so the batch order is unchanged, but not trained on.
    `config.steps` caps the steps of all epochs together (counted from epoch 0, skipped ones included)."""
    config.validate()
    per_epoch = len(train_batches) if config.steps is not None else None  # type: ignore[arg-type]
    optimizer, scheduler = optimizer_state or make_optimizer(model, config)
    step = _Stepper(model, optimizer, config, teacher, after_step)
    history = []
    bar = tqdm(range(start_epoch, config.epochs), desc=desc, unit="epoch", leave=False, dynamic_ncols=True)
    for epoch in bar:
        start = time.perf_counter()
        skip = skip_steps if epoch == start_epoch else 0
        allowed = None if per_epoch is None else max(0, config.steps - epoch * per_epoch)
        totals = _train_epoch(step, train_batches, epoch, skip, allowed)
        scheduler.step()
        val = evaluate(model, val_batches)
        seen = totals.images
        row = {"epoch": epoch + 1, "train_loss": totals.loss / max(1, seen), "train_acc": totals.correct / max(1, seen),
               "val_acc": val["acc"], "val_loss": val["loss"], "lr": optimizer.param_groups[0]["lr"],
               "seconds": time.perf_counter() - start, "train_images": seen, "eval_images": val["images"],
               "steps": totals.steps}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row['val_acc']:.4f}")
        if on_epoch is not None:
            on_epoch(row)
    return history


@dataclass
class _EpochTotals:
    """What one epoch of `train` saw: images, correct predictions, summed loss, optimizer steps."""

    images: int = 0
    correct: int = 0
    loss: float = 0.0
    steps: int = 0


class _Stepper:
    """One optimizer step of `train` on a batch: the loss (KD from `teacher` when given, plus the
    slimming L1 on BN gammas when `config.bn_sparsity` > 0), backward, step, `after_step`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 teacher: nn.Module | None, after_step: Callable[[], None] | None) -> None:
        self.model, self.optimizer, self.config, self.teacher, self.after_step = model, optimizer, config, teacher, after_step
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        if teacher is not None:
            teacher.eval()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) of the model on one batch."""
        config = self.config
        logits = self.model(x)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            loss = kd_loss(logits, teacher_logits, y, config.kd_temperature, config.kd_alpha)
        else:
            loss = F.cross_entropy(logits, y)
        if config.bn_sparsity > 0:
            loss = loss + config.bn_sparsity * sum(bn.weight.abs().sum() for bn in self.bns)
        return logits, loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, totals: _EpochTotals) -> None:
        logits, loss = self.loss(x, y)
        if not math.isfinite(loss.item()):
            raise GapruneError(f"training loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate "
                               f"(lr={self.config.lr})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step()
        totals.images += y.numel()
        totals.steps += 1
        totals.loss += loss.item() * y.numel()
        totals.correct += (logits.argmax(1) == y).sum().item()


def _train_epoch(step: _Stepper, train_batches: Iterable, epoch: int, skip: int, allowed: int | None) -> _EpochTotals:
    """One epoch over `train_batches`: the first `skip` batches drawn but not trained on, at most
    `allowed` batches drawn (None: all of them)."""
    step.model.train()
    totals = _EpochTotals()
    for index, (x, y) in enumerate(train_batches):
        if allowed is not None and index >= allowed:
            break
        if index < skip:
            continue
        step(x, y, epoch, totals)
    return totals


TRAINING_STATE = ("model", "optimizer", "scheduler", "rng", "history")  # what a per-epoch state file holds
# a damaged per-epoch state: never delete a run's files, start over elsewhere
RESTART_TRAINING = "start a new run (a baseline: train into another file with baseline=<path>)"


def train_with_state(model: nn.Module, train_batches, val_batches, config: TrainConfig, state_path: Path,
                     teacher: nn.Module | None = None, on_epoch: Callable[[dict[str, float]], None] | None = None,
                     desc: str = "train", after_step: Callable[[], None] | None = None,
                     warm_start: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`train`, saving model/optimizer/scheduler/RNG state and history to `state_path` after every
    epoch (atomically) and continuing from it when present: an interrupted run resumed here ends
    with the weights of an uninterrupted one. `train_batches.set_epoch` keeps the batch order.

    `warm_start` ({"model", "optimizer", "steps"}: the state after the first `steps` batches of
    epoch 0 with this recipe, e.g. a finalist's short fine-tune) continues from there instead of
    starting over; used only while no epoch has been saved."""
    from gaprune.utils.io import atomic_torch_save, read_torch_dict, with_digest

    optimizer, scheduler = make_optimizer(model, config)
    history: list[dict[str, Any]] = []
    skip = 0
    if warm_start is not None and not state_path.exists():
        model.load_state_dict(warm_start["model"])
        optimizer.load_state_dict(warm_start["optimizer"])
        for group, lr in zip(optimizer.param_groups, scheduler.base_lrs):  # its own schedule ended; ours goes on
            group["lr"] = lr
        skip = int(warm_start["steps"])
        print(f"{desc}: continuing the finalist's fine-tune after its {skip} steps")
    if state_path.exists():  # a directory or a file of another kind there is one line, before any training
        state = read_torch_dict(state_path, "training state", RESTART_TRAINING, TRAINING_STATE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = list(state["history"])
        print(f"{desc}: resuming after epoch {len(history)} from {state_path}")
    train_batches.set_epoch(len(history))

    def save(row: dict[str, Any]) -> None:
        history.append(row)
        atomic_torch_save(with_digest({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                                       "history": history}), state_path)
        if on_epoch is not None:
            on_epoch(row)

    train(model, train_batches, val_batches, config, teacher=teacher, on_epoch=save, desc=desc,
          start_epoch=len(history), optimizer_state=(optimizer, scheduler), after_step=after_step, skip_steps=skip)
    return history
