"""The timm model: creation with pretrained weights, and what each strategy leaves trainable."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from tl_space import scratch_net, speedrun_net  # noqa: F401  (register tl_scratch_cnn, tl_speedrun_cnn in timm)
from tl_space.transforms import to_model_input
from tl_space.errors import UserError, failure
from tl_space.strategies import Trains

MODEL_SOURCES = ("hf-hub:", "local-dir:")


def check_model_name(name: str) -> None:
    """Stop early, with a hint, on a name timm does not know."""
    if name.startswith(MODEL_SOURCES) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=6, cutoff=0.6)
    hint = f"; similar names: {', '.join(close)}" if close else ""
    raise UserError(f"--model {name!r} is not a timm model name (see timm.list_models()){hint}")


def size_arguments(name: str, image_size: int | None) -> dict:
    """What timm needs to build a model for image_size: models with a fixed input size (ViTs and other token models)
    take `img_size` (timm resamples their position embeddings from the pretrained ones); others take any size."""
    if image_size is None or name.startswith(MODEL_SOURCES):
        return {}
    try:
        config = timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown tag: timm's own error follows at creation
        return {}
    if config is None or not getattr(config, "fixed_input_size", False) or config.input_size[-1] == image_size:
        return {}
    return {"img_size": image_size}


def create_model(name: str, num_classes: int, *, pretrained: bool, pretrained_file: str | None = None,
                 image_size: int | None = None) -> nn.Module:
    """A timm model with a fresh num_classes head; the backbone from ImageNet weights when pretrained; built for
    image_size where the architecture fixes its input size.

    pretrained_file overrides where the weights come from (timm's own `file` override), for machines
    without the Hub.
    """
    check_model_name(name)
    overlay = None
    if pretrained and pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise UserError(f"--pretrained-file {pretrained_file!r} does not exist; give a timm-format "
                            ".safetensors file, or leave it out to download the weights from the Hub")
        overlay = {"file": str(Path(pretrained_file).resolve())}
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                  pretrained_cfg_overlay=overlay, **size_arguments(name, image_size))
    except TypeError as error:  # an architecture with a fixed input size that cannot take another
        raise UserError(f"--model {name!r} cannot be built for --image-size {image_size} ({error}); leave "
                        "--image-size unset to use its own size") from error
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise UserError(f"could not load pretrained weights for --model {name!r} ({failure(error)}); check the "
                        "network or HF_TOKEN, "
                        "pass --pretrained-file with a local weights file, or use --strategy scratch") from error
    if pretrained and model.pretrained_cfg.get("num_classes") != num_classes:
        zero_classifier(model)  # timm dropped the checkpoint's head (another class count): this one is new
    return model


def zero_classifier(model: nn.Module) -> None:
    """Start a new head on pretrained features at zero, so its first predictions are uniform.

    timm initialises heads for its pretraining's 1000 classes; EfficientNets' rule, uniform within 1/sqrt(classes),
    gives a 10-class head weights 10x larger, whose first logits are noise several units wide: a 10-epoch linear
    probe then ends at 62% instead of 75% (96 px, 12,000 CIFAR-10 images). A zero head, as in BiT (Kolesnikov et
    al. 2020), starts at loss ln(classes). Heads of more than one layer keep timm's initialisation, since zeroing
    them all would stop their gradients.
    """
    head = model.get_classifier()
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


# The cosine between a feature and its class's mean, times this, is the class's starting logit: confident enough to be
# a classifier at once, small enough that a probe's first steps still move it.
IMPRINT_SCALE = 10.0


@torch.no_grad()
def class_mean_weights(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(classes, features) weights: each class's mean of the L2-normalised features, normalised, so a linear head
    scores the cosine to each class mean (IMPRINT_SCALE times it at the features' mean norm). A class without images
    gets zeros."""
    normalised = torch.nn.functional.normalize(features.float(), dim=1)
    means = torch.zeros(classes, normalised.shape[1], device=normalised.device).index_add_(
        0, labels.to(normalised.device), normalised)
    # Features are not normalised at inference: dividing by their mean norm keeps logits on the cosine's scale.
    scale = IMPRINT_SCALE / float(features.float().norm(dim=1).mean().clamp(min=1e-6))
    return torch.nn.functional.normalize(means, dim=1) * scale


@torch.no_grad()
def initialise_from_data(model: nn.Module, images: torch.Tensor, preprocessing) -> bool:
    """Set the layers a network initialises from its training data (the speedrun net's whitening convolution) from
    uint8 training images; whether it had any."""
    whiten_from = getattr(model, "whiten_from", None)
    if whiten_from is None:
        return False
    device = next(model.parameters()).device
    whiten_from(to_model_input(images[:speedrun_net.WHITENING_IMAGES].to(device), preprocessing))
    return True


@torch.no_grad()
def imprint_classifier(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Set a linear head to the class mean weights (weight imprinting, Qi et al. 2018), bias zero: a nearest class
    mean classifier by cosine, up to the scale of each feature vector. Every class needs at least one image."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise UserError(f"--head-init class-means needs a linear head; {type(model).__name__}'s is a "
                        f"{type(head).__name__}: use --head-init zero")
    if int(torch.bincount(labels, minlength=head.out_features).min()) == 0:
        raise UserError("--head-init class-means needs at least one training image of every class")
    head.weight.copy_(class_mean_weights(features, labels, head.out_features).to(head.weight))
    if head.bias is not None:
        head.bias.zero_()


def fit_logistic_head(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      l2: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression from (weight, bias): at most `steps` iterations of full-batch L-BFGS on the
    mean cross-entropy plus l2 times the squared weights. Returns new tensors; the inputs stay as they were."""
    weight, bias = weight.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(features @ weight.T + bias, labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def stage_names(model: nn.Module) -> list[str]:
    """Names of the modules that end each feature stage, from timm's feature_info, first to last."""
    feature_info = getattr(model, "feature_info", None) or []
    return [info["module"] for info in feature_info if info.get("module")]


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_classifier().parameters())


def parameters_after(model: nn.Module, boundary: str) -> list[nn.Parameter]:
    """Parameters of every module registered after the module named boundary (and outside it).

    timm registers modules in forward order, so this is "everything downstream of that stage".
    """
    names = [name for name, _ in model.named_modules()]
    if boundary not in names:
        raise ValueError(f"no module named {boundary!r}")
    after = names[names.index(boundary) + 1:]
    downstream = [name for name in after if not name.startswith(boundary + ".")]
    modules = dict(model.named_modules())
    return [parameter for name in downstream for parameter in modules[name].parameters(recurse=False)]


def trainable_parameters(model: nn.Module, trains: Trains, unfreeze_stages: int = 1) -> list[nn.Parameter]:
    """The parameters a strategy trains (Strategy.trains): the head alone, the last stages and head, or all."""
    trains = Trains(trains)
    if trains == Trains.ALL:
        return list(model.parameters())
    if trains == Trains.HEAD:
        return classifier_parameters(model)
    stages = stage_names(model)
    if not stages:
        raise UserError(f"--strategy partial needs a model whose stages timm lists (feature_info); "
                        f"{type(model).__name__} has none: use finetune or linear-probe")
    if not 1 <= unfreeze_stages <= len(stages):
        raise UserError(f"--unfreeze-stages {unfreeze_stages} must be between 1 and {len(stages)} "
                        f"(this model's stages end at {', '.join(stages)})")
    if unfreeze_stages == len(stages):
        return list(model.parameters())
    return parameters_after(model, stages[-unfreeze_stages - 1])


def without_depthwise_weights(model: nn.Module, parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    """parameters less the weights of depthwise convolutions (one filter per channel); stops where a model has none."""
    depthwise = {id(module.weight) for module in model.modules()
                 if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels}
    if not depthwise:
        raise UserError(f"--freeze-depthwise: {type(model).__name__} has no depthwise convolutions; leave it out")
    return [parameter for parameter in parameters if id(parameter) not in depthwise]


def freeze_all_but(model: nn.Module, trainable: list[nn.Parameter]) -> int:
    """Set requires_grad on exactly the given parameters; returns how many values will train."""
    trainable_ids = {id(parameter) for parameter in trainable}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable_ids)
    return sum(parameter.numel() for parameter in trainable)


def train_mode(model: nn.Module, keep_batchnorm_statistics: bool = False) -> None:
    """model.train(), but modules whose weights are all frozen stay in eval mode, and with
    keep_batchnorm_statistics so do all BatchNorm layers.

    A frozen backbone must also keep its BatchNorm running statistics and skip dropout; otherwise
    "frozen" layers still drift with every training batch. Fine-tuning a pretrained backbone in small batches
    also learns faster with them kept: batch statistics of upscaled CIFAR-10 differ from ImageNet's, so in train
    mode every layer's output shifts at the first step, and a probe's head with it (lp-ft, 96 px, 12,000 images,
    3 epochs: 86.0% test with the statistics kept, 75.5% without).
    """
    model.train()
    for module in model.modules():
        parameters = list(module.parameters())
        frozen = parameters and not any(parameter.requires_grad for parameter in parameters)
        if frozen or (keep_batchnorm_statistics and isinstance(module, nn.modules.batchnorm._BatchNorm)):
            module.eval()


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict as CPU copies, kept apart from the training that goes on."""
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def pooled_features(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What the classifier sees: the backbone's pooled (pre-logits) features."""
    return model.forward_head(model.forward_features(inputs), pre_logits=True)
