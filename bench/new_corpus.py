# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning on a new corpus, as a user does it: does the LLM's answer end at or above the probe it reads?

    python bench/new_corpus.py --cases few_speakers_nouns,rare_fear --seeds 42,43,44 --test_actors 17-20 \
        --out /tmp/newcorpus

Each case is a corpus made from RAVDESS (``--data_dir``) that differs from it the ways users' corpora do: fewer
training speakers, other label words (nouns whose first tokens are bare letters for SmolLM2: ``fear`` is ``f`` +
``ear``), fewer classes, a rare class. It is written as a manifest folder (links to the actors' folders) and trained
with ``python train.py --data_dir CASE --test_speakers ACTORS`` and no other flag (every speaker but the test ones
trains, as in the issue that reported the LLM below its probe). Then the saved folder scores the test actors' clips
three ways: its answer (what the pipeline returns), the LLM alone (``llm_logits``) and its probe alone
(``probe_logits``). With ``--code`` pointing at another checkout (e.g. a ``git worktree`` of an older commit), the
same cases run on that code; where its model has no ``llm_logits``/``probe_logits`` the script reads the probe from
``model.mapper`` and the answer stands for the LLM.

Cases (training actors -> test actors ``--test_actors``; choices on 13-16, reported numbers on 17-20):

* ``polish_like``: actors 01-07 train, 6 classes renamed to nouns (anger, fear, happiness, neutral, sadness,
  surprised), like the Polish corpus of the report (7 training speakers, those labels).
* ``few_speakers_nouns``: actors 01-04 train (4 speakers, 2 of each gender), all 8 classes renamed to nouns (anger,
  calmness, disgust, fear, happiness, neutral, sadness, surprise).
* ``rare_fear``: actors 01-12 train, 8 classes as in RAVDESS, but only a quarter of the training actors' fearful clips.

Writes ``--out/results.json`` (every run) and prints a table: mean and each seed's UA of the answer, the LLM alone
and the probe alone on the test actors, and the weight the run gave the probe in its answer.

``--read_back`` measures instead what the LLM brings before any training: for each case's label words (and
RAVDESS's own), the untrained model (train.py's recipe built from the backbones, LoRA at zero) reads a soft emotion
word that is one label's word alone (the probe's scores one-hot, through ``mapper.given_scores``) on 12 RAVDESS
clips, and the share of its answers that name that label is printed (chance: 1 / number of labels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["CASES", "NOUNS", "main", "parse_actors", "read_back", "score_folder", "write_case"]

ROOT = Path(__file__).resolve().parent.parent
NOUNS = {"angry": "anger", "calm": "calmness", "disgust": "disgust", "fearful": "fear", "happy": "happiness",
         "neutral": "neutral", "sad": "sadness", "surprised": "surprise"}
CASES = {  # name: (training actors, {RAVDESS label: the case's label}, share of fearful training clips kept)
    "polish_like": (range(1, 8), {**{k: NOUNS[k] for k in ("angry", "fearful", "happy", "neutral", "sad")},
                                  "surprised": "surprised"}, 1.0),
    "few_speakers_nouns": (range(1, 5), NOUNS, 1.0),
    "rare_fear": (range(1, 13), {k: k for k in NOUNS}, 0.25),
}


def parse_actors(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def write_case(name: str, data_dir: Path, test_actors: list[int], folder: Path) -> Path:
    """The case's corpus: links to its actors' folders and their manifest rows, labels renamed."""
    import pandas as pd

    train_actors, renamed, fear_share = CASES[name]
    manifest = pd.read_csv(data_dir / "manifest.csv")
    actor = manifest["speaker"].str[-2:].astype(int)
    manifest = manifest[actor.isin([*train_actors, *test_actors]) & manifest["label"].isin(renamed)].copy()
    if fear_share < 1:  # every (4 / share)-th fearful training clip stays, spread over actors and intensities
        fearful = manifest.index[(manifest["label"] == "fearful") & ~actor[manifest.index].isin(test_actors)]
        manifest = manifest.drop(fearful[np.arange(len(fearful)) % round(1 / fear_share) != 0])
    manifest["label"] = manifest["label"].map(renamed)
    folder.mkdir(parents=True, exist_ok=True)
    for actor_folder in sorted({p.split("/")[0] for p in manifest["path"]}):
        link = folder / actor_folder
        if not link.exists():
            link.symlink_to((data_dir / actor_folder).resolve())
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


def score_folder(code: Path, model_dir: Path, case_dir: Path, test_actors: list[int], threads: int) -> dict:
    """UA of the answer, the LLM alone and the probe alone on the test actors' clips (in a fresh process of `code`)."""
    script = f"""
import json, sys, numpy as np, pandas as pd, soundfile as sf, torch
sys.path.insert(0, {str(code)!r})
torch.set_num_threads({threads})
from transformers import AutoModelForAudioClassification, AutoProcessor
try:
    from training.metrics import compute_ser_metrics
except ImportError:  # a checkout from before the training package (the code before #37)
    from data_emosllm import compute_ser_metrics
model = AutoModelForAudioClassification.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
rows = pd.read_csv({str(case_dir / "manifest.csv")!r})
rows = rows[rows["speaker"].str[-2:].astype(int).isin({test_actors!r})]
labels, scores = model.config.labels, {{"answer": [], "llm": [], "probe": []}}
for start in range(0, len(rows), 16):
    part = rows.iloc[start:start + 16]
    inputs = processor([sf.read({str(case_dir)!r} + "/" + p, dtype="float32")[0] for p in part["path"]],
                       sampling_rate=16000)
    with torch.no_grad():
        output = model(**inputs)
        frames, mask = model.audio_encoder(inputs["audio_lengths"], inputs.get("input_features"))
        probe = model.mapper.class_scores(frames.float(), mask)
    scores["answer"] += output.logits.argmax(-1).tolist()
    scores["llm"] += getattr(output, "llm_logits", None).argmax(-1).tolist() if getattr(output, "llm_logits", None) \\
        is not None else output.logits.argmax(-1).tolist()
    scores["probe"] += probe.argmax(-1).tolist()
truth = [labels.index(label) for label in rows["label"]]
print(json.dumps({{k: compute_ser_metrics(v, truth, labels)["ua"] for k, v in scores.items()}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=code, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_back(label_sets: dict[str, list[str]], data_dir: Path) -> None:
    """The untrained model's answers when the soft emotion word is one label's word alone (see the docstring)."""
    import pandas as pd
    import soundfile as sf
    import torch

    sys.path.insert(0, str(ROOT))
    from backbones_emosllm import resolve_pretrained
    from configuration_emosllm import DEFAULT_AUDIO_MODEL_ID, DEFAULT_TEXT_MODEL_ID
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    encoder, llm = resolve_pretrained(DEFAULT_AUDIO_MODEL_ID), resolve_pretrained(DEFAULT_TEXT_MODEL_ID)
    paths = pd.read_csv(data_dir / "manifest.csv")["path"][:12]
    audios = [sf.read(data_dir / path, dtype="float32")[0] for path in paths]
    for name, labels in label_sets.items():
        processor, config = EmoSLLMProcessor.from_backbones(encoder, llm, labels=labels, mapper_config={"mapper_type": "probe"},
                                                    encoder_layer_combination="concatenate", use_transcript="none")
        model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm).eval()
        inputs, right = processor(audios, sampling_rate=16000), 0
        for k in range(len(labels)):
            one_hot = torch.full((len(audios), len(labels)), -10.0)
            one_hot[:, k] = 10.0
            with torch.no_grad(), model.mapper.given_scores(one_hot):
                right += int((model(**inputs).llm_logits.argmax(-1) == k).sum())
        print(f"| {name} | {', '.join(labels)} | {right / (len(labels) * len(audios)):.3f} | {1 / len(labels):.3f} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    parser.add_argument("--test_actors", default="13-16", help="13-16 for choices, 17-20 for reported numbers")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose train.py runs (default: this one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="where the case corpora, runs and results.json go (not with --read_back)")
    parser.add_argument("--read_back", action="store_true", help="measure the untrained LLM's reading instead")
    args = parser.parse_args(argv)
    if args.read_back:
        label_sets = {case: sorted(set(CASES[case][1].values())) for case in args.cases.split(",")}
        return read_back({"ravdess": sorted(NOUNS), **label_sets}, Path(args.data_dir))
    if not args.out:
        parser.error("--out is required (or --read_back)")
    out, code, test_actors = Path(args.out), Path(args.code).resolve(), parse_actors(args.test_actors)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for case in args.cases.split(","):
        case_dir = write_case(case, Path(args.data_dir), test_actors, out / "corpora" / case)
        for seed in args.seeds.split(","):
            key = f"{case}/seed{seed}"
            if key in results:
                continue
            run_dir = out / "runs" / case / f"seed{seed}"
            subprocess.run([sys.executable, str(code / "train.py"), "--data_dir", str(case_dir), "--test_speakers",
                            args.test_actors, "--seed", seed, "--output_dir", str(run_dir)], cwd=code, env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=open(out / f"{case}-seed{seed}.log", "w"))
            report = json.loads((run_dir / "all_results.json").read_text())
            results[key] = {**score_folder(code, run_dir, case_dir, test_actors, args.threads),
                            "probe_mix_weight": report.get("probe_mix_weight"), "probe_c": report.get("probe_c")}
            results_file.write_text(json.dumps(results, indent=1))
    print(f"| case | test actors | answer UA | LLM alone | probe alone | probe weight | (code: {code})")
    print("|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        runs = [v for k, v in results.items() if k.startswith(case + "/")]
        if runs:
            cells = [f"{np.mean([r[k] for r in runs]):.3f} ({', '.join(f'{r[k]:.3f}' for r in runs)})"
                     for k in ("answer", "llm", "probe")]
            weights = ", ".join(str(r["probe_mix_weight"]) for r in runs)
            print(f"| {case} | {args.test_actors} | {' | '.join(cells)} | {weights} |")


if __name__ == "__main__":
    main()
