"""
Several processes on the CPU (gloo): train.py under `torchrun --nproc_per_node 2` (two processes really train, on
disjoint data; they report the score their saved folder delivers, as one process does), and the model's scoring
and gradients on two ranks.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_processor, tone
from test_train import REPO, tiny_setup, train_command  # noqa: F401 (tiny_setup: the module's fixture)

sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, function, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        function(rank, world, *args)
        # Every rank's collectives done before any tears the group down: a rank that left first made the other's gloo
        # threads end with "terminate called without an active exception" (SIGABRT), now and then in a full run.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # A rank that passed leaves without the interpreter's teardown: gloo's threads, torn down there, still ended a
    # passing rank with "terminate called without an active exception" (SIGABRT) in 1 of 3 full runs after the barrier.
    os._exit(0)


def run_ranks(function, *args, world: int = 2) -> None:
    """`function(rank, world, *args)` in `world` processes joined in a gloo process group (the CPU's backend)."""
    mp.spawn(_rank_main, args=(world, free_port(), function, args), nprocs=world, join=True)


def torchrun(command: list[str], cwd, env: dict) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command[1:]]
    result = subprocess.run(launch, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_torchrun_two_processes_train_on_disjoint_shares_and_save_once(tiny_setup, tmp_path):
    from training.trainer import RECORD_CLIPS_ENV

    output = tmp_path / "ddp"
    # 16 training clips (speakers 1-2), 4 per process and step: one epoch is 2 steps of 2 x 4 clips.
    command = train_command(tiny_setup, output, "--num_train_epochs", "1", "--save_strategy", "epoch",
                            "--eval_strategy", "epoch")
    env = {**os.environ, "OMP_NUM_THREADS": "1", RECORD_CLIPS_ENV: "1"}
    result = torchrun(command, tmp_path, env)
    assert "Process 0 of 2." in result.stderr and "Process 1 of 2." in result.stderr

    records = {}
    for rank in (0, 1):
        lines = (output / "checkpoints" / "training_clips" / f"rank{rank}.jsonl").read_text().splitlines()
        records[rank] = [json.loads(line) for line in lines]
        assert {(r["world_size"], r["rank"], r["epoch"]) for r in records[rank]} == {(2, rank, 0)}
    shares = {rank: [r["index"] for r in rows] for rank, rows in records.items()}
    assert len(shares[0]) == len(shares[1]) == 8
    assert not set(shares[0]) & set(shares[1])  # each clip was read by one process only
    assert sorted(shares[0] + shares[1]) == list(range(16))
    assert all("train row" in r["clip"] for rows in records.values() for r in rows)

    state = json.loads((output / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 16 clips / (2 processes x 4): the processes shared each step
    assert (output / "model.safetensors").exists() and (output / "test_report.json").exists()
    assert result.stderr.count("The saved folder through the pipeline") == 1  # the end-of-run check: rank 0 only
    # A fresh encoder cache: the first process encodes the 16 clips and their 16 speed copies, the other reads them.
    assert result.stderr.count("Encoded 16 clips") == 2


# How far the test UA of a 2-process run may lie from a 1-process run with the same flags: the two do not train
# alike (each step averages 2 x 4 clips instead of 4, and the processes draw their own augmented copies), so this is
# seed noise, here one of the 8 test clips (2 of the 4 classes' 2 clips each: 0.125 UA apiece).
TWO_PROCESS_UA_TOLERANCE = 0.25


def test_two_processes_report_what_their_folder_delivers_and_match_one_process(tiny_setup, tmp_path):
    """
    `torchrun --nproc_per_node 2 train.py ... --max_steps 4` reports the test UA that its saved folder gives through
    the pipeline (exactly: the report scores the clips in the pipeline's batches), as one process does; and the two
    runs' test UA agree within `TWO_PROCESS_UA_TOLERANCE`.
    """
    steps = ["--mapper_type", "qpmapper", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    result = subprocess.run(train_command(tiny_setup, one, *steps), cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    torchrun(train_command(tiny_setup, two, *steps), tmp_path, env)
    results = {name: json.loads((folder / "all_results.json").read_text()) for name, folder in
               (("one", one), ("two", two))}
    for name, metrics in results.items():
        assert round(metrics["ua"], 4) == metrics["delivered_ua"], (name, metrics)
        report = json.loads(((one if name == "one" else two) / "test_report.json").read_text())
        assert report["ua"] == pytest.approx(metrics["ua"])  # written once, by the first process
    assert abs(results["two"]["ua"] - results["one"]["ua"]) <= TWO_PROCESS_UA_TOLERANCE, results


def test_two_processes_train_every_probe_fold_and_report_what_their_folder_delivers(tiny_setup, tmp_path):
    """
    Cross-fitting (`--departure_folds`, the probe mapper without validation speakers) under `torchrun`: each further
    fold's LLM is trained on both processes without that fold's speakers, all training speakers' clips choose the mix
    weight, and the run reports the test UA its saved folder delivers.
    """
    from training.trainer import RECORD_CLIPS_ENV

    output = tmp_path / "ddp"
    command = train_command(tiny_setup, output, "--mapper_type", "probe", "--probe_c", "1", "--max_steps", "2",
                            "--save_steps", "2", "--eval_steps", "2",
                            data=["--data_dir", str(tiny_setup / "corpus"), "--test_speakers", "4"])
    torchrun(command, tmp_path, {**os.environ, "OMP_NUM_THREADS": "1", RECORD_CLIPS_ENV: "1"})
    metrics = json.loads((output / "all_results.json").read_text())
    assert round(metrics["ua"], 4) == metrics["delivered_ua"], metrics
    assert metrics["held_out_clips"] == 24 and "3 folds in turn" in metrics["held_out"]
    folds = metrics["held_out"][metrics["held_out"].index("(") + 1:-1].split(" | ")
    for fold, folder in enumerate([output / "checkpoints", *(output / "checkpoints" / f"fold_{k}" for k in (1, 2))]):
        for rank in (0, 1):
            read = [json.loads(line)["clip"] for line in
                    (folder / "training_clips" / f"rank{rank}.jsonl").read_text().splitlines()]
            assert read and not any(folds[fold] in clip for clip in read), (fold, rank, read[:3])


def _score_on_ranks(rank: int, world: int, out: str) -> None:
    from accelerate import PartialState

    from training.evaluation import predict_as_delivered

    processor, config = tiny_processor()
    torch.manual_seed(0)
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    model = EmoSLLMForSpeechEmotionRecognition(config).eval()
    model.cast_language_model(torch.bfloat16)  # as a bf16 LLM is loaded and scored: its results depend on the batch
    model.merge_lora()
    scores = predict_as_delivered(model, processor, _clips(), PartialState())
    np.save(f"{out}/rank{rank}.npy", scores["logits"])


def _clips() -> list[dict]:
    # 9 clips, the last the shortest: the pipeline's batches of 8 are [0..7] and [8]; a distributed sampler would
    # complete the last batch with repeated clips, so clip 8 would be scored beside 7 others, not alone.
    return [{"audio": tone(0.5 + 0.23 * (8 - i), 150 + 97 * i, seed=i), "label": "happy", "transcript": None,
             "text_features": {}} for i in range(9)]


def test_scores_on_two_ranks_are_the_pipelines(tmp_path):
    """
    Each of two ranks gets every clip's class scores exactly as the pipeline (batch_size 8, one process) computes them
    with the same bf16 LLM, though a clip's scores depend on the clips batched with it (checked here, so that the
    test can fail): the report of a 2-process run is the saved folder's score by construction.
    """
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from pipeline_emosllm import EmoSLLMAudioClassificationPipeline
    from training.evaluation import DELIVERED_BATCH_SIZE, predict_as_delivered

    run_ranks(_score_on_ranks, str(tmp_path))
    processor, config = tiny_processor()
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()
    model.cast_language_model(torch.bfloat16)
    model.merge_lora()
    clips = _clips()
    classifier = EmoSLLMAudioClassificationPipeline(model=model, processor=processor, detect_speech=False)
    outputs = classifier([c["audio"] for c in clips], top_k=len(config.labels), segment_seconds=None,
                         batch_size=DELIVERED_BATCH_SIZE)
    labels = config.labels
    delivered = np.array([[{o["label"]: o["score"] for o in out}[label] for label in labels] for out in outputs])
    for rank in (0, 1):
        scores = np.load(tmp_path / f"rank{rank}.npy")
        probabilities = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
        np.testing.assert_allclose(probabilities, delivered, rtol=0, atol=1e-6)
    # The test has teeth: clip 8 scored in a batch of 8 (as a padded distributed batch would) scores otherwise.
    completed = predict_as_delivered(model, processor, clips[1:])["logits"][-1]
    assert np.abs(np.exp(completed) - delivered[-1]).max() > 1e-5


def _loss_and_gradients(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same dropout masks (the mapper's transformer) in every run
    model.train()
    loss = model(**batch).loss
    loss.backward()
    gradients = {}
    for name, param in model.named_parameters():
        if param.grad is not None:  # FSDP2: a sharded DTensor; gathered whole (a collective: every rank, same order)
            grad = param.grad
            gradients[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
    return loss.detach(), gradients


def _tiny_model_and_batch():
    from conftest import LABELS

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    processor, config = tiny_processor()
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config)
    audios = [tone(s, 150 * (i + 1), seed=i) for i, s in enumerate((0.7, 1.9, 3.1))]
    return model, processor(audios, labels=LABELS[:3])


def _fsdp2_step(rank: int, world: int, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, batch = _tiny_model_and_batch()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.language_model.model.layers:  # as accelerate's fsdp_version 2 wraps a transformer
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert model.shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["lm_labels"]) == 0
    loss, gradients = _loss_and_gradients(model, batch)  # every rank the same batch: FSDP averages equal gradients
    model.eval()
    with torch.no_grad():  # at inference the head is shared (and kept) under FSDP too: a forward pass only
        assert model.shared_prefix_length(batch["input_ids"], batch["attention_mask"]) > 0
        logits = [model(**batch).logits for _ in range(2)]  # the second call reads the kept head
    if rank == 0:
        torch.save({"loss": loss, "gradients": gradients, "logits": logits}, f"{out}/fsdp2.pt")


def test_fsdp2_on_two_ranks_gives_the_loss_and_gradients_of_one_process(tmp_path):
    """
    torch's FSDP2 (`fully_shard`: each LLM decoder layer, then the whole model) on two gloo ranks trains the model:
    the shared prompt-head pass is off while FSDP shards the LLM (its LoRA key/value weights would reach backward
    only through the head's key/value cache, which FSDP does not re-gather), and the loss and every gradient equal one
    process's (which shares the head) within float32 rounding: rtol 1e-4, atol 1e-6 (as for gradient checkpointing).
    At inference the sharded model shares and keeps the head as one process does, with its class scores (1e-5).
    """
    run_ranks(_fsdp2_step, str(tmp_path))
    sharded = torch.load(tmp_path / "fsdp2.pt")
    model, batch = _tiny_model_and_batch()
    assert model.shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["lm_labels"]) > 0
    loss, gradients = _loss_and_gradients(model, batch)
    torch.testing.assert_close(sharded["loss"], loss, rtol=1e-5, atol=1e-6)
    assert sharded["gradients"].keys() == gradients.keys() and any("lora_" in n for n in gradients)
    for name, gradient in gradients.items():
        torch.testing.assert_close(sharded["gradients"][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    for sharded_logits in sharded["logits"]:
        torch.testing.assert_close(sharded_logits, logits, rtol=1e-5, atol=1e-5)


def _fsdp_loaded_model(root: str):
    """The processor and `from_backbones` model of the tiny backbones in `root` (probe mapper, LoRA)."""
    from conftest import LABELS, TINY_DEFAULTS, TINY_LORA, tiny_mapper_config

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    processor, config = EmoSLLMProcessor.from_backbones(f"{root}/encoder", f"{root}/llm", labels=LABELS,
                                                mapper_config=tiny_mapper_config("probe"), **TINY_DEFAULTS)
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, f"{root}/encoder", f"{root}/llm",
                                                              lora_config=TINY_LORA)
    return processor, model


def _fitted_on_cache(model, cache, clips: list[dict]) -> torch.Tensor:
    """What train.py does before FSDP prepares the model: feature statistics and the probe's input from the encoder
    cache (then a probe fit: `fit_random_probe`). Returns the probe's input statistics `(clips, 2 * width)`."""
    from conftest import fit_random_probe

    from training.encoder_cache import cached_states, padded_states

    model.audio_encoder.set_feature_statistics(cached_states(clip) for clip in clips)
    fit_random_probe(model)
    lengths = torch.tensor([len(clip["audio"]) for clip in clips])
    with torch.no_grad():
        return model.pooled_audio_statistics({"audio_lengths": lengths, "encoder_layer_states": padded_states(clips)})


def _build_on_ranks_as_fsdp_loads(rank: int, world: int, root: str, out: str) -> None:
    """`from_backbones` under Accelerate's FSDP with `fsdp_cpu_ram_efficient_loading`, train.py's steps before FSDP
    (the encoder cache, filled by rank 0 first; the probe's input from it), then what Accelerate's
    `fsdp2_prepare_model` does: rank 0's weights kept, the model sharded (FSDP2) and rank 0's full state broadcast
    into the shards (torch's `set_model_state_dict`); then each rank scores a batch."""
    from conftest import clips
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from training.encoder_cache import EncoderStateCache

    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    processor, model = _fsdp_loaded_model(root)
    on_meta = {name for name, param in model.named_parameters() if param.is_meta}
    cache = EncoderStateCache(model, processor, f"{out}/cache")  # one folder, keyed on rank 0's encoder
    audio = [{"audio": samples} for samples in clips()]
    if rank != 0:
        with pytest.raises(RuntimeError, match="holds no encoder weights"):
            cache.fill(audio)  # before rank 0 has filled it
    dist.barrier()
    if rank == 0:
        cache.fill(audio)
    dist.barrier()
    cache.fill(audio)
    statistics = _fitted_on_cache(model, cache, audio)
    persistent = set(model.state_dict())
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers() if name not in persistent}
    full_state = model.state_dict() if rank == 0 else {}
    model = model.to("meta")
    model.tie_weights()  # as Accelerate re-ties them after the move to the meta device
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.language_model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():
        for name, buffer in buffers.items():  # as Accelerate keeps the buffers that are not broadcast (rotary tables)
            model.get_buffer(name).copy_(buffer)
        logits = model.eval()(**processor(clips())).logits
    torch.save({"logits": logits, "on_meta": sorted(on_meta), "statistics": statistics, "cache": str(cache.root)},
               f"{out}/rank{rank}.pt")


def test_fsdp_ranks_after_the_first_build_empty_and_get_the_first_ranks_weights(tmp_path):
    """
    Under FSDP with `fsdp_cpu_ram_efficient_loading`, ranks other than 0 build the backbones and LoRA without weights
    (on the meta device: no copy of the backbones in host memory), read rank 0's encoder cache (refusing to encode
    without an encoder) and fit the probe on the same input as rank 0; once FSDP2 has broadcast rank 0's weights, both
    score a batch as one process with rank 0's model does (rtol 1e-5).
    """
    from conftest import clips, save_tiny_backbones

    from training.encoder_cache import EncoderStateCache

    save_tiny_backbones(tmp_path / "backbones")
    run_ranks(_build_on_ranks_as_fsdp_loads, str(tmp_path / "backbones"), str(tmp_path))
    processor, model = _fsdp_loaded_model(str(tmp_path / "backbones"))
    audio = [{"audio": samples} for samples in clips()]
    cache = EncoderStateCache(model, processor, tmp_path / "cache")
    cache.fill(audio)
    statistics = _fitted_on_cache(model, cache, audio)
    with torch.no_grad():
        expected = model.eval()(**processor(clips())).logits
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    backbones_and_lora = {name for name, _ in model.named_parameters()
                          if name.startswith(("audio_encoder.encoder.", "language_model."))}
    assert ranks[0]["on_meta"] == [] and ranks[1]["on_meta"] == sorted(backbones_and_lora)
    assert ranks[0]["cache"] == ranks[1]["cache"] == str(cache.root)
    for rank in ranks:
        torch.testing.assert_close(rank["statistics"], statistics, rtol=0, atol=0)
        torch.testing.assert_close(rank["logits"], expected, rtol=1e-5, atol=1e-6)


ACCELERATE_CONFIGS = REPO / "configs" / "accelerate"
PRINT_STATE = """
import json, os
from accelerate import PartialState
state = PartialState(cpu=True)  # as train.py's Trainer on a machine without GPUs (use_cpu)
out = {"rank": state.process_index, "world": state.num_processes, "mixed": os.environ.get("ACCELERATE_MIXED_PRECISION")}
if os.environ.get("ACCELERATE_USE_FSDP") == "true":
    from accelerate.utils import FullyShardedDataParallelPlugin
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's environment, as the Trainer's Accelerator builds it
    out.update(fsdp_version=plugin.fsdp_version, wrap=plugin.transformer_cls_names_to_wrap)
with open(f"state{state.process_index}.json", "w") as file:  # a file per process: their stdout lines interleave
    json.dump(out, file)
"""


def test_shipped_accelerate_configs_load_with_accelerates_own_loader():
    """
    configs/accelerate/*.yaml: accelerate's config loader reads each (it refuses unknown top-level keys), as asked,
    and every FSDP/DeepSpeed key is one `accelerate launch` takes (nested keys are not checked by the loader).
    """
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    launch_options = set(vars(launch_command_parser().parse_args(["train.py"])))

    expected = {"ddp.yaml": (DistributedType.MULTI_GPU, {}, {}),
                "fsdp2.yaml": (DistributedType.FSDP, {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                                       "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}, {}),
                "deepspeed_zero2_bf16.yaml": (DistributedType.DEEPSPEED, {}, {"zero_stage": 2}),
                "deepspeed_zero3_bf16.yaml": (DistributedType.DEEPSPEED, {}, {"zero_stage": 3, "zero3_init_flag": True})}
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(expected)
    for name, (distributed_type, fsdp, deepspeed) in expected.items():
        config = load_config_from_file(str(ACCELERATE_CONFIGS / name))
        assert config.distributed_type == distributed_type and config.mixed_precision == "bf16", name
        assert fsdp.items() <= config.fsdp_config.items() and deepspeed.items() <= config.deepspeed_config.items(), name
        assert not config.use_cpu and config.num_processes == 2, name
        assert {*config.fsdp_config, *config.deepspeed_config} <= launch_options, name


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp2.yaml"])
def test_accelerate_launch_with_the_shipped_configs(name, tmp_path):
    """
    `accelerate launch --config_file configs/accelerate/<name>`: ddp.yaml starts 2 processes (on this CPU: gloo);
    fsdp2.yaml's environment builds accelerate's FSDP plugin as FSDP2 wrapping the LLM's decoder layers.
    """
    script = tmp_path / "state.py"
    script.write_text(PRINT_STATE)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / name),
              str(script)]
    result = subprocess.run(launch, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    states = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("state*.json"))]
    assert len(states) == 2 and all(s["mixed"] == "bf16" for s in states)
    if name == "ddp.yaml":
        assert sorted((s["rank"], s["world"]) for s in states) == [(0, 2), (1, 2)]
    else:
        assert all(s["fsdp_version"] == 2 and s["wrap"] == ["LlamaDecoderLayer"] for s in states)


def _bf16_weights_step(mapper: str) -> torch.Tensor:
    from conftest import LABELS

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    processor, config = tiny_processor(mapper=mapper, audio_loss_weight=1.0)
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).train()
    for param in model.parameters():  # as DeepSpeed's bf16 mode: the weights in bf16, the buffers as they were
        param.data = param.data.to(torch.bfloat16)
    audios = [tone(s, 150 * (i + 1), seed=i) for i, s in enumerate((0.7, 1.9, 3.1))]
    batch = dict(processor(audios, labels=LABELS[:3]))
    batch["input_features"] = batch["input_features"].to(torch.bfloat16)
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.audio_classifier.weight.grad is not None and model.audio_classifier.weight.grad.dtype == torch.bfloat16
    return loss.detach()


@pytest.mark.parametrize("mapper", ["qpmapper", "probe"])
def test_a_model_with_bf16_weights_trains(mapper):
    """
    DeepSpeed's bf16 mode casts every weight to bf16: the float32 parts of the forward (the audio classifier on the
    float32 mean audio embedding, the fitted probe, the frames standardized by float32 statistics buffers) read them
    in their own dtype instead of failing with `mat1 and mat2 must have the same dtype`.
    """
    _bf16_weights_step(mapper)


def test_multiprocess_bench_passes_what_follows_the_separator_to_train_py():
    import importlib.util as util

    spec = util.spec_from_file_location("multiprocess_training", REPO / "bench" / "multiprocess_training.py")
    bench = util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    parse_args = bench.parse_args
    args, flags = parse_args(["--processes", "1,4", "--threads", "2", "--", "--data_dir", "x", "--max_steps", "3"])
    assert (args.processes, args.threads, flags) == ("1,4", 2, ["--data_dir", "x", "--max_steps", "3"])
