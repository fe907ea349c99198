"""The Gradio Space: `python app.py` (or `gradio app.py`); MODEL_ID picks the model, a Hub id or a local folder
(a study's serves its best run and adds a Study tab); STUDY_ID adds a study to any model; PRETRAINED_FILE, a local
copy of the backbone's ImageNet weights, stands in for the Hub in the feature maps' comparison; QUEUE_MAX_SIZE bounds
the requests waiting (64); COMPARE_ID, a compare folder (default compare/) or 2-3 comma-separated model folders or Hub
ids, adds a Compare tab."""

import logging
import os
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from tl_space import markdown
from tl_space.app.compare import SAMPLE_FILE, Comparison, TestSample, load_comparison, read_sample
from tl_space.app.memory import bound_native_memory
from tl_space.app.ui import QUEUE_MAX_SIZE, build_demo, build_error_page
from tl_space.errors import UserError
from tl_space.app.served import load_served_model
from tl_space.images import MAX_IMAGE_PIXELS

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = ROOT / "model"
DEFAULT_STUDY = ROOT / "study"  # the study recorded in the README, shown beside the bundled model
DEFAULT_COMPARE = ROOT / "compare"  # runs of that study, side by side
MAX_UPLOAD = "20mb"


def comparison_or_none(compare_id: str | None) -> Comparison | None:
    """The runs of COMPARE_ID (default: the bundled compare/ folder, if any); None, with a log line, when they cannot
    be loaded: the rest of the page still serves."""
    compare_id = compare_id or (str(DEFAULT_COMPARE) if DEFAULT_COMPARE.is_dir() else None)
    if not compare_id:
        return None
    try:
        return load_comparison(compare_id)
    except UserError as error:
        logging.getLogger("tl_space.app").error("no Compare tab: %s", error)
        return None


def teach_sample_or_none(label_names: list[str]) -> TestSample | None:
    """The bundled CIFAR-10 test sample the Teach tab offers images from, when the model has CIFAR-10's classes."""
    path = ROOT / "examples" / SAMPLE_FILE
    if not path.is_file():
        return None
    try:
        return read_sample(path, label_names)
    except UserError:  # another model's classes: the tab offers uploads only
        return None


def create_demo(model_id: str | None = None, study_id: str | None = None) -> gr.Blocks:
    """The page for model_id (default: MODEL_ID, else the bundled model/ folder) and a Study tab for study_id
    (default: STUDY_ID, else with the bundled model the bundled study/); or a page saying why they failed to load."""
    model_id = model_id or os.environ.get("MODEL_ID")
    study_id = study_id or os.environ.get("STUDY_ID")
    if not model_id:
        model_id = str(DEFAULT_MODEL)
        study_id = study_id or (str(DEFAULT_STUDY) if (DEFAULT_STUDY / "study.json").is_file() else None)
    bound_native_memory()  # before the threads that serve requests exist
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Gradio decodes uploads with PIL too: same bound there
    log = logging.getLogger("tl_space.app")
    try:
        loaded = load_served_model(model_id, study_id)
        return build_demo(loaded, examples_dir=ROOT / "examples", pretrained_file=os.environ.get("PRETRAINED_FILE"),
                          queue_max_size=int(os.environ.get("QUEUE_MAX_SIZE", QUEUE_MAX_SIZE)),
                          comparison=comparison_or_none(os.environ.get("COMPARE_ID")),
                          teach_sample=teach_sample_or_none(loaded.label_names))
    except UserError as error:  # its message names the model by its public name, never a server path
        log.error("%s Set MODEL_ID (and STUDY_ID) to a Hub id or a folder.", error)
        reason = str(error)
    except Exception:  # a folder no check foresaw: the traceback goes to the log, not to visitors
        log.exception("the model folder could not be served")
        reason = "The model folder could not be read (the server's log says why)."
    return build_error_page(f"{markdown.text(reason)}\n\nSet `MODEL_ID` to a Hub model id (`USER/REPO`) or to the "
                            "path of a folder written by `train.py` or `tl_space.study` (and `STUDY_ID`, if set, to a "
                            "study's), then restart the app.")


demo = create_demo()

if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    # One prediction at a time uses every core; the others wait in Gradio's queue (bounded: see build_demo).
    # show_error stays off: visitors see our gr.Error sentences, never another exception's text.
    demo.launch(max_file_size=MAX_UPLOAD, show_error=False)
