"""cli_emosllm.py on datasets: a whole folder, table or datasets dataset labelled into JSONL, resumable, in two processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from conftest import save_tiny_model, tone

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny saved model and a nested folder of clips: 9 short tones, one 25 s recording, one broken file."""
    tmp = tmp_path_factory.mktemp("label")
    save_tiny_model(tmp / "model")
    folder = tmp / "clips"
    for i in range(9):
        path = folder / f"speaker{i % 3}" / f"clip{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(0.8 + 0.1 * i, 150 * (i + 1), seed=i), 16000)
    sf.write(folder / "long.flac", tone(25.0, 300, seed=20), 16000)
    (folder / "speaker0" / "broken.wav").write_bytes(b"not audio at all\n" * 20)
    return {"tmp": tmp, "model": tmp / "model", "folder": folder}


def label(corpus, output: Path | None, *extra: str, launcher: tuple[str, ...] = (),
          modules: Path | None = None) -> subprocess.CompletedProcess:
    """The command line on the tiny model into `output` (None: standard output), its remote code under `modules`
    (default: beside `output`)."""
    modules = modules or output.parent / "m"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(modules)}
    return subprocess.run([*(launcher or (sys.executable,)), str(REPO / "cli_emosllm.py"), "--model",
                           str(corpus["model"]), *(("--output", str(output)) if output else ()), "--no_progress",
                           "--no_speech_detection", *extra],  # tones: not speech
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scores(line: dict) -> list[float]:
    """A line's class probabilities in label order (its ranking can flip between near-ties in other batches)."""
    return [s["score"] for s in sorted(line.get("scores", []), key=lambda s: s["label"])]


def assert_same_results(lines: list[dict], expected: list[dict]) -> None:
    """The same clips in the same order, each with the same error or the same scores (other batch company: 1e-4)."""
    assert [line["file"] for line in lines] == [line["file"] for line in expected]
    for line, want in zip(lines, expected):
        assert ("error" in line) == ("error" in want), line["file"]
        np.testing.assert_allclose(scores(line), scores(want), atol=1e-4, err_msg=line["file"])


@pytest.fixture(scope="module")
def labelled(corpus):
    output = corpus["tmp"] / "one" / "labels.jsonl"
    output.parent.mkdir()
    return label(corpus, output, "--input", str(corpus["folder"]), "--batch_size", "4"), output


def test_a_folder_is_labelled_one_line_per_clip_as_the_pipeline_labels_each(corpus, labelled):
    result, output = labelled
    assert result.returncode == 1, result.stderr[-3000:]  # one clip could not be classified
    lines = lines_of(output)
    files = sorted(str(p.relative_to(corpus["folder"])) for p in corpus["folder"].rglob("*.*"))
    assert [line["file"] for line in lines] == files  # every clip once, in input order
    broken = next(line for line in lines if line["file"] == "speaker0/broken.wav")
    assert set(broken) == {"file", "error"} and "could not decode" in broken["error"]
    long = next(line for line in lines if line["file"] == "long.flac")
    assert long["duration"] == 25.0 and len(long["timeline"]) == 3  # 10 s windows over a 25 s recording
    assert all("timeline" not in line for line in lines if line["file"] not in ("long.flac", "speaker0/broken.wav"))
    # Batched across files, the same answers as one pipeline call per file.
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(corpus["model"]), trust_remote_code=True, top_k=None,
                          detect_speech=False)
    for line in lines:
        if "error" not in line and line["file"] != "long.flac":
            alone = {"scores": classifier(str(corpus["folder"] / line["file"]))}
            # Tolerance: a clip's scores in a batch of 4 against alone (the bf16 encoder, where bf16 is native,
            # rounds a padded batch differently: measured 1.1e-5).
            np.testing.assert_allclose(scores(line), scores(alone), atol=1e-4)


