"""The quantization lab: quantize, perplexity and compare, on the embedded Gemma (real llama.cpp) and on
bad inputs (fast: they are refused before any weights are read)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import cli, copy_default, generate, greedy

from backends.base import CancelToken
from backends.gguf_file import read_header
from webui.lab import compare as lab_compare
from webui.lab import quantize as lab_quantize
from webui.lab.perplexity import PerplexityError, Tally, default_text, nll_of, perplexity, windows
from webui.models.folder import list_models

GGML_F32, GGML_Q8_0, GGML_Q4_0 = 0, 8, 2
PPL_CTX, PPL_CHUNKS = 256, 2  # small on purpose: 2 shared cores


@pytest.fixture
def lab_dir(models_dir: Path, tmp_path: Path) -> Path:
    """A models folder of its own holding (a link to) the embedded default model."""
    folder = tmp_path / "lab-models"
    copy_default(models_dir, folder)
    return folder


@pytest.fixture(scope="module")
def quants(models_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """The embedded model and its Q8_0, Q4_0 and Q2_K requants, made once for the module."""
    folder = tmp_path_factory.mktemp("quants")
    source = copy_default(models_dir, folder)
    made = {"source": source}
    for qtype in ("Q8_0", "Q4_0", "Q2_K"):
        made[qtype] = lab_quantize.run(lab_quantize.plan(source, qtype, folder)).target
    return made


# -- fast: refused before anything is written ----------------------------------------------------------


def test_types_come_from_llama_cpp() -> None:
    import llama_cpp

    types = lab_quantize.quant_types()
    assert types["Q4_K_M"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert types["Q8_0"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert types["F32"] == llama_cpp.LLAMA_FTYPE_ALL_F32
    assert "GUESSED" not in types and len(types) >= 30


def test_unknown_type_is_refused(gemma_path: Path, lab_dir: Path) -> None:
    with pytest.raises(lab_quantize.QuantizeError, match="unknown quantization type 'Q9_X'.*Q4_K_M"):
        lab_quantize.plan(gemma_path, "Q9_X", lab_dir)


@pytest.mark.parametrize("name", ["../escape", "sub/dir.gguf", "/etc/x.gguf", ".hidden"])
def test_output_name_cannot_leave_the_models_folder(gemma_path: Path, lab_dir: Path, name: str) -> None:
    with pytest.raises(lab_quantize.QuantizeError, match="output name"):
        lab_quantize.plan(gemma_path, "Q8_0", lab_dir, out=name)
    assert not (lab_dir.parent / "escape.gguf").exists()


def test_existing_output_is_not_overwritten(gemma_path: Path, lab_dir: Path) -> None:
    (lab_dir / "taken.gguf").write_bytes(b"mine")
    with pytest.raises(lab_quantize.QuantizeError, match="already exists"):
        lab_quantize.plan(gemma_path, "Q8_0", lab_dir, out="taken")
    assert (lab_dir / "taken.gguf").read_bytes() == b"mine"


def test_not_enough_disk_is_refused(gemma_path: Path, lab_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(lab_quantize, "free_bytes", lambda folder: 10 * 2**20)
    with pytest.raises(lab_quantize.QuantizeError, match=r"not enough disk space .* needs up to \d+ MiB, 10 MiB free"):
        lab_quantize.plan(gemma_path, "Q8_0", lab_dir)
    monkeypatch.setattr(lab_quantize, "free_bytes", lambda folder: 10 * 2**30)
    assert lab_quantize.plan(gemma_path, "Q8_0", lab_dir).needed_bytes > 10 * 2**20


def test_non_gguf_input_is_refused(lab_dir: Path) -> None:
    fake = lab_dir / "notes.gguf"
    fake.write_text("this is not a model")
    with pytest.raises(lab_quantize.QuantizeError, match="not a valid GGUF file"):
        lab_quantize.plan(fake, "Q8_0", lab_dir)


def test_requantizing_warns(gemma_path: Path, lab_dir: Path) -> None:
    job = lab_quantize.plan(gemma_path, "q8_0", lab_dir)
    assert job.qtype == "Q8_0" and job.requantize
    assert "already quantized (Q4_K_M)" in job.warnings[0]
    assert job.target.name == "gemma-3-270m-Q8_0.gguf"  # the old type tag is replaced, not stacked


def test_cli_refuses_bad_inputs(lab_dir: Path) -> None:
    bad_type = cli("quantize", "default", "--type", "Q9", "--models-dir", str(lab_dir))
    assert bad_type.returncode == 1 and "unknown quantization type" in bad_type.stderr
    escape = cli("quantize", "default", "--type", "Q8_0", "--out", "../x", "--models-dir", str(lab_dir))
    assert escape.returncode == 1 and "output name" in escape.stderr
    assert sorted(p.name for p in lab_dir.iterdir()) == ["gemma-3-270m-q4_k_m.gguf"]


def test_perplexity_windows_follow_llama_perplexity() -> None:
    tokens = list(range(100, 1100))  # 1000 tokens
    found = windows(tokens, 256, bos=1)
    assert len(found) == 3  # non-overlapping, the remainder dropped
    assert [w[0] for w in found] == [1, 1, 1]  # BOS replaces each window's first token
    assert found[1][1:] == tokens[257:512]
    assert len(windows(tokens, 256, None, limit=2)) == 2
    with pytest.raises(PerplexityError, match="needs at least 1024"):
        windows(tokens[:1000], 512, None)


def test_perplexity_tally_is_llama_cpps_formula() -> None:
    import numpy as np

    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    values = nll_of(logits, [0, 1])
    assert values == pytest.approx([math.log(2), -math.log(0.8)])
    tally = Tally()
    tally.add(values)
    mean = (math.log(2) - math.log(0.8)) / 2
    assert tally.ppl == pytest.approx(math.exp(mean))
    var = (math.log(2) ** 2 + math.log(0.8) ** 2) / 2 - mean**2
    assert tally.error == pytest.approx(math.exp(mean) * math.sqrt(var / 1))


def test_compare_exports_and_saves(tmp_path: Path) -> None:
    result = {
        "created": "2026-01-02T03:04:05+00:00",
        "settings": {"prompts": ["Say hi", "Count | to 3"]},
        "rows": [
            {"model": "a-Q8_0", "quantization": "Q8_0", "file_size_mb": 278.0, "tg_tokens_per_s": 20.0,
             "pp_tokens_per_s": 300.0, "ppl": 5.1, "answers": ["hi", "1 2 3"]},
            {"model": "a-Q2_K", "error": "llama.cpp could not load it"},
        ],
    }  # fmt: skip
    md = lab_compare.to_markdown(result)
    assert "| a-Q8_0 | Q8_0 | 278.0 |" in md and "llama.cpp could not load it" in md
    assert "| Count \\| to 3 | 1 2 3 |  |" in md
    csv_text = lab_compare.to_csv(result)
    assert csv_text.splitlines()[0].startswith("model,quant,size MB")
    saved = lab_compare.save(result, tmp_path)
    assert saved.parent == tmp_path / "compare" and saved.name.startswith("20260102T030405-a-Q8_0-vs-a-Q2_K")
    assert lab_compare.saved(tmp_path) == [saved.stem]
    assert lab_compare.load(tmp_path, saved.stem) == result
    with pytest.raises(lab_compare.CompareError):
        lab_compare.load(tmp_path, "../../etc/passwd")
    png = lab_compare.to_png(result, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_prompts_file(tmp_path: Path) -> None:
    lines = tmp_path / "p.txt"
    lines.write_text("first\n\n second \n")
    assert lab_compare.read_prompts(lines) == ["first", "second"]
    listed = tmp_path / "p.json"
    listed.write_text(json.dumps(["a", "b\nc"]))
    assert lab_compare.read_prompts(listed) == ["a", "b\nc"]
    listed.write_text('["a", 3]')
    with pytest.raises(lab_compare.CompareError):
        lab_compare.read_prompts(listed)


# -- slow: real llama.cpp on the embedded model --------------------------------------------------------


@pytest.mark.slow
def test_quantize_q8_0_and_q4_0(quants: dict[str, Path]) -> None:
    source = read_header(quants["source"])
    q8, q4 = read_header(quants["Q8_0"]), read_header(quants["Q4_0"])
    assert (q8.quantization, q4.quantization) == ("Q8_0", "Q4_0")
    assert set(q8.tensor_types) == {GGML_F32, GGML_Q8_0}  # every matrix is Q8_0 (norms stay F32)
    # the blocks' matrices are Q4_0; llama.cpp keeps the (tied) token embedding at a higher type
    assert q4.tensor_types[GGML_Q4_0] > q4.parameter_count // 3 and GGML_Q4_0 not in source.tensor_types
    assert q8.parameter_count == q4.parameter_count == source.parameter_count
    assert quants["Q4_0"].stat().st_size < quants["source"].stat().st_size < quants["Q8_0"].stat().st_size
    names = [e.name for e in list_models(quants["source"].parent)]
    assert {"gemma-3-270m-Q8_0.gguf", "gemma-3-270m-Q4_0.gguf"} <= set(names)  # in the model list
    assert not [p for p in quants["source"].parent.iterdir() if p.name.startswith(".")]  # no partial left


@pytest.mark.slow
def test_quantized_model_loads_and_generates(quants: dict[str, Path]) -> None:
    from backends.llamacpp import LlamaCppLoader, LlamaCppSettings

    model = LlamaCppLoader().load(quants["Q8_0"], LlamaCppSettings(n_ctx=256))
    try:
        text, last = generate(model, "The capital of France is", greedy(8))
    finally:
        model.close()
    assert model.info.quantization == "Q8_0"
    assert last.usage.completion_tokens > 0 and text.strip()


@pytest.mark.slow
def test_cancel_mid_quantize_leaves_no_file(lab_dir: Path) -> None:
    source = lab_dir / "gemma-3-270m-q4_k_m.gguf"
    job = lab_quantize.plan(source, "Q8_0", lab_dir, out="cancelled")
    cancel = CancelToken()
    seen: list[int] = []

    def progress(i: int, n: int, tensor: str) -> None:
        seen.append(i)
        if i >= 20:
            cancel.cancel()

    with pytest.raises(lab_quantize.QuantizeCancelled):
        lab_quantize.run(job, progress, cancel)
    assert seen and seen[-1] < 236  # it was stopped in the middle, not after the end
    assert sorted(p.name for p in lab_dir.iterdir()) == ["gemma-3-270m-q4_k_m.gguf"]


@pytest.mark.slow
def test_perplexity_orders_the_quants(quants: dict[str, Path]) -> None:
    _, text = default_text()
    found = {name: perplexity(quants[name], text, PPL_CTX, chunks=PPL_CHUNKS) for name in ("source", "Q8_0", "Q2_K")}
    source, q8, q2 = found["source"].ppl, found["Q8_0"].ppl, found["Q2_K"].ppl
    assert found["source"].windows == PPL_CHUNKS and found["source"].tokens_scored == PPL_CHUNKS * (PPL_CTX // 2 - 1)
    assert abs(q8 - source) / source < 0.02, (source, q8)  # Q8_0 of the Q4_K_M source: within ~1 %
    assert q2 > source * 1.2, (source, q2)  # Q2_K is clearly worse
    assert 0 < found["source"].error < source


@pytest.mark.slow
def test_compare_cli_on_two_quants(quants: dict[str, Path], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\n")
    user_data = tmp_path / "ud"
    png = tmp_path / "chart.png"
    done = cli(
        "compare", str(quants["Q8_0"]), str(quants["Q4_0"]), "--prompts", str(prompts), "--max-tokens", "6",
        "--n-ctx", "256", "--pp", "64", "--ppl-ctx", "128", "--ppl-chunks", "2", "--user-data", str(user_data),
        "--png", str(png), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = result["rows"]
    assert [r["quantization"] for r in rows] == ["Q8_0", "Q4_0"]
    for row in rows:
        assert not row.get("error")
        assert row["file_size_mb"] > 100 and row["peak_rss_mb"] > row["file_size_mb"] / 2
        assert row["load_s"] > 0 and row["pp_tokens_per_s"] > 0 and row["tg_tokens_per_s"] > 0
        assert row["ttft_ms"] > 0 and row["ppl"] > 1 and len(row["answers"]) == 1
    saved = Path(result["saved"])
    assert saved.parent == user_data / "compare" and json.loads(saved.read_text())["rows"] == rows
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = cli("compare", str(quants["Q8_0"]), "--no-ppl", "--prompts", str(prompts), "--max-tokens", "4",
                "--n-ctx", "256", "--pp", "64", "--user-data", str(user_data), "--markdown")  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("| model | quant | size MB |") and "| gemma-3-270m-Q8_0 | Q8_0 |" in table.stdout


def test_compare_on_fake_models_one_process_each(fake_models: Path, tmp_path: Path) -> None:
    """The whole compare path on scripted models: a crash in one model costs only its row."""
    from conftest import FAKE_HELLO, write_fake

    write_fake(fake_models, "crashy", reply="one two three four five", crash="token:2")
    settings = lab_compare.CompareSettings(
        prompts=["Say hello", "Again"], max_new_tokens=8, n_ctx=256, pp_tokens=32, perplexity=False
    )
    models = [fake_models / "hello.fake", fake_models / "crashy.fake", fake_models / "seeded.fake"]
    stages: list[str] = []
    result = lab_compare.compare(models, settings, stages.append)
    hello, crashy, seeded = result["rows"]
    assert hello["answers"] == [FAKE_HELLO, FAKE_HELLO] and hello["pp_tokens"] >= 32
    assert hello["load_s"] >= 0 and hello["peak_rss_mb"] > 10 and hello["tg_tokens_per_s"] > 0
    assert "signal" in crashy["error"] and "answers" not in crashy
    assert seeded["answers"][0] == seeded["answers"][1]  # same seed, same settings: the same answer
    assert any("prompt 2 of 2" in s for s in stages)
    headers, rows = lab_compare.table(result)
    assert [r[0] for r in rows] == ["hello", "crashy", "seeded"] and "signal" in rows[1][-1]


def test_bench_speed_columns_on_fake_models(fake_models: Path) -> None:
    """``bench --speed``: llama-bench's columns per model; raw continuation with EOS banned, so tg is complete."""
    from webui.bench.speed import bench_speed, format_speed

    result = bench_speed([fake_models / "slow.fake", fake_models / "echo.fake"], pp=16, tg=12)
    slow, echo = result["rows"]
    assert slow["pp_tokens"] >= 16 and slow["pp_tokens_per_s"] > 0 and slow["load_s"] >= 0
    assert slow["tg_tokens"] == 12 and slow["tg_tokens_per_s"] > 0 and slow["peak_rss_mb"] > 10
    assert echo["answers"] and not echo.get("error")
    text = format_speed(result)
    assert text.splitlines()[0].split(" | ")[-3:] == ["pp16 tok/s", "tg12 tok/s", "TTFT ms"]
    assert text.splitlines()[2].startswith("slow ")


