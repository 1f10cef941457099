"""Two torchrun agents on this machine acting as two nodes (``--nnodes 2``, one CPU process
each, c10d rendezvous on localhost, gloo): training, rank-0-only writes, a resume whose final
weights equal an uninterrupted two-node run, and the error when the nodes do not share --out.

The interrupted run recomputes activations (``model.recompute=blocks``) and the reference does
not: under DDP, too, recompute gives the plain path's gradients to the bit."""

from __future__ import annotations

import pytest

from _torchrun import (
    assert_same_weights,
    elastic_torchrun,
    free_port,
    run_nodes,
    train_args,
    weights,
)
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.training_state import list_checkpoints, load_training_state
from cmt_deeplab.model_dir import load_model_dir

#: Drop path on (per-rank global RNG streams) and a constant learning rate after a 1-step
#: warm-up, so that a 2-step run resumed to 4 steps follows the same schedule as a 4-step run.
SETTINGS = ("--batch-size", "4", "--save-every", "2", "--set",
            "model.overrides.drop_path_keep_prob=0.7", "--set", "schedule.warmup_steps=1",
            "--set", "schedule.power=0")


def _two_nodes(data, outs, steps, *extra):
    port = free_port()
    commands = [elastic_torchrun(train_args(data, out, "--steps", str(steps), *SETTINGS, *extra),
                                 1, nnodes=2, node_rank=node, port=port)
                for node, out in enumerate(outs)]
    return run_nodes(commands)


@pytest.mark.slow
def test_two_nodes_train_resume_and_match_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    # 10 images, 4 a step: the 4 steps cross an epoch boundary (2 steps an epoch).
    generate_synthetic_dataset(data, "train", num_images=10, size=40, seed=5)

    reference = tmp_path / "reference"
    results = _two_nodes(data, [reference, reference], 4)
    assert all(code == 0 for code, _ in results), results[0][1][-3000:] + results[1][1][-3000:]

    # Each node gets its own --out: only the node that holds rank 0 may write anything.
    outs = [tmp_path / "node0", tmp_path / "node1"]
    results = _two_nodes(data, outs, 2, "--set", "model.recompute=blocks")
    assert all(code == 0 for code, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
    written = [out for out in outs if out.exists()]
    assert len(written) == 1, f"both nodes wrote into their --out: {written}"
    run_dir = written[0]
    assert [step for step, _ in list_checkpoints(run_dir)] == [2]
    assert len(list(run_dir.glob("events.*"))) == 1
    _, path = list_checkpoints(run_dir)[-1]
    state = load_training_state(path, load_model_dir(path)[0])["state"]
    assert state["world_size"] == 2 and len(state["rng"]) == 2

    # Resuming with --out directories that are not shared: a clear error on both nodes.
    empty = tmp_path / "not_shared"
    results = _two_nodes(data, [run_dir, empty], 4, "--resume")
    for code, output in results:
        assert code != 0
        assert "different newest training states" in output
        assert "every node shares" in output

    # Resuming with the shared directory: the per-rank RNG and sampler positions come back,
    # and the weights end bit-identical to the uninterrupted run.
    results = _two_nodes(data, [run_dir, run_dir], 4, "--resume", "--set",
                         "model.recompute=blocks")
    assert all(code == 0 for code, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
    assert sum("resumed from" in output for _, output in results) == 1  # rank 0 reports
    assert_same_weights(weights(run_dir), weights(reference))