def test_a_killed_run_resumes_without_redoing_finished_clips(corpus, labelled, tmp_path):
    _, complete = labelled
    text = complete.read_text()
    cut = text.index("\n", text.index("\n") + 1) + 1  # two whole lines, then half of the third: a kill mid-write
    output = tmp_path / "labels.jsonl"
    first = json.loads(text[:cut].splitlines()[0])
    first["label"] = "written-before-the-kill"  # a finished clip that must not be classified again
    output.write_text(json.dumps(first) + "\n" + text[text.index("\n") + 1:cut] + text[cut:cut + 30])
    result = label(corpus, output, "--input", str(corpus["folder"]))
    assert result.returncode == 1, result.stderr[-3000:]
    lines = lines_of(output)
    assert sorted(line["file"] for line in lines) == sorted(line["file"] for line in lines_of(complete))
    assert lines[0]["label"] == "written-before-the-kill"  # kept, not redone
    assert_same_results(lines[2:], lines_of(complete)[2:])  # the rest labelled as in one go


@pytest.mark.parametrize("content, number", [
    (b'{"file": "a.wav", "label": "sad"}\n{"file": "b.wav", "lab\n{"file": "c.wav", "label": "sad"}\n', 2),
    (b"path,transcript\nspeaker0/clip0.wav,kids are talking", 1),  # a table, its last line without a newline
    (b'{"file": "a.wav", "label": "sad"}\n[1, 2]\n', 2),  # JSON, but not an output line
    (b'{"file": "a.wav", "label": "sad"}\nRIFF\xff\xfe', 2),  # not text; at the end, where a cut line is dropped
])
def test_an_output_that_is_not_this_commands_jsonl_is_refused_and_left_as_it_is(corpus, refused, tmp_path, content,
                                                                                 number):
    output = tmp_path / "labels.jsonl"
    output.write_bytes(content)
    error = refused("--input", str(corpus["folder"]), "--output", str(output))
    assert (f"{str(output)!r}, line {number}: not a line of this command's JSONL output (a JSON object with a "
            "\"file\"), so --output cannot resume it; pass another --output, or move or remove the file.") in error
    assert output.read_bytes() == content


def test_two_processes_write_one_output_in_input_order(corpus, labelled, tmp_path):
    _, single = labelled
    output = tmp_path / "labels.jsonl"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    result = label(corpus, output, "--input", str(corpus["folder"]), launcher=launcher)
    # The first process reports the broken clip (exit status 1, so torchrun's too); nothing of ours crashed.
    assert result.returncode == 1 and f'File "{REPO / "cli_emosllm.py"}"' not in result.stderr, result.stderr[-3000:]
    assert not list(tmp_path.glob("labels.jsonl.rank*"))  # the parts were merged and removed
    assert_same_results(lines_of(output), lines_of(single))


def test_a_table_with_transcripts_and_a_saved_dataset(corpus, labelled, tmp_path):
    import datasets

    rows = ["path,transcript", "speaker1/clip1.wav,kids are talking by the door", "speaker2/clip2.wav,"]
    table = corpus["folder"] / "clips.csv"
    table.write_text("\n".join(rows) + "\n")
    try:
        result = label(corpus, tmp_path / "table.jsonl", "--input", str(table))
    finally:
        table.unlink()
    assert result.returncode == 0, result.stderr[-3000:]
    from_table = lines_of(tmp_path / "table.jsonl")
    assert [line["file"] for line in from_table] == ["speaker1/clip1.wav", "speaker2/clip2.wav"]
    from_folder = {line["file"]: line for line in lines_of(labelled[1])}
    # No transcript: the same scores as from the folder (other batch company: 1e-4); a transcript changes them.
    np.testing.assert_allclose(scores(from_table[1]), scores(from_folder["speaker2/clip2.wav"]), atol=1e-4)
    assert np.abs(np.subtract(scores(from_table[0]), scores(from_folder["speaker1/clip1.wav"]))).max() > 1e-3

    files = [str(corpus["folder"] / f"speaker{i % 3}" / f"clip{i}.wav") for i in range(3)]
    transcripts = [None, None, "kids are talking by the door"]  # the last row's is read
    dataset = datasets.Dataset.from_dict({"audio": files, "transcript": transcripts}).cast_column(
        "audio", datasets.Audio(sampling_rate=16000))
    dataset.save_to_disk(tmp_path / "saved")
    result = label(corpus, tmp_path / "dataset.jsonl", "--dataset", str(tmp_path / "saved"))
    assert result.returncode == 0, result.stderr[-3000:]
    by_row = lines_of(tmp_path / "dataset.jsonl")
    assert [line["file"] for line in by_row] == ["0", "1", "2"]  # the dataset's row indices
    for row, line in enumerate(by_row[:2]):
        want = from_folder[f"speaker{row}/clip{row}.wav"]
        np.testing.assert_allclose(scores(line), scores(want), atol=1e-4)  # batches of 3 and of 4 (as above)
    assert np.abs(np.subtract(scores(by_row[2]), scores(from_folder["speaker2/clip2.wav"]))).max() > 1e-3


