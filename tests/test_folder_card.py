"""The model card: Hub metadata with model-index, and the run's summary."""

import json

import pytest
from huggingface_hub import ModelCard

from support.runs import tiny_settings
from tl_space.training.run import run

pytestmark = pytest.mark.slow  # end to end: train.py's code, or the app on a port


@pytest.fixture(scope="module")
def trained(tiny_dataset, pretrained_file, tmp_path_factory):
    return run(tiny_settings(tiny_dataset, tmp_path_factory.mktemp("card") / "run", pretrained_file,
                             strategy="lp-ft", epochs=1, probe_epochs=1))


def test_model_card_parses_back_with_the_test_accuracy(trained):
    card = ModelCard.load(trained / "README.md")
    metrics = json.loads((trained / "metrics.json").read_text())
    assert card.data.library_name == "timm"
    assert card.data.eval_results[0].metric_value == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    assert "## Results" in card.text and "curves.png" in card.text


def test_the_card_and_the_app_report_say_the_same_about_the_run(trained):
    from tl_space.folder.summary import run_summary
    from tl_space.markdown import code, text
    metrics = json.loads((trained / "metrics.json").read_text())
    card = ModelCard.load(trained / "README.md")
    assert all(paragraph in card.text for paragraph in run_summary(metrics, code, text))  # as the app escapes them
