"""
The Gradio demo (app.py) on a saved tiny-random model folder: its inference function without a browser, and the app
itself as a Space runs it (`python app.py`), driven in Debian's headless chromium with selenium.
"""

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import LABELS, tiny_processor, tone

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SETUP = "run `bash setup.sh` (it installs requirements-demo.txt and the Debian packages chromium and chromium-driver)"


def import_app():
    try:
        import app
    except ImportError as error:  # gradio missing: the demo's requirements are not installed
        pytest.fail(f"app.py cannot be imported ({error}); {SETUP}.")
    return app


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """A tiny random EmoSLLM saved as train.py saves one, a 2 s clip and a 35 s recording with a silent stretch."""
    tmp = tmp_path_factory.mktemp("app")
    processor, config = tiny_processor()
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()
    folder = tmp / "emosllm-app-test"  # the folder's name names its code module: one no other test uses
    # Every weight: the tiny random backbones have no Hub id to be named by (a lean save needs one).
    model.save_pretrained(folder, full_weights=True, dtype=torch.float32)
    processor.save_pretrained(folder)
    clip = np.round(tone(2.0, 300, seed=1) * 32767) / 32767  # on the 16-bit grid: the WAV holds exactly the array
    sf.write(tmp / "clip.wav", clip.astype(np.float32), 16000, subtype="PCM_16")
    long = np.concatenate([tone(8.0, 150, seed=2), tone(8.0, 900, seed=3), np.zeros(12 * 16000, np.float32),
                           tone(7.0, 1800, seed=4)])
    sf.write(tmp / "long.wav", long, 16000, subtype="PCM_16")
    return {"tmp": tmp, "folder": folder, "clip": str(tmp / "clip.wav"), "long": str(tmp / "long.wav"),
            "samples": clip}


@pytest.fixture(scope="module")
def classifier(demo_files):
    return import_app().load_classifier(demo_files["folder"], device="cpu", detect_speech=False)  # tones


def test_classify_gives_the_pipelines_probabilities_over_the_models_labels(classifier, demo_files):
    app = import_app()
    expected = classifier(demo_files["clip"])
    prediction = app.classify(classifier, demo_files["clip"])
    assert sorted(prediction.scores) == sorted(LABELS)
    assert list(prediction.scores) == [item["label"] for item in expected]  # best first, as gr.Label shows them
    for item in expected:
        assert prediction.scores[item["label"]] == pytest.approx(item["score"], abs=1e-6)
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.timeline is None  # one segment: no timeline
    assert app.segment_seconds_of(classifier) == 10.0  # the pipeline's default window
    assert prediction.transcript is None  # this pipeline reports none
    assert prediction.summary.startswith(f"**{expected[0]['label']}**") and "2.0 s" in prediction.summary

    # What gr.Audio(type="numpy") would give: (rate, int16 samples) -> the same scores.
    samples = np.round(demo_files["samples"] * 32767).astype(np.int16)
    from_numpy = app.classify(classifier, (16000, samples))
    for label, score in prediction.scores.items():
        assert from_numpy.scores[label] == pytest.approx(score, abs=1e-4)


def test_a_models_text_features_have_boxes_and_reach_the_pipeline(classifier, demo_files):
    app = import_app()
    classifier.processor.text_features = ["gender"]  # as if trained with --text_feature_columns gender
    mapper_config = dict(classifier.model.config.mapper_config)
    try:
        expected = classifier(demo_files["clip"], text_features={"gender": "female"}, top_k=None)
        prediction = app.classify(classifier, demo_files["clip"], None, {"gender": " female "})
        for item in expected:
            assert prediction.scores[item["label"]] == pytest.approx(item["score"], abs=1e-6)
        without = app.classify(classifier, demo_files["clip"], None, {"gender": " "})  # an empty box: none given
        assert without.scores != pytest.approx(prediction.scores, abs=1e-6)  # the feature changes the LLM's answer
        boxes = [block for block in app.build_demo(classifier).blocks.values()
                 if getattr(block, "elem_id", None) == "text-feature-gender"]
        assert len(boxes) == 1 and boxes[0].label == "Gender (a text feature)"
        assert any(getattr(block, "label", None) == "Transcript (optional)"
                   for block in app.build_demo(classifier).blocks.values())
        classifier.model.config.mapper_config["mix_weight"] = 1.0  # answered by its probe: the text changes nothing
        labels = [getattr(block, "label", None) for block in app.build_demo(classifier).blocks.values()]
        assert "Gender (a text feature)" not in labels and "Transcript (optional)" not in labels
    finally:
        classifier.processor.text_features = []
        classifier.model.config.mapper_config = mapper_config