# -- convert: llama.cpp's own converter ------------------------------------------------------------------


def test_convert_refuses_bad_folders(tmp_path: Path) -> None:
    from webui.lab.convert import ConvertError, convert

    with pytest.raises(ConvertError, match="no config.json"):
        convert(tmp_path, tmp_path / "models")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConvertError, match="no \\*.safetensors"):
        convert(tmp_path, tmp_path / "models")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConvertError, match="output name"):
        convert(tmp_path, tmp_path / "models", out="../escape")


def test_only_the_converters_files_are_unpacked() -> None:
    import tarfile

    from webui.lab.convert import _converter_member

    def member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        return info

    root = "llama_cpp_python-0.3.36/vendor/llama.cpp"
    assert _converter_member(member(f"{root}/convert_hf_to_gguf.py")) == "convert_hf_to_gguf.py"
    assert _converter_member(member(f"{root}/conversion/llama.py")) == "conversion/llama.py"
    assert _converter_member(member(f"{root}/gguf-py/gguf/constants.py")) == "gguf-py/gguf/constants.py"
    assert _converter_member(member(f"{root}/src/llama.cpp")) is None  # not needed
    assert _converter_member(member(f"{root}/conversion/../../../../etc/x")) is None
    assert _converter_member(member(f"{root}/conversion/link", tarfile.SYMTYPE)) is None


