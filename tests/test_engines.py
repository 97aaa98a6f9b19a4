"""
FSDP and DeepSpeed (`training/engines.py`): a stop where the engine asked for would not run; DeepSpeed ZeRO-2 and
ZeRO-3 on two CPU processes (DeepSpeed's CPU accelerator), by itself and through `accelerate launch` and train.py; the
final save of a model that FSDP2 shards.
"""

import importlib.util
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_processor, tone
from test_multiprocess import (
    ACCELERATE_CONFIGS, _bf16_weights_step, _loss_and_gradients, _tiny_model_and_batch, run_ranks,
)
from test_train import REPO, tiny_setup, train_command  # noqa: F401 (tiny_setup: the module's fixture)

sys.path.insert(0, str(REPO))


def _fsdp2_save(rank: int, world: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from training.engines import model_to_save

    model, _ = _tiny_model_and_batch()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.language_model.model.layers:  # as accelerate's fsdp_version 2 wraps a transformer
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    trainer = SimpleNamespace(is_fsdp_enabled=True, is_deepspeed_enabled=False, model=model, model_wrapped=model,
                              args=SimpleNamespace(process_index=rank),
                              accelerator=SimpleNamespace(unwrap_model=lambda wrapped: wrapped))
    with model_to_save(trainer) as whole:  # as train.py saves its final folder
        assert (whole is None) == (rank != 0)
        if rank == 0:
            whole.save_pretrained(f"{out}/fsdp2", full_weights=True)


def test_a_model_that_fsdp2_shards_is_saved_as_one_process_saves_it(tmp_path):
    """
    train.py's final save under FSDP (`training.engines.model_to_save`): the shards gathered to the first process
    (torch's full state dict) and saved from a whole copy give the same files as the unsharded model's save, tensor
    for tensor (FSDP2's own state dict holds shards even while its parameters are gathered).
    """
    from safetensors.torch import load_file

    run_ranks(_fsdp2_save, str(tmp_path))
    model, _ = _tiny_model_and_batch()
    model.save_pretrained(tmp_path / "one", full_weights=True)
    for name in ("model.safetensors", "lora/adapter_config.json", "config.json"):
        assert (tmp_path / "fsdp2" / name).is_file(), name
    saved, expected = load_file(tmp_path / "fsdp2" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert saved.keys() == expected.keys() and any("lora_" in key for key in saved)
    for key, tensor in expected.items():
        assert saved[key].dtype == tensor.dtype and torch.equal(saved[key], tensor), key


@pytest.mark.parametrize("asked, env", [(["--fsdp", "full_shard"], {}), ([], {"ACCELERATE_USE_FSDP": "true"})])
def test_fsdp_on_the_cpu_stops_instead_of_training_whole_copies(asked, env, monkeypatch, tmp_path):
    """Accelerate does not run FSDP on the CPU (each process would train a whole copy): train.py says so and stops."""
    from training.arguments import parse_args
    from training.engines import check_engine

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _, _, training_args = parse_args([*asked, "--output_dir", str(tmp_path), "--use_cpu", "true"])
    with pytest.raises(ValueError, match="FSDP .* was asked for, but this run is on the CPU.*whole copy"):
        check_engine(training_args)


def test_an_engine_asked_for_that_the_trainer_does_not_run_stops(monkeypatch):
    """Once the Trainer exists, the engine asked for must be the one its Accelerator runs (else: plain DDP)."""
    from types import SimpleNamespace

    from training.engines import check_engine_runs

    args = SimpleNamespace(fsdp=[], fsdp_config={}, deepspeed=None)

    def trainer(fsdp: bool = False, deepspeed: bool = False) -> SimpleNamespace:
        return SimpleNamespace(args=args, is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed,
                               accelerator=SimpleNamespace(distributed_type="MULTI_CPU"))

    check_engine_runs(trainer())  # none asked for
    for engine, variable in (("deepspeed", "ACCELERATE_USE_DEEPSPEED"), ("fsdp", "ACCELERATE_USE_FSDP")):
        with monkeypatch.context() as patch:
            patch.setenv(variable, "true")
            check_engine_runs(trainer(**{engine: True}))
            with pytest.raises(ValueError, match=f"{engine} was asked for, but Accelerate runs this training without"):
                check_engine_runs(trainer())


def test_accelerate_launch_use_fsdp_on_the_cpu_stops_before_training(tiny_setup, tmp_path):
    """`accelerate launch --use_fsdp --num_processes 2 train.py ...` on the CPU: an error naming FSDP, not DDP."""
    command = train_command(tiny_setup, tmp_path / "fsdp", "--max_steps", "2")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *command[1:]]
    result = subprocess.run(launch, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0 and "FSDP (--fsdp, or accelerate launch --use_fsdp) was asked for" in result.stderr
    assert not (tmp_path / "fsdp" / "checkpoints").exists()  # nothing trained


NEEDS_DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (requirements-test.txt installs it: pip install deepspeed)")


def _deepspeed_engine(model, stage: int, bf16: bool):
    """`deepspeed.initialize` of `model` at ZeRO `stage` (every parameter partitioned from stage 3), AdamW on what
    trains; bf16 as DeepSpeed's bf16 mode (every weight cast to bf16)."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")  # joins the process group of `run_ranks`
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    config = {"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 1, "bf16": {"enabled": bf16},
              "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def _deepspeed_bf16_step(rank: int, world: int, out: str, stage: int) -> None:
    from conftest import LABELS

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    processor, config = tiny_processor(audio_loss_weight=1.0)
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    engine = _deepspeed_engine(model, stage, bf16=True)
    audios = [tone(s, 150 * (i + 1), seed=i) for i, s in enumerate((0.7, 1.9, 3.1))]
    batch = dict(processor(audios, labels=LABELS[:3]))
    batch["input_features"] = batch["input_features"].to(torch.bfloat16)
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    from deepspeed.utils import safe_get_full_fp32_param

    moved = [n for n, p in engine.module.named_parameters() if n in trainable and not torch.equal(
        safe_get_full_fp32_param(p).float(), trainable[n].float())]  # whole, also where ZeRO-3 partitions it
    if rank == 0:
        torch.save({"loss": loss.detach().float(), "moved": moved}, f"{out}/ds.pt")


@pytest.mark.deepspeed
@NEEDS_DEEPSPEED
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_bf16_one_step_on_two_ranks(tmp_path, monkeypatch, stage):
    """One DeepSpeed ZeRO-2 / ZeRO-3 bf16 step of the tiny model on two gloo ranks (DeepSpeed's CPU accelerator)."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    run_ranks(_deepspeed_bf16_step, str(tmp_path), stage)
    result = torch.load(tmp_path / "ds.pt")
    # The loss is the bf16-weight model's (the weights gathered whole where ZeRO-3 partitions them), and the step
    # moved what trains.
    torch.testing.assert_close(result["loss"], _bf16_weights_step("qpmapper").float(), rtol=2e-2, atol=0)
    assert any("lora_" in n for n in result["moved"]) and any(n.startswith("mapper.") for n in result["moved"])


def _deepspeed_zero3_float32_step(rank: int, world: int, out: str) -> None:
    from deepspeed.utils import safe_get_full_grad

    model, batch = _tiny_model_and_batch()
    engine = _deepspeed_engine(model, stage=3, bf16=False)
    assert engine.module.shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["lm_labels"]) > 0
    torch.manual_seed(1)  # the same dropout masks as `_loss_and_gradients`
    engine.train()
    loss = engine(**batch).loss
    engine.backward(loss)  # every rank the same batch: DeepSpeed averages equal gradients
    gradients = {name: safe_get_full_grad(param).detach().clone() for name, param in engine.module.named_parameters()
                 if param.requires_grad and safe_get_full_grad(param) is not None}
    if rank == 0:
        torch.save({"loss": loss.detach(), "gradients": gradients}, f"{out}/zero3.pt")


@pytest.mark.deepspeed
@NEEDS_DEEPSPEED
def test_deepspeed_zero3_on_two_ranks_gives_the_loss_and_gradients_of_one_process(tmp_path, monkeypatch):
    """
    DeepSpeed ZeRO-3 (every parameter partitioned across two gloo ranks, gathered per module in forward and again in
    backward) trains the model with the shared prompt-head pass on: DeepSpeed gathers the LoRA key/value weights that
    backward reaches through the head's key/value cache, so the loss and every gradient equal one process's within
    float32 rounding (rtol 1e-4, atol 1e-6, as for FSDP2 and gradient checkpointing).
    """
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    run_ranks(_deepspeed_zero3_float32_step, str(tmp_path))
    sharded = torch.load(tmp_path / "zero3.pt")
    model, batch = _tiny_model_and_batch()
    loss, gradients = _loss_and_gradients(model, batch)
    torch.testing.assert_close(sharded["loss"], loss, rtol=1e-5, atol=1e-6)
    assert sharded["gradients"].keys() == gradients.keys() and any("lora_" in n for n in gradients)
    for name, gradient in gradients.items():
        torch.testing.assert_close(sharded["gradients"][name], gradient, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.deepspeed
@NEEDS_DEEPSPEED
def test_zero3_init_is_refused_with_the_way_out_which_train_py_takes(tmp_path):
    """
    Under a stage-3 DeepSpeed config transformers would build the backbones partitioned (deepspeed.zero.Init), which
    EmoSLLM cannot fill or read before the engine starts: building or loading says so; train.py's
    `models_built_whole` holds it off for the build and gives it back after.
    """
    from conftest import LABELS, TINY_LORA, save_tiny_backbones, tiny_mapper_config
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor
    from training.engines import models_built_whole

    save_tiny_backbones(tmp_path)
    encoder, llm = str(tmp_path / "encoder"), str(tmp_path / "llm")
    _, config = EmoSLLMProcessor.from_backbones(encoder, llm, labels=LABELS, mapper_config=tiny_mapper_config("probe"))
    EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm, TINY_LORA).save_pretrained(
        tmp_path / "saved", full_weights=True)
    owner = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    try:
        for build in (lambda: EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm, TINY_LORA),
                      lambda: EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "saved")):
            with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 would build .*models_built_whole"):
                build()
        with models_built_whole(SimpleNamespace(hf_deepspeed_config=owner)):
            assert not is_deepspeed_zero3_enabled()
            model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm, TINY_LORA)
        assert is_deepspeed_zero3_enabled()  # given back to the run's own config
        embeddings = model.get_input_embeddings().weight
        assert embeddings.shape[0] > 0 and torch.equal(model.mapper.label_embeddings.weight, model.label_vectors().T)
    finally:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        del owner


