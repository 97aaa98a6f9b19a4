"""
Your data, read as you laid it out (issue #39): audiofolders, corpus file names, label folders and columns, tables
without speakers, and the default split's labels; what cannot be read is a `ValueError` saying how to lay it out.
Tiny random backbones.
"""

import json
import logging
import re
from pathlib import Path

import pytest
import soundfile as sf
from conftest import LABELS, tone, write_tone_corpus
from fuzz_helpers import (  # noqa: F401 (fixtures)
    ReachedTraining, backbones, corpus, manifest_rows, run_until_training, write_rows,
)

import training.arguments
import training.corpora
import training.data
import training.splits

# ----------------------------------------------------------------------------------------------------------------------
# Your data, read as you laid it out (issue #39): the layout wins over corpus-style file names
# ----------------------------------------------------------------------------------------------------------------------
def ravdess_name(emotion: str, actor: int, statement: int = 1) -> str:
    code = {v: k for k, v in training.corpora.RAVDESS_EMOTIONS.items()}[emotion]
    return f"03-01-{code}-01-0{statement}-01-{actor:02d}.wav"


def write_clip(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(0.3, 300, seed=seed), 16000)
    return path


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")  # read at call time


def rows_by_file(dataset) -> dict[str, dict]:
    """Rows keyed by their audio file's name (no audio decoded)."""
    import datasets

    plain = dataset.cast_column("audio", datasets.Audio(decode=False))
    return {Path(row["audio"]["path"]).name: {k: v for k, v in row.items() if k != "audio"} for row in plain}


def test_an_audiofolder_of_ravdess_named_files_takes_its_labels_from_the_subfolders(tmp_path, datasets_cache, caplog):
    """A file moved into happy/ is happy (its name says angry); speakers still come from the names; the
    disagreement is counted; the loader and train.py's load_data agree."""
    folder = tmp_path / "af"
    for actor in (1, 2):
        for emotion in ("happy", "sad", "angry"):
            write_clip(folder / emotion / ravdess_name(emotion, actor), seed=actor)
    moved = ravdess_name("angry", 3)
    write_clip(folder / "happy" / moved, seed=3)
    assert training.data.source_kind(folder) == "folder"
    with caplog.at_level(logging.INFO, logger="emosllm.data"):
        dataset = training.data.load_source(folder, hub=False)
    rows = rows_by_file(dataset)
    assert rows[moved]["label"] == "happy"
    assert rows[moved]["speaker"] == "ravdess_03" and rows[ravdess_name("sad", 1)]["speaker"] == "ravdess_01"
    assert rows[moved]["transcript"] == "Kids are talking by the door" and rows[moved]["gender"] == "male"
    assert sorted(set(dataset["label"])) == ["angry", "happy", "sad"]
    assert re.search(r"1 of 7 files have a label from the label subfolders that differs from the one their RAVDESS "
                     rf"file name gives \('happy' where the name says 'angry': 1; e\.g\. '.*{moved}'", caplog.text)
    assert "speakers and transcript, gender, intensity, repetition from the RAVDESS file names" in caplog.text
    corpus = training.data.load_corpus(folder)  # load_corpus (train.py's smoke path) reads the same layout
    assert rows_by_file(corpus)[moved]["label"] == "happy"


def test_folder_names_that_are_not_emotion_words_are_labels_when_the_label_set_names_them(tmp_path, datasets_cache):
    folder = tmp_path / "af"
    for i, group in enumerate(("positive", "negative")):
        write_clip(folder / group / ravdess_name("angry" if i else "happy", 1 + i))
    assert training.data.source_kind(folder) == "corpus"  # not emotion words: the names' labels, as before
    assert training.data.source_kind(folder, ["positive", "negative"]) == "folder"
    dataset = training.data.load_source(folder, labels=["positive", "negative"], hub=False)
    assert sorted(dataset["label"]) == ["negative", "positive"]


def test_ravdess_in_its_own_actor_folders_still_reads_by_file_name(tmp_path, caplog):
    for actor in (1, 2):
        for emotion in ("happy", "sad"):
            write_clip(tmp_path / "rav" / f"Actor_{actor:02d}" / ravdess_name(emotion, actor))
    assert training.data.source_kind(tmp_path / "rav") == "corpus"
    with caplog.at_level(logging.INFO, logger="emosllm.data"):
        dataset = training.data.load_corpus(tmp_path / "rav")
    assert dataset["label"] == ["happy", "sad", "happy", "sad"]
    assert dataset["speaker"] == ["ravdess_01"] * 2 + ["ravdess_02"] * 2
    assert "read as RAVDESS by its file names" in caplog.text
    assert "(Actor_01, Actor_02) are not label names" in caplog.text
    assert "differs from the one" not in caplog.text
    with pytest.raises(ValueError, match="a corpus folder is one dataset without splits, so it has no split 'test'; "
                                         "leave --dataset_split out"):
        training.data.load_source(tmp_path / "rav", "test", hub=False)  # it was read whole, without a word
    with pytest.raises(ValueError, match="--dataset_split 'test' names a split of --data_dir or --dataset_name; "
                                         "without either, train.py reads its smoke corpus, which has none"):
        training.data.load_data(training.arguments.DataArguments(dataset_split="test"))  # before the corpus is made


