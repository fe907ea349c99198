"""The Compare tab: runs bundled side by side, one upload through each, and the test images they disagree on."""

import json
import shutil

import pytest
import torch
from gradio_client import Client, handle_file
from safetensors.torch import load_file

from conftest import CLASS_NAMES
from tl_space.app.compare import SAMPLE_FILE, load_comparison
from support.local_app import answer_values, running_app
from tl_space.errors import UserError
from tl_space.app.served import load_served_model
from tl_space.images import open_image

pytestmark = pytest.mark.slow  # end to end: train.py's code, or the app on a port


def test_the_bundle_holds_the_runs_and_a_stratified_sample(compare_folder):
    comparison = load_comparison(str(compare_folder))
    assert comparison.names == ["good", "weak"]
    assert torch.bincount(comparison.sample.labels).tolist() == [30 // len(CLASS_NAMES)] * len(CLASS_NAMES)
    for name in ("good", "weak"):
        weights = load_file(str(compare_folder / name / "model.safetensors"))
        assert all(tensor.dtype == torch.float16 for tensor in weights.values() if tensor.is_floating_point())
        assert json.loads((compare_folder / name / "metrics.json").read_text())["test"]
        assert not (compare_folder / name / "checkpoint").exists()


def test_compare_answers_what_each_run_answers_alone(compare_folder, upload, tmp_path):
    with running_app(str(compare_folder / "good"), tmp_path, env={"COMPARE_ID": str(compare_folder)}) as (url, _):
        client = Client(url, verbose=False)
        answer = client.predict(handle_file(str(upload)), api_name="/compare")
        gallery = client.predict(api_name="/compare_disagreements")
    labels, heatmaps = answer[:3], answer[3:]
    assert not labels[2] and heatmaps[2] is None  # two runs, three slots: the third empty
    for index, name in enumerate(("good", "weak")):
        alone = load_served_model(str(compare_folder / name)).class_probabilities(open_image(upload))
        served = answer_values("/classify", [labels[index]])
        assert served.keys() <= alone.keys() and all(abs(served[key] - alone[key]) < 1e-5 for key in served)
        assert heatmaps[index]
    captions = [item["caption"] for item in gallery]
    assert captions and all("✓" in caption and "✗" in caption for caption in captions)
    assert all(caption.split(" — ")[0] in CLASS_NAMES for caption in captions)


def test_runs_that_do_not_share_their_classes_are_refused(compare_folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in ("good", "weak"):
        target = other / name
        target.mkdir()
        for file in (compare_folder / name).iterdir():
            if file.is_file():
                target.joinpath(file.name).write_bytes(file.read_bytes())
    config = json.loads((other / "weak" / "config.json").read_text())
    config["label_names"] = [f"x{index}" for index in range(len(CLASS_NAMES))]
    (other / "weak" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="do not share their classes"):
        load_comparison(str(other))
    (other / SAMPLE_FILE).write_bytes(b"not a sample")
    with pytest.raises(UserError, match="2 to 3 model folders"):
        load_comparison(str(other / "good"))


def test_the_compare_tab_says_whether_the_served_model_is_among_its_runs(compare_folder, tmp_path):
    from tl_space.app.ui import build_demo

    comparison = load_comparison(str(compare_folder))

    def compare_text(served_folder):
        demo = build_demo(load_served_model(str(served_folder)), comparison=comparison)
        return " ".join(str(block.get("props", {}).get("value", "")) for block in demo.config["components"])

    assert "(which `good` is the model this page serves)" in compare_text(compare_folder / "good")
    other = tmp_path / "other"
    shutil.copytree(compare_folder / "weak", other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["timing"]["total_seconds"] += 1  # another run's report
    (other / "metrics.json").write_text(json.dumps(metrics))
    assert "(the compare folder, not the model this page serves (`other`))" in compare_text(other)
