"""What a model file or folder says about itself (architecture, parameters, quantization, context, licence),
read from GGUF headers, config.json and safetensors headers, every read bounded. Nothing here loads weights."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGMLQuantizationType

from backends.base import ModelLoadError
from backends.gguf_file import GGUFHeader, read_header

# What a file or folder name may say about quantization; stripped to find the model it belongs to.
GGUF_QUANT_SUFFIX = re.compile(r"[-._](i?q\d\w*|f16|f32|bf16|fp16|fp32|mxfp4|tq\d_\d)$", re.IGNORECASE)
FOLDER_QUANT_SUFFIX = re.compile(r"[-._](gptq|awq|exl2|int4|int8|4bit|8bit)([-._].*)?$", re.IGNORECASE)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MAX_CONFIG_BYTES = 4 * 2**20  # a config.json is a few KB
MAX_SAFETENSORS_HEADER = 100 * 2**20  # the format's own limit
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip


@dataclass
class Facts:
    """What a model file says about itself: enough to choose it and to estimate its memory."""

    architecture: str = ""
    parameter_count: int | None = None
    quantization: str = ""
    bits_per_weight: float | None = None
    context_length: int = 0
    file_size: int = 0
    weights_bytes: int = 0
    chat_template: bool = False
    license: str = ""
    n_layers: int = 0
    n_kv_heads: int = 0
    key_length: int = 0
    value_length: int = 0
    metadata: dict[str, object] = field(default_factory=dict)  # general.* (GGUF) or config.json facts

    def kv_bytes_per_token(self, bytes_per_value: float = 2.0) -> int:
        """Keys and values of every layer for one token (an upper bound: sliding-window layers are counted
        as if they kept the whole context)."""
        return int(self.n_layers * self.n_kv_heads * (self.key_length + self.value_length) * bytes_per_value)


def read_facts(path: Path, kind: str) -> tuple[Facts | None, str, list[str]]:
    try:
        if kind == "gguf":
            facts = gguf_facts(read_header(path), path.stat().st_size)
            claimed = quantization_in_name(path.name)
            warnings = []
            if claimed and facts.quantization and claimed != facts.quantization.upper():
                warnings.append(f"the file name says {claimed} but the file is {facts.quantization}")
            return facts, "", warnings
        return folder_facts(path, kind)
    except (ModelLoadError, OSError, ValueError, TypeError, ArithmeticError) as exc:  # one bad file, never the list
        return None, str(exc), []


# -- GGUF --------------------------------------------------------------------------------------------------------
def gguf_facts(header: GGUFHeader, file_size: int) -> Facts:
    """Facts from a validated GGUF header."""
    n_heads = _first_int(header.get("{arch}.attention.head_count"))
    embedding = _first_int(header.get("{arch}.embedding_length"))
    head_dim = embedding // n_heads if n_heads else 0
    params = header.parameter_count or None
    bits = round(8 * header.tensor_bytes / params, 2) if params else None
    general = {k: v for k, v in header.metadata.items() if k.startswith("general.")}
    general["tensor types"] = {_ggml_type_name(t): n for t, n in sorted(header.tensor_types.items())}
    return Facts(
        architecture=header.architecture,
        parameter_count=params,
        quantization=header.quantization or _quant_from_bits(bits),
        bits_per_weight=bits,
        context_length=header.context_length,
        file_size=file_size,
        weights_bytes=header.tensor_bytes,
        chat_template=header.chat_template is not None,
        license=str(header.get("general.license", "") or ""),
        n_layers=_first_int(header.get("{arch}.block_count")),
        n_kv_heads=_max_int(header.get("{arch}.attention.head_count_kv")) or n_heads,
        key_length=_first_int(header.get("{arch}.attention.key_length")) or head_dim,
        value_length=_first_int(header.get("{arch}.attention.value_length")) or head_dim,
        metadata=general,
    )


def _ggml_type_name(type_id: int) -> str:
    """The ggml tensor type's name as the ``gguf`` package (llama.cpp's own Python package) spells it."""
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"


def _first_int(value: object) -> int:
    if isinstance(value, list):
        value = value[0] if value else 0
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _max_int(value: object) -> int:
    """Per-layer arrays (some architectures vary kv heads by layer): the largest, for an upper bound."""
    if isinstance(value, list):
        return max((_first_int(v) for v in value), default=0)
    return _first_int(value)


def _quant_from_bits(bits: float | None) -> str:
    return f"~{bits:.1f} bits/weight" if bits else ""


# -- Hugging Face and GPTQ folders ---------------------------------------------------------------------------------
def folder_facts(folder: Path, kind: str) -> tuple[Facts, str, list[str]]:
    """Facts from ``config.json``, the safetensors headers and the tokenizer config; no weights are read."""
    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{folder.name}/config.json is not a JSON object")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}

    def get(key: str, default=None):
        return config.get(key, text.get(key, default))

    warnings: list[str] = []
    weights = [f for f in sorted(folder.iterdir()) if f.suffix.lower() in WEIGHT_SUFFIXES and f.is_file()]
    safetensors = [f for f in weights if f.suffix.lower() == ".safetensors"]
    if not weights:
        raise ValueError(f"{folder.name} has a config.json but no weights (*.safetensors)")
    if not safetensors:
        warnings.append("only pickle weights (*.bin/*.pt): refused by default, they can run code when loaded")
    quant = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else {}
    if kind == "gptq" and not quant:
        quant = read_json(folder / "quantize_config.json", quiet=True) or {}
    gptq_bits = int(quant.get("bits", 0) or 0) if kind == "gptq" else 0
    params, weight_bytes, dtypes = 0, 0, {}
    for f in safetensors:
        p, b, d = _safetensors_counts(f, gptq_bits)
        params, weight_bytes = params + p, weight_bytes + b
        for k, n in d.items():
            dtypes[k] = dtypes.get(k, 0) + n
    if not safetensors:
        weight_bytes = sum(f.stat().st_size for f in weights)
    dtype = str(get("torch_dtype") or get("dtype") or (max(dtypes, key=dtypes.get) if dtypes else "")).upper()
    dtype = {"BFLOAT16": "BF16", "FLOAT16": "F16", "FLOAT32": "F32"}.get(dtype, dtype)
    if kind == "gptq":
        quantization = f"GPTQ {gptq_bits}-bit" + (f" g{quant['group_size']}" if quant.get("group_size") else "")
        bits = float(gptq_bits) if gptq_bits else None
    else:
        quantization = dtype
        bits = round(8 * weight_bytes / params, 2) if params else None
    n_heads = int(get("num_attention_heads", 0) or 0)
    hidden = int(get("hidden_size", 0) or 0)
    head_dim = int(get("head_dim", 0) or 0) or (hidden // n_heads if n_heads else 0)
    architectures = get("architectures") or []
    shown = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "vocab_size", "torch_dtype", "dtype",
             "quantization_config")  # fmt: skip
    facts = Facts(
        architecture=str(get("model_type") or (architectures[0] if architectures else "")),
        parameter_count=params or None,
        quantization=quantization,
        bits_per_weight=bits,
        context_length=int(get("max_position_embeddings", 0) or 0),
        file_size=path_size(folder),
        weights_bytes=weight_bytes,
        chat_template=_has_chat_template(folder),
        license=_readme_licence(folder),
        n_layers=int(get("num_hidden_layers", 0) or 0),
        n_kv_heads=int(get("num_key_value_heads", 0) or 0) or n_heads,
        key_length=head_dim,
        value_length=head_dim,
        metadata={k: get(k) for k in shown if get(k) is not None},
    )
    return facts, "", warnings


def read_json(path: Path, quiet: bool = False) -> object:
    """A small JSON file, or ValueError saying what is wrong with it (``quiet``: None instead)."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path.parent.name}/{path.name} is larger than {MAX_CONFIG_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if quiet:
            return None
        raise ValueError(f"{path.parent.name}/{path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        if quiet:
            return None
        raise ValueError(f"{path.parent.name}/{path.name} is not valid JSON: {exc}") from None


def _safetensors_counts(path: Path, gptq_bits: int = 0) -> tuple[int, int, dict[str, int]]:
    """(parameters, weight bytes, parameters by dtype) from a safetensors header, bounded by the file's size.

    For GPTQ, ``qweight`` tensors pack 32/bits weights into each int32; their zeros, scales and indices are
    bookkeeping, not parameters.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name} is not a safetensors file: it ends early")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            raise ValueError(f"{path.name} is not a safetensors file: its header claims {n} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path.name} has a corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} has a corrupt safetensors header")
    params, nbytes, by_dtype = 0, 0, {}
    for name, t in header.items():
        if name == "__metadata__" or not isinstance(t, dict):
            continue
        dtype, shape = str(t.get("dtype", "")), t.get("shape", [])
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"{path.name}: tensor {name!r} has a bad shape")
        count = 1
        for d in shape:
            count *= d
        nbytes += count * SAFETENSORS_BYTES.get(dtype, 0)
        if gptq_bits and name.endswith((".qzeros", ".scales", ".g_idx")):
            continue
        if gptq_bits and name.endswith(".qweight"):
            count = count * 32 // gptq_bits
        params += count
        by_dtype[dtype] = by_dtype.get(dtype, 0) + count
    if nbytes > size:
        raise ValueError(f"{path.name}: its tensors need {nbytes} bytes but the file has {size} (truncated?)")
    return params, nbytes, by_dtype


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = read_json(folder / "tokenizer_config.json", quiet=True)
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _readme_licence(folder: Path) -> str:
    """The ``license:`` of a model card's front matter (README.md), if there is one."""
    readme = folder / "README.md"
    try:
        with readme.open(encoding="utf-8", errors="replace") as f:
            head = f.read(8192)
    except OSError:
        return ""
    if not head.startswith("---"):
        return ""
    for line in head.split("\n---", 1)[0].splitlines():
        if line.lower().startswith("license:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    return ""


def jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# -- loaders -----------------------------------------------------------------------------------------------------


def quantization_in_name(entry_name: str) -> str:
    """What the name claims (e.g. ``Q8_0``), used only to warn when the file says otherwise."""
    stem = entry_name[: -len(".gguf")] if entry_name.lower().endswith(".gguf") else entry_name
    found = GGUF_QUANT_SUFFIX.search(stem)
    return found.group(1).upper() if found else ""


def path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