@pytest.mark.slow
def test_convert_quantize_load_generate(tiny_llama: Path, tmp_path: Path) -> None:
    """The tiny random-weight Llama: llama.cpp's converter (F16) -> Q8_0 and Q4_0 -> llama.cpp loads and generates."""
    from backends.llamacpp import LlamaCppLoader, LlamaCppSettings
    from webui.lab.convert import convert

    models = tmp_path / "models"
    f16 = convert(tiny_llama, models, "f16")
    header = read_header(f16)
    assert header.quantization == "F16" and header.architecture == "llama"
    # the cross-check: the same weights through llama.cpp (F16 GGUF) and through torch (the folder), same method;
    # the two tokenizers cut the text a little differently (about 1 % more tokens here), hence 5 %, not 1 %
    _, text = default_text()
    from_gguf = perplexity(f16, text, 128, chunks=3)
    from_torch = perplexity(tiny_llama, text, 128, chunks=3)
    assert from_torch.loader == "transformers" and from_gguf.loader == "llama.cpp"
    assert abs(from_gguf.ppl - from_torch.ppl) / from_torch.ppl < 0.05, (from_gguf.ppl, from_torch.ppl)
    for qtype, ggml in (("Q8_0", GGML_Q8_0), ("Q4_0", GGML_Q4_0)):
        quant = lab_quantize.run(lab_quantize.plan(f16, qtype, models)).target
        found = read_header(quant)
        assert found.quantization == qtype and ggml in found.tensor_types
        model = LlamaCppLoader().load(quant, LlamaCppSettings(n_ctx=128))
        try:
            text, last = generate(model, "Once upon a time", greedy(6, ban_eos_token=True))
        finally:
            model.close()
        assert last.usage.completion_tokens == 6
    assert sorted(p.name for p in models.iterdir()) == ["tiny-llama0-F16.gguf", "tiny-llama0-Q4_0.gguf",
                                                        "tiny-llama0-Q8_0.gguf"]  # fmt: skip


