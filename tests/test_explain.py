"""Grad-CAM heatmaps on a real trained timm model: their size, that classes differ, and the layer they come from."""

import timm
import torch
from PIL import Image

from conftest import CLASS_NAMES, colour_images
from test_app import model_folder  # noqa: F401  (shared fixture: a tiny model trained by train.py)
from tl_space.explain import DISPLAY_SIZE, cam_layer, class_activation_maps, heatmap_overlays
from tl_space.hub import load_model_folder


def test_heatmaps_have_the_inputs_size_and_differ_between_classes(model_folder):  # noqa: F811
    loaded = load_model_folder(str(model_folder))
    image = colour_images(1, 16, seed=5)[0][0]
    maps = class_activation_maps(loaded, image, list(range(len(CLASS_NAMES))))
    size = loaded.preprocessing.image_size
    assert maps.shape == (len(CLASS_NAMES), size, size)
    assert maps.min() >= 0 and maps.max() <= 1 and maps.amax(dim=(1, 2)).gt(0).any()
    differences = [(maps[0] - maps[other]).abs().mean() for other in range(1, len(CLASS_NAMES))]
    assert max(differences) > 0.05
    overlays = heatmap_overlays(loaded, image, ["red", "blue"])
    assert [overlay.size for overlay in overlays] == [(DISPLAY_SIZE, DISPLAY_SIZE)] * 2
    assert overlays[0].tobytes() != overlays[1].tobytes()
    assert not any(parameter.grad is not None for parameter in loaded.model.parameters())  # no gradient left behind


def test_heatmaps_of_a_large_photo_cover_its_centre_square(model_folder):  # noqa: F811
    loaded = load_model_folder(str(model_folder))
    photo = colour_images(1, 16, seed=6)[0][0].resize((640, 480))
    overlay = heatmap_overlays(loaded, photo, ["green"])[0]
    assert overlay.size == (DISPLAY_SIZE, DISPLAY_SIZE) and overlay.mode == "RGB"


def test_the_layer_is_the_deepest_with_a_map_worth_showing():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert cam_layer(model, 224) == "blocks.6"  # 7x7
    assert cam_layer(model, 160) == "blocks.6"  # 5x5
    assert cam_layer(model, 96) == "blocks.4"  # 3x3 at the last stage: one earlier, 6x6
    assert cam_layer(timm.create_model("test_resnet"), 32) == "layer2"
    assert cam_layer(timm.create_model("test_resnet"), 8) == "act1"  # nothing is wide enough: the first stage
