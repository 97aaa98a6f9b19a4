# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The EmoSLLM demo, as a Hugging Face Space runs a model repo's demo: a Gradio app.

    python app.py                                # the model train.py writes, outputs/emosllm
    python app.py --model path/to/folder         # or a Hub id; EMOSLLM_MODEL=... does the same
    python app.py --server_name 0.0.0.0 --server_port 7860

Upload an audio file or record one with the microphone; the app shows the probability of every emotion for the whole
clip and, for a recording longer than the pipeline's segment (10 s), the emotion timeline of its windows, plus the
transcript when the pipeline reports one. Everything runs locally: the model is loaded with
`pipeline("audio-classification", model=folder, trust_remote_code=True)` (the code comes from the folder), and
Gradio's analytics and version check are off. `HF_HUB_OFFLINE=1` also keeps the Hub out of model loading.

The inference is the plain function `classify(classifier, audio, transcript, text_features)`; `build_demo(model)`
builds the Blocks app around it (`demo = build_demo("outputs/emosllm"); demo.launch()`), with a box for the transcript
of a model that reads one and for each text feature a model was trained with.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

# Before gradio is imported: no analytics requests and no version check (api.gradio.app), no Hub telemetry.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (no pyplot: no global figure registry, no GUI backend)

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "outputs/emosllm"  # what `python train.py` writes
MODEL_ENV = "EMOSLLM_MODEL"
TITLE = "EmoSLLM: speech emotion recognition"


# ----------------------------------------------------------------------------------------------------------------------
# Loading the model
# ----------------------------------------------------------------------------------------------------------------------
def _missing_model(model: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{why}. Train one with `python train.py` (it writes {DEFAULT_MODEL}), or pass a saved EmoSLLM folder or Hub "
        f"id: `python app.py --model PATH_OR_HUB_ID` (or set {MODEL_ENV}=...)."
    )


def resolve_model(model: str | os.PathLike | None = None) -> str:
    """
    The model to load: `model`, else `$EMOSLLM_MODEL`, else `outputs/emosllm`. A relative folder is looked for in
    the working directory, then next to this file. A name that is not a folder is taken for a Hub id when it looks
    like one (`user/name`); the default, a name that exists but is not a folder, and a path (`./x`, `/x`, `~/x`,
    `a/b/c`) that does not exist raise `FileNotFoundError` saying to run train.py or pass a folder or Hub id.

    Args:
        model: A saved EmoSLLM folder (one without a config.json raises `FileNotFoundError` too) or a Hub id; None
            or empty: `$EMOSLLM_MODEL`, else `outputs/emosllm`.

    Returns:
        The folder where it was found (as given, or next to this file), or the Hub id: what `pipeline()` loads.
    """
    model = os.fspath(model) if model else os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    path = Path(model).expanduser()
    for candidate in (path,) if path.is_absolute() else (path, HERE / path):
        if candidate.is_dir():
            if not (candidate / "config.json").is_file():
                raise _missing_model(model, f"{str(candidate)!r} is not a saved model folder (it has no config.json)")
            return str(candidate)
    hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and "\\" not in model
    if model == DEFAULT_MODEL or path.exists() or not hub_id:
        what = "is not a folder" if path.exists() else "does not exist"
        raise _missing_model(model, f"No EmoSLLM model: {model!r} {what}")
    return model


def load_classifier(model: str | os.PathLike | None = None, device=None, **pipeline_kwargs):
    """
    The model's own audio-classification pipeline (its code comes from the model folder or Hub repo). A Hub id that
    cannot be loaded raises `FileNotFoundError`.

    Args:
        model: A saved EmoSLLM folder or Hub id, found by `resolve_model` (None: `$EMOSLLM_MODEL`, else
            `outputs/emosllm`).
        device: The pipeline's device, e.g. `"cpu"`, `"cuda:0"` or `0` (None: an accelerator if there is one).
        **pipeline_kwargs: Other keyword arguments, for `pipeline()` (e.g. `detect_speech=False`).

    Returns:
        The `audio-classification` pipeline, loaded with `trust_remote_code=True`.
    """
    from transformers import pipeline

    name = resolve_model(model)
    try:
        return pipeline("audio-classification", model=name, trust_remote_code=True, device=device, **pipeline_kwargs)
    except OSError as error:  # a Hub id that is not there, or no network
        raise _missing_model(name, f"Could not load the model {name!r} ({error})") from error


