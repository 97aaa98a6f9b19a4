"""Tests for training.corpora, training.data, training.splits and training.metrics (corpus loading and validation,
speaker splits, metrics) and training.smoke_corpus."""

import json
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import corpora, data  # noqa: E402
from training import metrics as ser_metrics  # noqa: E402
from training import smoke_corpus as smoke  # noqa: E402
from training import splits as splitting  # noqa: E402

RAVDESS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"


def write_wav(path: Path, seconds: float = 0.2, rate: int = 16000, channels: int = 1) -> Path:
    """A short noise clip (or an empty one when seconds is 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(0).normal(0, 0.1, (int(seconds * rate), channels)).astype(np.float32)
    sf.write(path, samples, rate)
    return path


def write_manifest(folder: Path, lines: list[str]) -> None:
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def good_manifest_folder(folder: Path) -> Path:
    write_wav(folder / "spk1" / "a.wav")
    write_wav(folder / "spk1" / "b.wav", rate=8000, channels=2)  # resampled and down-mixed on decoding
    absolute = write_wav(folder.parent / "elsewhere" / "c.wav")
    write_manifest(folder, [
        "path,label,speaker,transcript,gender",
        "spk1/a.wav,happy,01,hello there,female",
        "spk1/b.wav,sad,01,,female",
        f"{absolute},angry,02,go away,male",
    ])
    return folder


# ---- corpus loading --------------------------------------------------------------------------------------------


def test_manifest_loads_with_columns_and_decodes_16k_mono(tmp_path):
    corpus = data.load_corpus(good_manifest_folder(tmp_path / "corpus"), labels=["happy", "sad", "angry"])
    assert corpus.column_names == ["audio", "label", "speaker", "transcript", "path", "gender"]
    assert corpus["label"] == ["happy", "sad", "angry"]
    assert corpus["speaker"] == ["01", "01", "02"]  # kept as written, leading zero included
    assert corpus["transcript"] == ["hello there", None, "go away"]
    assert corpus["gender"] == ["female", "female", "male"]
    samples = corpus[1]["audio"].get_all_samples()
    assert samples.sample_rate == 16000
    assert tuple(samples.data.shape) == (1, 3200)  # 0.2 s stereo at 8 kHz -> mono 16 kHz
    assert corpus[1]["audio"]["array"].shape == (3200,)


@pytest.mark.parametrize("problem", ["missing file", "unknown label", "empty audio", "unreadable audio"])
def test_manifest_bad_row_names_line_and_path(tmp_path, problem):
    write_wav(tmp_path / "ok.wav")
    bad = "bad.wav"
    label = "happy"
    if problem == "unknown label":
        write_wav(tmp_path / bad)
        label = "bored"
    elif problem == "empty audio":
        write_wav(tmp_path / bad, seconds=0)
    elif problem == "unreadable audio":
        (tmp_path / bad).write_bytes(b"not audio at all" * 8)
    write_manifest(tmp_path, ["path,label,speaker", "ok.wav,happy,s1", f"{bad},{label},s1"])
    with pytest.raises(ValueError) as caught:
        data.load_corpus(tmp_path, labels=["happy", "sad"])
    message = str(caught.value)
    assert "line 3" in message and "'bad.wav'" in message
    expected = {"missing file": "file not found", "unknown label": "unknown label 'bored'",
                "empty audio": "empty audio", "unreadable audio": "unreadable audio"}[problem]
    assert expected in message
    assert "remove the row" in message  # says what to do
    assert ("--skip_bad_clips true" in message) == problem.endswith("audio")  # where train.py can leave it out


def test_manifest_missing_required_column(tmp_path):
    write_wav(tmp_path / "a.wav")
    write_manifest(tmp_path, ["path,speaker", "a.wav,s1"])
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['label'\]"):
        data.load_corpus(tmp_path)


def test_column_flags_for_a_corpus_folder_are_refused_and_apply_to_its_manifest_as_a_table(tmp_path):
    """A manifest.csv folder reads fixed columns: --label_column emotion was ignored (it trained on `label`)."""
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    write_manifest(tmp_path, ["path,emotion,speaker", "a.wav,sad,s1", "b.wav,happy,s2"])
    with pytest.raises(ValueError, match=r"--label_column would be ignored.*--data_dir .*manifest\.csv"):
        data.load_source(tmp_path, label_column="emotion", hub=False)
    with pytest.raises(ValueError, match=r"--transcript_column, --speaker_column would be ignored"):
        data.load_source(tmp_path, speaker_column="spk", transcript_column="text", hub=False)
    table = data.load_source(tmp_path / "manifest.csv", label_column="emotion", hub=False)
    assert table["label"] == ["sad", "happy"] and table["speaker"] == ["s1", "s2"]  # the advice works
    named = tmp_path / "named"
    write_wav(named / "03-01-05-02-01-01-17.wav")
    with pytest.raises(ValueError, match=r"read by its file names.*--speaker_column would be ignored"):
        data.load_source(named, speaker_column="actor", hub=False)


@pytest.mark.parametrize("name, label, speaker, transcript", [
    ("03-01-05-02-01-01-17", "angry", "ravdess_17", "Kids are talking by the door"),
    ("03-01-08-01-02-02-04", "surprised", "ravdess_04", "Dogs are sitting by the door"),
    ("1001_DFA_ANG_XX", "angry", "cremad_1001", "Don't forget a jacket"),
    ("1091_WSI_FEA_HI", "fearful", "cremad_1091", "We'll stop in a couple of minutes"),
    ("OAF_back_angry", "angry", "tess_OAF", "Say the word back"),
    ("YAF_germ_ps", "surprised", "tess_YAF", "Say the word germ"),
    ("YAF_bite_fear", "fearful", "tess_YAF", "Say the word bite"),
    ("03a01Fa", "happy", "emodb_03", "Der Lappen liegt auf dem Eisschrank."),
    ("16b10Lb", "bored", "emodb_16", "Die wird auf dem Platz sein, wo wir sie immer hinlegen."),
])
def test_corpus_file_names_are_recognised(tmp_path, name, label, speaker, transcript):
    write_wav(tmp_path / "sub" / f"{name}.wav")
    corpus = data.load_corpus(tmp_path)
    row = {k: v for k, v in corpus[0].items() if k != "audio"}
    assert (row["label"], row["speaker"], row["transcript"]) == (label, speaker, transcript)
    assert row["path"] == f"sub/{name}.wav"


def test_corpus_extras_from_file_names():
    ravdess_extras = {"gender": "male", "intensity": "strong", "repetition": 1}
    assert corpora.parse_ravdess_name("03-01-05-02-01-01-17")[3] == ravdess_extras
    assert corpora.parse_cremad_name("1001_DFA_ANG_LO")[3] == {"intensity": "low"}
    assert corpora.parse_emodb_name("08a02Wa")[3] == {"gender": "female"}
    assert corpora.parse_ravdess_name("03-02-05-02-01-01-17") is None  # song, not speech
    assert corpora.parse_cremad_name("1001_XXX_ANG_XX") is None  # unknown sentence code


def test_folder_with_a_misfit_file_is_refused(tmp_path):
    write_wav(tmp_path / "03-01-05-02-01-01-17.wav")
    write_wav(tmp_path / "03-01-01-01-01-01-17.flac")
    write_wav(tmp_path / "random_take.wav")
    with pytest.raises(ValueError, match=r"looks like RAVDESS.*'random_take.wav'.*manifest.csv"):
        data.load_corpus(tmp_path)


def test_unknown_label_in_named_corpus(tmp_path):
    write_wav(tmp_path / "03-01-02-01-01-01-01.wav")  # calm
    with pytest.raises(ValueError, match=r"file '03-01-02-01-01-01-01.wav': unknown label 'calm'"):
        data.load_corpus(tmp_path, labels=["neutral", "happy"])


def test_load_hub_dataset_on_local_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # read at call time
    folder = tmp_path / "hub"
    for i in range(4):
        write_wav(folder / f"c{i}.wav", rate=8000)
    rows = [f"c{i}.wav,{['happy', 'sad'][i % 2]},s{i % 2},hi {i}" for i in range(4)]
    (folder / "metadata.csv").write_text("\n".join(["file_name,emotion,spk,text", *rows]) + "\n")
    corpus = data.load_hub_dataset(str(folder), "train", "audio", "emotion",
                                   transcript_column="text", speaker_column="spk")
    assert corpus.column_names == ["audio", "label", "speaker", "transcript"]
    assert sorted(corpus["label"]) == ["happy", "happy", "sad", "sad"]
    assert corpus[0]["audio"].get_all_samples().sample_rate == 16000
    with pytest.raises(ValueError, match="no column"):
        data.load_hub_dataset(str(folder), "train", "audio", "mood")


# ---- any datasets source ---------------------------------------------------------------------------------------


def labelled_wavs(folder: Path, count: int = 4) -> list[Path]:
    return [write_wav(folder / f"c{i}.wav", seconds=0.2 + 0.01 * i) for i in range(count)]


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # read at call time


def test_plain_audiofolder_loads_labels_from_subfolders_without_speakers(tmp_path, datasets_cache):
    for label in ("happy", "sad"):
        for i in range(2):
            write_wav(tmp_path / "af" / label / f"{label}{i}.wav")
    assert data.source_kind(tmp_path / "af") == "folder"
    corpus = data.load_corpus(tmp_path / "af")  # once refused: "no manifest.csv ... follow none of the corpora"
    assert sorted(corpus["label"]) == ["happy", "happy", "sad", "sad"]
    assert corpus["speaker"] == [None] * 4 and splitting.has_speaker_ids(corpus) is False
    assert corpus[0]["audio"].get_all_samples().sample_rate == 16000
    with pytest.raises(ValueError, match=r"label\(s\) 'happy' \(did you mean 'hapy'\?\) are not in the label set"):
        data.load_corpus(tmp_path / "af", labels=["hapy", "sad"])  # checked against --labels as every source is


def test_csv_table_resolves_relative_audio_paths_and_keeps_text_ids(tmp_path, datasets_cache):
    wavs = labelled_wavs(tmp_path / "audio")
    (tmp_path / "meta").mkdir()
    rows = [f"../audio/{w.name},{['Happy', 'sad'][i % 2]},0{i % 2}" for i, w in enumerate(wavs)]
    (tmp_path / "meta" / "clips.csv").write_text("\n".join(["path,emotion,speaker_id", *rows]) + "\n")
    corpus = data.load_source(tmp_path / "meta", label_column="emotion")
    assert corpus.column_names[:4] == ["audio", "label", "speaker", "transcript"]
    assert corpus["label"] == ["happy", "sad", "happy", "sad"]  # normalized as every loader does
    assert corpus["speaker"] == ["00", "01", "00", "01"]  # speaker_id taken, kept as text
    assert corpus[3]["audio"].get_all_samples().data.shape[-1] == int(0.23 * 16000)
    assert data.load_source(tmp_path / "meta" / "clips.csv", label_column="emotion")["label"] == corpus["label"]
    with pytest.raises(ValueError, match=r"one table \(clips.csv\) is the whole data, so it has no split 'test'"):
        data.load_source(tmp_path / "meta", "test", label_column="emotion")
    (tmp_path / "meta" / "clips.csv").write_text("path,emotion\n../audio/c0.wav,happy\nnowhere.wav,sad\n")
    with pytest.raises(ValueError, match=r"1 audio file\(s\) of column 'path' not found:\n  row 1: 'nowhere.wav'"):
        data.load_source(tmp_path / "meta", label_column="emotion")


def test_json_lines_table_in_a_folder_of_audio(tmp_path, datasets_cache):
    wavs = labelled_wavs(tmp_path)
    lines = [json.dumps({"file_path": w.name, "label": ["happy", "sad"][i % 2], "session": i // 2})
             for i, w in enumerate(wavs)]
    (tmp_path / "clips.jsonl").write_text("\n".join(lines) + "\n")
    corpus = data.load_source(tmp_path, audio_column="file_path")
    assert len(corpus) == 4 and corpus["session"] == [0, 0, 1, 1]
    assert splitting.split_by_speakers(corpus, "1", column="session")["test"]["session"] == [1, 1]


def saved_rows(folder: Path) -> datasets.Dataset:
    wavs = labelled_wavs(folder)
    return datasets.Dataset.from_dict({
        "audio": [str(w) for w in wavs], "emotion": ["happy", "sad", "happy", "sad"], "spk": ["a", "a", "b", "b"],
    }).cast_column("audio", datasets.Audio()).cast_column("emotion", datasets.ClassLabel(names=["happy", "sad"]))


def test_save_to_disk_dataset_and_dataset_dict_load_with_their_splits(tmp_path):
    rows = saved_rows(tmp_path / "wav")
    rows.save_to_disk(str(tmp_path / "one"))  # a Dataset: load_dataset refuses it, load_from_disk reads it
    assert data.source_kind(tmp_path / "one") == "saved"
    corpus = data.load_source(tmp_path / "one", label_column="emotion", speaker_column="spk")
    assert corpus["label"] == ["happy", "sad", "happy", "sad"] and corpus["speaker"] == ["a", "a", "b", "b"]
    datasets.DatasetDict({"train": rows.select([0, 1]), "test": rows.select([2, 3])}).save_to_disk(
        str(tmp_path / "dict"))
    assert data.load_source(tmp_path / "dict", label_column="emotion", speaker_column="spk")["speaker"] == ["a", "a"]
    joined = data.load_source(tmp_path / "dict", "train+test", label_column="emotion", speaker_column="spk")
    assert joined["speaker"] == ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match=r"no split\(s\) \['dev'\]; it has \['train', 'test'\]: pass --dataset_split"):
        data.load_source(tmp_path / "dict", "dev", label_column="emotion")
    datasets.DatasetDict({"all": rows}).save_to_disk(str(tmp_path / "single"))  # one split: used whatever its name
    assert len(data.load_source(tmp_path / "single", label_column="emotion")) == 4
    # A split named that a source without splits does not hold was read as the whole data, without a word.
    with pytest.raises(ValueError, match=r"one dataset \(saved without splits\), so it has no split 'test'; leave "
                                         r"--dataset_split out to read its 4 rows"):
        data.load_source(tmp_path / "one", "test", label_column="emotion")
    assert len(data.load_source(tmp_path / "one", "train", label_column="emotion")) == 4  # the default's name: all


def test_a_hub_id_goes_to_load_dataset_and_an_absent_folder_is_named(tmp_path, monkeypatch):
    rows = saved_rows(tmp_path)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: calls.append((name, split)) or rows)
    corpus = data.load_source("someone/emotions", "train", label_column="emotion", speaker_column="spk")
    assert calls == [("someone/emotions", "train")] and corpus["label"] == ["happy", "sad", "happy", "sad"]
    with pytest.raises(ValueError, match=r"'\./nowhere' does not exist: pass a folder or file"):
        data.load_source("./nowhere")
    with pytest.raises(ValueError, match="does not exist"):
        data.load_corpus(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"no column\(s\) \['mood'\]; available: .*An audio folder takes its labels"):
        data.load_source("someone/emotions", label_column="mood")


def test_split_by_clips_is_stratified_seeded_and_disjoint():
    corpus = datasets.Dataset.from_dict({"label": ["a"] * 20 + ["b"] * 10, "id": list(range(30))})
    splits = splitting.split_by_clips(corpus, seed=1)
    assert [len(splits[name]) for name in ("train", "validation", "test")] == [21, 3, 6]
    assert sorted(splits["test"]["label"]) == ["a"] * 4 + ["b"] * 2  # 20% of each label
    ids = [set(splits[name]["id"]) for name in splits]
    assert set().union(*ids) == set(range(30)) and sum(map(len, ids)) == 30
    same = splitting.split_by_clips(corpus, seed=1)
    assert same["test"]["id"] == splits["test"]["id"]  # the same seed, the same split
    assert splitting.split_by_clips(corpus, seed=2)["test"]["id"] != splits["test"]["id"]
    with pytest.raises(ValueError, match="too few to hold out"):
        splitting.split_by_clips(corpus.select([0, 20]))


def test_clip_folds_test_every_clip_once_stratified():
    corpus = datasets.Dataset.from_dict({"label": ["a"] * 8 + ["b"] * 4, "id": list(range(12))})
    folds = splitting.clip_folds(corpus, 4, seed=0)
    tested = [i for fold in folds for i in fold["test"]["id"]]
    assert sorted(tested) == list(range(12))
    assert all(sorted(fold["test"]["label"]) == ["a", "a", "b"] for fold in folds)
    assert all(not set(fold["train"]["id"]) & set(fold["test"]["id"]) for fold in folds)
    with pytest.raises(ValueError, match="number of clips"):
        splitting.clip_folds(corpus, 13)


# ---- speaker splits --------------------------------------------------------------------------------------------


def speaker_dataset(speakers: list[str], clips: int = 2) -> datasets.Dataset:
    rows = [(s, label) for s in speakers for label in ["happy", "sad"][:clips]]
    return datasets.Dataset.from_dict({"speaker": [s for s, _ in rows], "label": [label for _, label in rows]})


def test_split_by_speakers_short_forms_and_disjointness():
    corpus = speaker_dataset([f"ravdess_{i:02d}" for i in range(1, 21)])
    splits = splitting.split_by_speakers(corpus, test_speakers="17-20", eval_speakers=[15, "ravdess_16"])
    assert set(splits) == {"train", "validation", "test"}
    assert set(splits["test"]["speaker"]) == {"ravdess_17", "ravdess_18", "ravdess_19", "ravdess_20"}
    assert set(splits["validation"]["speaker"]) == {"ravdess_15", "ravdess_16"}
    assert len(set(splits["train"]["speaker"])) == 14
    assert sum(len(split) for split in splits.values()) == len(corpus)
    actors = speaker_dataset([f"Actor_{i:02d}" for i in range(1, 5)])
    assert set(splitting.split_by_speakers(actors, "3")["test"]["speaker"]) == {"Actor_03"}
    assert set(splitting.split_by_speakers(actors, None, "Actor_01")) == {"train", "validation"}


def test_split_by_speakers_refuses_bad_specs():
    corpus = speaker_dataset(["ravdess_01", "ravdess_02", "ravdess_03"])
    with pytest.raises(ValueError, match="'ravdess_02' is named for both test and validation"):
        splitting.split_by_speakers(corpus, "2", "ravdess_02")
    with pytest.raises(ValueError, match="'7' matches no speaker"):
        splitting.split_by_speakers(corpus, "7")
    with pytest.raises(ValueError, match="no speakers left for training"):
        splitting.split_by_speakers(corpus, "1-3")


def test_check_speaker_disjoint_names_the_shared_speaker():
    splits = {"train": speaker_dataset(["a", "b"]), "test": speaker_dataset(["c", "b"])}
    with pytest.raises(ValueError, match="speaker 'b' is in both 'train' and 'test'"):
        splitting.check_speaker_disjoint(splits)
    splitting.check_speaker_disjoint({"train": speaker_dataset(["a", "b"]), "test": speaker_dataset(["c"])})


def test_speaker_folds_cover_every_speaker_once_as_test():
    speakers = [f"ravdess_{i}" for i in range(1, 8)]  # 7 speakers, 3 folds: sizes 3, 2, 2
    corpus = speaker_dataset(speakers)
    folds = splitting.speaker_folds(corpus, 3)
    test_groups = [sorted(set(fold["test"]["speaker"]), key=splitting.speaker_sort_key) for fold in folds]
    assert test_groups == [speakers[0:3], speakers[3:5], speakers[5:7]]
    for fold in folds:
        assert not set(fold["train"]["speaker"]) & set(fold["test"]["speaker"])
        assert len(fold["train"]) + len(fold["test"]) == len(corpus)
    again = splitting.speaker_folds(corpus, 3)
    assert [list(f["test"]["speaker"]) for f in again] == [list(f["test"]["speaker"]) for f in folds]
    with pytest.raises(ValueError, match="k=8"):
        splitting.speaker_folds(corpus, 8)


# ---- metrics ---------------------------------------------------------------------------------------------------

LABELS = ["neutral", "happy", "sad", "angry"]
REFERENCES = ["neutral", "neutral", "neutral", "neutral", "happy", "happy", "sad", "sad"]
PREDICTIONS = ["neutral", "neutral", "neutral", "happy", "happy", "sad", "sad", "angry"]
# By hand:
#   neutral: support 4, 3 right, predicted 3 times   -> P 1,   R 3/4, F1 = 2*1*.75/1.75 = 6/7
#   happy:   support 2, 1 right, predicted 2 times   -> P 1/2, R 1/2, F1 1/2
#   sad:     support 2, 1 right, predicted 2 times   -> P 1/2, R 1/2, F1 1/2
#   angry:   support 0, predicted once (wrongly)     -> F1 0, no recall (absent from references)
#   UA = (3/4 + 1/2 + 1/2) / 3 = 7/12; WA = 5 right of 8 = 5/8
#   macro F1 over the 4 classes seen = (6/7 + 1/2 + 1/2 + 0) / 4 = 13/28
#   weighted F1 = (4 * 6/7 + 2 * 1/2 + 2 * 1/2 + 0 * 0) / 8 = (24/7 + 2) / 8 = 19/28


@pytest.mark.parametrize("as_ids", [False, True])
def test_metrics_match_hand_computed_values(as_ids):
    predictions, references = PREDICTIONS, REFERENCES
    if as_ids:
        predictions = [LABELS.index(p) for p in PREDICTIONS]
        references = np.array([LABELS.index(r) for r in REFERENCES])
    metrics = ser_metrics.compute_ser_metrics(predictions, references, LABELS)
    assert metrics["ua"] == pytest.approx(7 / 12)
    assert metrics["wa"] == pytest.approx(5 / 8)
    assert metrics["macro_f1"] == pytest.approx(13 / 28)
    assert metrics["weighted_f1"] == pytest.approx(19 / 28)
    assert metrics["per_class_recall"] == pytest.approx({"neutral": 0.75, "happy": 0.5, "sad": 0.5})
    assert metrics["confusion_matrix"] == [[3, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert metrics["num_samples"] == 8


def test_metrics_refuse_unknown_labels_and_length_mismatch():
    with pytest.raises(ValueError, match="'bored' is not one of the labels"):
        ser_metrics.compute_ser_metrics(["bored"], ["sad"], LABELS)
    with pytest.raises(ValueError, match="as many predictions"):
        ser_metrics.compute_ser_metrics(["sad"], ["sad", "happy"], LABELS)


def test_confusion_matrix_png_and_report(tmp_path):
    png = ser_metrics.save_confusion_matrix(PREDICTIONS, REFERENCES, LABELS, tmp_path / "plots" / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = ser_metrics.compute_ser_metrics(PREDICTIONS, REFERENCES, LABELS)
    report = ser_metrics.write_report({**metrics, "extra": np.float32(0.5)}, tmp_path / "out" / "report.json")
    loaded = json.loads(report.read_text())
    assert loaded["ua"] == pytest.approx(7 / 12) and loaded["extra"] == 0.5


# ---- smoke corpus ----------------------------------------------------------------------------------------------


def test_smoke_corpus_is_loadable_balanced_deterministic_and_reused(tmp_path):
    folder = smoke.make_smoke_corpus(tmp_path / "smoke", num_speakers=3, clips_per_class=2, seed=1)
    corpus = data.load_corpus(folder, labels=list(smoke.SMOKE_LABELS))
    assert len(corpus) == 3 * 4 * 2
    pairs = {(s, label) for s, label in zip(corpus["speaker"], corpus["label"])}
    assert pairs == {(s, label) for s in ["smoke_01", "smoke_02", "smoke_03"] for label in smoke.SMOKE_LABELS}
    samples = corpus[0]["audio"].get_all_samples()
    assert samples.sample_rate == 16000 and 0.8 < samples.data.shape[1] / 16000 < 3.5
    info = sf.info(str(folder / corpus[0]["path"]))
    assert (info.samplerate, info.channels) == (16000, 1)
    # Text carries only valence: per speaker, neutral/happy say the same sentences, and so do sad/angry.
    by_class = {}
    for speaker, label, text in zip(corpus["speaker"], corpus["label"], corpus["transcript"]):
        by_class.setdefault((speaker, label), []).append(text)
    for speaker in ["smoke_01", "smoke_02", "smoke_03"]:
        assert by_class[(speaker, "neutral")] == by_class[(speaker, "happy")]
        assert by_class[(speaker, "sad")] == by_class[(speaker, "angry")]
    # Deterministic, and a complete folder is reused without rewriting.
    other = smoke.make_smoke_corpus(tmp_path / "again", num_speakers=3, clips_per_class=2, seed=1)
    for path in corpus["path"]:
        assert (folder / path).read_bytes() == (other / path).read_bytes()
    stamp = (folder / "manifest.csv").stat().st_mtime_ns
    smoke.make_smoke_corpus(folder, num_speakers=3, clips_per_class=2, seed=1)
    assert (folder / "manifest.csv").stat().st_mtime_ns == stamp


def test_smoke_corpus_voice_carries_arousal(tmp_path):
    folder = smoke.make_smoke_corpus(tmp_path / "smoke", num_speakers=2, clips_per_class=3, seed=0)
    corpus = data.load_corpus(folder)
    seconds = {(speaker, label, Path(path).stem[-2:]): sf.info(str(folder / path)).duration
               for speaker, label, path in zip(corpus["speaker"], corpus["label"], corpus["path"])}
    # Clip n of a speaker says the same sentence pair in every class, so duration reflects speaking rate:
    # high arousal (happy, angry) must be clearly faster than low arousal (neutral, sad).
    for (speaker, label, clip), duration in seconds.items():
        if label in ("happy", "angry"):
            slow = seconds[(speaker, {"happy": "neutral", "angry": "sad"}[label], clip)]
            assert duration < 0.85 * slow


# ---- real data -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not RAVDESS_DIR.is_dir(), reason="RAVDESS copy not found at ../shared/data/ravdess")
def test_load_real_ravdess():
    corpus = data.load_corpus(RAVDESS_DIR)
    assert len(corpus) == 1200
    assert len(set(corpus["label"])) == 8
    assert len(set(corpus["speaker"])) == 20
    folds = splitting.speaker_folds(corpus, 5)
    assert sorted(s for fold in folds for s in set(fold["test"]["speaker"])) == sorted(set(corpus["speaker"]))
