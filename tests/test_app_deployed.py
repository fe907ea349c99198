"""The Space as deployed: someone else's model folder in the Hub cache, outside the working and temp dirs, served to
forged API calls and to many visitors at once; and every way a folder can fail to load."""

import json
import shutil
import sys
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import CLASS_NAMES, one_image_per_class
from support.hub import REPO_ID, hub_cache_copy, outside_work_and_temp
from support.runs import ROOT
from support.local_app import answer_values, running_app, same_answer

pytestmark = pytest.mark.slow  # end to end: train.py's code, or the app on a port

SECRET = "TOKEN-THAT-MUST-NOT-LEAK-" + uuid.uuid4().hex


def add_hostile_records(folder: Path, outside: Path) -> int:
    """Records that point anywhere but the folder's own misclassified PNGs; returns how many good ones there are."""
    records = json.loads((folder / "misclassified.json").read_text())
    (outside / "secret.txt").write_text(SECRET)
    (folder / "misclassified" / "notes.png").write_text(SECRET)  # a .png that is no PNG
    template = records[0]
    hostile = ["/proc/self/environ", "../secret.txt", str(outside / "secret.txt"), str(ROOT / "examples" / "cat.png"),
               "misclassified/../config.json", "misclassified/notes.png", "../../../../../../etc/passwd", 42, None]
    records += [{**template, "file": file} for file in hostile]
    records.append({**template, "true_label": "[click](http://example.invalid)"})  # not one of the classes
    (folder / "misclassified.json").write_text(json.dumps(records))
    return len(records) - len(hostile) - 1


@pytest.fixture(scope="module")
def deployed(trained_folder, pretrained_file, tmp_path_factory):
    """The app serving REPO_ID from a Hub cache outside the working and temp dirs, HF_HUB_OFFLINE, as on a Space."""
    home = outside_work_and_temp()
    try:
        served = home / "upload"
        shutil.copytree(trained_folder, served)
        good = add_hostile_records(served, home)
        snapshot = hub_cache_copy(served, home / "hub", REPO_ID)
        workdir = tmp_path_factory.mktemp("deployed-cwd")
        env = {"HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1", "PRETRAINED_FILE": str(pretrained_file)}
        with running_app(REPO_ID, workdir, env=env) as (url, process):
            yield {"url": url, "snapshot": snapshot, "home": home, "good": good, "log": workdir / "app.log",
                   "process": process}
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def client(deployed):
    return Client(deployed["url"], verbose=False)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> list[Path]:
    return one_image_per_class(tmp_path_factory.mktemp("visitor-images"), seed=5)


def served_bytes(item) -> bytes:
    path = item["image"]["path"] if isinstance(item["image"], dict) else item["image"]
    return Path(path).read_bytes()


def test_a_hub_model_outside_the_work_and_temp_dirs_serves_every_tab(deployed, client, uploads):
    label, _ = client.predict(handle_file(str(uploads[0])), api_name="/classify")
    assert label["label"] in CLASS_NAMES
    items, *_ = client.predict("all classes", "all classes", api_name="/filter_mistakes")
    assert len(items) == deployed["good"] > 0
    true_label = items[0]["caption"].split(" → ")[0]
    filtered, *_ = client.predict(true_label, "all classes", api_name="/filter_mistakes")
    assert 0 < len(filtered) <= len(items) and all(item["caption"].startswith(true_label) for item in filtered)
    for item in filtered:
        with Image.open(item["image"]["path"] if isinstance(item["image"], dict) else item["image"]) as image:
            assert image.format == "PNG" and image.size == (16, 16)
    heatmap = client.predict(handle_file(str(uploads[1])), CLASS_NAMES[1], api_name="/explain")
    assert Image.open(heatmap).size == (320, 320)
    figure, note = client.predict(handle_file(str(uploads[2])), api_name="/feature_maps")
    assert Image.open(figure).width > 1000 and "pretrained backbone it started from" in note
    page = urllib.request.urlopen(deployed["url"] + "config", timeout=10).read().decode()
    assert "Training report" in page and "Where it fails" in page
    assert page.count("image/png") >= 3 or page.count(".png") >= 3  # the three report plots, as served copies