@pytest.fixture(scope="module")
def ddp_losses(tiny_setup, tmp_path_factory) -> list[float]:
    """The tiny training run's logged training losses under `accelerate launch` with the shipped ddp.yaml."""
    return _launched_training(tiny_setup, tmp_path_factory.mktemp("ddp") / "run", "ddp.yaml")["losses"]


def _launched_training(setup, output, config_file: str) -> dict:
    """train.py on the tiny setup for 4 steps under `accelerate launch --config_file configs/accelerate/<file>`
    (2 processes): its logged training losses, and the reported and delivered test UA from its log."""
    command = train_command(setup, output, "--max_steps", "4", "--bf16", "true")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config_file),
              *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    result = subprocess.run(launch, cwd=output.parent, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    delivered = re.findall(r"The saved folder through the pipeline: test UA ([0-9.]+) \(reported ([0-9.]+)\)", log)
    return {"losses": [float(x) for x in re.findall(r"'loss': '([0-9.]+)'", log)], "delivered": delivered}


@pytest.mark.deepspeed
@NEEDS_DEEPSPEED
@pytest.mark.parametrize("config_file, model_states", [
    ("deepspeed_zero2_bf16.yaml", ["mp_rank_00_model_states.pt"]),
    ("deepspeed_zero3_bf16.yaml", ["zero_pp_rank_0_mp_rank_00_model_states.pt",
                                   "zero_pp_rank_1_mp_rank_00_model_states.pt"])])
def test_accelerate_launch_with_deepspeed_trains_through_train_py_as_ddp_does(tiny_setup, tmp_path, ddp_losses,
                                                                            config_file, model_states):
    """
    `accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}_bf16.yaml train.py ...` on two CPU
    processes (DeepSpeed's CPU accelerator): DeepSpeed trains (its checkpoint holds the stage's model states: one file,
    or one shard per process at ZeRO-3, where `zero3_init_flag` is on and train.py builds the backbones whole), the
    logged training losses are DDP's within bf16 rounding (rtol 1e-2: DeepSpeed's bf16 mode holds every weight in
    bf16, DDP's autocast only the matrix products), and the saved folder delivers the reported test score.
    """
    run = _launched_training(tiny_setup, tmp_path / "run", config_file)
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-4" / "global_step4"
    assert sorted(p.name for p in checkpoint.glob("*model_states.pt")) == model_states
    assert len(run["losses"]) == len(ddp_losses) == 4
    np.testing.assert_allclose(run["losses"], ddp_losses, rtol=1e-2)
    assert len(run["delivered"]) == 1 and run["delivered"][0][0] == run["delivered"][0][1]
