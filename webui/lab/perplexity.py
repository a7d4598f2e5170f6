"""Perplexity the way ``llama-perplexity`` measures it, for GGUF models (llama.cpp) and model folders (torch).

llama.cpp's method (``tools/perplexity/perplexity.cpp``): tokenize the whole text once (with BOS), cut it into
non-overlapping windows of ``n_ctx`` tokens (the remainder is dropped), put BOS at the start of each window,
evaluate each window from an empty cache, and score only the second half: each position ``j`` in
``[n_ctx/2, n_ctx-1)`` predicts token ``j+1``. PPL = exp(mean NLL); the ± is llama.cpp's too:
``PPL * sqrt((mean(NLL²) - mean(NLL)²) / (count - 1))``. Like ``llama-perplexity`` it wants at least
``2 * n_ctx`` tokens of text.

The transformers path scores the same windows with the same rule through ``model(input_ids).logits``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import CancelToken

Progress = Callable[[int, int, float], None]  # (windows done, windows in all, PPL so far)


class PerplexityError(ValueError):
    """The text is too short, the model cannot be scored, or the run was cancelled."""


@dataclass
class Tally:
    """Running sums of negative log-likelihoods, as llama.cpp keeps them."""

    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0

    def add(self, values) -> None:
        for v in values:
            v = float(v)
            self.nll += v
            self.nll2 += v * v
            self.count += 1

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count) if self.count else float("nan")

    @property
    def error(self) -> float:
        """llama.cpp's ± on the PPL (standard error of the mean NLL, scaled by the PPL)."""
        if self.count < 2:
            return float("nan")
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        return self.ppl * math.sqrt(var / (self.count - 1)) if var > 0 else 0.0


@dataclass
class PerplexityResult:
    model: str
    loader: str
    ppl: float
    error: float
    n_ctx: int
    windows: int
    tokens_scored: int
    text_tokens: int
    seconds: float
    text: str = ""
    per_window: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "loader": self.loader,
            "ppl": round(self.ppl, 4),
            "ppl_error": round(self.error, 5),
            "n_ctx": self.n_ctx,
            "windows": self.windows,
            "tokens_scored": self.tokens_scored,
            "text_tokens": self.text_tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.windows * self.n_ctx / self.seconds, 1) if self.seconds else None,
            "text": self.text,
        }

    def line(self) -> str:
        return (
            f"PPL = {self.ppl:.4f} +/- {self.error:.5f} ({self.windows} windows of {self.n_ctx}, {self.seconds:.1f} s)"
        )


def windows(tokens: list[int], n_ctx: int, bos: int | None, limit: int = 0) -> list[list[int]]:
    """The non-overlapping windows llama-perplexity scores, each starting with BOS when the model uses one;
    ``limit`` > 0 keeps only the first ``limit`` (llama-perplexity's ``--chunks``)."""
    if n_ctx < 8:
        raise PerplexityError(f"--ctx must be at least 8 (got {n_ctx})")
    if len(tokens) < 2 * n_ctx:
        raise PerplexityError(
            f"the text is {len(tokens)} tokens; scoring at ctx {n_ctx} needs at least {2 * n_ctx} "
            "(as llama-perplexity does): give a longer --text or a smaller --ctx"
        )
    found = []
    for start in range(0, len(tokens) - n_ctx + 1, n_ctx):
        window = list(tokens[start : start + n_ctx])
        if bos is not None:
            window[0] = bos
        found.append(window)
    return found[:limit] if limit > 0 else found


def nll_of(logits, targets):
    """Negative log-likelihoods of ``targets`` under each row of ``logits`` (numpy, float64 log-softmax)."""
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64)
    peak = rows.max(axis=1, keepdims=True)
    log_z = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    return log_z - rows[np.arange(len(targets)), np.asarray(targets)]


