"""A bounded reader for GGUF headers: validate before llama.cpp sees the file.

llama.cpp trusts counts and lengths in the header; a hostile or truncated
file can make it allocate absurd amounts or read past the end. This reader
checks every count and length against the bytes that are actually there,
checks that the tensor data fits in the file, and returns the metadata (small
values only; big arrays such as the vocabulary are skipped, not kept).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from backends.base import ModelLoadError

MAGIC = b"GGUF"
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
MAX_STRING = 64 * 1024 * 1024  # a chat template is a few KB; 64 MB is generous
MAX_DIMS = 8
KEEP_ARRAY_ITEMS = 64  # arrays longer than this are skipped, not returned
KEEP_NUMBER_ITEMS = 1024  # ... except arrays of numbers up to this long (per-layer hyper-parameters)
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS: it aborts (GGML_ASSERT) on a block_count outside 1..512
MAX_EXPERTS = 512  # LLAMA_MAX_EXPERTS
MAX_CONTEXT = 2**31 - 1  # read as uint32, used as int32
MAX_WIDTH = 2**24  # embedding/feed-forward widths and head sizes: far above any real model
MAX_HEADS = 2**16
MAX_ALIGNMENT = 2**20
# hyper-parameters llama.cpp reads and asserts on: key (after "{arch}.") -> (lowest, highest, per-layer array allowed)
HPARAMS: dict[str, tuple[int, int, bool]] = {
    "block_count": (1, MAX_LAYERS, False),
    "context_length": (1, MAX_CONTEXT, False),
    "embedding_length": (1, MAX_WIDTH, False),
    "feed_forward_length": (0, MAX_WIDTH, True),
    "attention.head_count": (0, MAX_HEADS, True),
    "attention.head_count_kv": (0, MAX_HEADS, True),
    "attention.key_length": (0, MAX_WIDTH, False),
    "attention.value_length": (0, MAX_WIDTH, False),
    "rope.dimension_count": (0, MAX_WIDTH, False),
    "expert_count": (0, MAX_EXPERTS, False),
    "expert_used_count": (0, MAX_EXPERTS, False),
}

# value type id -> struct format (fixed-size scalars)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml tensor type id -> (block size in elements, bytes per block)
_GGML_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}

# general.file_type -> the name people know (llama.cpp's LLAMA_FTYPE_*)
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


@dataclass
class GGUFHeader:
    version: int
    tensor_count: int
    metadata: dict[str, object] = field(default_factory=dict)
    parameter_count: int = 0
    data_end: int = 0
    tensor_bytes: int = 0  # the weights' bytes, as the tensor types say (bits/weight = 8 * this / parameter_count)
    tensor_types: dict[int, int] = field(default_factory=dict)  # ggml type id -> elements stored in that type

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default: object = None) -> object:
        """A metadata value; ``{arch}`` in the key is replaced by the architecture."""
        return self.metadata.get(key.replace("{arch}", self.architecture), default)

    @property
    def context_length(self) -> int:
        return int(self.get("{arch}.context_length", 0) or 0)

    @property
    def quantization(self) -> str:
        ftype = self.get("general.file_type")
        return FILE_TYPES.get(ftype, f"type {ftype}") if isinstance(ftype, int) else ""

    @property
    def chat_template(self) -> str | None:
        value = self.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None


class _Reader:
    def __init__(self, f: BinaryIO, size: int, name: str) -> None:
        self.f, self.size, self.name = f, size, name

    def fail(self, why: str) -> ModelLoadError:
        return ModelLoadError(f"{self.name} is not a valid GGUF file: {why}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise self.fail("it ends early (truncated or corrupt)")
        return self.f.read(n)

    def unpack(self, fmt: str) -> object:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > MAX_STRING:
            raise self.fail(f"a string claims {n} bytes")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        if n > MAX_STRING or self.f.tell() + n > self.size:
            raise self.fail(f"a string claims {n} bytes, more than the file holds (truncated or corrupt)")
        self.f.seek(n, 1)

    def value(self, vtype: int) -> object:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.unpack("<I"), self.unpack("<Q")
            if itype == _ARRAY:
                raise self.fail("nested arrays are not supported")
            item_size = struct.calcsize(_SCALARS[itype]) if itype in _SCALARS else 8
            if itype not in _SCALARS and itype != _STRING:
                raise self.fail(f"unknown array item type {itype}")
            if count * item_size > self.size - self.f.tell():
                raise self.fail(f"an array claims {count} items, more than the file holds (truncated or corrupt)")
            if count <= KEEP_ARRAY_ITEMS or (itype in _SCALARS and count <= KEEP_NUMBER_ITEMS):
                return [self.value(itype) for _ in range(count)]
            if itype == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                self.f.seek(count * item_size, 1)
            return f"<array of {count}>"
        raise self.fail(f"unknown value type {vtype}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_hparams(header: GGUFHeader, fail) -> None:
    """Refuse (``fail(why)`` gives the error to raise) hyper-parameters llama.cpp would abort on, or that our
    own arithmetic cannot use: wrong types (a float ``inf``, an array, a string), out-of-range values, a
    per-layer array whose length is not the layer count, more experts used than exist, a bad alignment."""
    alignment = header.metadata.get("general.alignment", 32)
    if not _is_int(alignment) or not 1 <= alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
        raise fail(f"general.alignment must be a power of two up to {MAX_ALIGNMENT}, not {alignment!r:.40}")
    arch = header.architecture
    if not arch:
        return
    layers = header.metadata.get(f"{arch}.block_count")
    for key, (low, high, per_layer) in HPARAMS.items():
        name = f"{arch}.{key}"
        if name not in header.metadata:
            continue
        value = header.metadata[name]
        values = value if per_layer and isinstance(value, list) else [value]
        if per_layer and isinstance(value, list) and _is_int(layers) and len(value) != layers:
            raise fail(f"{name} has {len(value)} per-layer values for {layers} layers")
        for v in values:
            if not _is_int(v):
                raise fail(f"{name} must be a whole number{' (or one per layer)' if per_layer else ''}, not {v!r:.40}")
            if not low <= v <= high:
                raise fail(f"{name} = {v} is out of range ({low}..{high})")
    experts, used = header.metadata.get(f"{arch}.expert_count", 0), header.metadata.get(f"{arch}.expert_used_count", 0)
    if used > experts:
        raise fail(f"{arch}.expert_used_count = {used} is more than {arch}.expert_count = {experts}")


def read_header(path: Path) -> GGUFHeader:
    """Parse and validate ``path``'s GGUF header; raise ModelLoadError if anything is off."""
    size = path.stat().st_size
    with path.open("rb") as f:
        r = _Reader(f, size, path.name)
        if size < 4 or r.take(4) != MAGIC:
            raise r.fail("the file does not start with the GGUF magic bytes")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise r.fail(f"unsupported GGUF version {version}")
        tensor_count, kv_count = r.unpack("<Q"), r.unpack("<Q")
        if tensor_count > MAX_TENSORS or kv_count > MAX_KV:
            raise r.fail(f"the header claims {tensor_count} tensors and {kv_count} metadata keys")
        header = GGUFHeader(version, tensor_count)
        for _ in range(kv_count):
            key = r.string()
            header.metadata[key] = r.value(r.unpack("<I"))
        tensors = []
        for _ in range(tensor_count):
            r.skip_string()
            n_dims = r.unpack("<I")
            if n_dims > MAX_DIMS:
                raise r.fail(f"a tensor claims {n_dims} dimensions")
            dims = [r.unpack("<Q") for _ in range(n_dims)]
            ttype, offset = r.unpack("<I"), r.unpack("<Q")
            tensors.append((dims, ttype, offset))
        check_hparams(header, r.fail)
        alignment = header.metadata.get("general.alignment", 32)
        data_start = -(-f.tell() // alignment) * alignment
    for dims, ttype, offset in tensors:
        if ttype not in _GGML_SIZES:
            raise r.fail(f"unknown tensor type {ttype}")
        block, block_bytes = _GGML_SIZES[ttype]
        elements = 1
        for d in dims:
            elements *= d
        header.parameter_count += elements
        header.tensor_bytes += elements // block * block_bytes
        header.tensor_types[ttype] = header.tensor_types.get(ttype, 0) + elements
        end = data_start + offset + elements // block * block_bytes
        header.data_end = max(header.data_end, end)
    if header.data_end > size:
        raise r.fail(f"tensor data needs {header.data_end} bytes but the file has {size} (truncated download?)")
    return header
