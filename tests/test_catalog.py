"""The model catalog: what the models folder holds, grouped by model, with facts read from the files.

The folder is built per test from the real embedded Gemma GGUF (hard-linked under the names quantized
variants get) and from small Hugging Face and GPTQ folders written here with the ``safetensors`` package.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from backends.registry import LoaderRegistry
from webui.models.catalog import Catalog, loader_options, model_name, natural_loader, variant_report
from webui.models.facts import Facts
from webui.models.memory import available_memory, estimate_memory

GEMMA_KV_BYTES_PER_TOKEN = 18 * 1 * (256 + 256) * 2  # layers x kv heads x (key + value length) x f16


def link(source: Path, target: Path) -> Path:
    """A hard link (the 240 MB model costs no space), or a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)
    return target


def write_hf_folder(folder: Path, config: dict, tensors: dict[str, np.ndarray], **files: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"))
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": 100,
    "torch_dtype": "float32",
}


def tiny_tensors() -> dict[str, np.ndarray]:
    return {
        "model.embed_tokens.weight": np.zeros((100, 64), np.float32),
        "model.layers.0.self_attn.q_proj.weight": np.zeros((64, 64), np.float32),
        "model.layers.1.self_attn.q_proj.weight": np.zeros((64, 64), np.float32),
        "model.norm.weight": np.ones(64, np.float32),
    }


TINY_PARAMS = 100 * 64 + 2 * 64 * 64 + 64


def gptq_config(bits: int = 4, group: int = 128) -> dict:
    return {**TINY_CONFIG, "quantization_config": {"quant_method": "gptq", "bits": bits, "group_size": group}}


