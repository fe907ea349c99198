"""Grad-CAM heatmaps and feature maps on real trained timm models: sizes, classes differ, frozen stays the same."""

import pytest
import timm
import torch

from conftest import CLASS_NAMES, colour_images
from support.runs import tiny_settings
from tl_space.app.explain import (DISPLAY_SIZE, cam_layer, class_activation_maps, feature_map_figure,
                                  pretrained_backbone, strongest_feature_maps)
from tl_space.app.served import load_served_model
from tl_space.images import image_tensor
from tl_space.training.run import run
from tl_space.transforms import images_to_model_input, to_model_input


@pytest.mark.slow
def test_heatmaps_have_the_inputs_size_and_differ_between_classes(model_folder):
    loaded = load_served_model(str(model_folder))
    image = colour_images(1, 16, seed=5)[0][0]
    size = loaded.preprocessing.image_size
    maps = class_activation_maps(loaded.model, images_to_model_input([image], loaded.preprocessing),
                                 list(range(len(CLASS_NAMES))), size)
    assert maps.shape == (len(CLASS_NAMES), size, size)
    assert maps.min() >= 0 and maps.max() <= 1 and maps.amax(dim=(1, 2)).gt(0).any()
    differences = [(maps[0] - maps[other]).abs().mean() for other in range(1, len(CLASS_NAMES))]
    assert max(differences) > 0.05
    overlays = loaded.heatmaps(image, ["red", "blue"])
    assert [overlay.size for overlay in overlays] == [(DISPLAY_SIZE, DISPLAY_SIZE)] * 2
    assert overlays[0].tobytes() != overlays[1].tobytes()
    assert not any(parameter.grad is not None for parameter in loaded.model.parameters())  # no gradient left behind


@pytest.mark.slow
def test_heatmaps_of_a_large_photo_cover_its_centre_square(model_folder):
    loaded = load_served_model(str(model_folder))
    photo = colour_images(1, 16, seed=6)[0][0].resize((640, 480))
    overlay = loaded.heatmaps(photo, ["green"])[0]
    assert overlay.size == (DISPLAY_SIZE, DISPLAY_SIZE) and overlay.mode == "RGB"


def test_the_layer_is_the_deepest_with_a_map_worth_showing():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert cam_layer(model, 224) == "blocks.6"  # 7x7
    assert cam_layer(model, 160) == "blocks.6"  # 5x5
    assert cam_layer(model, 96) == "blocks.4"  # 3x3 at the last stage: one earlier, 6x6
    assert cam_layer(timm.create_model("test_resnet"), 32) == "layer2"
    assert cam_layer(timm.create_model("test_resnet"), 8) == "act1"  # nothing is wide enough: the first stage


@pytest.mark.slow
def test_feature_maps_match_the_pretrained_backbone_exactly_when_it_stayed_frozen(model_folder, tiny_dataset,
                                                                                   pretrained_file, tmp_path):
    image = colour_images(1, 16, seed=8)[0][0]
    probe = load_served_model(str(model_folder))  # a linear probe: the backbone is the pretrained one
    backbone, note = pretrained_backbone(probe.metrics, probe.model, len(CLASS_NAMES), str(pretrained_file))  # the operator's local copy, as PRETRAINED_FILE
    assert backbone is not None and pretrained_file.name in note
    inputs = to_model_input(image_tensor(image, 32), probe.preprocessing)
    for (label, ours, channels), (_, theirs, their_channels) in zip(strongest_feature_maps(probe.model, inputs),
                                                                   strongest_feature_maps(backbone, inputs)):
        assert torch.allclose(ours, theirs, atol=1e-5) and channels == their_channels, label
    run(tiny_settings(tiny_dataset, tmp_path / "tuned", pretrained_file, strategy="finetune", epochs=3, lr=3e-3))
    tuned = load_served_model(str(tmp_path / "tuned"))
    last_ours = strongest_feature_maps(tuned.model, inputs)[-1][1]
    last_theirs = strongest_feature_maps(pretrained_backbone(tuned.metrics, tuned.model, len(CLASS_NAMES),
                                                             str(pretrained_file))[0], inputs)[-1][1]
    assert last_ours.shape == last_theirs.shape and not torch.allclose(last_ours, last_theirs, atol=1e-3)
    figure = feature_map_figure({title: strongest_feature_maps(model, inputs)
                                 for title, model in {"this model": tuned.model, "pretrained": backbone}.items()})
    assert figure.width > figure.height > 200
    labels = [label for label, _, _ in strongest_feature_maps(tuned.model, inputs)]
    assert [label.split(":")[0] for label in labels] == ["early", "middle", "last"]


@pytest.mark.slow
def test_a_model_trained_from_scratch_has_no_backbone_to_compare(model_folder):
    loaded = load_served_model(str(model_folder))
    loaded.metrics = {**loaded.metrics, "settings": {**loaded.metrics["settings"], "strategy": "scratch"}}
    assert pretrained_backbone(loaded.metrics, loaded.model, len(CLASS_NAMES))[0] is None


def test_token_models_are_told_to_have_no_feature_maps_and_cnns_pass():
    from tl_space.app.explain import NOT_FEATURE_MAPS, check_feature_maps
    from tl_space.errors import UserError

    with pytest.raises(UserError, match="not available"):
        check_feature_maps(timm.create_model("test_vit", pretrained=False))
    for name in ("test_resnet", "test_efficientnet", "tl_scratch_cnn"):
        check_feature_maps(timm.create_model(name, pretrained=False))
    assert "vision transformer" in NOT_FEATURE_MAPS