def perplexity(
    model: Path,
    text: str,
    n_ctx: int = 512,
    threads: int = 0,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    text_name: str = "",
    chunks: int = 0,
) -> PerplexityResult:
    """Score ``text`` with ``model`` (a GGUF file or a Hugging Face folder); ``chunks`` > 0 limits the windows."""
    if model.is_dir():
        return perplexity_transformers(model, text, n_ctx, progress, cancel, text_name, chunks=chunks)
    return perplexity_llamacpp(model, text, n_ctx, threads, progress, cancel, text_name, chunks)


def perplexity_llamacpp(
    path: Path,
    text: str,
    n_ctx: int = 512,
    threads: int = 0,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    text_name: str = "",
    chunks: int = 0,
) -> PerplexityResult:
    """llama.cpp's own decode on windows of ``n_ctx``; logits are read only for the scored half."""
    import llama_cpp
    import numpy as np
    from llama_cpp import _internals

    from backends.gguf_file import read_header
    from backends.llamacpp import LlamaCppSettings, llama_kwargs

    read_header(path)  # a hostile or truncated file fails here, not in llama.cpp
    n_batch = min(n_ctx, 512)
    kwargs = llama_kwargs(path, LlamaCppSettings(n_ctx=n_ctx, threads=threads, n_batch=n_batch))
    llm = llama_cpp.Llama(**{**kwargs, "n_ubatch": n_batch})
    try:
        vocab = llm._model.vocab
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        bos = llama_cpp.llama_vocab_bos(vocab) if add_bos else None
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
        scored = windows(tokens, n_ctx, bos, chunks)
        n_vocab = llm.n_vocab()
        first = n_ctx // 2
        batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        tally, per_window = Tally(), []
        start = time.perf_counter()
        for w, window in enumerate(scored):
            llm._ctx.kv_cache_clear()
            rows = []
            for b in range(0, n_ctx, n_batch):
                if cancel is not None and cancel.cancelled:
                    raise PerplexityError("perplexity cancelled")
                piece = window[b : b + n_batch]
                batch.reset()
                batch.batch.n_tokens = len(piece)
                for k, token in enumerate(piece):
                    pos = b + k
                    batch.batch.token[k] = token
                    batch.batch.pos[k] = pos
                    batch.batch.n_seq_id[k] = 1
                    batch.batch.seq_id[k][0] = 0
                    batch.batch.logits[k] = pos >= first
                llm._ctx.decode(batch)
                for k in range(len(piece)):
                    if b + k >= first and b + k < n_ctx - 1:
                        row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, k)
                        rows.append(np.ctypeslib.as_array(row, shape=(n_vocab,)).copy())
            values = nll_of(np.stack(rows), window[first + 1 :])
            tally.add(values)
            per_window.append(math.exp(float(values.mean())))
            if progress is not None:
                progress(w + 1, len(scored), tally.ppl)
        seconds = time.perf_counter() - start
        batch.close()
    finally:
        llm.close()
    return PerplexityResult(
        path.stem, "llama.cpp", tally.ppl, tally.error, n_ctx, len(scored), tally.count, len(tokens), seconds,
        text_name, per_window,
    )  # fmt: skip