def test_records_pointing_outside_the_folder_are_skipped_and_nothing_secret_is_served(deployed, client):
    items, *_ = client.predict("all classes", "all classes", api_name="/filter_mistakes")
    assert all(SECRET.encode() not in served_bytes(item) for item in items)
    assert all(served_bytes(item).startswith(b"\x89PNG") for item in items)
    page = urllib.request.urlopen(deployed["url"] + "config", timeout=10).read().decode()
    assert SECRET not in page and str(deployed["home"]) not in page and str(Path.home()) not in page
    assert "example.invalid" not in page
    log = deployed["log"].read_text()
    assert log.count("skipped misclassified.json record") == 10, log[-3000:]


def raw_call(url: str, endpoint: str, *data) -> tuple[str, str]:
    """A hand-made call of Gradio's HTTP API, as an attacker would send it (no client-side upload): the final SSE
    event's name and data."""
    request = urllib.request.Request(f"{url}gradio_api/call{endpoint}", data=json.dumps({"data": list(data)}).encode(),
                                     headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call{endpoint}/{event_id}", timeout=60).read().decode()
    events = [block for block in stream.split("\n\n") if block.strip()]
    name, payload = events[-1].split("\n", 1)
    return name.removeprefix("event: "), payload.removeprefix("data: ")


@pytest.mark.parametrize("endpoint", ["/classify", "/explain", "/feature_maps", "/compare"])
def test_forged_paths_are_refused_without_naming_any_path(deployed, uploads, endpoint):
    extra = [CLASS_NAMES[0]] if endpoint == "/explain" else []
    forged = [{"path": str(ROOT / "examples" / "cat.png")},
              {"path": str(ROOT / "examples" / "cat.png"), "meta": {"_type": "gradio.FileData"}},
              {"path": "/nonexistent/x", "meta": {"_type": "gradio.FileData"}},
              {"path": str(deployed["snapshot"] / "misclassified.json")},
              str(ROOT / "examples" / "cat.png")]
    for payload in forged:
        event, message = raw_call(deployed["url"], endpoint, payload, *extra)
        assert event == "error", (payload, event, message[:200])
        # Tagged as FileData, Gradio's own check refuses it; untagged, ours does: the same sentence either way. A bare
        # string is not an image's data at all.
        expected = "not uploaded to this app" if isinstance(payload, dict) else "not what this endpoint takes"
        assert expected in message, (payload, message)
        assert "/" not in message and "Errno" not in message and "Traceback" not in message, message
    answered = Client(deployed["url"], verbose=False).predict(handle_file(str(uploads[0])), *extra, api_name=endpoint)
    assert answered  # a real upload still works
    log = deployed["log"].read_text()
    assert "Traceback" not in log and "refused a request naming a file that was not uploaded" in log, log[-2000:]


def test_mixed_concurrent_requests_answer_as_each_does_alone(deployed, uploads):
    calls = ([("/classify", (upload,)) for upload in uploads] + [("/explain", (upload, name)) for upload, name in
                                                                 zip(uploads, CLASS_NAMES[::-1])] +
             [("/feature_maps", (uploads[index],)) for index in range(3)] +
             [("/filter_mistakes", (CLASS_NAMES[index], "all classes")) for index in range(2)])
    calls = calls + calls[:6]  # some calls twice at once

    def ask(call, client=None):
        endpoint, arguments = call
        client = client or Client(deployed["url"], verbose=False)
        sent = [handle_file(str(value)) if isinstance(value, Path) else value for value in arguments]
        return answer_values(endpoint, client.predict(*sent, api_name=endpoint))

    alone_client = Client(deployed["url"], verbose=False)
    alone = [ask(call, alone_client) for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        together = list(pool.map(ask, calls))
    for call, expected, answer in zip(calls, alone, together):
        assert same_answer(call[0], expected, answer), call


def test_a_full_queue_tells_visitors_the_space_is_busy(trained_folder, tmp_path, uploads):
    with running_app(str(trained_folder), tmp_path, env={"QUEUE_MAX_SIZE": "1"}) as (url, _):
        def visitor(_):
            try:
                Client(url, verbose=False).predict(handle_file(str(uploads[0])), api_name="/feature_maps")
                return "answered"
            except Exception as error:  # the refusal is what is measured
                return str(error)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(visitor, range(8)))
        assert "answered" in answers
        refused = [answer for answer in answers if answer != "answered"]
        assert refused and all("queue is full" in answer.lower() or "busy" in answer.lower() for answer in refused)
        assert Client(url, verbose=False).predict(handle_file(str(uploads[1])), api_name="/classify")[0]["label"]


# Every way a model folder can be broken: (what to do to a copy, what the page must say).
def _break_config(folder: Path):
    (folder / "config.json").write_text("{not json")


def _drop_weights(folder: Path):
    (folder / "model.safetensors").unlink()


def _pickle_only(folder: Path):
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def _wrong_shapes(folder: Path):
    weights = load_file(str(folder / "model.safetensors"))
    head = next(name for name in weights if name.endswith("fc.weight"))
    weights[head] = torch.zeros(3, weights[head].shape[1])
    save_file(weights, str(folder / "model.safetensors"))


def _break_metrics(folder: Path):
    (folder / "metrics.json").write_text("[1, 2")


def _metrics_of_wrong_shape(folder: Path):
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["test"]["accuracy"] = "high"
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _break_mistakes(folder: Path):
    (folder / "misclassified.json").write_text("\x00\x01")


def _duplicate_labels(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    config["label_names"] = ["same"] * len(config["label_names"])
    (folder / "config.json").write_text(json.dumps(config))


BROKEN = {"config.json not JSON": (_break_config, "config.json of model"),
          "no weights": (_drop_weights, "has no model.safetensors;"),
          "pickle only": (_pickle_only, "only pytorch_model.bin, a pickle, which this app never opens"),
          "wrong shapes": (_wrong_shapes, "do not fit its config.json"),
          "metrics not JSON": (_break_metrics, "metrics.json of"),
          "metrics of the wrong shape": (_metrics_of_wrong_shape, "lacks test.accuracy or holds the wrong type"),
          "misclassified not JSON": (_break_mistakes, "misclassified.json of"),
          "label names not distinct": (_duplicate_labels, "are not 6 distinct names")}


@pytest.mark.parametrize("case", BROKEN)
def test_every_load_failure_shows_the_error_page_naming_no_server_path(case, trained_folder, tmp_path):
    breaks, message = BROKEN[case]
    folder = tmp_path / "broken-model"
    shutil.copytree(trained_folder, folder)
    breaks(folder)
    sys.path.insert(0, str(ROOT))
    import app
    demo = app.create_demo(str(folder))
    page = " ".join(str(block.get("props", {}).get("value", "")) for block in demo.config["components"])
    assert "The model could not be loaded" in page
    assert message in page.replace("\\", ""), page
    assert str(tmp_path) not in page and "Traceback" not in page


def test_label_names_and_settings_from_the_folder_are_shown_as_plain_text(trained_folder, tmp_path):
    folder = tmp_path / "markdown"
    shutil.copytree(trained_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["label_names"][0] = "![pixel](http://example.invalid/p.png)"
    (folder / "config.json").write_text(json.dumps(config))
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["settings"]["dataset"] = "x` <img src=http://example.invalid/q.png> `"
    (folder / "metrics.json").write_text(json.dumps(metrics))
    sys.path.insert(0, str(ROOT))
    import app
    demo = app.create_demo(str(folder))
    markdown = [str(block["props"]["value"]) for block in demo.config["components"]
                if block.get("type") == "markdown" and block.get("props", {}).get("value")]
    assert any("\\!\\[pixel\\]\\(http" in text for text in markdown)  # escaped: shown, not fetched
    assert not any("![pixel](" in text for text in markdown)
    assert any("`x' <img src=http://example.invalid/q.png> '`" in text for text in markdown)  # inside a code span
