"""
Text features, the paper's extra features in words (the speaker's gender, ...): trained from the data's columns
(`train.py --text_feature_columns`), saved with the processor, stated in the prompt at inference (the command line
reads them from a table's columns); a feature the model never read is left out of its prompt, with a warning.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LABELS, save_tiny_backbones, tiny_processor, write_tone_corpus

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def corpus_with_gender(folder: Path, speakers: int = 4, empty_row: int | None = None) -> Path:
    """The tone corpus with a `gender` column: odd speakers male, even female; row `empty_row`'s cell left empty."""
    write_tone_corpus(folder, speakers=speakers)
    lines = (folder / "manifest.csv").read_text().splitlines()
    rows = [lines[0] + ",gender"]
    for index, line in enumerate(lines[1:]):
        speaker = int(line.split(",")[2][3:])
        rows.append(line + ("," if index == empty_row else ",male" if speaker % 2 else ",female"))
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_prompt_states_the_trained_features_and_leaves_out_the_others_with_a_warning(caplog):
    processor, _ = tiny_processor(text_features=["gender"])
    with caplog.at_level(logging.WARNING):
        prompt = processor.build_prompt(16000, None, {"gender": "female", "room": "kitchen"})
    assert "Gender: female." in prompt and "kitchen" not in prompt and "Room" not in prompt
    assert "'room'" in caplog.text and "--text_feature_columns room" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        bare = processor.build_prompt(16000, None, None)
    assert "Gender" not in bare and "'gender'" in caplog.text  # a trained feature not given: said once
    untrained, _ = tiny_processor()  # the default: trained with none, so none reaches the prompt
    assert untrained.text_features == []
    assert untrained.build_prompt(16000, None, {"mood": "calm"}) == untrained.build_prompt(16000, None, None)


def test_the_features_are_saved_with_the_processor_and_an_older_folder_reads_none(tmp_path):
    from processing_emosllm import EmoSLLMProcessor

    processor, _ = tiny_processor(text_features=["gender", "age"])
    processor.save_pretrained(tmp_path)
    assert EmoSLLMProcessor.from_pretrained(tmp_path).text_features == ["gender", "age"]
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    del saved["text_features"]  # a folder saved before text features were trained
    (tmp_path / "processor_config.json").write_text(json.dumps(saved))
    assert EmoSLLMProcessor.from_pretrained(tmp_path).text_features == []


def test_training_reads_the_named_columns_into_each_clips_prompt(tmp_path):
    from training.arguments import DataArguments
    from training.clips import decoded_clips, text_feature_columns
    from training.data import load_data
    from training.trainer import EmoSLLMCollator

    data = load_data(DataArguments(data_dir=str(corpus_with_gender(tmp_path / "corpus", speakers=2, empty_row=1))))
    assert text_feature_columns(" gender ,gender", data.column_names) == ["gender"]
    assert text_feature_columns(None, data.column_names) == []
    with pytest.raises(ValueError, match="'mood' is not a column of the data .*gender"):
        text_feature_columns("gender,mood", data.column_names)
    with pytest.raises(ValueError, match="'label' is the label"):
        text_feature_columns("label", data.column_names)
    processor, _ = tiny_processor(text_features=["gender"])
    clips = decoded_clips(data, processor, "train")
    assert [c["text_features"] for c in clips[:3]] == [{"gender": "male"}, {}, {"gender": "male"}]  # row 1 empty
    batch = EmoSLLMCollator(processor)([dict(c, num_samples=len(c["audio"])) for c in clips[:2]])
    prompts = processor.tokenizer.batch_decode(batch["input_ids"])
    assert "Gender :" in prompts[0] and "Gender" not in prompts[1]  # (the tiny tokenizer: words apart)
    assert decoded_clips(data, tiny_processor()[0], "train")[0]["text_features"] == {}  # not named: not read


@pytest.fixture(scope="module")
def trained_with_gender(tmp_path_factory):
    """A tiny model trained by train.py with `--text_feature_columns gender`, and its corpus. The QPMapper: the answer
    is the LLM's alone, which reads the features, so that a score computed without them would differ."""
    root = tmp_path_factory.mktemp("text_features")
    save_tiny_backbones(root)
    corpus = corpus_with_gender(root / "corpus")
    output = root / "model"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--data_dir", str(corpus), "--test_speakers", "4", "--eval_speakers",
         "3", "--audio_encoder", str(root / "encoder"), "--llm", str(root / "llm"), "--output_dir", str(output),
         "--text_feature_columns", "gender", "--mapper_type", "qpmapper", "--encoder_layer_combination",
         "weighted_average", "--num_queries", "4", "--mapper_hidden_size", "32", "--max_steps", "2",
         "--per_device_train_batch_size", "4", "--bf16", "false", "--lora_rank", "4", "--save_strategy", "no", "--eval_strategy", "no",
         "--load_best_model_at_end", "false"],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return corpus, output, result.stderr


def test_train_py_trains_with_the_columns_and_the_command_line_reads_them_back(trained_with_gender, tmp_path):
    corpus, model, log = trained_with_gender
    assert "classified without them" not in log  # every clip scored with its gender, the saved folder's check too
    assert json.loads((model / "processor_config.json").read_text())["text_features"] == ["gender"]
    assert "reads the text features gender" in (model / "README.md").read_text()  # the model card says so

    def label(table: Path) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "cli_emosllm", "--model", str(model), "--input", str(table),
                                 "--output", str(table.with_suffix(".jsonl")), "--no_progress",
                                 "--no_speech_detection"],
                                cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        assert len(table.with_suffix(".jsonl").read_text().splitlines()) == len(LABELS) * 2 * 4
        return result

    assert "classified without them" not in label(corpus / "manifest.csv").stderr  # the rows' genders are read
    lines = (corpus / "manifest.csv").read_text().splitlines()
    (corpus / "without.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert "classified without them" in label(corpus / "without.csv").stderr  # no column: said
