"""Device names: one check shared by the trainer and the commands."""

from __future__ import annotations

import pytest
import torch

from cmt_deeplab.utils.device import resolve_device


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_name_names_the_option_and_value() -> None:
    with pytest.raises(ValueError, match=r"invalid run.device 'gpu0'"):
        resolve_device("gpu0", "run.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"--device=cuda:0: CUDA is not available"):
        resolve_device("cuda:0", "--device")
