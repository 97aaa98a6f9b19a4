# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Whisper encoder: 30 s padding versus the clip's own length, measured on RAVDESS (speed and accuracy).

Two ways to run Whisper tiny.en's frozen encoder on short emotional clips:

* ``padded_30s``: Whisper's own habit. Features padded to 30 s (3000 mel frames), Hugging Face's
  ``WhisperEncoder.forward`` over all of them without any mask (what users of Whisper's own forward get); only the
  clip's valid frames are pooled afterwards.
* ``own_length``: ``EmoSLLMAudioEncoder.layer_states`` on the batch's own length, padding frames masked (EmoSLLM's
  default, ``pad_audio_to_max_length=False``).

Both modes prepare features with ``EmoSLLMProcessor.audio_features`` (``pad_audio_to_max_length`` True / False)
and share one set of encoder weights. For each mode the script measures

1. speed: seconds per clip and real-time factor of feature extraction and of the encoder, batches of 8, the same
   clips, both modes interleaved in one run over several repeats (median reported) at 1 and at 2 torch threads, and
   the ratio;
2. accuracy: the average of all layers' hidden states (embedding output and every layer), mean+std pooled over the
   clip's valid frames, standardized, scikit-learn ``LogisticRegression(max_iter=2000)``. C is chosen by UA on
   validation actors 13-16 (trained on 01-12); the final model is trained on actors 01-16 and scored once on the
   test actors 17-20 (UA, WA, macro F1);
3. the same classifier on MFCC statistics, as a baseline, in two recipes: librosa's default MFCC (reproduced with
   `transformers.audio_utils`, as librosa is not a dependency) with 40 coefficients, mean+std; and a speech-style
   one (25 ms / 10 ms frames, 40 HTK bands, natural log, 40 MFCCs and their deltas, mean+std).

Test UA is also reported for every C (for information only: the selection never looks at it), and a paired bootstrap
over test clips gives a 95 % interval for the UA difference between the two Whisper modes.

Pooled features are cached in ``--out`` (``features_*.npz``), so a re-run only repeats the speed measurement and
the classifiers. Results go to ``--out/results.json``; a Markdown table is printed.

    python bench/encoder_padding.py --out /tmp/encpad
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy.fft
import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backbones_emosllm import resolve_pretrained  # noqa: E402
from configuration_emosllm import EmoSLLMConfig  # noqa: E402
from data_emosllm import (  # noqa: E402
    compute_ser_metrics, load_corpus, resolve_speakers, speaker_ids, split_by_speakers,
)
from modeling_emosllm import EmoSLLMAudioEncoder  # noqa: E402
from audio_emosllm import SAMPLING_RATE  # noqa: E402
from processing_emosllm import EmoSLLMProcessor  # noqa: E402

MODES = ("padded_30s", "own_length")
MFCC_RECIPES = ("mfcc_librosa", "mfcc_speech")
MODE_TITLES = {
    "mfcc_librosa": "MFCC statistics, librosa defaults (128 mel, 2048/512, dB top 80; 40 MFCC mean+std)",
    "mfcc_speech": "MFCC statistics, speech frames (40 HTK mel, 25/10 ms, ln; 40 MFCC + deltas mean+std)",
    "padded_30s": "Whisper tiny.en, padded to 30 s (HF `WhisperEncoder.forward`, unmasked)",
    "own_length": "Whisper tiny.en, own length (`EmoSLLMAudioEncoder.layer_states`, masked)",
}
CACHE_VERSION = 1
DEFAULT_CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