def test_long_recording_draws_the_timeline(classifier, demo_files):
    from matplotlib.figure import Figure

    app = import_app()
    prediction = app.classify(classifier, demo_files["long"])
    timeline = prediction.result["timeline"]
    assert prediction.result["duration"] == pytest.approx(35.0)
    assert len(timeline) == 4 and [entry["label"] is None for entry in timeline] == [False, False, True, False]
    assert sorted(prediction.scores) == sorted(LABELS)
    assert isinstance(prediction.timeline, Figure)
    ax = prediction.timeline.axes[0]
    assert ax.get_xlim() == pytest.approx((0.0, 35.0))
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [*LABELS, "no speech"]
    # One stacked bar per window and class, plus one for the silent window; each speech window's bars sum to 1.
    bars = [patch for container in ax.containers for patch in container]
    assert len(bars) == 4 * len(LABELS) + 1
    heights = {}
    for patch in bars[: 4 * len(LABELS)]:
        heights[round(patch.get_x(), 3)] = heights.get(round(patch.get_x(), 3), 0.0) + patch.get_height()
    assert sorted(heights.values()) == pytest.approx([0.0, 1.0, 1.0, 1.0], abs=1e-5)
    assert "4 windows of 10 s, 1 without speech" in prediction.summary
    buffer = io.BytesIO()
    prediction.timeline.savefig(buffer, format="png")  # renders without a display
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reported_transcripts_are_shown():
    app = import_app()
    assert app.reported_transcript({"transcript": " kids are talking ", "timeline": []}) == "kids are talking"
    windows = [{"start": 0.0, "end": 10.0, "transcript": "one"}, {"start": 10.0, "end": 20.0, "transcript": ""},
               {"start": 20.0, "end": 30.0, "transcript": "three"}]
    assert app.reported_transcript({"timeline": windows}) == "[0.0-10.0 s] one\n[20.0-30.0 s] three"
    assert app.reported_transcript({"timeline": [{"start": 0.0, "end": 1.0}]}) is None


def test_bad_audio_and_a_missing_model_are_clear_errors(classifier, demo_files, tmp_path, monkeypatch, capsys):
    app = import_app()
    with pytest.raises(ValueError, match="upload an audio file or record"):
        app.classify(classifier, None)
    with pytest.raises(FileNotFoundError, match="no such audio file"):
        app.classify(classifier, str(tmp_path / "missing.wav"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    monkeypatch.setattr(app, "HERE", tmp_path)  # the repo may hold a real outputs/emosllm
    for model in (None, str(tmp_path / "no-such-folder"), "./no-such-folder"):
        with pytest.raises(FileNotFoundError, match=r"python train\.py.*--model PATH_OR_HUB_ID"):
            app.resolve_model(model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        app.resolve_model("empty")
    assert app.resolve_model("someone/emosllm") == "someone/emosllm"  # a Hub id is left to the Hub
    monkeypatch.setenv(app.MODEL_ENV, str(demo_files["folder"]))
    assert app.resolve_model(None) == str(demo_files["folder"])
    monkeypatch.delenv(app.MODEL_ENV)
    assert app.main([]) == 2  # `python app.py` without a trained model: the message, no traceback
    assert "python train.py" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# The app in a headless browser
# ----------------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            pytest.fail(f"python app.py exited with {process.returncode}:\n{log.read()[-5000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    log.seek(0)
    pytest.fail(f"python app.py did not serve {url} within {seconds:.0f} s:\n{log.read()[-5000:]}")


def check_browser() -> None:
    """The browser test fails, never skips, without its browser: the demo is part of what setup.sh installs."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"the browser test needs Debian's chromium and chromedriver ({', '.join(missing)} missing): "
                    f"{SETUP}.")
    if importlib.util.find_spec("selenium") is None:
        pytest.fail(f"the browser test needs selenium (not installed): {SETUP}.")


def headless_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM  # given, with the driver's path: Selenium Manager downloads nothing
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1600", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update"):  # the browser stays local too
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_the_app_in_a_browser_shows_the_pipelines_label(classifier, demo_files, monkeypatch):
    """`python app.py` serves the demo; chromium uploads a recording, presses Classify and reads what it shows."""
    check_browser()
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = classifier(demo_files["long"])  # the label the pipeline gives for the same file
    tmp, port = demo_files["tmp"], free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "modules"), GRADIO_TEMP_DIR=str(tmp / "gradio"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    monkeypatch.setenv("SE_OFFLINE", "true")
    with open(tmp / "server.log", "w+") as log:
        server = subprocess.Popen(
            [sys.executable, "app.py", "--model", str(demo_files["folder"]), "--server_name", "127.0.0.1",
             "--server_port", str(port), "--device", "cpu", "--no_speech_detection"],  # tones: not speech
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        driver = None
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_for_server(url, server, log, seconds=45)
            driver = headless_chromium()
            wait = WebDriverWait(driver, 20)
            driver.get(url)
            upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input input[type=file]"))[0]
            upload.send_keys(demo_files["long"])
            # Uploaded once the player offers the server's copy of the file for download.
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input a[href*='long.wav']"))
            driver.find_element(By.CSS_SELECTOR, "#classify-button").click()
            shown = wait.until(lambda d: d.find_elements(
                By.CSS_SELECTOR, "#emotion-label [data-testid=label-output-value]"))[0].text
            rows = {row.find_element(By.CSS_SELECTOR, "dt").text: row.find_element(By.CSS_SELECTOR, "dd").text
                    for row in driver.find_elements(By.CSS_SELECTOR, "#emotion-label [data-testid$=confidence-set]")}
            timeline = [image.get_attribute("src") for image in wait.until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#emotion-timeline img"))]
            summary = driver.find_element(By.CSS_SELECTOR, "#summary").text
        except TimeoutException:
            page = driver.page_source[-3000:] if driver else ""
            log.seek(0)
            pytest.fail(f"the page did not show a result in time.\nserver log:\n{log.read()[-3000:]}\npage:\n{page}")
        finally:
            if driver is not None:
                driver.quit()
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    assert shown == expected[0]["label"]
    assert sorted(rows) == sorted(LABELS)
    for item in expected:  # every class's probability, as the page rounds it
        assert abs(float(rows[item["label"]].rstrip("%")) - 100 * item["score"]) <= 1.0
    assert len(timeline) == 1 and timeline[0].startswith("data:image/png")  # the timeline figure, drawn
    assert "4 windows" in summary
    shutil.rmtree(tmp / "gradio", ignore_errors=True)
