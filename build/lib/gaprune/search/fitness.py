"""Fitness functions: how good a plan looks before fine-tuning (the search's proxy).

Each returns, per plan, a dict with at least "proxy" (higher is better); extra keys are recorded.
Plans are channel plans (`Plan`: kept channels per unit) or weight-masked plans (`SparsePlan`).
Forward-pass fitnesses score channel plans on the shared baseline without copying it: on CPU each
plan's pruned network runs from sliced baseline tensors (`execution=sliced`), on GPU `chunk` plans
share one pass (`masked`: the batch is stacked once per plan and forward hooks zero each copy's
pruned channels). Both equal the physically pruned model's output. Sparse plans run one at a time
with their weight masks on.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gaprune.data.loaders import capped
from gaprune.engine.training import TrainConfig, evaluate, make_optimizer, train
from gaprune.pruning.batchnorm import adapted_bn, batch_norms, sliced_with_fresh_bn
from gaprune.pruning.masking import ChannelMasker, apply_masks_permanently, masked_weights, masks_exact
from gaprune.pruning.physical import prune_model
from gaprune.pruning.plan import Plan, SparsePlan
from gaprune.pruning.slicing import sliced_forward, sliced_state
from gaprune.pruning.units import PrunableUnit
from gaprune.utils.errors import GapruneError
from gaprune.utils.registry import Registry

FITNESSES: Registry[type["Fitness"]] = Registry("fitness")

AnyPlan = Plan | SparsePlan
# How channel plans run: `masked` stacks `chunk` plans on the full baseline with channel masks,
# `sliced` runs each plan's pruned network from sliced baseline tensors, `auto` picks per device.
EXECUTIONS = ("auto", "masked", "sliced")
# train_batches(batch_size, augment) -> a fresh, seeded, shuffled loader over the train split
TrainBatches = Callable[..., Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class FitnessContext:
    """What a fitness may use: the baseline, its units, importance, calibration data (a subset of
    validation, on device) and, for adaptive BN / fine-tuning fitnesses, training batches."""

    model: nn.Module
    units: Sequence[PrunableUnit]
    importance: dict[str, np.ndarray]
    calib: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # on device
    device: torch.device = torch.device("cpu")
    train_batches: TrainBatches | None = None
    seed: int = 0


def passes(images: int, sliced: bool) -> dict[str, int]:
    """A result's compute (`gaprune.engine.compute`): images through the plan's own network
    (`plan_passes`) or through the full-width baseline (`baseline_passes`); Problem turns them into MACs."""
    return {"plan_passes": images, "baseline_passes": 0} if sliced else {"plan_passes": 0, "baseline_passes": images}


class Fitness:
    """Scores plans. Each result may carry `plan_passes` / `baseline_passes` (image passes through
    the plan's pruned network / the full baseline, a backward counting 2): what scoring it cost.
    `setup_baseline_passes`: baseline passes spent once when the fitness was built."""

    setup_baseline_passes = 0

    def __init__(self, context: FitnessContext, **params) -> None:
        self.context = context
        if params:
            raise GapruneError(f"unknown option(s) {sorted(params)} for fitness={type(self).__name__}")

    def evaluate(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        raise NotImplementedError

    @property
    def group_size(self) -> int:
        """Consecutive plans scored together (1: each alone); results depend on this grouping only."""
        return 1

    def close(self) -> None:
        """Release what evaluating holds (hooks on the shared model)."""


@FITNESSES.register("taylor_proxy")
class TaylorProxy(Fitness):
    """Share of normalised importance the plan keeps, averaged over units. No forward pass."""

    def evaluate(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        importance = self.context.importance
        results = []
        for plan in plans:
            if isinstance(plan, SparsePlan):
                raise GapruneError("fitness=taylor_proxy scores channel plans; with a weight-level encoding "
                                   "use fitness=calib, distortion or finetune")
            shares = [float(importance[name][list(idx)].sum()) for name, idx in plan.keep.items()]
            results.append({"proxy": float(np.mean(shares))})
        return results


class MaskedForwardFitness(Fitness):
    """Base of fitnesses that run the baseline with plans applied (see the module docstring).
    Subclasses implement `score(plans)`: the model is in eval mode with `plans` applied and each
    calibration batch must be repeated len(plans) times (stacked plan-major)."""

    def __init__(self, context: FitnessContext, chunk: int = 8, execution: str = "auto") -> None:
        super().__init__(context)
        if not context.calib:
            raise GapruneError(f"fitness={type(self).__name__} needs calibration data; the validation split is empty")
        if execution not in EXECUTIONS:
            raise GapruneError(f"fitness.params.execution={execution!r} is not one of {', '.join(EXECUTIONS)}")
        if execution == "auto":  # CPU is compute-bound: run the smaller pruned net; GPUs like big stacked batches
            execution = "sliced" if torch.device(context.device).type == "cpu" else "masked"
        if execution == "masked" and not masks_exact(context.model, context.units):
            execution = "sliced"  # LayerNorm over pruned channels: masks are not the pruned net
        self.execution = execution
        self.chunk = max(1, int(chunk))
        self._masker: ChannelMasker | None = None
        self._sliced: dict[str, torch.Tensor] | None = None

    @property
    def stackable(self) -> bool:
        """Whether channel plans may share a forward pass (False: one plan at a time)."""
        return self.execution == "masked"

    @property
    def group_size(self) -> int:
        return self.chunk if self.stackable else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline with the current plans applied (sliced tensors or channel masks)."""
        if self._sliced is not None:
            return sliced_forward(self.context.model, self._sliced, x)
        return self.context.model(x)

    def groups(self, plans: Sequence[AnyPlan]) -> list[list[int]]:
        """Indices of the plans scored together: channel plans `chunk` at a time, sparse plans alone."""
        channel = [i for i, plan in enumerate(plans) if not isinstance(plan, SparsePlan)]
        size = self.group_size
        groups = [channel[i:i + size] for i in range(0, len(channel), size)]
        return groups + [[i] for i, plan in enumerate(plans) if isinstance(plan, SparsePlan)]

    @contextmanager
    def applied(self, plans: Sequence[AnyPlan]) -> Iterator[None]:
        model = self.context.model
        if isinstance(plans[0], SparsePlan):
            assert len(plans) == 1
            with masked_weights(model, plans[0].masks):
                yield
            return
        if self.execution == "sliced":
            assert len(plans) == 1
            self._sliced = sliced_state(model, self.context.units, plans[0])
            if self._sliced is not None:  # None: grouped convs, fall back to masks
                try:
                    yield
                finally:
                    self._sliced = None
                return
        if self._masker is None:
            self._masker = ChannelMasker(model, self.context.units)
        self._masker.set_plans(plans, device=self.context.device)
        try:
            yield
        finally:
            self._masker.set_plans(None)

    @staticmethod
    def stacked(x: torch.Tensor, population: int) -> torch.Tensor:
        return x.repeat(population, *([1] * (x.dim() - 1)))

    def score(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        raise NotImplementedError

    def images_per_plan(self) -> int:
        """Images each plan's network runs on while it is scored (stacked plans each count theirs)."""
        return sum(int(x.shape[0]) for x, _ in self.context.calib)

    @torch.no_grad()
    def evaluate(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        model = self.context.model
        was_training = model.training
        model.eval()
        results: list[dict[str, float] | None] = [None] * len(plans)
        try:
            for group in self.groups(plans):
                members = [plans[i] for i in group]
                with self.applied(members):
                    for index, result in zip(group, self.score(members)):
                        results[index] = {**result, **passes(self.images_per_plan(), self._sliced is not None)}
        finally:
            model.train(was_training)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Remove the forward hooks from the shared model."""
        if self._masker is not None:
            self._masker.remove()
            self._masker = None


@FITNESSES.register("calib")
class CalibrationAccuracy(MaskedForwardFitness):
    """Accuracy (and loss) of the masked baseline on a calibration subset of validation.

    `adaptive_bn` (EagleEye): before scoring each plan, re-estimate BN statistics of the pruned
    network on `bn_batches` training batches of `bn_batch_size` (the same seeded batches for every
    plan). `auto` (default) turns it on for models with BatchNorm: with the baseline's statistics a
    heavily pruned net scores near chance and the proxy cannot rank plans. On the sliced path the
    statistics are fresh tensors in the plan's sliced state (the baseline is never touched); on the
    masked path the shared model's BN buffers are re-estimated under the masks and restored after.
    Plans are scored one at a time (stacked plans would share BN statistics)."""

    def __init__(self, context: FitnessContext, chunk: int = 8, metric: str = "accuracy", adaptive_bn: bool | str = "auto",
                 bn_batches: int = 8, bn_batch_size: int = 64, execution: str = "auto") -> None:
        if adaptive_bn == "auto":  # the most faithful proxy wherever there are BN statistics to refit
            adaptive_bn = bool(batch_norms(context.model)) and context.train_batches is not None
        if adaptive_bn not in (True, False):
            raise GapruneError(f"fitness.params.adaptive_bn={adaptive_bn!r} must be auto, true or false")
        super().__init__(context, chunk, execution)
        if metric not in ("accuracy", "neg_loss"):
            raise GapruneError(f"fitness.metric={metric!r} is not supported; use accuracy or neg_loss")
        self.metric = metric
        self.adaptive_bn = bool(adaptive_bn)
        self.bn_batches = int(bn_batches)
        self.bn_batch_size = int(bn_batch_size)
        self._bn_data: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if self.adaptive_bn:
            if self.bn_batches < 1 or self.bn_batch_size < 2:
                raise GapruneError(f"fitness.params.bn_batches={bn_batches} / bn_batch_size={bn_batch_size}: "
                                   "adaptive BN needs at least 1 batch of at least 2 samples")
            if context.train_batches is None:
                raise GapruneError("fitness.params.adaptive_bn=true needs training batches "
                                   "(FitnessContext.train_batches)")
            if not batch_norms(context.model):
                raise GapruneError("fitness.params.adaptive_bn=true but the model has no BatchNorm layers; "
                                   "set fitness.params.adaptive_bn=false")

    @property
    def stackable(self) -> bool:
        return not self.adaptive_bn and super().stackable

    def bn_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The BN re-estimation batches, drawn once so every plan sees the same ones."""
        if self._bn_data is None:
            batches = self.context.train_batches(self.bn_batch_size, augment=False)
            self._bn_data = list(capped(batches, self.bn_batches))
        return self._bn_data

    def images_per_plan(self) -> int:
        bn = sum(int(x.shape[0]) for x, _ in self.bn_data()) if self.adaptive_bn else 0
        return super().images_per_plan() + bn

    def score(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        if not self.adaptive_bn:
            return self._accuracy(len(plans))
        if self._sliced is not None:
            self._sliced = sliced_with_fresh_bn(self.context.model, self._sliced, self.bn_data())
            return self._accuracy(len(plans))
        with adapted_bn(self.context.model, self.bn_data()):
            return self._accuracy(len(plans))

    def _accuracy(self, population: int) -> list[dict[str, float]]:
        device = self.context.device
        correct = torch.zeros(population, device=device)
        loss = torch.zeros(population, device=device)
        total = 0
        for x, y in self.context.calib:
            logits = self.forward(self.stacked(x, population)).reshape(population, x.shape[0], -1)
            correct += (logits.argmax(-1) == y).float().sum(1)
            loss += F.cross_entropy(logits.transpose(1, 2), y.expand(population, -1), reduction="none").sum(1)
            total += x.shape[0]
        results = []
        for acc, nll in zip((correct / total).tolist(), (loss / total).tolist()):
            proxy = acc if self.metric == "accuracy" else -nll
            results.append({"proxy": proxy, "calib_acc": acc, "calib_loss": nll})
        return results


@FITNESSES.register("distortion")
class OutputDistortion(MaskedForwardFitness):
    """Output distortion vs the unpruned baseline: per sample, the mean squared logit error;
    `reduction=mean` averages it over the calibration samples, `max` takes the worst sample.
    `data=gaussian` feeds seeded N(0, 1) inputs of the calibration batches' shapes instead of
    real images (data-free). proxy = -distortion (higher is better); both reductions recorded."""

    def __init__(self, context: FitnessContext, reduction: str = "mean", data: str = "real", chunk: int = 8,
                 execution: str = "auto") -> None:
        super().__init__(context, chunk, execution)
        if reduction not in ("mean", "max"):
            raise GapruneError(f"fitness.params.reduction={reduction!r} is not supported; use mean or max")
        if data not in ("real", "gaussian"):
            raise GapruneError(f"fitness.params.data={data!r} is not supported; use real or gaussian")
        self.reduction, self.data = reduction, data
        generator = torch.Generator().manual_seed(int(context.seed))
        self.inputs = [x if data == "real" else torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
                       for x, _ in context.calib]
        model = context.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.reference = [model(x) for x in self.inputs]
        self.setup_baseline_passes = sum(int(x.shape[0]) for x in self.inputs)
        model.train(was_training)

    def score(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        population, device = len(plans), self.context.device
        total = torch.zeros(population, device=device, dtype=torch.float64)
        worst = torch.zeros(population, device=device, dtype=torch.float64)
        count = 0
        for x, reference in zip(self.inputs, self.reference):
            logits = self.forward(self.stacked(x, population)).reshape(population, x.shape[0], -1)
            per_sample = (logits - reference).double().pow(2).mean(-1)  # (population, batch)
            total += per_sample.sum(1)
            worst = torch.maximum(worst, per_sample.max(1).values)
            count += x.shape[0]
        results = []
        for mean, top in zip((total / count).tolist(), worst.tolist()):
            distortion = mean if self.reduction == "mean" else top
            results.append({"proxy": -distortion, "distortion": distortion, "distortion_mean": mean,
                            "distortion_max": top})
        return results


@FITNESSES.register("finetune")
class FinetuneAccuracy(Fitness):
    """Accuracy on the calibration subset of validation after a short fine-tune of each plan.

    Channel plans are physically pruned (torch-pruning, as finetune.py does); sparse plans fine-tune
    a copy of the baseline with the weight masks re-applied after every step. SGD (+ cosine over
    `epochs`) for `epochs` epochs or, if `steps` is set, that many steps; CE or KD from the
    baseline (`kd`). Deterministic: every plan gets the same seeded batches and torch seed."""

    def __init__(self, context: FitnessContext, epochs: int = 1, steps: int | None = None, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 64, augment: bool = True,
                 kd: bool = False, kd_temperature: float = 4.0, kd_alpha: float = 0.9, nesterov: bool = True) -> None:
        super().__init__(context)
        if not context.calib:
            raise GapruneError("fitness=finetune needs calibration data; the validation split is empty")
        if context.train_batches is None:
            raise GapruneError("fitness=finetune needs training batches (FitnessContext.train_batches)")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise GapruneError(f"fitness.params.steps={steps} must be a whole number >= 1 (or null to use epochs)")
        if steps is None and (not isinstance(epochs, int) or epochs < 1):
            raise GapruneError(f"fitness.params.epochs={epochs} must be a whole number >= 1")
        self.steps = steps
        self.batch_size, self.augment, self.kd = int(batch_size), bool(augment), bool(kd)
        self.config = TrainConfig(epochs=1 if steps is not None else int(epochs), lr=float(lr),
                                  momentum=float(momentum), weight_decay=float(weight_decay), nesterov=bool(nesterov),
                                  kd_temperature=float(kd_temperature), kd_alpha=float(kd_alpha))
        self.config.validate()
        self.example_input = context.calib[0][0][:1].detach().cpu()

    def evaluate(self, plans: Sequence[AnyPlan]) -> list[dict[str, float]]:
        return [self._finetune(plan) for plan in plans]

    def _student(self, plan: AnyPlan) -> tuple[nn.Module, Callable[[], None] | None]:
        model, device = self.context.model, self.context.device
        if isinstance(plan, SparsePlan):
            student = copy.deepcopy(model).to(device)
            masks = {name: mask.to(device) for name, mask in plan.masks.items()}
            apply_masks_permanently(student, masks)
            return student, lambda: apply_masks_permanently(student, masks)
        return prune_model(model, self.context.units, plan, self.example_input).to(device), None

    def _finetune(self, plan: AnyPlan) -> dict[str, float]:
        model, device = self.context.model, self.context.device
        was_training = model.training
        cuda = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(int(self.context.seed))
            student, after_step = self._student(plan)
            before = evaluate(student, self.context.calib)
            batches = self.context.train_batches(self.batch_size, augment=self.augment)
            if self.steps is not None:
                batches = capped(batches, self.steps, across_epochs=True)
            optimizer = make_optimizer(student, self.config)
            history = train(student, batches, self.context.calib, self.config, teacher=model if self.kd else None,
                            desc="fitness fine-tune", after_step=after_step, optimizer_state=optimizer)
        model.train(was_training)
        last = history[-1]
        trained = sum(row["train_images"] for row in history)
        self.last_trained = {"model": student.state_dict(), "optimizer": optimizer[0].state_dict(),
                             "steps": self.steps, "images": trained}
        own = 3 * trained + before["images"] + sum(row["eval_images"] for row in history)
        cost = passes(own, sliced=not isinstance(plan, SparsePlan))  # a sparse plan trains the dense copy
        cost["baseline_passes"] += trained if self.kd else 0
        return {"proxy": last["val_acc"], "finetune_acc": last["val_acc"], "finetune_loss": last["val_loss"],
                "finetune_train_loss": last["train_loss"], "calib_acc_before": before["acc"], **cost}


def build_fitness(name: str, context: FitnessContext, **params: Any) -> Fitness:
    cls = FITNESSES.get(name)
    try:
        return cls(context, **params)
    except TypeError as err:
        raise GapruneError(f"bad option for fitness={name}: {err}")