@pytest.mark.parametrize("layout", ["manifest", "metadata", "table"])
def test_a_label_column_wins_over_file_names_and_the_disagreement_is_counted(tmp_path, datasets_cache, caplog, layout):
    folder = tmp_path / "data"
    names = [ravdess_name(e, a) for a in (1, 2) for e in ("happy", "sad")]
    for i, name in enumerate(names):
        write_clip(folder / name, seed=i)
    labels = ["sad", "happy", "happy", "sad"]  # the first two disagree with their names
    column = {"manifest": "path", "metadata": "file_name", "table": "path"}[layout]
    table = {"manifest": "manifest.csv", "metadata": "metadata.csv", "table": "clips.csv"}[layout]
    lines = [f"{column},label,speaker"] + [f"{n},{lab},spk{i % 2}" for i, (n, lab) in enumerate(zip(names, labels))]
    (folder / table).write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="emosllm.data"):
        dataset = training.data.load_source(folder, hub=False)
    rows = rows_by_file(dataset)
    assert [rows[n]["label"] for n in names] == labels
    assert [rows[n]["speaker"] for n in names] == ["spk0", "spk1"] * 2  # the given speakers, not the names'
    assert "2 of 4 files have a label from the" in caplog.text
    assert "'sad' where the name says 'happy': 1" in caplog.text
    assert "'happy' where the name says 'sad': 1" in caplog.text


def talk_show(num_speakers: int = 29, single: str | None = None):
    """Label and speaker columns of a corpus whose speakers each show mostly one emotion, as talk-show clips do: the
    last speakers in natural order mostly sad, the few before them neutral (so the last 20% test on sad only). With
    `single`, one speaker alone has that label."""
    import datasets

    rows = {"label": [], "speaker": []}
    owner = LABELS.index(single) if single else None  # the one speaker who keeps `single`
    for speaker in range(1, num_speakers + 1):
        main = "sad" if speaker > 23 else "neutral" if speaker > 20 else LABELS[speaker % 4]
        other = "neutral" if speaker % 3 == 0 else main  # a neutral clip now and then
        for label in [main] * 5 + [other]:
            if label == single and speaker != owner:
                label = "happy"
            rows["label"].append(label)
            rows["speaker"].append(f"guest{speaker:02d}")
    return datasets.Dataset.from_dict(rows)