def write_imatrix(model: Path, dest: Path) -> int:
    """An importance matrix in llama-imatrix's GGUF form (``NAME.in_sum2`` + ``NAME.counts`` per block matrix),
    with made-up activations: enough to see that quantizing uses it."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(model)
    writer = gguf.GGUFWriter(str(dest), arch="imatrix")
    rng = np.random.default_rng(0)
    n = 0
    for t in reader.tensors:
        if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2:
            ne0 = int(t.shape[0])
            writer.add_tensor(f"{t.name}.in_sum2", (rng.random(ne0, dtype=np.float32) * 10 + 0.01) * 4)
            writer.add_tensor(f"{t.name}.counts", np.array([4.0], dtype=np.float32))
            n += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return n


def test_imatrix_must_be_an_importance_matrix(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    model = tmp_path / "model.gguf"  # a GGUF, but of weights, not of an importance matrix
    writer = gguf.GGUFWriter(str(model), arch="llama")
    writer.add_tensor("blk.0.ffn_down.weight", np.ones((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(lab_quantize.QuantizeError, match="holds no importance matrix entries"):
        lab_quantize.load_imatrix(model)
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(lab_quantize.QuantizeError, match="not an importance matrix in GGUF form"):
        lab_quantize.load_imatrix(junk)


@pytest.mark.slow
def test_quantize_with_an_imatrix_uses_it(lab_dir: Path, tmp_path: Path) -> None:
    source = lab_dir / "gemma-3-270m-q4_k_m.gguf"
    imatrix = tmp_path / "imatrix.gguf"
    assert write_imatrix(source, imatrix) > 100
    assert len(lab_quantize.load_imatrix(imatrix)) > 100
    with_it = lab_quantize.run(lab_quantize.plan(source, "Q3_K_M", lab_dir, "with", imatrix)).target
    without = lab_quantize.run(lab_quantize.plan(source, "Q3_K_M", lab_dir, "without")).target
    assert read_header(with_it).quantization == read_header(without).quantization == "Q3_K_M"
    assert with_it.stat().st_size == without.stat().st_size
    assert with_it.read_bytes() != without.read_bytes()  # the importance matrix changed how weights were rounded


@pytest.mark.slow
def test_perplexity_equals_a_plain_llama_cpp_python_loop(quants: dict[str, Path]) -> None:
    """Our batch loop (logits only for the scored half) against ``Llama(logits_all=True).eval`` on the same
    windows: the same numbers, so reading only half the logits loses nothing."""
    import llama_cpp

    _, text = default_text()
    ours = perplexity(quants["Q8_0"], text, 128, chunks=2)
    llm = llama_cpp.Llama(model_path=str(quants["Q8_0"]), n_ctx=128, n_batch=128, n_ubatch=128, logits_all=True,
                          verbose=False)  # fmt: skip
    try:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        tally = Tally()
        for window in windows(tokens, 128, llama_cpp.llama_vocab_bos(llm._model.vocab), 2):
            llm.reset()
            llm._ctx.kv_cache_clear()
            llm.eval(window)
            tally.add(nll_of(llm.scores[64:127], window[65:]))
    finally:
        llm.close()
    assert ours.tokens_scored == tally.count == 2 * 63
    assert ours.ppl == pytest.approx(tally.ppl, rel=1e-3) and ours.error == pytest.approx(tally.error, rel=1e-2)


def test_a_gguf_llama_cpp_cannot_quantize_fails_cleanly(lab_dir: Path) -> None:
    """A well-formed GGUF of an architecture llama.cpp does not know: our header check passes, llama.cpp refuses
    in the child; the error says so and nothing is left behind."""
    import gguf
    import numpy as np

    odd = lab_dir / "odd.gguf"
    writer = gguf.GGUFWriter(str(odd), arch="no-such-architecture")
    writer.add_file_type(1)
    writer.add_tensor("blk.0.ffn_down.weight", np.ones((64, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    job = lab_quantize.plan(odd, "Q8_0", lab_dir)
    with pytest.raises(
        lab_quantize.QuantizeError, match="could not quantize odd.gguf(.|\n)*unknown model architecture"
    ):
        lab_quantize.run(job)
    assert sorted(p.name for p in lab_dir.iterdir()) == ["gemma-3-270m-q4_k_m.gguf", "odd.gguf"]


@pytest.mark.slow
def test_cross_check_through_transformers_on_the_same_token_ids(lab_dir: Path) -> None:
    """Issue 16's cross-check: the embedded GGUF through llama.cpp and through transformers' ``gguf_file=``
    (dequantized to float32), both scoring llama.cpp's token ids, agree within a few per cent. The gap left is
    arithmetic: llama.cpp multiplies quantized weights with quantized activations, torch the float32 copy
    (2.4 % measured on all 7 windows of the shipped text at ctx 256)."""
    from webui.lab.perplexity import cross_check, llamacpp_tokens

    _, text = default_text()
    ours, theirs = cross_check(lab_dir / "gemma-3-270m-q4_k_m.gguf", text, 256, chunks=3)
    assert (ours.loader, theirs.loader) == ("llama.cpp", "transformers")
    tokens, bos = llamacpp_tokens(lab_dir / "gemma-3-270m-q4_k_m.gguf", text)
    assert bos is not None and tokens[0] == bos
    assert ours.text_tokens == theirs.text_tokens == len(tokens)  # the same ids, not two tokenizations
    assert ours.tokens_scored == theirs.tokens_scored == 3 * 127
    assert abs(ours.ppl - theirs.ppl) / ours.ppl < 0.04, (ours.ppl, theirs.ppl)
