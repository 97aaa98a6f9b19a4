"""train.py under `torchrun --nproc_per_node 2` on the CPU (gloo): two processes really train, on disjoint data."""

import json
import os
import subprocess
import sys

from test_train import REPO, tiny_setup, train_command  # noqa: F401 (tiny_setup: the module's fixture)

sys.path.insert(0, str(REPO))


def test_torchrun_two_processes_train_on_disjoint_shares_and_save_once(tiny_setup, tmp_path):
    from train import RECORD_CLIPS_ENV

    output = tmp_path / "ddp"
    # 16 training clips (speakers 1-2), 4 per process and step: one epoch is 2 steps of 2 x 4 clips.
    command = train_command(tiny_setup, output, "--num_train_epochs", "1", "--save_strategy", "epoch",
                            "--eval_strategy", "epoch")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", RECORD_CLIPS_ENV: "1"}
    result = subprocess.run(launch, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
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