# ----------------------------------------------------------------------------------------------------------------------
# Encoder and features
# ----------------------------------------------------------------------------------------------------------------------
def load_encoder(model_path: str, attn_implementation: str) -> tuple[EmoSLLMAudioEncoder, object, dict]:
    """EmoSLLM's audio encoder holding the pretrained Whisper encoder weights, Whisper's feature extractor, and the
    processor config of each mode."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    audio_config = AutoConfig.from_pretrained(model_path)
    # Each mode's processor config gets its own copy of the audio config: building an EmoSLLMConfig around the audio
    # config object a model already uses resets its `_attn_implementation` to None, which silently switches the
    # encoder's attention to the eager path (about 3x slower attention on CPU than SDPA's flash kernel).
    feature_configs = {
        mode: EmoSLLMConfig(audio_config=copy.deepcopy(audio_config), max_audio_seconds=30.0,
                            pad_audio_to_max_length=mode == "padded_30s")
        for mode in MODES
    }
    encoder = EmoSLLMAudioEncoder(EmoSLLMConfig(audio_config=audio_config))
    whisper = AutoModel.from_pretrained(model_path, dtype=torch.float32)
    encoder.encoder.load_state_dict(whisper.get_encoder().state_dict())
    encoder.encoder.config._attn_implementation = attn_implementation  # the same kernel in both modes
    return encoder.eval(), AutoFeatureExtractor.from_pretrained(model_path), feature_configs


def check_attention(encoder: EmoSLLMAudioEncoder, attn_implementation: str) -> None:
    found = encoder.encoder.layers[0].self_attn.config._attn_implementation
    if found != attn_implementation:
        raise RuntimeError(f"the encoder's attention is {found!r}, not {attn_implementation!r}; timings would mislead")


def audio_features(feature_configs: dict, feature_extractor, audios: list[np.ndarray], mode: str) -> dict:
    """The processor's own feature step (`EmoSLLMProcessor.audio_features`) with `pad_audio_to_max_length` set by
    `mode`. It needs only `config` and `feature_extractor` from the processor, so it is called with just those (the
    full processor would also need an LLM tokenizer, which plays no part here)."""
    owner = types.SimpleNamespace(config=feature_configs[mode], feature_extractor=feature_extractor)
    return EmoSLLMProcessor.audio_features(owner, audios)


@torch.inference_mode()
def encode(encoder: EmoSLLMAudioEncoder, features: dict, mode: str) -> torch.Tensor:
    """`(batch, layers + 1, frames, hidden)` hidden states of the frozen encoder in `mode`."""
    if mode == "padded_30s":
        output = encoder.encoder(features["input_features"], output_hidden_states=True)
        return torch.stack(output.hidden_states, dim=1)
    return encoder.layer_states(features["input_features"], features["audio_lengths"])


@torch.inference_mode()
def layer_average(encoder: EmoSLLMAudioEncoder, features: dict, mode: str, num_frames: int) -> torch.Tensor:
    """The average of all hidden states over the first `num_frames` frames, `(batch, num_frames, hidden)`: the same
    numbers as `encode(...).mean(dim=1)[:, :num_frames]`, without stacking the 30 s of padding that pooling drops."""
    if mode == "padded_30s":
        states = encoder.encoder(features["input_features"], output_hidden_states=True).hidden_states
        return sum(state[:, :num_frames] for state in states) / len(states)
    return encoder.layer_states(features["input_features"], features["audio_lengths"])[:, :, :num_frames].mean(dim=1)


def masked_mean_std(frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean and std over each clip's valid frames: `(batch, frames, hidden)` -> `(batch, 2 * hidden)`."""
    mask = valid.to(frames.dtype)[..., None]
    count = mask.sum(dim=1)
    mean = (frames * mask).sum(dim=1) / count
    std = ((((frames - mean[:, None]) ** 2) * mask).sum(dim=1) / count).sqrt()
    return torch.cat([mean, std], dim=-1)