def test_the_default_split_keeps_every_label_in_test_and_validation_where_the_data_allows(caplog):
    dataset = talk_show()
    args = training.arguments.DataArguments()
    speakers = sorted(set(dataset["speaker"]))
    last = [s for s, label in zip(dataset["speaker"], dataset["label"]) if s in speakers[-6:]]
    assert len(last) == 36  # the old rule (last 20% of speakers) would test on sad and neutral only:
    assert {label for s, label in zip(dataset["speaker"], dataset["label"]) if s in speakers[-6:]} == {"sad", "neutral"}
    with caplog.at_level(logging.INFO, logger="emosllm.train"):
        (splits,) = training.splits.make_splits(dataset, args, seed=42)
    for name in ("train", "validation", "test"):
        assert sorted(set(splits[name]["label"])) == sorted(LABELS), name
    training.splits.check_speaker_disjoint(splits)
    assert 0.1 <= len(splits["test"]) / len(dataset) <= 0.3 and len(splits["validation"]) < len(splits["test"])
    assert "leaves ['angry', 'happy'] out of test" in caplog.text and "StratifiedGroupKFold, seed 42" in caplog.text
    assert "No split of these speakers" not in caplog.text
    (again,) = training.splits.make_splits(dataset, args, seed=42)  # deterministic
    assert again["test"]["speaker"] == splits["test"]["speaker"]
    assert again["validation"]["speaker"] == splits["validation"]["speaker"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emosllm.train"):  # a label of one speaker: it must train
        (splits,) = training.splits.make_splits(talk_show(single="angry"), args, seed=42)
        training.splits.check_split_labels({name: split["label"] for name, split in splits.items()}, LABELS)
    assert "angry" in splits["train"]["label"]
    assert re.search(r"\['angry'\] missing from (test|validation).*held by fewer than 3 speakers: 'angry' \(1\)",
                     caplog.text)
    assert "The test split has no clip of label(s) ['angry'], which training has" in caplog.text
    assert "The validation split has no clip of label(s) ['angry'], which training has" in caplog.text


def test_eval_speakers_none_makes_no_validation_split_and_folds_refuse_named_speakers(tmp_path):
    """`--eval_speakers none` (what the error beside `--departure_folds` advises) was read as a speaker's name;
    `--folds K` dropped named test or validation speakers without a word."""
    with pytest.raises(ValueError, match=r"--folds 2 tests every speaker in turn, so --test_speakers 24-29 would be"):
        training.arguments.parse_args(["--output_dir", str(tmp_path), "--folds", "2", "--test_speakers", "24-29"])
    assert training.arguments.parse_args(["--output_dir", str(tmp_path), "--folds", "2", "--eval_speakers",
                                          "none"])[1].folds == 2
    dataset = talk_show()
    (default,) = training.splits.make_splits(dataset, training.arguments.DataArguments(), seed=42)
    for test_speakers, test in (("24-29", [f"guest{n}" for n in range(24, 30)]), (None, default["test"]["speaker"])):
        args = training.arguments.DataArguments(test_speakers=test_speakers, eval_speakers="none")
        (splits,) = training.splits.make_splits(dataset, args, seed=42)
        assert set(splits) == {"train", "test"} and sorted(set(splits["test"]["speaker"])) == sorted(set(test))
        assert len(splits["train"]) + len(splits["test"]) == len(dataset)


def test_a_named_split_that_lacks_a_label_training_has_is_a_warning_naming_both(caplog):
    dataset = talk_show()
    args = training.arguments.DataArguments(test_speakers="24-29", eval_speakers="21-23")
    (splits,) = training.splits.make_splits(dataset, args, seed=42)  # named speakers are kept as named
    assert sorted(set(splits["test"]["speaker"])) == [f"guest{n}" for n in range(24, 30)]
    with caplog.at_level(logging.WARNING, logger="emosllm.train"):
        training.splits.check_split_labels({name: split["label"] for name, split in splits.items()}, LABELS)
    assert "The test split has no clip of label(s) ['angry', 'happy'], which training has: its scores (UA) cover " \
           "2 of 4 labels" in caplog.text
    assert "The validation split has no clip of label(s) ['angry', 'happy', 'sad']" in caplog.text


@pytest.mark.parametrize("scripted", [True, False])
def test_train_py_transcribes_a_sample_first_and_every_split_only_where_the_words_help(
    backbones, tmp_path, monkeypatch, caplog, scripted
):
    import transcription_emosllm

    data_dir = write_tone_corpus(tmp_path / "corpus", speakers=4, takes=7)  # training: 2 speakers, 56 clips
    write_rows(data_dir, [row.rsplit(",", 1)[0] + "," for row in manifest_rows(data_dir)])  # no transcripts
    heard = []

    def transcribe(audios, model_name):
        heard.extend(audios)
        return ["kids are talking by the door" if scripted else f"take {len(heard) - len(audios) + i}"
                for i in range(len(audios))]

    monkeypatch.setattr(transcription_emosllm, "transcribe", transcribe)
    with caplog.at_level(logging.INFO, logger="emosllm.train"), pytest.raises(ReachedTraining):
        run_until_training(backbones, data_dir, tmp_path, monkeypatch, "--speed_perturbation", "",
                           "--transcript_cache_dir", str(tmp_path / "transcripts"))
    if scripted:  # a sample of 48 of the 56 training clips; no validation or test clip
        assert len(heard) == 48 and "The other 8 clips are not transcribed" in caplog.text
    else:  # every clip of every split: 56 training, 28 validation, 28 test
        assert len(heard) == 112 and "Transcribing the other 8 with" in caplog.text
    (cache,) = (tmp_path / "transcripts").iterdir()
    assert len(json.loads(cache.read_text())["transcripts"]) == len(heard)


def test_cremad_names_in_capitalised_label_folders_are_read_by_folder_with_names_speakers(tmp_path, datasets_cache):
    folder = tmp_path / "af"
    write_clip(folder / "Happy" / "1001_DFA_HAP_XX.wav")
    write_clip(folder / "Happy" / "1002_DFA_SAD_XX.wav", seed=1)  # the name says sad
    write_clip(folder / "Sad" / "1001_IEO_SAD_HI.wav", seed=2)
    rows = rows_by_file(training.data.load_source(folder, hub=False))
    assert {name: (row["label"], row["speaker"]) for name, row in rows.items()} == {
        "1001_DFA_HAP_XX.wav": ("happy", "cremad_1001"), "1002_DFA_SAD_XX.wav": ("happy", "cremad_1002"),
        "1001_IEO_SAD_HI.wav": ("sad", "cremad_1001")}


def test_label_folders_where_only_some_names_follow_a_corpus_give_no_speakers_and_say_why(
    tmp_path, datasets_cache, caplog
):
    folder = tmp_path / "af"
    write_clip(folder / "happy" / ravdess_name("happy", 1))
    write_clip(folder / "sad" / ravdess_name("sad", 2), seed=1)
    write_clip(folder / "sad" / "my_own_take.wav", seed=2)
    with caplog.at_level(logging.INFO, logger="emosllm.data"):
        dataset = training.data.load_source(folder, hub=False)
    assert sorted(dataset["label"]) == ["happy", "sad", "sad"] and set(dataset["speaker"]) == {None}
    assert "only 2 of 3 file names follow RAVDESS's naming, so speakers are not read from them" in caplog.text


def test_label_like_folders_beside_loose_files_are_not_read_as_labels_and_that_is_a_warning(tmp_path, caplog):
    write_clip(tmp_path / "data" / ravdess_name("angry", 1))
    write_clip(tmp_path / "data" / "happy" / ravdess_name("angry", 2), seed=1)
    assert training.data.source_kind(tmp_path / "data") == "corpus"
    with caplog.at_level(logging.WARNING, logger="emosllm.data"):
        dataset = training.data.load_corpus(tmp_path / "data")
    assert dataset["label"] == ["angry", "angry"]
    assert "the subfolder(s) ['happy'] look like labels but are not read as labels" in caplog.text


def test_an_emotion_folder_outside_the_label_set_is_an_unknown_label_error(tmp_path, datasets_cache):
    folder = tmp_path / "af"
    for emotion in ("happy", "sad", "calm"):
        write_clip(folder / emotion / ravdess_name(emotion, 1))
    with pytest.raises(ValueError, match=r"label\(s\) 'calm' are not in the label set \['happy', 'sad'\]"):
        training.data.load_source(folder, labels=["happy", "sad"], hub=False)


def test_a_table_without_speakers_takes_them_from_corpus_file_names(tmp_path, datasets_cache, caplog):
    folder = tmp_path / "data"
    names = [ravdess_name(e, a) for a in (1, 2) for e in ("happy", "sad")]
    for i, name in enumerate(names):
        write_clip(folder / name, seed=i)
    (folder / "clips.csv").write_text("path,label\n" + "".join(f"{n},{n.split('-')[2] == '03' and 'happy' or 'sad'}\n"
                                                               for n in names))
    with caplog.at_level(logging.INFO, logger="emosllm.data"):
        rows = rows_by_file(training.data.load_source(folder / "clips.csv", hub=False))
    assert [rows[n]["speaker"] for n in names] == ["ravdess_01", "ravdess_01", "ravdess_02", "ravdess_02"]
    assert rows[names[0]]["transcript"] == "Kids are talking by the door"
    assert "labels from the label column 'label'; speakers and transcript" in caplog.text
    assert "differs from the one" not in caplog.text


def test_the_default_split_by_a_group_column_also_keeps_every_label(caplog):
    dataset = talk_show().rename_column("speaker", "session").add_column("speaker", [None] * 174)
    (splits,) = training.splits.make_splits(dataset, training.arguments.DataArguments(group_column="session"), seed=0)
    for name in ("validation", "test"):
        assert sorted(set(splits[name]["label"])) == sorted(LABELS), name
    training.splits.check_speaker_disjoint(splits, "session")


@pytest.mark.parametrize("content", ["nothing", "empty label folders", "text files only"])
def test_a_folder_without_audio_is_a_value_error_saying_how_to_lay_it_out(tmp_path, datasets_cache, content):
    folder = tmp_path / "data"
    folder.mkdir()
    if content == "empty label folders":
        (folder / "happy").mkdir()
        (folder / "sad").mkdir()
    if content == "text files only":
        (folder / "notes.txt").write_text("to do\n")
    found = r"no audio or data files found" if content != "text files only" else r"no column\(s\) \['audio', 'label'\]"
    with pytest.raises(ValueError, match=rf"data.*{found}.*labels from subfolder names \(happy/a\.wav"):
        training.data.load_data(training.arguments.DataArguments(data_dir=str(folder)))
