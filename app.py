"""The Gradio Space: `python app.py` (or `gradio app.py`); MODEL_ID picks the model, a Hub id or a local folder
(a study's serves its best run and adds a Study tab); STUDY_ID adds a study to any model."""

import logging
import os
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from tl_space.errors import UserError
from tl_space.hub import load_model_folder
from tl_space.inference import MAX_IMAGE_PIXELS
from tl_space.ui import build_demo, build_error_page

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = ROOT / "model"
DEFAULT_STUDY = ROOT / "study"  # the study recorded in the README, shown beside the bundled model
MAX_UPLOAD = "20mb"


def create_demo(model_id: str | None = None, study_id: str | None = None) -> gr.Blocks:
    """The page for model_id (default: MODEL_ID, else the bundled model/ folder) and a Study tab for study_id
    (default: STUDY_ID, else with the bundled model the bundled study/); or a page saying why they failed to load."""
    model_id = model_id or os.environ.get("MODEL_ID")
    study_id = study_id or os.environ.get("STUDY_ID")
    if not model_id:
        model_id = str(DEFAULT_MODEL)
        study_id = study_id or (str(DEFAULT_STUDY) if (DEFAULT_STUDY / "study.json").is_file() else None)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Gradio decodes uploads with PIL too: same bound there
    try:
        loaded = load_model_folder(model_id, study_id)
    except UserError as error:
        logging.getLogger("tl_space.app").error("%s Set MODEL_ID (and STUDY_ID) to a Hub id or a folder.", error)
        return build_error_page(f"{error}\n\nSet `MODEL_ID` to a Hub model id (`USER/REPO`) or to the path of a "
                                "folder written by `train.py` or `tl_space.study` (and `STUDY_ID`, if set, to a "
                                "study's), then restart the app.")
    return build_demo(loaded, examples_dir=ROOT / "examples")


demo = create_demo()

if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    # One prediction at a time uses every core; the others wait in Gradio's queue (unbounded: none is dropped).
    demo.queue(default_concurrency_limit=1).launch(max_file_size=MAX_UPLOAD, show_error=True)
