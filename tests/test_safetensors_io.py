"""`modeling_ross/safetensors_io.py`: the one streaming reader / shard writer of conversion, export and publishing."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_ross.safetensors_io import (
    OutputTensor,
    SafetensorsError,
    read_headers,
    weight_files,
    write_shards,
)


def _source(tmp_path):
    tensors = {
        "a": torch.randn(100, 10),  # 4000 bytes
        "b": torch.arange(12, dtype=torch.int64).reshape(3, 4),  # 96 bytes
        "c": torch.randn(30, 10).to(torch.bfloat16),  # 600 bytes
        "big": torch.randn(2000),  # 8000 bytes: larger than the shard limit below
    }
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return tensors


def test_headers_and_files(tmp_path):
    tensors = _source(tmp_path)
    files = weight_files(tmp_path)
    assert files == [tmp_path / "model.safetensors"]
    headers = read_headers(files)
    assert {k: (v.shape, v.dtype) for k, v in headers.items()} == {
        k: (tuple(t.shape), t.dtype) for k, t in tensors.items()
    }
    assert torch.equal(headers["c"].load(), tensors["c"])
    (tmp_path / "empty").mkdir()
    torch.save({}, tmp_path / "empty" / "pytorch_model.bin")
    with pytest.raises(SafetensorsError, match="no safetensors weights.*pickle weights \\['pytorch_model.bin'\\]"):
        weight_files(tmp_path / "empty")


def test_write_shards_plans_bounded_shards_and_an_index(tmp_path):
    tensors = _source(tmp_path)
    headers = read_headers(weight_files(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    planned = [OutputTensor(f"x.{k}", info, info.shape, info.dtype) for k, info in headers.items()]
    planned[0] = OutputTensor("x.a", headers["a"], (100, 10), torch.float16, lambda t: t.half())
    names = write_shards(out, planned, max_shard_size=5000)
    assert names == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]  # a+b+c, then big alone
    index = json.loads((out / "model.safetensors.index.json").read_text())
    written = {}
    for name in names:
        shard = load_file(str(out / name))
        size = sum(t.numel() * t.element_size() for t in shard.values())
        assert size <= 5000 or len(shard) == 1, (name, size)
        assert all(index["weight_map"][k] == name for k in shard)
        written.update(shard)
    assert index["metadata"]["total_size"] == 2000 + 96 + 600 + 8000
    assert torch.equal(written["x.a"], tensors["a"].half()) and torch.equal(written["x.big"], tensors["big"])
    assert written["x.c"].dtype == torch.bfloat16 and torch.equal(written["x.b"], tensors["b"])

    single = tmp_path / "single"
    single.mkdir()
    assert write_shards(single, planned, max_shard_size="1GB") == ["model.safetensors"]
    assert not (single / "model.safetensors.index.json").exists()

    wrong = [OutputTensor("y", headers["a"], (10, 100), torch.float32)]
    with pytest.raises(SafetensorsError, match="y: planned \\(10, 100\\)"):
        write_shards(tmp_path / "single", wrong)


def test_write_shards_shows_progress_over_tensors(tmp_path, capsys):
    _source(tmp_path)
    headers = read_headers(weight_files(tmp_path))
    planned = [OutputTensor(f"x.{k}", info, info.shape, info.dtype) for k, info in headers.items()]
    (tmp_path / "quiet").mkdir()
    write_shards(tmp_path / "quiet", planned)
    assert "tensor" not in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    write_shards(tmp_path / "out", planned, progress="converting tensors")
    err = capsys.readouterr().err
    assert "converting tensors" in err and f"{len(planned)}/{len(planned)}" in err