def gptq_tensors() -> dict[str, np.ndarray]:
    # a 64x64 linear in 4 bits: 64*64/8 int32 words of packed weights, plus its zeros and scales
    return {
        "model.layers.0.mlp.qweight": np.zeros((64 // 8, 64), np.int32),
        "model.layers.0.mlp.qzeros": np.zeros((1, 64 // 8), np.int32),
        "model.layers.0.mlp.scales": np.zeros((1, 64), np.float16),
        "model.embed_tokens.weight": np.zeros((100, 64), np.float16),
    }


def absurd_gguf(path: Path, tensors: int = 2**62, string_len: int = 0) -> Path:
    """A header that claims far more than the file holds (CVE-2026-7482-style)."""
    if string_len:
        key = b"general.name"
        body = struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, string_len)
    else:
        body = struct.pack("<IQQ", 3, tensors, 0)
    path.write_bytes(b"GGUF" + body + b"\0" * 64)
    return path


@pytest.fixture
def folder(tmp_path, gemma_path) -> Path:
    """Two GGUF quantizations of gemma (one named wrongly), its GPTQ folder, a plain HF model."""
    models = tmp_path / "models"
    models.mkdir()
    link(gemma_path, models / "gemma-3-270m.Q4_K_M.gguf")
    link(gemma_path, models / "gemma-3-270m-Q8_0.gguf")  # the name says Q8_0; the file is Q4_K_M
    write_hf_folder(models / "gemma-3-270m-GPTQ", gptq_config(), gptq_tensors())
    write_hf_folder(
        models / "tiny-llama",
        TINY_CONFIG,
        tiny_tensors(),
        tokenizer_config__json=json.dumps({"chat_template": "{{ messages }}"}),
        README__md="---\nlicense: apache-2.0\n---\n# tiny\n",
    )
    return models


def test_quantization_variants_of_one_model_are_grouped(folder):
    models = Catalog(folder).models()
    assert [m.name for m in models] == ["gemma-3-270m", "tiny-llama"]
    gemma = models[0]
    assert sorted(v.name for v in gemma.variants) == [
        "gemma-3-270m-GPTQ",
        "gemma-3-270m-Q8_0.gguf",
        "gemma-3-270m.Q4_K_M.gguf",
    ]
    assert {v.name: v.kind for v in gemma.variants}["gemma-3-270m-GPTQ"] == "gptq"
    assert models[1].variants[0].kind == "hf"


@pytest.mark.parametrize(
    ("entry", "is_file", "model"),
    [
        ("foo.Q4_K_M.gguf", True, "foo"),
        ("foo-Q8_0.gguf", True, "foo"),
        ("foo-IQ3_XXS.gguf", True, "foo"),
        ("Foo-7B-f16.gguf", True, "Foo-7B"),
        ("foo.gguf", True, "foo"),
        ("foo-GPTQ", False, "foo"),
        ("foo-GPTQ-4bit-128g", False, "foo"),
        ("foo", False, "foo"),
        ("qwen2-7b", False, "qwen2-7b"),
    ],
)
def test_the_model_a_name_belongs_to(entry, is_file, model):
    assert model_name(entry, is_file) == model


def test_quantization_is_read_from_the_file_not_trusted_from_its_name(folder):
    gemma, _ = Catalog(folder).models()
    by_name = {v.name: v for v in gemma.variants}
    assert by_name["gemma-3-270m.Q4_K_M.gguf"].quantization == "Q4_K_M"
    assert by_name["gemma-3-270m.Q4_K_M.gguf"].warnings == []
    lying = by_name["gemma-3-270m-Q8_0.gguf"]
    assert lying.quantization == "Q4_K_M"
    assert lying.warnings == ["the file name says Q8_0 but the file is Q4_K_M"]


def test_gguf_facts_of_the_embedded_gemma(folder, gemma_path):
    facts = Catalog(folder).find("gemma-3-270m.Q4_K_M.gguf")[1].facts
    assert facts.architecture == "gemma3"
    assert facts.context_length == 32768
    assert facts.file_size == gemma_path.stat().st_size
    assert facts.chat_template is False  # this base model's GGUF carries no chat template
    assert facts.license == "gemma"
    assert facts.metadata["general.name"] == "Gemma 3 270m"
    assert facts.metadata["general.size_label"] == "270M"
    assert (facts.n_layers, facts.n_kv_heads, facts.key_length, facts.value_length) == (18, 1, 256, 256)
    assert facts.metadata["tensor types"]["Q4_K"] > 0  # a Q4_K_M file mixes tensor types


@pytest.mark.slow
def test_parameters_and_bits_per_weight_agree_with_the_gguf_package(gemma_path):
    """Our bounded reader's counts, checked against llama.cpp's own Python reader on the same file."""
    from gguf import GGUFReader

    reader = GGUFReader(gemma_path)
    params = sum(int(t.n_elements) for t in reader.tensors)
    weight_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    facts = Catalog(gemma_path.parent).variant_at(gemma_path).facts
    assert facts.parameter_count == params == 268_098_176
    assert facts.weights_bytes == weight_bytes
    assert facts.bits_per_weight == round(8 * weight_bytes / params, 2) == 7.36


def test_memory_estimate_for_the_embedded_gemma(folder):
    facts = Catalog(folder).find("gemma-3-270m.Q4_K_M.gguf")[1].facts
    assert facts.kv_bytes_per_token() == GEMMA_KV_BYTES_PER_TOKEN == 18_432
    est = estimate_memory(facts, 4096, available=8 * 2**30)
    assert est.weights == facts.weights_bytes
    assert est.kv_cache == 4096 * 18_432 == 75_497_472
    assert est.overhead == int(facts.weights_bytes * 0.10)
    assert est.total == est.weights + est.kv_cache + est.overhead
    assert est.verdict == "fits"
    assert estimate_memory(facts, 32768).kv_cache == 32768 * 18_432  # the cache grows with the context
    assert estimate_memory(facts, 4096, kv_bytes_per_value=4).kv_cache == 2 * est.kv_cache  # f32 cache


def test_fits_tight_and_wont_fit(folder):
    facts = Catalog(folder).find("gemma-3-270m.Q4_K_M.gguf")[1].facts
    need = estimate_memory(facts, 4096).total
    assert estimate_memory(facts, 4096, available=2 * need).verdict == "fits"
    assert estimate_memory(facts, 4096, available=int(need * 1.1)).verdict == "tight"
    assert estimate_memory(facts, 4096, available=need // 2).verdict == "won't fit"
    assert estimate_memory(facts, 4096, available=None).verdict == "unknown"


def test_available_memory_comes_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n")
    assert available_memory(meminfo) == 2048 * 1024
    assert available_memory(tmp_path / "absent") is None
    assert available_memory() is None or available_memory() > 0  # this machine's


def test_hf_folder_facts_come_from_config_and_safetensors_headers(folder):
    tiny = Catalog(folder).find("tiny-llama")[1]
    f = tiny.facts
    assert tiny.error == "" and tiny.warnings == []
    assert f.architecture == "llama"
    assert f.parameter_count == TINY_PARAMS
    assert f.quantization == "F32"
    assert f.bits_per_weight == 32.0
    assert f.context_length == 2048
    assert f.chat_template is True  # from tokenizer_config.json
    assert f.license == "apache-2.0"  # from the model card's front matter
    assert (f.n_layers, f.n_kv_heads, f.key_length) == (2, 2, 64 // 4)
    assert f.metadata["architectures"] == ["LlamaForCausalLM"]
    assert estimate_memory(f, 1000).kv_cache == 1000 * 2 * 2 * (16 + 16) * 2


def test_gptq_folder_facts(folder):
    gptq = Catalog(folder).find("gemma-3-270m-GPTQ")[1]
    assert gptq.kind == "gptq"
    assert gptq.quantization == "GPTQ 4-bit g128"
    assert gptq.facts.bits_per_weight == 4.0
    assert gptq.facts.parameter_count == 64 * 64 + 100 * 64  # packed int32 words unpacked; zeros/scales not counted


def test_an_older_autogptq_folder_with_quantize_config_json_is_gptq(tmp_path):
    folder = write_hf_folder(tmp_path / "m" / "old-GPTQ", TINY_CONFIG, gptq_tensors())
    (folder / "quantize_config.json").write_text(json.dumps({"bits": 8, "group_size": 64}))
    variant = Catalog(tmp_path / "m").variants()[0]
    assert (variant.kind, variant.quantization) == ("gptq", "GPTQ 8-bit g64")


def test_loaders_offered_for_each_kind(folder):
    """Every built-in loader that recognises a variant is offered; the one made for its kind is the natural pick."""
    registry = LoaderRegistry(load_entry_points=False)  # the built-ins: llama.cpp, gptq, transformers
    catalog = Catalog(folder)
    gguf = catalog.find("gemma-3-270m.Q4_K_M.gguf")[1]
    options = loader_options(registry, gguf.path)
    assert [o.name for o in options] == ["llama.cpp", "transformers"]  # transformers reads GGUF too (dequantized)
    assert natural_loader(gguf, options) == "llama.cpp"
    gptq = catalog.find("gemma-3-270m-GPTQ")[1]
    assert natural_loader(gptq, loader_options(registry, gptq.path)) == "gptq"
    tiny = catalog.find("tiny-llama")[1]
    assert [o.name for o in loader_options(registry, tiny.path)] == ["transformers"]
    assert natural_loader(tiny, loader_options(registry, tiny.path)) == "transformers"
    only_llamacpp = LoaderRegistry(load_entry_points=False, builtins=("backends.llamacpp",))
    report = variant_report(tiny, only_llamacpp, 4096, None)
    assert report["loaders"] == [] and report["loader"] is None
    assert "no registered loader can load this" in report["warnings"]


UNAVAILABLE_PLUGIN = """
from backends.base import Loader
from backends.hookspecs import hookimpl


class NeedsTorch(Loader):
    name = "needs-torch"
    install_hint = "pip install some-missing-package"

    def available(self):
        return "some_missing_package is not installed; " + self.install_hint

    def can_load(self, path):
        return path.is_dir() and (path / "config.json").is_file()

    def load(self, path, settings):
        raise AssertionError("never called: the loader is unavailable")


@hookimpl
def register_loaders(register):
    register(NeedsTorch())
"""


def test_a_loader_whose_dependency_is_missing_is_listed_but_not_picked(folder, tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "needs_torch_plugin.py").write_text(textwrap.dedent(UNAVAILABLE_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    registry = LoaderRegistry(load_entry_points=False, builtins=("backends.llamacpp", "needs_torch_plugin"))
    tiny = Catalog(folder).find("tiny-llama")[1]
    report = variant_report(tiny, registry, 4096, None)
    assert report["loaders"] == [
        {"name": "needs-torch", "available": False, "why_not": "some_missing_package is not installed; "
         "pip install some-missing-package"}
    ]  # fmt: skip
    assert report["loader"] is None
    assert any(w.startswith("no available loader: some_missing_package") for w in report["warnings"])


# -- bad input ---------------------------------------------------------------------------------------------------
def test_a_gguf_with_absurd_counts_is_listed_with_its_error_and_the_rest_still_work(folder):
    absurd_gguf(folder / "hostile-tensors.gguf", tensors=2**62)
    absurd_gguf(folder / "hostile-string.gguf", string_len=2**60)
    (folder / "not-really.gguf").write_bytes(b"PK\x03\x04 a zip file")
    variants = {v.name: v for v in Catalog(folder).variants()}
    assert "claims" in variants["hostile-tensors.gguf"].error and "tensors" in variants["hostile-tensors.gguf"].error
    assert "a string claims" in variants["hostile-string.gguf"].error
    assert "magic" in variants["not-really.gguf"].error
    for name in ("hostile-tensors.gguf", "hostile-string.gguf", "not-really.gguf"):
        assert variants[name].facts is None
    assert variants["gemma-3-270m.Q4_K_M.gguf"].quantization == "Q4_K_M"  # the good ones are unaffected


def test_a_corrupt_or_empty_model_folder_is_listed_with_its_error(folder):
    broken = folder / "broken-config"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", ')
    (broken / "model.safetensors").write_bytes(b"\0" * 16)
    no_weights = folder / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(TINY_CONFIG))
    bad_tensors = write_hf_folder(folder / "bad-header", TINY_CONFIG, tiny_tensors())
    with (bad_tensors / "model.safetensors").open("r+b") as f:
        f.write(struct.pack("<Q", 2**40))  # a header longer than the file
    variants = {v.name: v for v in Catalog(folder).variants()}
    assert "broken-config/config.json is not valid JSON" in variants["broken-config"].error
    assert "no weights" in variants["no-weights"].error
    assert "header claims" in variants["bad-header"].error
    assert variants["tiny-llama"].error == ""


def test_a_folder_with_only_pickle_weights_is_flagged(tmp_path):
    folder = tmp_path / "m" / "pickled"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    variant = Catalog(tmp_path / "m").variants()[0]
    assert variant.error == ""
    assert any("pickle" in w for w in variant.warnings)


def test_names_that_climb_out_of_the_folder_find_nothing(folder):
    catalog = Catalog(folder)
    assert catalog.find("../models/tiny-llama") is None
    assert catalog.find("../../etc/passwd") is None


def test_facts_are_cached_until_the_file_changes(folder):
    catalog = Catalog(folder)
    first = catalog.find("tiny-llama")[1].facts
    assert catalog.find("tiny-llama")[1].facts is first
    config = folder / "tiny-llama" / "config.json"
    config.write_text(json.dumps({**TINY_CONFIG, "max_position_embeddings": 4096}))
    os.utime(config, ns=(first_ns := config.stat().st_mtime_ns + 10**9, first_ns))
    assert catalog.find("tiny-llama")[1].facts.context_length == 4096


def test_facts_dataclass_defaults_estimate_nothing_for_unknown_shapes():
    assert Facts().kv_bytes_per_token() == 0
    assert estimate_memory(Facts(file_size=1000), 4096).total == 1000 + 100