def pool(frames: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """`masked_mean_std` as a NumPy array, for scikit-learn."""
    return masked_mean_std(frames, valid).numpy()


def whisper_pooled(
    encoder, feature_configs, feature_extractor, audios: list[np.ndarray], mode: str, batch_size: int,
    partial: Path | None = None, key: str = "",
) -> np.ndarray:
    """Pooled features of every clip; with `partial`, progress is saved there every few batches and resumed."""
    pooled = []
    if partial is not None and partial.exists():
        data = np.load(partial)
        if str(data["key"]) == key:
            pooled = [data["features"]]
            print(f"  resuming after {len(data['features'])} clips", flush=True)
    done = sum(len(p) for p in pooled)
    started, last_save = time.perf_counter(), done
    for start in range(done, len(audios), batch_size):
        batch = audios[start : start + batch_size]
        features = audio_features(feature_configs, feature_extractor, batch, mode)
        lengths = features["audio_lengths"]
        num_frames = max(encoder.config.num_encoder_frames(int(n)) for n in lengths)
        frames = layer_average(encoder, features, mode, num_frames)
        pooled.append(pool(frames, encoder.frame_mask(lengths, num_frames)))
        finished = start + len(batch)
        if partial is not None and (finished - last_save >= 20 * batch_size or finished == len(audios)):
            np.savez(partial, features=np.concatenate(pooled), key=key)
            last_save = finished
            rate = (time.perf_counter() - started) / (finished - done)
            print(f"  {finished}/{len(audios)} clips, {rate:.3f} s/clip", flush=True)
    return np.concatenate(pooled)


def mfcc_statistics(audio: np.ndarray, recipe: str, n_mfcc: int = 40) -> np.ndarray:
    """MFCC statistics of one 16 kHz clip.

    `mfcc_librosa`: `librosa.feature.mfcc(y, sr=16000, n_mfcc=40)` with librosa's defaults (2048-point periodic Hann
    frames, hop 512, centred with zero padding, power spectrum, 128 Slaney-normalised Slaney-scale mel bands 0-8 kHz,
    `power_to_db(ref=1, amin=1e-10, top_db=80)`, orthonormal DCT-II); mean and std over frames: `(2 * n_mfcc,)`.
    `mfcc_speech`: 25 ms Hann frames, 10 ms hop, 512-point FFT, 40 HTK mel bands 20 Hz-8 kHz, natural log (floor
    1e-10), orthonormal DCT-II, plus deltas; mean and std over frames of both: `(4 * n_mfcc,)`."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    if recipe == "mfcc_librosa":
        mel_filters = mel_filter_bank(
            num_frequency_bins=1025, num_mel_filters=128, min_frequency=0.0, max_frequency=SAMPLING_RATE / 2,
            sampling_rate=SAMPLING_RATE, norm="slaney", mel_scale="slaney",
        )
        log_mel = spectrogram(
            audio.astype(np.float64), window_function(2048, "hann"), frame_length=2048, hop_length=512,
            fft_length=2048, power=2.0, pad_mode="constant", mel_filters=mel_filters, log_mel="dB",
            reference=1.0, min_value=1e-10, db_range=80.0,
        )  # (n_mels, frames)
        mfcc = scipy.fft.dct(log_mel, type=2, axis=0, norm="ortho")[:n_mfcc]
        return np.concatenate([mfcc.mean(1), mfcc.std(1)]).astype(np.float32)
    mel_filters = mel_filter_bank(
        num_frequency_bins=257, num_mel_filters=40, min_frequency=20.0, max_frequency=8000.0,
        sampling_rate=SAMPLING_RATE, norm=None, mel_scale="htk",
    )
    log_mel = spectrogram(
        audio.astype(np.float64), window_function(400, "hann"), frame_length=400, hop_length=160, fft_length=512,
        power=2.0, mel_filters=mel_filters, log_mel="log", mel_floor=1e-10,
    )
    mfcc = scipy.fft.dct(log_mel, type=2, axis=0, norm="ortho")[:n_mfcc]
    delta = np.gradient(mfcc, axis=1)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1)]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------------------------------
def measure_speed(
    encoder, feature_configs, feature_extractor, audios: list[np.ndarray], batch_size: int, repeats: int,
    thread_counts: list[int],
) -> dict:
    """Both modes on the same batches at each torch thread count, interleaved (the order of modes alternates per
    repeat) so that the load of a shared machine hits both alike. Medians over repeats of seconds per clip;
    RTF = seconds / seconds of audio."""
    batches = [audios[i : i + batch_size] for i in range(0, len(audios), batch_size)]
    audio_seconds = sum(len(a) for a in audios) / SAMPLING_RATE
    times = {(mode, t): {"features": [], "encoder": []} for mode in MODES for t in thread_counts}
    previous_threads = torch.get_num_threads()
    for threads in thread_counts:  # warm-up: one batch per mode and thread count, not timed
        torch.set_num_threads(threads)
        for mode in MODES:
            encode(encoder, audio_features(feature_configs, feature_extractor, batches[0], mode), mode)
    for repeat in range(repeats):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                feature_time = encoder_time = 0.0
                for batch in batches:
                    start = time.perf_counter()
                    features = audio_features(feature_configs, feature_extractor, batch, mode)
                    middle = time.perf_counter()
                    encode(encoder, features, mode)
                    feature_time += middle - start
                    encoder_time += time.perf_counter() - middle
                times[mode, threads]["features"].append(feature_time)
                times[mode, threads]["encoder"].append(encoder_time)
                print(f"  speed repeat {repeat + 1}/{repeats}, {threads} thread(s), {mode}: encoder "
                      f"{encoder_time:.2f} s, features {feature_time:.2f} s for {len(audios)} clips", flush=True)
    torch.set_num_threads(previous_threads)
    result = {"num_clips": len(audios), "batch_size": batch_size, "repeats": repeats, "thread_counts": thread_counts,
              "audio_seconds": audio_seconds, "frames_per_batch": {}, "modes": {mode: {} for mode in MODES},
              "encoder_speedup_own_vs_padded": {}, "total_speedup_own_vs_padded": {}}
    for (mode, threads), measured in times.items():
        encoder_s = statistics.median(measured["encoder"])
        feature_s = statistics.median(measured["features"])
        total_s = statistics.median(f + e for f, e in zip(measured["features"], measured["encoder"]))
        result["modes"][mode][str(threads)] = {
            "encoder_s_per_clip": encoder_s / len(audios),
            "encoder_rtf": encoder_s / audio_seconds,
            "features_s_per_clip": feature_s / len(audios),
            "total_s_per_clip": total_s / len(audios),
            "total_rtf": total_s / audio_seconds,
            "encoder_s_all_repeats": measured["encoder"],
            "features_s_all_repeats": measured["features"],
        }
    for mode in MODES:
        result["frames_per_batch"][mode] = [  # encoder positions computed per batch
            int(audio_features(feature_configs, feature_extractor, b, mode)["input_features"].shape[-1]) // 2
            for b in batches
        ]
    for threads in map(str, thread_counts):
        padded, own = result["modes"]["padded_30s"][threads], result["modes"]["own_length"][threads]
        result["encoder_speedup_own_vs_padded"][threads] = padded["encoder_s_per_clip"] / own["encoder_s_per_clip"]
        result["total_speedup_own_vs_padded"][threads] = padded["total_s_per_clip"] / own["total_s_per_clip"]
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------------------------------
def classify(features: np.ndarray, labels: np.ndarray, split: dict, label_names: list[str], cs) -> dict:
    """C chosen by UA on the validation actors (fit on the other training actors); final fit on all training actors
    (train + validation), scored once on the test actors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(rows, c):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        return model.fit(features[rows], labels[rows])

    validation_ua = {}
    for c in cs:
        predicted = fit(split["fit"], c).predict(features[split["validation"]])
        validation_ua[c] = compute_ser_metrics(predicted, labels[split["validation"]], label_names)["ua"]
    best_c = max(cs, key=lambda c: (validation_ua[c], -c))  # ties: the stronger regularization
    final_rows = np.concatenate([split["fit"], split["validation"]])
    test_ua, predictions = {}, {}
    for c in cs:  # every C on test, to show how much the result hangs on C; the choice above never sees these
        predictions[c] = fit(final_rows, c).predict(features[split["test"]])
        test_ua[c] = compute_ser_metrics(predictions[c], labels[split["test"]], label_names)["ua"]
    metrics = compute_ser_metrics(predictions[best_c], labels[split["test"]], label_names)
    return {
        "C": best_c,
        "validation_ua_by_C": {str(c): u for c, u in validation_ua.items()},
        "test_ua_by_C_not_used_for_selection": {str(c): u for c, u in test_ua.items()},
        "test": metrics,
        "test_predictions": predictions[best_c].tolist(),
    }


def paired_bootstrap_ua(references, first, second, label_names, repeats: int = 2000, seed: int = 0) -> dict:
    """UA(second) - UA(first) on the same test clips, and its 95 % percentile interval over clips resampled with
    replacement (the same resample for both)."""
    from sklearn.metrics import recall_score

    references, first, second = map(np.asarray, (references, first, second))
    rng = np.random.default_rng(seed)

    def ua(true, predicted):
        present = [label for label in label_names if label in set(true)]
        return recall_score(true, predicted, labels=present, average="macro", zero_division=0)

    differences = []
    for _ in range(repeats):
        rows = rng.integers(0, len(references), len(references))
        differences.append(ua(references[rows], second[rows]) - ua(references[rows], first[rows]))
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"difference": float(ua(references, second) - ua(references, first)), "ci95": [float(low), float(high)],
            "repeats": repeats, "share_above_zero": float(np.mean(np.array(differences) > 0))}