def perplexity_transformers(
    folder: Path,
    text: str,
    n_ctx: int = 512,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    text_name: str = "",
    gguf_file: str | None = None,
    chunks: int = 0,
    tokens: list[int] | None = None,
    bos: int | None = None,
) -> PerplexityResult:
    """The same windows and rule through torch (a model folder, or a GGUF file via transformers' ``gguf_file``).

    ``tokens`` (with ``bos``, None when the model adds none): score these ids instead of tokenizing ``text`` with
    the model's own tokenizer, so two backends can be compared on exactly the same tokens (:func:`cross_check`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32, **extra)
    model.eval()
    if tokens is None:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **extra)
        tokens = tokenizer(text, add_special_tokens=True)["input_ids"]
        bos = tokenizer.bos_token_id if tokens and tokens[0] == tokenizer.bos_token_id else None
    scored = windows(tokens, n_ctx, bos, chunks)
    first = n_ctx // 2
    tally, per_window = Tally(), []
    start = time.perf_counter()
    with torch.no_grad():
        for w, window in enumerate(scored):
            if cancel is not None and cancel.cancelled:
                raise PerplexityError("perplexity cancelled")
            logits = model(input_ids=torch.tensor([window])).logits[0, first : n_ctx - 1].float()
            values = nll_of(logits.numpy(), window[first + 1 :])
            tally.add(values)
            per_window.append(math.exp(float(values.mean())))
            if progress is not None:
                progress(w + 1, len(scored), tally.ppl)
    seconds = time.perf_counter() - start
    name = Path(gguf_file).stem if gguf_file else folder.name
    return PerplexityResult(
        name, "transformers", tally.ppl, tally.error, n_ctx, len(scored), tally.count, len(tokens), seconds,
        text_name, per_window,
    )  # fmt: skip


def llamacpp_tokens(path: Path, text: str) -> tuple[list[int], int | None]:
    """``text`` as llama.cpp tokenizes it for ``path`` (the vocabulary only, no weights), and the BOS id the
    windows start with (None when the model adds none): what :func:`perplexity_llamacpp` scores."""
    import llama_cpp

    from backends.gguf_file import read_header

    read_header(path)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
        return tokens, llama_cpp.llama_vocab_bos(vocab) if add_bos else None
    finally:
        llm.close()


def cross_check(
    path: Path, text: str, n_ctx: int = 512, chunks: int = 0, text_name: str = ""
) -> tuple[PerplexityResult, PerplexityResult]:
    """The same GGUF through llama.cpp and through transformers (``gguf_file=``, dequantized to float32), both
    scoring the *same token ids* (llama.cpp's tokenization), so a gap is the arithmetic, not the tokenizers."""
    tokens, bos = llamacpp_tokens(path, text)
    ours = perplexity_llamacpp(path, text, n_ctx, text_name=text_name, chunks=chunks)
    theirs = perplexity_transformers(
        path.parent, text, n_ctx, text_name=text_name, gguf_file=path.name, chunks=chunks, tokens=tokens, bos=bos
    )
    return ours, theirs


def default_text() -> tuple[str, str]:
    """(name, text) of the text shipped for ``perplexity`` when no ``--text`` is given."""
    from webui.lab import sample_text

    return sample_text.NAME, sample_text.TEXT


def perplexity_in_child(
    model: Path,
    text: str,
    n_ctx: int = 512,
    chunks: int = 0,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    text_name: str = "",
) -> dict:
    """:func:`perplexity` in a process of its own (for the server: a native crash costs only that process);
    returns :meth:`PerplexityResult.as_dict` plus the ``line`` to show."""
    from webui.lab.child import run_child

    def on_message(message: dict) -> None:
        if "window" in message and progress is not None:
            progress(message["window"], message["of"], message["ppl"])

    request = {"model": str(model), "text": text, "n_ctx": n_ctx, "chunks": chunks, "text_name": text_name}
    outcome = run_child("webui.lab.perplexity", request, on_message, cancel)
    if outcome.cancelled:
        raise PerplexityError("perplexity cancelled")
    found = outcome.last("result").get("result")
    if found is None:
        raise PerplexityError(outcome.last("error").get("error") or outcome.why())
    return found


def _child(request: dict) -> int:
    from webui.lab.child import emit

    def progress(done: int, total: int, ppl: float) -> None:
        emit({"window": done, "of": total, "ppl": ppl})

    try:
        result = perplexity(
            Path(request["model"]), request["text"], request["n_ctx"], progress=progress,
            text_name=request.get("text_name", ""), chunks=request.get("chunks", 0),
        )  # fmt: skip
    except Exception as exc:  # reported to the parent as the error
        emit({"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, PerplexityError) else str(exc)})
        return 1
    emit({"result": {**result.as_dict(), "line": result.line()}})
    return 0


if __name__ == "__main__":
    import json
    import sys

    sys.exit(_child(json.loads(sys.argv[1])))