# ----------------------------------------------------------------------------------------------------------------------
# Inference: a plain function of the pipeline and the audio, no browser needed
# ----------------------------------------------------------------------------------------------------------------------
class Prediction(NamedTuple):
    scores: dict[str, float]  # every class's probability for the whole clip, best first (what gr.Label shows)
    timeline: Figure | None  # per-window probabilities, for a clip longer than one segment; else None
    transcript: str | None  # the transcript, if the pipeline reported one
    summary: str  # one line of Markdown: the label, the clip's length and its windows
    result: dict  # the pipeline's own output (return_timeline=True)


def labels_of(classifier) -> list[str]:
    """
    The model's classes in id order (the timeline's colours keep this order).

    Args:
        classifier: An EmoSLLM `audio-classification` pipeline (its `model.config.id2label` is read).
    """
    config = classifier.model.config
    return [config.id2label[i] for i in range(config.num_labels)]


def segment_seconds_of(classifier) -> float | None:
    """
    The window length the pipeline cuts long recordings into (given when it was built, else its default).

    Args:
        classifier: An EmoSLLM `audio-classification` pipeline.

    Returns:
        The window length in seconds, at most the processor's `max_audio_seconds`; None when the pipeline was built
        with `segment_seconds=None` (every clip is classified whole).
    """
    default = getattr(sys.modules.get(type(classifier).__module__), "DEFAULT_SEGMENT_SECONDS", 10.0)
    seconds = getattr(classifier, "_preprocess_params", {}).get("segment_seconds", default)
    return None if seconds is None else min(seconds, classifier.processor.max_audio_seconds)


def _pipeline_input(audio) -> Any:
    """What gr.Audio gives (a file path, or `(rate, samples)` with type="numpy") -> a pipeline input."""
    if audio is None or (isinstance(audio, str) and not audio):
        raise ValueError("No audio: upload an audio file or record one with the microphone, then press Classify.")
    if isinstance(audio, tuple):  # gr.Audio(type="numpy"): (rate, int16 samples of shape (samples,) or (samples, ch))
        rate, samples = audio
        samples = np.asarray(samples)
        if np.issubdtype(samples.dtype, np.integer):
            samples = samples.astype(np.float32) / np.iinfo(samples.dtype).max
        return {"array": samples.T if samples.ndim == 2 else samples, "sampling_rate": int(rate)}
    return os.fspath(audio)


def reported_transcript(result: dict) -> str | None:
    """
    The transcript the pipeline reported, if any: the clip's, or each window's with its time span.

    Args:
        result: The pipeline's output for one clip, with `return_timeline=True`.

    Returns:
        The clip's transcript, else one `[start-end s] text` line per window that has one; None when none has.
    """
    text = result.get("transcript")
    if isinstance(text, str) and text.strip():
        return text.strip()
    lines = [
        f"[{entry['start']:.1f}-{entry['end']:.1f} s] {entry['transcript'].strip()}"
        for entry in result.get("timeline", [])
        if isinstance(entry.get("transcript"), str) and entry["transcript"].strip()
    ]
    return "\n".join(lines) or None


