"""One image in, class probabilities out, with the served model's own preprocessing and calibration."""

from __future__ import annotations

import torch
from PIL import Image

from tl_space.folder.read import LoadedModel
from tl_space.images import image_tensor
from tl_space.transforms import to_model_input


@torch.inference_mode()
def class_probabilities(loaded: LoadedModel, image: Image.Image) -> dict[str, float]:
    """Calibrated probability of every class for one image, with the model's own resize, mean and std (averaged
    with its mirror image's logits when the folder enables flip test-time augmentation)."""
    inputs = to_model_input(image_tensor(image, loaded.preprocessing.image_size), loaded.preprocessing)
    if loaded.flip_tta:  # the folder measured a gain from averaging with the mirror image
        inputs = torch.cat([inputs, inputs.flip(-1)])
    with loaded.lock:  # one request at a time on the shared model
        logits = loaded.model(inputs).float().mean(dim=0, keepdim=True)
    probabilities = (logits / loaded.temperature).softmax(dim=1)[0]
    return {name: float(p) for name, p in zip(loaded.label_names, probabilities)}
