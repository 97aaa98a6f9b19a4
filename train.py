# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Fine-tune and evaluate EmoSLLM on emotional speech with transformers' Trainer (and so Accelerate).

    python train.py                                    # offline smoke run: generated corpus, default backbones
    python train.py --data_dir ../shared/data/ravdess --test_speakers 17-20 --eval_speakers 13-16
    python train.py --data_dir my_audiofolder          # also a CSV/JSON table, a save_to_disk folder; a Hub id:
    python train.py --dataset_name user/dataset        #   --dataset_name (training.data.load_source)
    torchrun --nproc_per_node 2 train.py ...           # several processes (CPU: gloo; GPUs: NCCL)

Stages (as in the paper): an optional ASR stage (`--asr_epochs`) where the LLM writes the transcript, then the SER
stage where it names the emotion. The frozen audio encoder's outputs are computed once and cached on disk.

The story, top to bottom: the arguments (`training.arguments`), the data and its speaker-independent splits
(`training.data`, `training.splits`), then per split the model, the Trainer and the test report
(`training.recipe.train_one_split`: `build_model`, `training.trainer.run_stage`, `training.evaluation`), and the
run's report (and the Hub upload, `training.hub`).
"""

import json
import logging
from pathlib import Path

import numpy as np

from training.arguments import parse_args
from training.data import load_data
from training.engines import check_engine
from training.hub import push_to_hub
from training.metrics import write_report
from training.recipe import check_model_args, train_one_split
from training.splits import make_splits

logger = logging.getLogger("emosllm.train")

__all__ = ["main"]


def main() -> None:
    """Runs train.py from the command line (`training.arguments.parse_args`): the data, its splits, one run per
    split (`--folds`: one per fold, their scores averaged), then all_results.json and the Hub upload."""
    model_args, data_args, training_args = parse_args()
    check_engine(training_args)  # before any data is read: FSDP/DeepSpeed asked for where they would not run
    check_model_args(model_args)  # and the model flags' values
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(training_args.output_dir)
    if training_args.world_size > 1:
        logger.info("Process %d of %d.", training_args.process_index, training_args.world_size)
    with training_args.main_process_first(desc="data"):  # the first process makes the smoke corpus, fills caches
        dataset = load_data(data_args)
    split_list = make_splits(dataset, data_args, training_args.seed)
    if data_args.folds > 1:
        results = []
        for fold, splits in enumerate(split_list):
            results.append(train_one_split(model_args, data_args, training_args, splits, output_dir / f"fold{fold}"))
        metrics = {key: float(np.mean([r[key] for r in results])) for key in ("ua", "wa", "macro_f1", "weighted_f1")}
        metrics["folds"] = results
    else:
        metrics = train_one_split(model_args, data_args, training_args, split_list[0], output_dir)
    if training_args.process_index == 0:
        write_report(metrics, output_dir / "all_results.json")
        print(json.dumps({k: v for k, v in metrics.items() if k in ("ua", "wa", "macro_f1", "weighted_f1",
                                                                     "train_seconds")}, indent=2))
        if training_args.push_to_hub:
            push_to_hub(output_dir, training_args.hub_model_id or output_dir.name, token=training_args.hub_token,
                        private=training_args.hub_private_repo, revision=training_args.hub_revision)


if __name__ == "__main__":
    main()
