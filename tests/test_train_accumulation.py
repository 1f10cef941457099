"""Batch 8 as 2 processes x 2 accumulation steps x 2 images trains like 1 process x 8 images,
and a run saved by 2 processes resumes on 1 with the sampler re-sharded (the same images in the
same steps), both to float32 rounding.

What cannot agree is left out: training-mode BatchNorm normalises every micro-batch of every
process with that micro-batch's statistics (2 images here, 8 in one process), so these runs keep
BatchNorm on its running statistics; drop path, dropout, the loss's pixel sampling and the
random flips of the tiny model's recipe draw from per-process random streams, so they are off
(``_batch_independent_main.py``, the settings below). The mask-approximation loss averages over the matched masks of a micro-batch rather
than per image, so it is not additive over micro-batches either and is off as well.
"""

from __future__ import annotations

import sys

import pytest

from _torchrun import (
    BATCH_INDEPENDENT_MAIN,
    assert_close_weights,
    run,
    torchrun,
    train_args,
    weights,
)
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.demo.report import read_scalars

STEPS = 4
#: A constant learning rate: a 2-step run resumed to 4 steps has a 4-step run's schedule.
#: Adam's first steps are sign-like (m / sqrt(v) = +-1): a gradient component that is rounding
#: noise (a sum taken in another order) would become a full-size step of either sign. A large
#: epsilon makes the update proportional to the gradient, so rounding stays rounding.
SETTINGS = ("--batch-size", "8", "--save-every", "0", "--set", "run.log_every=1",
            "--lr", "0.05", "--set", "optimizer.eps=1",
            "--set", "model.overrides.drop_path_keep_prob=1.0", "--set", "loss.instance_sample_k=0",
            "--set", "loss.mask_approx_weight=0", "--set", "augmentation.flip_prob=0",
            "--set", "schedule.warmup_steps=0", "--set", "schedule.power=0")
#: float32 rounding of sums taken in another order, through 4 steps (relative, and absolute for
#: weights near zero, e.g. biases whose gradient is 0 up to rounding).
TOLERANCE = 1e-4
ABSOLUTE = 1e-6


def _single(data, out, *extra):
    return run([sys.executable, BATCH_INDEPENDENT_MAIN, *train_args(data, out, *SETTINGS, *extra)])


def _two_processes(data, out, *extra):
    return run(torchrun(train_args(data, out, *SETTINGS, *extra), 2, main=BATCH_INDEPENDENT_MAIN))


def _losses(run_dir):
    return [value for _, value in read_scalars(run_dir)["loss/loss"]]


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    """Data (24 images: 3 steps an epoch) and the 2 processes x 2 accumulation x 2 run."""
    root = tmp_path_factory.mktemp("accumulation")
    generate_synthetic_dataset(root / "data", "train", num_images=24, size=40, seed=2)
    result = _two_processes(root / "data", root / "two_by_two", "--steps", str(STEPS),
                            "--set", "run.accumulate=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_two_processes_with_accumulation_equal_one_process_with_the_whole_batch(two_by_two):
    result = _single(two_by_two / "data", two_by_two / "one_by_eight", "--steps", str(STEPS))
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _losses(two_by_two / "one_by_eight")
    got = _losses(two_by_two / "two_by_two")
    assert len(got) == len(expected) == STEPS
    for a, b in zip(got, expected, strict=True):
        assert abs(a - b) <= TOLERANCE * abs(b), (got, expected)
    assert_close_weights(weights(two_by_two / "two_by_two"), weights(two_by_two / "one_by_eight"),
                         TOLERANCE, ABSOLUTE)


@pytest.mark.slow
def test_resume_on_fewer_processes_continues_the_same_data_order(two_by_two):
    out = two_by_two / "two_then_one"
    first = _two_processes(two_by_two / "data", out, "--steps", "2", "--set", "run.accumulate=2")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _single(two_by_two / "data", out, "--steps", str(STEPS), "--set", "run.accumulate=2",
                     "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "the sampler is re-sharded" in second.stderr
    # Step 2 ends inside the first epoch: a resume that skipped to the next epoch (or started
    # it over) would train on other images and miss this by far.
    expected = _losses(two_by_two / "two_by_two")
    got = _losses(out)
    assert len(got) == STEPS
    for a, b in zip(got, expected, strict=True):
        assert abs(a - b) <= TOLERANCE * abs(b), (got, expected)
    assert_close_weights(weights(out), weights(two_by_two / "two_by_two"), TOLERANCE, ABSOLUTE)