# ----------------------------------------------------------------------------------------------------------------------
# Data and cache
# ----------------------------------------------------------------------------------------------------------------------
def load_data(data_dir: str, train_actors: str, validation_actors: str, test_actors: str):
    """Clips of the named actors, their labels and the row indices of fit (train minus validation), validation and
    test, made with the project's speaker-independent split."""
    dataset = load_corpus(data_dir)
    speakers = speaker_ids(dataset)
    wanted = resolve_speakers(f"{train_actors},{test_actors}", speakers)
    dataset = dataset.select([i for i, s in enumerate(speakers) if s in wanted])
    dataset = dataset.add_column("row", list(range(len(dataset))))
    splits = split_by_speakers(dataset, test_speakers=test_actors, eval_speakers=validation_actors)
    train_speakers = set(speaker_ids(splits["train"])) | set(speaker_ids(splits["validation"]))
    expected_train = resolve_speakers(train_actors, speakers)
    if train_speakers != expected_train:
        raise ValueError(f"training speakers {sorted(train_speakers)} differ from --train_actors {train_actors}")
    split = {name: np.array(splits[key]["row"]) for name, key in
             (("fit", "train"), ("validation", "validation"), ("test", "test"))}
    split_speakers = {name: sorted(set(speaker_ids(splits[key]))) for name, key in
                      (("fit", "train"), ("validation", "validation"), ("test", "test"))}
    return dataset, split, split_speakers