def timeline_figure(result: dict, labels: list[str]) -> Figure:
    """
    The emotion timeline: one stacked bar per window, over the stretch of the recording it stands for (overlaps
    split in their middle, as the pipeline weighs them), each class's probability in its colour; silent windows
    hatched grey.

    Args:
        result: The pipeline's output for one clip, with `return_timeline=True` and `top_k=None`: its `timeline`
            gives each window's `start` and `end` (seconds), `label` (None without speech) and every class's score.
        labels: The model's classes in id order (`labels_of`); they fix each class's colour and stacking order.

    Returns:
        A matplotlib `Figure` (made without pyplot), time in seconds on the x axis.
    """
    timeline = result["timeline"]
    cuts = ([timeline[0]["start"]] + [(timeline[i + 1]["start"] + timeline[i]["end"]) / 2
                                      for i in range(len(timeline) - 1)] + [timeline[-1]["end"]])
    left, width = np.asarray(cuts[:-1]), np.diff(cuts)
    probabilities = np.zeros((len(timeline), len(labels)))
    for row, entry in enumerate(timeline):
        for item in entry["scores"]:
            probabilities[row, labels.index(item["label"])] = item["score"]
    silent = np.array([entry["label"] is None for entry in timeline])

    figure = Figure(figsize=(10, 3.6), layout="constrained")
    ax = figure.add_subplot()
    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    bottom = np.zeros(len(timeline))
    for column, label in enumerate(labels):
        ax.bar(left, probabilities[:, column], width=width, bottom=bottom, align="edge", color=palette(column),
               edgecolor="white", linewidth=0.5, label=label)
        bottom += probabilities[:, column]
    if silent.any():
        ax.bar(left[silent], np.ones(silent.sum()), width=width[silent], align="edge", color="0.92",
               edgecolor="0.6", hatch="//", linewidth=0.5, label="no speech")
    span = cuts[-1] - cuts[0]
    for entry, x, w in zip(timeline, left, width):  # each window's best class above it, when there is room
        if entry["label"] is not None and w >= span / 60:
            ax.text(x + w / 2, 1.015, entry["label"], ha="center", va="bottom", fontsize=8,
                    rotation=0 if w >= span / 10 else 90)
    ax.set_xlim(cuts[0], cuts[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    return figure


def classify(classifier, audio, transcript: str | None = None, text_features: dict | None = None) -> Prediction:
    """
    Classify one clip with the pipeline. Bad audio raises the pipeline's `ValueError` or `FileNotFoundError`.

    Args:
        classifier: An EmoSLLM `audio-classification` pipeline (`load_classifier`).
        audio: A file path, or gr.Audio's `(rate, samples)`: integer or float samples of shape `(samples,)` or
            `(samples, channels)` at `rate` Hz (the pipeline resamples to 16 kHz). None or `""` raises `ValueError`.
        transcript: An optional transcript for models that read one (None or empty means none).
        text_features: The text features of a model trained with them (`processor.text_features`), e.g.
            `{"gender": "female"}`; None or empty values: none.

    Returns:
        A `Prediction`: the whole-clip probabilities, the timeline figure for a clip longer than one segment (None
        otherwise), the reported transcript, a summary line and the pipeline's own output.
    """
    kwargs: dict[str, Any] = {"return_timeline": True, "top_k": None}
    if transcript is not None and transcript.strip():
        kwargs["transcript"] = transcript.strip()
    features = {name: value.strip() for name, value in (text_features or {}).items() if value and value.strip()}
    if features:
        kwargs["text_features"] = features
    result = classifier(_pipeline_input(audio), **kwargs)
    scores = {item["label"]: float(item["score"]) for item in result["scores"]}
    windows = result["timeline"]
    figure = timeline_figure(result, labels_of(classifier)) if len(windows) > 1 else None
    if result["label"] is None:  # no window holds speech
        summary = f"**no speech detected** · {result['duration']:.1f} s"
    else:
        summary = f"**{result['label']}** ({result['score']:.0%}) · {result['duration']:.1f} s"
    summary += f" · {result['speech']:.1f} s of speech"
    if len(windows) > 1:
        silent = sum(entry["label"] is None for entry in windows)
        seconds = windows[0]["end"] - windows[0]["start"]
        summary += f" · {len(windows)} windows of {seconds:g} s" + (f", {silent} without speech" if silent else "")
    return Prediction(scores, figure, reported_transcript(result), summary, result)


# ----------------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------------
def build_demo(model=None, device=None, detect_speech: bool = True) -> gr.Blocks:
    """
    The Gradio app for `model`.

    Args:
        model: A saved folder or Hub id (see `resolve_model`; None: `$EMOSLLM_MODEL` or outputs/emosllm), or an
            already built EmoSLLM pipeline (used as it is: `device` and `detect_speech` then do nothing).
        device: The device of the pipeline the app loads, e.g. `"cpu"` or `"cuda:0"` (None: an accelerator if there
            is one).
        detect_speech: Whether the pipeline the app loads gives no emotion to a recording (or window) without speech.

    Returns:
        The `gr.Blocks` app, not launched; its `classifier` attribute is the pipeline.
    """
    classifier = (load_classifier(model, device, detect_speech=detect_speech)
                  if model is None or isinstance(model, (str, os.PathLike)) else model)
    labels = labels_of(classifier)
    # A model answered by its probe reads the audio alone: no boxes for text that would change nothing.
    reads_text = not classifier.model.config.answered_by_probe
    reads_transcripts = reads_text and classifier.processor.use_transcript != "none"
    # (no text features in folders saved before them)
    feature_names = list(getattr(classifier.processor, "text_features", [])) if reads_text else []

    def predict(audio, *texts):  # the transcript box's text (where there is one), then each text feature's
        transcript = texts[0] if reads_transcripts else None
        features = dict(zip(feature_names, texts[1:] if reads_transcripts else texts))
        try:
            prediction = classify(classifier, audio, transcript, features)
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        return (
            prediction.scores,
            prediction.summary,
            gr.update(value=prediction.timeline, visible=prediction.timeline is not None),
            gr.update(value=prediction.transcript or "", visible=prediction.transcript is not None),
        )

    segment = segment_seconds_of(classifier)
    long_recordings = ("" if segment is None else f" Recordings longer than {segment:g} s are classified window by "
                       "window, and a timeline shows how the emotion changes.")
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nUpload a recording or use the microphone. Classes: {', '.join(labels)}."
                    + long_recordings)
        with gr.Row():
            with gr.Column():
                # type="filepath": the uploaded file itself reaches the pipeline, as `classifier(path)` reads it;
                # no Share button (it posts to the Hub).
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech",
                                 buttons=["download"], elem_id="audio-input")
                inputs = [audio]
                if reads_transcripts:
                    inputs.append(gr.Textbox(label="Transcript (optional)", elem_id="transcript-input",
                                             placeholder="what is said; left empty, the model's own setting applies"))
                for name in feature_names:  # the text features the model was trained with
                    inputs.append(gr.Textbox(label=f"{name.replace('_', ' ').capitalize()} (a text feature)",
                                             elem_id=f"text-feature-{name}"))
                button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            with gr.Column():
                scores = gr.Label(num_top_classes=len(labels), label="Emotion", elem_id="emotion-label")
                summary = gr.Markdown(elem_id="summary")
        timeline = gr.Plot(label="Emotion timeline", visible=False, format="png", elem_id="emotion-timeline")
        transcript = gr.Textbox(label="Transcript", visible=False, interactive=False, lines=3,
                                elem_id="transcript-output")
        button.click(predict, inputs=inputs, outputs=[scores, summary, timeline, transcript], api_name="classify")
    demo.classifier = classifier
    return demo


def main(argv: list[str] | None = None) -> int:
    """
    The command line: parse the arguments, build the app and serve it until it is stopped.

    Args:
        argv: The command-line arguments (None: `sys.argv[1:]`).

    Returns:
        The exit status: 0 after serving, 2 when the model cannot be loaded (the error is printed to stderr).
    """
    parser = argparse.ArgumentParser(prog="python app.py", description="The EmoSLLM Gradio demo.")
    parser.add_argument("--model", default=None,
                        help=f"a saved EmoSLLM folder or Hub id (default: ${MODEL_ENV}, else {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: an accelerator if there is one)")
    parser.add_argument("--no_speech_detection", action="store_true",
                        help="classify every recording (default: one without speech gets no emotion)")
    parser.add_argument("--server_name", default=None, help="address to serve on (default: $GRADIO_SERVER_NAME, "
                        "else 127.0.0.1)")
    parser.add_argument("--server_port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else the "
                        "first free one from 7860)")
    args = parser.parse_args(argv)
    try:
        demo = build_demo(args.model, args.device, detect_speech=not args.no_speech_detection)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    demo.queue().launch(server_name=args.server_name, server_port=args.server_port, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
