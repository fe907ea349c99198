"""The five ways to train: what each starts from, what trains in which stage, its learning rate, its BatchNorm rule.

Every other module asks this table; none compares strategy names.
"""

from __future__ import annotations

from dataclasses import dataclass

# Head-only training tolerates (and needs) a larger step than updating a pretrained backbone.
HEAD_LR = 1e-3
PROBE_STAGE = "linear-probe"  # the name, in a run's history, of a stage that trains the head on frozen features


@dataclass(frozen=True)
class Strategy:
    name: str
    pretrained: bool  # the backbone starts from ImageNet weights (else from random initialisation)
    probe_first: bool  # the head first trains alone on the frozen backbone's (cached) features
    image_stage: str | None  # the stage that then trains on images, by its name in the history; None: none
    trains: str  # what the image stage updates: "all" parameters or the "last stages" and head ("head": no image stage)
    lr: float  # the default peak learning rate of the strategy's last stage
    batchnorm: str  # --batchnorm auto: "pretrained" (running statistics kept) or "batch"
    description: str
    trains_at_all: bool = True  # False: the head is set from the data (class means) and never trained

    @property
    def frozen_backbone(self) -> bool:
        """Only the head ever trains: the backbone's features of an image never change."""
        return self.image_stage is None


STRATEGIES: dict[str, Strategy] = {strategy.name: strategy for strategy in (
    Strategy("scratch", pretrained=False, probe_first=False, image_stage="scratch", trains="all", lr=1e-3,
             batchnorm="batch",  # a random network's running statistics mean nothing
             description="random initialisation, every layer trains"),
    Strategy("linear-probe", pretrained=True, probe_first=True, image_stage=None, trains="head", lr=HEAD_LR,
             batchnorm="pretrained", description="frozen ImageNet backbone, only a new head trains (on cached features)"),
    Strategy("partial", pretrained=True, probe_first=False, image_stage="partial", trains="last stages", lr=3e-4,
             batchnorm="pretrained", description="the last --unfreeze-stages stages and the head train"),
    Strategy("finetune", pretrained=True, probe_first=False, image_stage="finetune", trains="all", lr=1e-4,
             batchnorm="pretrained", description="every layer trains from the ImageNet weights"),
    Strategy("lp-ft", pretrained=True, probe_first=True, image_stage="finetune", trains="all", lr=1e-4,
             batchnorm="pretrained", description="a linear probe first, then fine-tuning from its head "
                                                 "(Kumar et al. 2022)"),
    Strategy("class-means", pretrained=True, probe_first=True, image_stage=None, trains="head", lr=HEAD_LR,
             batchnorm="pretrained", trains_at_all=False,
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
    """Whether BatchNorm layers normalise with their pretrained running statistics while training (--batchnorm)."""
    if strategy.frozen_backbone:
        return True  # a frozen backbone keeps them whatever --batchnorm says
    return (strategy.batchnorm if batchnorm == "auto" else batchnorm) == "pretrained"