def decode_all(dataset) -> list[np.ndarray]:
    audios = []
    for item in dataset.select_columns(["audio"]):
        samples = item["audio"].get_all_samples()
        if samples.sample_rate != SAMPLING_RATE:
            raise ValueError(f"expected {SAMPLING_RATE} Hz audio, got {samples.sample_rate}")
        audios.append(samples.data.mean(dim=0).numpy().astype(np.float32))
    return audios


def cache_key(paths: list[str], name: str, model_path: str) -> str:
    text = json.dumps({"version": CACHE_VERSION, "name": name, "model": Path(model_path).name, "paths": paths})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_features(out: Path, name: str, key: str, compute) -> tuple[np.ndarray, float | None, bool]:
    """Load `features_<name>.npz` when its key matches, else compute (timed) and save it. `compute(partial, key)`
    may keep its progress in `features_<name>.partial.npz` and resume from it. Returns the features, the seconds the
    computing took (kept in the cache; NaN for a resumed pass) and whether they came from the cache."""
    file = out / f"features_{name}.npz"
    if file.exists():
        data = np.load(file)
        if str(data["key"]) == key:
            return data["features"], float(data["seconds"]), True
    partial = out / f"features_{name}.partial.npz"
    resumed = partial.exists()
    start = time.perf_counter()
    features = compute(partial, key)
    seconds = float("nan") if resumed else time.perf_counter() - start  # a resumed pass was not timed whole
    np.savez(file, features=features, key=key, seconds=seconds, load_average=os.getloadavg())
    partial.unlink(missing_ok=True)
    return features, seconds, False


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def markdown_table(results: dict) -> str:
    speed = results["speed"]
    threads = [str(t) for t in speed["thread_counts"]]
    per = " / ".join(threads) + " thread" + ("s" if threads != ["1"] else "")
    lines = [
        f"| Features | Encoder s/clip, batch 8 ({per}) | Encoder RTF ({per}) | Speed-up vs 30 s ({per}) "
        f"| Features + encoder s/clip ({per}) | Features of all {results['num_clips']} clips, one pass "
        "| C | UA | WA | Macro F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in (*MFCC_RECIPES, *MODES):
        test = results["accuracy"][name]["test"]
        extraction = results["extraction_seconds"].get(name)
        extraction_text = f"{extraction:.0f} s" if extraction is not None else "resumed, not timed"
        if name in MODES:
            mode = speed["modes"][name]
            padded = speed["modes"]["padded_30s"]
            cells = [
                " / ".join(f"{mode[t]['encoder_s_per_clip']:.3f}" for t in threads),
                " / ".join(f"{mode[t]['encoder_rtf']:.4f}" for t in threads),
                " / ".join(f"{padded[t]['encoder_s_per_clip'] / mode[t]['encoder_s_per_clip']:.1f}x" for t in threads),
                " / ".join(f"{mode[t]['total_s_per_clip']:.3f}" for t in threads),
            ]
        else:
            cells = ["-", "-", "-", "-"]
        accuracy = results["accuracy"][name]
        lines.append(
            f"| {MODE_TITLES[name]} | " + " | ".join(cells) + f" | {extraction_text} | {accuracy['C']:g} "
            f"| {test['ua']:.3f} | {test['wa']:.3f} | {test['macro_f1']:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/ravdess", help="RAVDESS folder (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder for results.json and the cached pooled features")
    parser.add_argument("--model", default="openai/whisper-tiny.en", help="Whisper Hub id or folder")
    parser.add_argument("--train_actors", default="1-16")
    parser.add_argument("--validation_actors", default="13-16", help="held out of the training actors to choose C")
    parser.add_argument("--test_actors", default="17-20")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--speed_clips", type=int, default=24, help="clips (drawn with --seed) timed per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the speed measurement per mode")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for the feature pass (default: %(default)s; on the shared 2-core "
                             "machine 1 thread beat 2 in both modes, as other jobs hold a core)")
    parser.add_argument("--speed_threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts the speed measurement runs at (default: %(default)s); on a shared "
                             "machine 2 threads can be slower than 1 when another job holds a core")
    parser.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"],
                        help="attention kernel of the encoder in both modes (default: %(default)s, Whisper's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--Cs", type=float, nargs="+", default=list(DEFAULT_CS), help="C values tried on validation")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dataset, split, split_speakers = load_data(args.data_dir, args.train_actors, args.validation_actors,
                                               args.test_actors)
    label_names = sorted(set(dataset["label"]), key=list(EmoSLLMConfig().labels).index)
    labels = np.array(dataset["label"])
    paths = list(dataset["path"])
    model_path = resolve_pretrained(args.model)
    encoder, feature_extractor, feature_configs = load_encoder(model_path, args.attn_implementation)
    print(f"{len(dataset)} clips, {len(split['fit'])} fit / {len(split['validation'])} validation / "
          f"{len(split['test'])} test; encoder {model_path}; {torch.get_num_threads()} torch threads", flush=True)

    audios: list[np.ndarray] | None = None

    def get_audios() -> list[np.ndarray]:
        nonlocal audios
        if audios is None:
            audios = decode_all(dataset)
        return audios

    features, extraction_seconds, from_cache = {}, {}, {}
    computers = {
        **{recipe: (lambda partial, key, recipe=recipe: np.stack([mfcc_statistics(a, recipe) for a in get_audios()]))
           for recipe in MFCC_RECIPES},
        **{mode: (lambda partial, key, mode=mode: whisper_pooled(
            encoder, feature_configs, feature_extractor, get_audios(), mode, args.batch_size, partial, key))
           for mode in MODES},
    }
    for name, compute in computers.items():
        check_attention(encoder, args.attn_implementation)
        print(f"features: {name} ...", flush=True)
        features[name], seconds, from_cache[name] = cached_features(
            out, name, cache_key(paths, name, model_path), compute
        )
        extraction_seconds[name] = None if np.isnan(seconds) else seconds
        print(f"  {'cached, ' if from_cache[name] else ''}{seconds:.1f} s -> {features[name].shape}", flush=True)

    # Speed: the same clips in both modes (audio decoded only now when every feature came from the cache).
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(dataset), size=min(args.speed_clips, len(dataset)), replace=False).tolist())
    if audios is None:
        speed_audios = decode_all(dataset.select(chosen))
    else:
        speed_audios = [audios[i] for i in chosen]
    print(f"speed: {len(speed_audios)} clips, batches of {args.batch_size}, {args.repeats} repeats, "
          f"{args.speed_threads} threads", flush=True)
    check_attention(encoder, args.attn_implementation)
    speed = measure_speed(encoder, feature_configs, feature_extractor, speed_audios, args.batch_size, args.repeats,
                          args.speed_threads)
    check_attention(encoder, args.attn_implementation)

    accuracy = {}
    for name in (*MFCC_RECIPES, *MODES):
        # One BLAS thread: on a shared 2-core machine, 2 OpenBLAS threads made these small fits ~40x slower.
        with threadpool_limits(1):
            accuracy[name] = classify(features[name], labels, split, label_names, args.Cs)
        test = accuracy[name]["test"]
        print(f"{name}: C={accuracy[name]['C']:g} UA={test['ua']:.3f} WA={test['wa']:.3f} "
              f"F1={test['macro_f1']:.3f}", flush=True)
    ua_difference = paired_bootstrap_ua(labels[split["test"]], accuracy["padded_30s"]["test_predictions"],
                                        accuracy["own_length"]["test_predictions"], label_names, seed=args.seed)
    print(f"UA own length - 30 s: {ua_difference['difference']:+.3f} "
          f"(95 % bootstrap interval {ua_difference['ci95'][0]:+.3f} .. {ua_difference['ci95'][1]:+.3f})", flush=True)

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "attn_implementation": args.attn_implementation, "cpu_count": os.cpu_count(),
                    "load_average_1_5_15_min_at_start": load_at_start,
                    "load_average_1_5_15_min_at_end": os.getloadavg()},
        "model": args.model,
        "model_path": model_path,
        "data_dir": str(Path(args.data_dir).resolve()),
        "splits": {name: {"clips": len(rows), "speakers": split_speakers[name]} for name, rows in split.items()},
        "labels": label_names,
        "pooling": "mean of all hidden states (embedding output + every layer), then mean+std over valid frames",
        "classifier": "StandardScaler + LogisticRegression(max_iter=2000), C by validation UA",
        "speed": speed,
        "speed_clip_indices": chosen,
        "num_clips": len(dataset),
        "extraction_seconds": extraction_seconds,
        "features_from_cache": from_cache,
        "accuracy": accuracy,
        "ua_own_length_minus_padded_30s": ua_difference,
    }
    results["table"] = markdown_table(results)
    results["wall_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print()
    print(results["table"])
    speedups = ", ".join(f"{v:.1f}x at {t} thread(s)" for t, v in speed["encoder_speedup_own_vs_padded"].items())
    print(f"\nencoder speed-up (own length vs 30 s): {speedups}; UA own length - 30 s: "
          f"{ua_difference['difference']:+.3f} [{ua_difference['ci95'][0]:+.3f}, {ua_difference['ci95'][1]:+.3f}]; "
          f"wall {results['wall_seconds']:.0f} s; results in {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
