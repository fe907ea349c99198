"""The five ways to train: what each starts from, what trains in which stage, its learning rate, its BatchNorm rule.

Every other module asks this table; none compares strategy names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Head-only training tolerates (and needs) a larger step than updating a pretrained backbone.
HEAD_LR = 1e-3
SCRATCH, LINEAR_PROBE, PARTIAL, FINETUNE, LP_FT, CLASS_MEANS = (
    "scratch", "linear-probe", "partial", "finetune", "lp-ft", "class-means")
PROBE_STAGE = LINEAR_PROBE  # the name, in a run's history, of a stage that trains the head on frozen features


class Trains(StrEnum):
    """What a strategy's image stage updates."""

    ALL = "all"  # every parameter
    LAST_STAGES = "last stages"  # the last --unfreeze-stages stages and the head
    HEAD = "head"  # the head alone (no image stage)


class BatchNormRule(StrEnum):
    PRETRAINED = "pretrained"  # running statistics kept as pretrained
    BATCH = "batch"  # each batch's statistics, the running ones updated


@dataclass(frozen=True)
class Strategy:
    name: str
    pretrained: bool  # the backbone starts from ImageNet weights (else from random initialisation)
    probe_first: bool  # the head first trains alone on the frozen backbone's (cached) features
    image_stage: str | None  # the stage that then trains on images, by its name in the history; None: none
    trains: Trains
    lr: float  # the default peak learning rate of the strategy's last stage
    batchnorm: BatchNormRule  # what --batchnorm auto means for it
    description: str
    trains_at_all: bool = True  # False: the head is set from the data (class means) and never trained

    @property
    def frozen_backbone(self) -> bool:
        """Only the head ever trains: the backbone's features of an image never change."""
        return self.image_stage is None

    @property
    def fits_probe(self) -> bool:
        """A linear probe and nothing else: a head trained on the frozen backbone's features."""
        return self.frozen_backbone and self.trains_at_all

    @property
    def fine_tunes_everything(self) -> bool:
        """Every layer of a pretrained backbone trains on images (finetune, lp-ft)."""
        return self.pretrained and self.trains == Trains.ALL

    @property
    def fine_tunes_from_probe(self) -> bool:
        """Fine-tuning that starts from a trained probe's head (lp-ft), not a fresh one (finetune)."""
        return self.fine_tunes_everything and self.probe_first


STRATEGIES: dict[str, Strategy] = {strategy.name: strategy for strategy in (
    Strategy(SCRATCH, pretrained=False, probe_first=False, image_stage=SCRATCH, trains=Trains.ALL, lr=1e-3,
             batchnorm=BatchNormRule.BATCH,  # a random network's running statistics mean nothing
             description="random initialisation, every layer trains"),
    Strategy(LINEAR_PROBE, pretrained=True, probe_first=True, image_stage=None, trains=Trains.HEAD, lr=HEAD_LR,
             batchnorm=BatchNormRule.PRETRAINED, description="frozen ImageNet backbone, only a new head trains (on cached features)"),
    Strategy(PARTIAL, pretrained=True, probe_first=False, image_stage=PARTIAL, trains=Trains.LAST_STAGES, lr=3e-4,
             batchnorm=BatchNormRule.PRETRAINED, description="the last --unfreeze-stages stages and the head train"),
    Strategy(FINETUNE, pretrained=True, probe_first=False, image_stage=FINETUNE, trains=Trains.ALL, lr=1e-4,
             batchnorm=BatchNormRule.PRETRAINED, description="every layer trains from the ImageNet weights"),
    Strategy(LP_FT, pretrained=True, probe_first=True, image_stage=FINETUNE, trains=Trains.ALL, lr=1e-4,
             batchnorm=BatchNormRule.PRETRAINED, description="a linear probe first, then fine-tuning from its head "
                                                 "(Kumar et al. 2022)"),
    Strategy(CLASS_MEANS, pretrained=True, probe_first=True, image_stage=None, trains=Trains.HEAD, lr=HEAD_LR,
             batchnorm=BatchNormRule.PRETRAINED, trains_at_all=False,
             description="no training: the head is the normalised class means of the frozen features, a nearest "
                         "class mean classifier (the imprinted weights of Qi et al. 2018)"),
)}
NAMES = tuple(STRATEGIES)


def strategy_named(name: object) -> Strategy | None:
    """The strategy of that name; None for any other value (a name read from someone else's model folder)."""
    return STRATEGIES.get(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class StagePlan:
    """One stage of a run: its name, whether it trains the head on features (else the model on images), epochs, lr."""

    index: int
    name: str
    on_features: bool
    epochs: int
    lr: float


def stages(strategy: Strategy, epochs: int, probe_epochs: int, lr: float | None) -> list[StagePlan]:
    """The stages a run of strategy trains, in order; lr (--lr), when given, is the last stage's peak learning rate."""
    plans = []
    if not strategy.trains_at_all:
        return plans
    if strategy.probe_first:
        last = strategy.image_stage is None
        plans.append(StagePlan(0, PROBE_STAGE, True, epochs if last else probe_epochs,
                               (lr or HEAD_LR) if last else HEAD_LR))
    if strategy.image_stage is not None:
        plans.append(StagePlan(len(plans), strategy.image_stage, False, epochs, lr or strategy.lr))
    return plans


def keeps_batchnorm_statistics(strategy: Strategy, batchnorm: str) -> bool:
    """Whether BatchNorm layers normalise with their pretrained running statistics while training (--batchnorm:
    auto, or a BatchNormRule)."""
    if strategy.frozen_backbone:
        return True  # a frozen backbone keeps them whatever --batchnorm says
    return (strategy.batchnorm if batchnorm == "auto" else BatchNormRule(batchnorm)) == BatchNormRule.PRETRAINED
