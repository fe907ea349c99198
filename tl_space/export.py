"""Export a model folder or Hub id to ONNX, its preprocessing and labels in a JSON file beside it.

    python -m tl_space.export MODEL_ID --format onnx --output model.onnx

The graph takes `pixel_values` (batch, 3, size, size), normalised with the recorded mean and std, with a dynamic batch
axis, and gives `logits`; divide them by the recorded temperature before the softmax for calibrated probabilities.
Needs `pip install onnx onnxscript` (torch's exporter); onnxruntime runs the result.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import torch
from torch import nn

from tl_space.errors import UserError, exit_code, failure
from tl_space.transforms import Preprocessing

FORMATS = ("onnx",)
INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"
EXAMPLE_BATCH = 2  # a batch of 1 would let the exporter fix the batch axis at 1
OPSET = 18


def sidecar_path(output: Path) -> Path:
    """Where the preprocessing is recorded: model.onnx -> model.json."""
    return output.with_suffix(".json")


def _export(module: nn.Module, example: tuple, output: Path | io.BytesIO, dynamic: bool) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each of its passes
        program = torch.onnx.export(module, example, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},) if dynamic else None, opset_version=OPSET,
                                    dynamo=True, verbose=False)
    program.save(str(output) if isinstance(output, Path) else output)


def first_layer_that_does_not_export(model: nn.Module, example: torch.Tensor) -> tuple[str, str] | None:
    """(name, class) of the innermost layer the exporter refuses alone: each child of a refused module is tried in the
    order the forward pass runs them, so only the refused branch is searched."""
    inputs: dict[str, tuple] = {}

    def keep_inputs(name: str):
        def hook(module: nn.Module, args: tuple, result) -> None:  # returns None: the output stays as it is
            inputs.setdefault(name, args)
        return hook
    hooks = [module.register_forward_hook(keep_inputs(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # a layer that fails even eagerly: the inputs of the layers before it were kept
        pass
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())

    def refuses(name: str) -> bool:
        args = inputs[name]
        try:
            _export(modules[name], tuple(arg.clone() for arg in args), io.BytesIO(), dynamic=False)
        except Exception:
            return True
        return False

    refused = None
    children = [name for name, _ in model.named_children()]
    while children:
        tried = [name for name in inputs if name in children and inputs[name]
                 and all(isinstance(arg, torch.Tensor) for arg in inputs[name])]
        refused_child = next((name for name in tried if refuses(name)), None)
        if refused_child is None:
            break
        refused = refused_child
        children = [f"{refused}.{name}" for name, _ in modules[refused].named_children()]
    return None if refused is None else (refused, type(modules[refused]).__name__)


def export_onnx(model: nn.Module, preprocessing: Preprocessing, label_names: list[str], temperature: float,
                output: Path, source: str, flip_tta: bool = False) -> Path:
    """Write model (eval, CPU) as ONNX at output and its preprocessing at sidecar_path(output); a UserError naming the
    layer when one does not export."""
    try:
        import onnx  # noqa: F401  (torch's exporter writes with onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise UserError(f"--format onnx needs {error.name}: run `pip install onnx onnxscript`") from error
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    size = preprocessing.image_size
    example = torch.zeros(EXAMPLE_BATCH, 3, size, size)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        _export(model, (example,), output, dynamic=True)
    except Exception as error:
        layer = first_layer_that_does_not_export(model, example[:1])
        where = f"layer {layer[0]!r} ({layer[1]})" if layer else "the model"
        raise UserError(f"{source}: {where} cannot be exported to ONNX by torch.onnx.export "
                        f"({failure(error)})") from error
    sidecar_path(output).write_text(json.dumps({
        "source": source, "format": "onnx", "opset": OPSET, "input": INPUT_NAME, "output": OUTPUT_NAME,
        "input_size": [3, size, size], "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}},
        "preprocessing": preprocessing.to_dict(), "label_names": list(label_names), "temperature": temperature,
        "flip_tta": flip_tta, "how": "centre square, resized to input_size, scaled to 0..1, (x - mean) / std; probabilities = "
               "softmax(logits / temperature); with flip_tta, average the logits of each image and its mirror image first"}, indent=2))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_space.export", description=__doc__.splitlines()[0])
    parser.add_argument("model_id", help="a Hub model id, a model folder, or a taught model's unpacked zip")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", type=Path, default=Path("model.onnx"), help="the file written")
    args = parser.parse_args(argv)

    def export_command() -> None:
        from tl_space.app.served import load_served_model

        loaded = load_served_model(args.model_id)
        export_onnx(loaded.model, loaded.preprocessing, loaded.label_names, loaded.temperature, args.output,
                    loaded.name, loaded.flip_tta)
        print(f"wrote {args.output} and {sidecar_path(args.output)} (preprocessing, labels, temperature) "
              f"from {loaded.name}")
    return exit_code(export_command)


if __name__ == "__main__":
    sys.exit(main())
