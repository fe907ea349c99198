"""The speedrun network (airbench's design) and --recipe speedrun, on real timm objects and a tiny real dataset."""

import json

import pytest
import timm
import torch

from conftest import CLASS_NAMES
from tl_space import model as model_module
from tl_space.app.served import load_served_model
from tl_space.settings import RECIPES, TrainSettings, with_recipe
from tl_space.training.run import run
from tl_space.transforms import preprocessing_for


def test_the_first_convolution_whitens_the_training_images_patches():
    model = timm.create_model("tl_speedrun_cnn", num_classes=10)
    assert not model.stem[0].weight.requires_grad  # set from the data, never trained
    generator = torch.Generator().manual_seed(0)
    correlated = torch.rand(300, 1, 32, 32, generator=generator).expand(-1, 3, -1, -1) * 255  # grey: channels alike
    images = (correlated + torch.rand(300, 3, 32, 32, generator=generator) * 20).to(torch.uint8)
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model), 32)
    assert model_module.initialise_from_data(model, images, preprocessing)
    inputs = model_module.to_model_input(images, preprocessing)
    responses = torch.nn.functional.conv2d(inputs, model.stem[0].weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = responses.T @ responses / len(responses)
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)  # whitened: unit variance, uncorrelated
    assert torch.equal(model.stem[0].weight[12:], -model.stem[0].weight[:12])
    assert not model_module.initialise_from_data(timm.create_model("tl_scratch_cnn"), images, preprocessing)


def test_the_recipe_sets_what_the_command_line_leaves_at_its_defaults():
    settings, picked = with_recipe(TrainSettings(recipe="speedrun", epochs=3))
    assert settings.epochs == 3 and "epochs" not in picked  # the user's value wins
    assert settings.model == "tl_speedrun_cnn" and settings.strategy == "scratch"
    assert picked == {name: value for name, value in RECIPES["speedrun"].items() if name != "epochs"}


@pytest.mark.slow
def test_a_speedrun_run_trains_writes_and_reloads(tiny_dataset, tmp_path, capsys):
    folder = run(TrainSettings(dataset=str(tiny_dataset), recipe="speedrun", epochs=3, batch_size=32, val_size=30,
                               output_dir=str(tmp_path / "speedrun"), cache_dir="none", mixed_precision="no"))
    out = capsys.readouterr().out
    assert "--recipe speedrun sets --strategy scratch --model tl_speedrun_cnn" in out
    assert "first layer set from the training images' statistics" in out
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["settings"]["recipe"] == "speedrun" and metrics["settings"]["label_smoothing"] == 0.2
    assert metrics["test"]["accuracy"] > 2 / len(CLASS_NAMES)  # colours are learnable in a few epochs
    loaded = load_served_model(str(folder))
    assert isinstance(loaded.model, type(timm.create_model("tl_speedrun_cnn")))
