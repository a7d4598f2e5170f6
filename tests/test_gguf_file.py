"""GGUF headers are validated before llama.cpp sees the file: hostile or broken files get a clear error."""

from __future__ import annotations

import struct

import pytest

from backends.base import ModelLoadError
from backends.gguf_file import read_header


def _header(version=3, tensors=0, kvs=None, extra=b""):
    kvs = kvs or []
    out = b"GGUF" + struct.pack("<IQQ", version, tensors, len(kvs))
    for key, blob in kvs:
        out += struct.pack("<Q", len(key)) + key.encode() + blob
    return out + extra


def _string_value(text: str) -> bytes:
    return struct.pack("<I", 8) + struct.pack("<Q", len(text.encode())) + text.encode()


def test_reads_the_embedded_model(gemma_path):
    header = read_header(gemma_path)
    assert header.architecture == "gemma3"
    assert header.quantization == "Q4_K_M"
    assert header.context_length == 32768
    assert header.chat_template is None
    assert header.get("general.name") == "Gemma 3 270m"
    assert header.data_end <= gemma_path.stat().st_size
    assert isinstance(header.get("tokenizer.ggml.tokens"), str)  # the 262k-entry vocabulary is skipped, not kept


def test_minimal_valid_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(_header(kvs=[("general.architecture", _string_value("llama"))]))
    assert read_header(path).architecture == "llama"


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "magic"),
        (b"GGML" + b"\0" * 20, "magic"),
        (b"\x00\x01\x02" * 1000, "magic"),
        (_header(version=1), "version 1"),
        (_header(version=99), "version 99"),
        (_header(tensors=2**62), "claims"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40), "claims"),
        (_header(kvs=[("k", struct.pack("<IQ", 8, 2**60))]), "string claims"),
        (_header(kvs=[("k", struct.pack("<IIQ", 9, 4, 2**60))]), "array claims"),
        (_header(kvs=[("k", struct.pack("<I", 77))]), "unknown value type"),
        (_header(kvs=[("k", struct.pack("<II", 9, 9) + struct.pack("<Q", 1))]), "nested"),
        (_header(kvs=[("general.name", _string_value("x"))])[:-1], "ends early"),
    ],
)
def test_hostile_or_broken_headers_are_refused(tmp_path, blob, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(ModelLoadError, match=message):
        read_header(path)


def test_tensor_data_past_the_end_is_refused(tmp_path):
    name = b"w"
    tensor = struct.pack("<Q", len(name)) + name + struct.pack("<I", 2) + struct.pack("<QQ", 1024, 1024)
    tensor += struct.pack("<IQ", 0, 0)  # F32 at offset 0: needs 4 MiB of data
    path = tmp_path / "short.gguf"
    path.write_bytes(_header(tensors=1, extra=tensor) + b"\0" * 1000)
    with pytest.raises(ModelLoadError, match="truncated"):
        read_header(path)


def test_truncated_real_model_is_refused(tmp_path, gemma_path):
    path = tmp_path / "half.gguf"
    with gemma_path.open("rb") as f:
        path.write_bytes(f.read(gemma_path.stat().st_size // 2))
    with pytest.raises(ModelLoadError, match="truncated"):
        read_header(path)
