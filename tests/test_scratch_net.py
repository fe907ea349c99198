"""The scratch CNN: a timm model like any other, which learns from nothing."""

import json

import pytest
import timm
import torch

from conftest import CLASS_NAMES
from support.runs import tiny_settings
from tl_space import scratch_net  # noqa: F401  (registers tl_scratch_cnn)
from tl_space.app.explain import cam_layer
from tl_space.training.run import run


def test_timm_creates_it_with_the_features_grad_cam_and_partial_need():
    model = timm.create_model("tl_scratch_cnn", num_classes=7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.get_classifier().out_features == 7
    assert [info["module"] for info in model.feature_info] == ["stem", "stages.0", "stages.1", "stages.2"]
    assert cam_layer(model, 32) == "stages.2"  # 4x4 at 32 px
    assert model.forward_head(model.forward_features(torch.zeros(1, 3, 32, 32)), pre_logits=True).shape == (1, 128)


@pytest.mark.slow
def test_a_scratch_run_learns_and_its_folder_loads_with_timm(tiny_dataset, tmp_path):
    settings = tiny_settings(tiny_dataset, tmp_path / "cnn", tmp_path / "unused", strategy="scratch",
                             model="tl_scratch_cnn", epochs=6, lr=3e-3)
    settings.pretrained_file = None  # nothing pretrained to load
    folder = run(settings)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 2 / len(CLASS_NAMES)
    assert metrics["model"]["base_model"] is None
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(loaded).__name__ == "ScratchCNN" and loaded.pretrained_cfg["label_names"] == CLASS_NAMES
