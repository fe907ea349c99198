"""What each strategy trains, on a real timm model."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from tl_space import model as model_module
from tl_space.strategies import STRATEGIES
from tl_space.errors import UserError


@pytest.fixture
def resnet():
    return timm.create_model("test_resnet", num_classes=3)


def _trainable_names(model, strategy, stages=1):
    trainable = {id(p) for p in model_module.trainable_parameters(model, STRATEGIES[strategy].trains, stages)}
    return {name.split(".")[0] for name, p in model.named_parameters() if id(p) in trainable}


def test_linear_probe_trains_only_the_head(resnet):
    assert _trainable_names(resnet, "linear-probe") == {"fc"}


def test_partial_trains_the_last_stages_and_head(resnet):
    assert _trainable_names(resnet, "partial", 1) == {"layer4", "fc"}
    assert _trainable_names(resnet, "partial", 2) == {"layer3", "layer4", "fc"}


def test_partial_on_efficientnet_includes_blocks_after_the_boundary():
    model = timm.create_model("test_efficientnet", num_classes=3)
    stages = model_module.stage_names(model)
    trainable = {id(p) for p in model_module.trainable_parameters(model, STRATEGIES["partial"].trains, 1)}
    names = {name for name, p in model.named_parameters() if id(p) in trainable}
    boundary = stages[-2]
    assert not any(name.startswith(boundary + ".") for name in names)
    assert any(name.startswith(model.pretrained_cfg["classifier"]) for name in names)
    assert all(name.startswith(("blocks", "conv_head", "bn2", "classifier")) for name in names)


def test_partial_with_too_many_stages_says_how_many_there_are(resnet):
    with pytest.raises(UserError, match=r"--unfreeze-stages 9 must be between 1 and 5"):
        model_module.trainable_parameters(resnet, STRATEGIES["partial"].trains, 9)


def test_frozen_batchnorm_keeps_its_statistics(resnet):
    count = model_module.freeze_all_but(resnet, model_module.trainable_parameters(resnet, STRATEGIES["linear-probe"].trains))
    assert count == sum(p.numel() for p in resnet.fc.parameters())
    model_module.train_mode(resnet)
    before = resnet.bn1.running_mean.clone()
    resnet(torch.randn(4, 3, 32, 32) * 5 + 3)
    assert torch.equal(before, resnet.bn1.running_mean)
    assert resnet.fc.training and not resnet.layer1.training


def test_fine_tuning_can_keep_the_pretrained_batchnorm_statistics(resnet):
    model_module.freeze_all_but(resnet, model_module.trainable_parameters(resnet, STRATEGIES["finetune"].trains))
    batch = torch.randn(4, 3, 32, 32) * 5 + 3
    model_module.train_mode(resnet, keep_batchnorm_statistics=True)
    before = resnet.bn1.running_mean.clone()
    resnet(batch).sum().backward()
    assert torch.equal(before, resnet.bn1.running_mean)
    assert resnet.bn1.weight.grad is not None and resnet.bn1.weight.grad.abs().sum() > 0  # scale and shift train
    assert resnet.training and resnet.fc.training and not resnet.bn1.training
    model_module.train_mode(resnet)  # PyTorch's train mode: batch statistics, running ones updated
    resnet(batch)
    assert not torch.allclose(before, resnet.bn1.running_mean)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(UserError, match=r"--model 'resnet_nope' is not a timm model name.*similar names: resnet"):
        model_module.check_model_name("resnet_nope")


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="--pretrained-file .* does not exist"):
        model_module.create_model("test_resnet", 3, pretrained=True, pretrained_file=str(tmp_path / "none.safetensors"))


def test_pretrained_file_loads_the_backbone(pretrained_file):
    from safetensors.torch import load_file
    model = model_module.create_model("test_resnet", 3, pretrained=True, pretrained_file=str(pretrained_file))
    weights = load_file(str(pretrained_file))
    assert torch.equal(model.conv1[0].weight, weights["conv1.0.weight"])
    assert model.fc.out_features == 3


def test_pooled_features_feed_the_classifier(resnet):
    resnet.eval()
    inputs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(resnet.fc(model_module.pooled_features(resnet, inputs)), resnet(inputs), atol=1e-5)


def test_a_new_head_on_pretrained_weights_starts_at_zero(pretrained_file, tmp_path):
    from timm.models import save_for_hf
    model = model_module.create_model("test_resnet", 3, pretrained=True, pretrained_file=str(pretrained_file))
    assert not model.fc.weight.any() and not model.fc.bias.any()
    with torch.no_grad():
        probabilities = model.eval()(torch.randn(2, 3, 32, 32)).softmax(dim=1)
    assert torch.allclose(probabilities, torch.full_like(probabilities, 1 / 3))
    # From scratch, timm's initialisation stays; a model folder with as many classes keeps the head it learned.
    assert model_module.create_model("test_resnet", 3, pretrained=False).fc.weight.abs().sum() > 0
    trained = timm.create_model("test_resnet", num_classes=3)
    save_for_hf(trained, tmp_path / "trained", safe_serialization=True)
    reloaded = model_module.create_model(f"local-dir:{tmp_path / 'trained'}", 3, pretrained=True)
    assert torch.equal(reloaded.fc.weight, trained.fc.weight)


def test_a_model_with_a_fixed_input_size_is_built_for_the_asked_size_and_its_folder_reloads(tmp_path):
    from timm.models import save_for_hf

    weights = tmp_path / "test_vit.safetensors"
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(), str(weights))
    model = model_module.create_model("test_vit", 3, pretrained=True, pretrained_file=str(weights), image_size=64)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    save_for_hf(model, tmp_path / "folder", safe_serialization=True)
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True)
    assert reloaded(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert model_module.size_arguments("test_resnet", 64) == {}  # convolutions take any size as they are
