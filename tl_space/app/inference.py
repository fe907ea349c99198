"""One image in, class probabilities out, with the served model's own preprocessing and calibration."""

from __future__ import annotations

import torch
from PIL import Image

from tl_space.folder.read import LoadedModel
from tl_space.transforms import images_to_model_input


@torch.inference_mode()
def batch_probabilities(loaded: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    """(N, classes) calibrated probabilities of a batch of images, with the model's own resize, mean and std
    (averaged with each mirror image's logits when the folder enables flip test-time augmentation), on the model's
    device."""
    inputs = images_to_model_input(images, loaded.preprocessing).to(next(loaded.model.parameters()).device)
    if loaded.flip_tta:  # the folder measured a gain from averaging with the mirror image
        inputs = torch.cat([inputs, inputs.flip(-1)])
    with loaded.lock:  # one request at a time on the shared model
        logits = loaded.model(inputs).float()
    if loaded.flip_tta:
        logits = (logits[:len(images)] + logits[len(images):]) / 2
    return (logits / loaded.temperature).softmax(dim=1).cpu()


def class_probabilities(loaded: LoadedModel, image: Image.Image) -> dict[str, float]:
    """Calibrated probability of every class for one image."""
    return {name: float(p) for name, p in zip(loaded.label_names, batch_probabilities(loaded, [image])[0])}