def test_the_table_names_the_file_of_a_bad_transcript(corpus, tmp_path):
    """A transcript's error names only the argument; the command line names the clip, and the table has its row."""
    table = corpus["folder"] / "transcripts.csv"
    table.write_text("path,transcript\nspeaker1/clip1.wav,kids <|end|> talking\nspeaker2/clip2.wav,kids talking\n")
    try:
        result = label(corpus, None, "--input", str(table), modules=tmp_path / "m")
    finally:
        table.unlink()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: speaker1/clip1.wav: transcript: the text holds the tokenizer's special token(s) ['<|end|>']" in \
        result.stderr
    rows = result.stdout.splitlines()
    assert [row.split()[:2] for row in rows[1:]] == [["speaker1/clip1.wav", "(error)"], ["speaker2/clip2.wav", "1.00"]]


@pytest.mark.parametrize("flags, message", [
    ([], "give the data once"),
    (["--input", "no/such/folder"], "does not exist"),
    (["--input", "x", "--dataset", "y"], "give the data once"),
])
def test_bad_arguments_are_refused_naming_the_fix(corpus, tmp_path, flags, message):
    result = label(corpus, tmp_path / "out.jsonl", *flags)
    assert result.returncode == 2 and message in result.stderr


def test_an_empty_folder_is_refused(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    result = label(corpus, tmp_path / "out.jsonl", "--input", str(tmp_path / "empty"))
    assert result.returncode == 2 and "holds no audio files" in result.stderr
    shutil.rmtree(tmp_path / "empty")


@pytest.fixture
def refused(corpus, monkeypatch, capsys):
    """Runs the command line here on the tiny model, loading it made an error: `refused(*argv)` asserts that it
    stopped with exit status 2 (argparse's) before loading the model, and returns what it printed on standard error."""
    import transformers

    from cli_emosllm import main

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(transformers, "pipeline", load)

    def run(*argv: str) -> str:
        with pytest.raises(SystemExit) as stopped:
            main(["--model", str(corpus["model"]), "--no_progress", *argv])
        assert stopped.value.code == 2
        return capsys.readouterr().err

    return run


@pytest.mark.parametrize("name, content, message", [
    ("header.csv", "path,transcript\n", "has no rows, so there are no clips to label"),
    ("empty.jsonl", "", "has no rows, so there are no clips to label"),
    ("no_path.csv", "file,x\na.wav,1\n", "has no audio path column (looked for any of path, file_name, audio; "
                                         "its columns are ['file', 'x']); name its column of file paths with "
                                         "--audio_column"),
    ("empty.csv", "", "could not be read as a .csv table (No columns to parse from file)"),
    ("bad.jsonl", '{"path": bad}\n', "could not be read as a .jsonl table"),
    ("bad.json", "[{]", "could not be read as a .json table"),
])
def test_a_table_without_clips_or_that_cannot_be_read_is_refused_naming_it(refused, tmp_path, name, content, message):
    table = tmp_path / name
    table.write_text(content)
    error = refused("--input", str(table))
    assert f"--input {str(table)!r} {message}" in error


def test_a_missing_audio_column_named_by_the_option_is_named(refused, tmp_path):
    (tmp_path / "clips.csv").write_text("path\na.wav\n")
    error = refused("--input", str(tmp_path / "clips.csv"), "--audio_column", "wav")
    assert "has no audio path column (looked for --audio_column 'wav'; its columns are ['path'])" in error


@pytest.mark.parametrize("output, message", [
    ("{tmp}", "--output '{tmp}' is a folder; pass a file in it, e.g. '{tmp}/labels.jsonl'."),
    ("{tmp}/notes.txt/labels.jsonl", "--output '{tmp}/notes.txt/labels.jsonl': '{tmp}/notes.txt' is a file, not a "
                                     "folder; pass a path in a folder."),
    ("{tmp}/notes.txt/new/labels.jsonl", "'{tmp}/notes.txt' is a file, not a folder"),
    pytest.param("/proc/labels.jsonl", "--output '/proc/labels.jsonl' cannot be written (No such file or directory); "
                 "pass a file in a folder you can write to.",
                 marks=pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")),
])
def test_an_output_that_cannot_be_written_is_refused_before_loading(corpus, refused, tmp_path, output, message):
    (tmp_path / "notes.txt").write_text("notes\n")
    error = refused(str(corpus["folder"] / "long.flac"), "--output", output.format(tmp=tmp_path))
    assert message.format(tmp=tmp_path) in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == \
        "notes\n"


def test_a_table_row_without_a_path_gets_an_error_line_naming_the_row(corpus, tmp_path):
    """An empty path cell, or a number where a JSON table's path should be, is that row's error line (not the path
    '.../nan' or '.../5'), and the other rows are labelled."""
    clip = str(corpus["folder"] / "speaker0" / "clip0.wav")
    rows = [{"path": clip}, {"path": ""}, {"path": None}, {"path": 5}, {"path": clip.replace("clip0", "clip3")}]
    table = tmp_path / "clips.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = label(corpus, tmp_path / "labels.jsonl", "--input", str(table))
    assert result.returncode == 1, result.stderr[-3000:]  # rows without a path count as failed clips
    lines = lines_of(tmp_path / "labels.jsonl")
    assert [line["file"] for line in lines] == [clip, "row 2", "row 3", "row 4", rows[4]["path"]]
    assert "label" in lines[0] and "label" in lines[4]
    where = f"--input {str(table)!r}, row"
    assert lines[1] == {"file": "row 2", "error": f"{where} 2 (counting from 1): its 'path' cell is empty; write the "
                        "audio file's path there or remove the row."}
    assert lines[2]["error"].startswith(f"{where} 3 (") and "cell is empty" in lines[2]["error"]
    assert lines[3]["error"].startswith(f"{where} 4 (") and "cell holds 5, not a file path" in lines[3]["error"]
    assert "nan" not in result.stderr and "/5'" not in result.stderr


def test_a_dataset_split_is_the_one_named_and_a_split_it_lacks_is_refused(refused, tmp_path):
    """`--split` was read only for a dataset saved with splits: a dataset saved as one was labelled whole under any
    `--split`, and one with several splits had its `train` taken when none was named."""
    import datasets

    from cli_emosllm import clips_of

    rows = {split: datasets.Dataset.from_dict({"path": [f"{split}{i}.wav" for i in range(n)]})
            for split, n in (("train", 3), ("test", 2))}
    datasets.DatasetDict(rows).save_to_disk(tmp_path / "both")
    assert [c.source for c in clips_of(None, str(tmp_path / "both"), "test", None)] == ["test0.wav", "test1.wav"]
    error = refused("--dataset", str(tmp_path / "both"), "--output", str(tmp_path / "out.jsonl"))
    assert f"--dataset {str(tmp_path / 'both')!r} has the splits ['train', 'test']; name one with --split." in error
    datasets.DatasetDict({"test": rows["test"]}).save_to_disk(tmp_path / "one_split")
    assert len(clips_of(None, str(tmp_path / "one_split"), None, None)) == 2  # its only split, unnamed

    rows["test"].save_to_disk(tmp_path / "whole")
    assert len(clips_of(None, str(tmp_path / "whole"), None, None)) == 2
    error = refused("--dataset", str(tmp_path / "whole"), "--split", "test")
    assert (f"--dataset {str(tmp_path / 'whole')!r} is one dataset (saved without splits), so it has no split "
            "'test'; leave --split out to label its 2 rows.") in error
    assert not (tmp_path / "out.jsonl").exists()


def test_a_hub_dataset_with_several_splits_needs_one_named_before_any_download(refused, monkeypatch):
    """The Hub's split names are asked first: with several and none named, nothing is downloaded."""
    import datasets

    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name, **_: ["train", "test"])
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the dataset was downloaded"))
    error = refused("--dataset", "someone/emotional-speech")
    assert "--dataset 'someone/emotional-speech' has the splits ['train', 'test']; name one with --split." in error


@pytest.mark.parametrize("flags, message", [
    (["--input", "{folder}", "--audio_column", "path"], "is a folder, whose audio files are found by their names; "
                                                         "--audio_column names a table's column: leave it out."),
    (["--input", "{folder}", "--split", "test"], "--split names a split of a --dataset; leave it out"),
])
def test_options_the_input_does_not_read_are_refused(corpus, refused, flags, message):
    """`--audio_column` and `--split` were dropped without a word where the input has no such thing."""
    assert message in refused(*(flag.format(folder=corpus["folder"]) for flag in flags))


@pytest.mark.parametrize("name, content", [("clips.csv", "path,x\n001,1\n,2\n"),
                                           ("clips.jsonl", '{"path": "001", "x": 1}\n{"path": null, "x": 2}\n')])
def test_a_table_path_is_read_as_written(tmp_path, name, content):
    """A file named "001" stays "001" (pandas reads a column of such names as numbers), an empty cell an error."""
    from cli_emosllm import clips_of

    (tmp_path / name).write_text(content)
    named, empty = clips_of(str(tmp_path / name), None, None, None)
    assert (named.key, named.source) == ("001", str(tmp_path / "001")) and named.error is None
    assert empty.key == "row 2" and "row 2 (counting from 1" in empty.error and "'path' cell is empty" in empty.error
    assert ("the header not counted" in empty.error) == name.endswith(".csv")


def test_batches_hold_clips_of_similar_length_and_lines_keep_the_input_order():
    """`label_clips` sorts each group of `SORTED_GROUP_BATCHES` batches by length (less padding), then gives the
    lines back in the input order, the bad clip's batch redone clip by clip."""
    from cli_emosllm import SORTED_GROUP_BATCHES, Clip, label_clips

    lengths = [int(n) for n in np.random.default_rng(0).permutation(np.arange(1, 2 * 2 * SORTED_GROUP_BATCHES + 4))]
    clips = [Clip(f"c{i}", {"array": np.zeros(n), "sampling_rate": 16000}) for i, n in enumerate(lengths)]
    clips[5].source = {"array": np.zeros(lengths[5]), "sampling_rate": 16000, "bad": True}
    calls = []

    def classifier(inputs, **kwargs):  # stands in for the pipeline: the label is the clip's length
        batch = inputs if isinstance(inputs, list) else [inputs]
        calls.append([len(x["array"]) for x in batch])
        if any(x.get("bad") for x in batch):
            raise ValueError("bad clip")
        return [{"label": str(len(x["array"]))} for x in batch] if isinstance(inputs, list) else {
            "label": str(len(inputs["array"]))}

    classifier.processor = SimpleNamespace(text_features=[])  # a model trained without text features
    lines = list(label_clips(classifier, clips, 2, {}))
    assert [line["file"] for line in lines] == [clip.key for clip in clips]
    assert [line.get("label") for line in lines] == [None if i == 5 else str(n) for i, n in enumerate(lengths)]
    assert lines[5]["error"] == "c5: bad clip"  # named by its key (the message named no clip)
    first_group = sorted(lengths[:2 * SORTED_GROUP_BATCHES])
    batches = [call for call in calls if len(call) == 2]
    assert batches[:SORTED_GROUP_BATCHES] == [first_group[i:i + 2] for i in range(0, len(first_group), 2)]
