"""python -m tl_space.export: the ONNX graph gives the PyTorch logits, at any batch size, and a layer that does not
export is named."""

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

from conftest import colour_images
from tl_space import export
from tl_space.errors import UserError
from tl_space.app.served import load_served_model
from tl_space.transforms import images_to_model_input, preprocessing_for

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.slow
def test_the_onnx_graph_gives_the_pytorch_logits_at_any_batch_size(model_folder, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "exported" / "model.onnx"
    assert export.main([str(model_folder), "--format", "onnx", "--output", str(output)]) == 0
    assert "wrote" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "exported" / "model.json").read_text())
    loaded = load_served_model(str(model_folder))
    assert sidecar["label_names"] == loaded.label_names and sidecar["temperature"] == loaded.temperature
    assert sidecar["preprocessing"] == json.loads(json.dumps(loaded.preprocessing.to_dict())) and sidecar["input"] == "pixel_values"
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    images, _ = colour_images(2, 20, seed=9)
    for count in (1, 5, 12):  # the exporter saw a batch of 2: the axis is dynamic
        inputs = images_to_model_input(images[:count], loaded.preprocessing)
        with torch.inference_mode():
            expected = loaded.model(inputs).numpy()
        (logits,) = session.run(["logits"], {"pixel_values": inputs.contiguous().numpy()})
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() <= 1e-4
        assert (logits.argmax(1) == expected.argmax(1)).all()


@torch.library.custom_op("tl_space_test::soft_sign", mutates_args=())
def soft_sign(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + x.abs())


@soft_sign.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOpLayer(nn.Module):
    """A layer built on a custom operator that has no ONNX translation, as a user's own kernel would be."""

    def forward(self, x):
        return soft_sign(x)


def test_a_layer_that_does_not_export_is_named_in_one_sentence(tmp_path):
    model = timm.create_model("test_resnet", num_classes=3).eval()
    model.global_pool = nn.Sequential(model.global_pool, CustomOpLayer())
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model), 32)
    with pytest.raises(UserError, match=r"^test: layer 'global_pool.1' \(CustomOpLayer\) cannot be exported to ONNX") \
            as raised:
        export.export_onnx(model, preprocessing, ["a", "b", "c"], 1.0, tmp_path / "model.onnx", "test")
    assert "\n" not in str(raised.value)
