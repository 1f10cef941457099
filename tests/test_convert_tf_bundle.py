"""The TF checkpoint reader on a checkpoint TensorFlow wrote (deeplab2's ``small`` MaX-DeepLab),
and its errors on damaged copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cmt_deeplab.convert.tf_bundle import CheckpointError, TFCheckpoint

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "deeplab2" / "small"
PREFIX = FIXTURE / "ckpt-0"
MEMORY = "encoder/memory_feature/.ATTRIBUTES/VARIABLE_VALUE"


def test_reads_every_variable_with_its_shape_and_checksum():
    checkpoint = TFCheckpoint(PREFIX)
    assert len(checkpoint) == 528 and checkpoint.num_shards == 1
    total = 0
    for name in checkpoint:
        value = checkpoint[name]
        assert value.shape == checkpoint.shape(name), name
        if value.dtype == np.float32:
            total += value.size
    assert total == 380_680  # deeplab2's count for the small variant (meta.json num_params_all)
    memory = checkpoint[MEMORY]
    assert memory.shape == (1, 32, 64) and memory.std() > 0.5  # trunc-normal(1.0) table
    assert checkpoint["global_step/.ATTRIBUTES/VARIABLE_VALUE"].dtype == np.int64
    graph = checkpoint["_CHECKPOINTABLE_OBJECT_GRAPH"]  # a string tensor: the object graph proto
    assert graph.shape == () and len(graph.item()) > 100_000


def _copy(tmp_path: Path) -> Path:
    for path in FIXTURE.glob("ckpt-0.*"):
        shutil.copyfile(path, tmp_path / path.name)
    return tmp_path / "ckpt-0"


def test_truncated_data_file_names_file_and_variable(tmp_path):
    prefix = _copy(tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    checkpoint = TFCheckpoint(prefix)  # the index alone is fine
    with pytest.raises(CheckpointError, match=r"data-00000-of-00001 is truncated: variable"):
        for name in checkpoint:
            checkpoint[name]


def test_corrupt_byte_fails_the_checksum(tmp_path):
    prefix = _copy(tmp_path)
    entry = TFCheckpoint(prefix).entries[MEMORY]
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch in variable 'encoder/memory_feature"):
        TFCheckpoint(prefix)[MEMORY]
    assert TFCheckpoint(prefix, verify=False)[MEMORY].shape == (1, 32, 64)


@pytest.mark.parametrize("keep", [20, 30_000])
def test_truncated_index_names_the_index(tmp_path, keep):
    prefix = _copy(tmp_path)
    index = Path(f"{prefix}.index")
    index.write_bytes(index.read_bytes()[:keep])
    with pytest.raises(CheckpointError, match=r"ckpt-0\.index"):
        TFCheckpoint(prefix)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint index not found"):
        TFCheckpoint(tmp_path / "nothing")
    prefix = _copy(tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError, match="data file not found"):
        TFCheckpoint(prefix)[MEMORY]


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.index").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index"):
        TFCheckpoint(tmp_path / "x")
