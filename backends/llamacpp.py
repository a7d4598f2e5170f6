"""llama.cpp loader (llama-cpp-python) for GGUF files.

Generation drives ``Llama.generate`` token by token instead of
``create_completion``: that keeps detokenizing incremental (O(1) per token),
lets us poll the cancel flag between tokens and count tokens exactly.
"""

from __future__ import annotations

import codecs
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backends.base import (
    CancelToken,
    Chunk,
    GenerationError,
    Loader,
    LoadSettings,
    Model,
    ModelInfo,
    ModelLoadError,
    SamplingParams,
    StopMatcher,
    Stopwatch,
)
from backends.gguf_file import read_header
from backends.hookspecs import hookimpl

log = logging.getLogger(__name__)


@dataclass
class LlamaCppSettings(LoadSettings):
    n_gpu_layers: int = 0
    n_batch: int = 512
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attn: bool = False


class LlamaCppModel(Model):
    def __init__(self, llm, info: ModelInfo) -> None:  # llm: llama_cpp.Llama
        import llama_cpp

        self._llm = llm
        self._lib = llama_cpp
        self.info = info
        self._cached_prompt: list[int] = []

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._llm._model.vocab, token))

    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        if self._llm is None:
            raise GenerationError("the model was unloaded")
        watch = Stopwatch()
        prompt_tokens = self.tokenize(prompt)
        n_ctx = _usable_ctx(self._llm)
        if len(prompt_tokens) >= n_ctx:
            raise GenerationError(
                f"the prompt is {len(prompt_tokens)} tokens but the context holds {n_ctx}; "
                "shorten it or load the model with a larger context length"
            )
        budget = min(params.max_new_tokens, n_ctx - len(prompt_tokens))
        seed = params.seed if params.seed >= 0 else random.randrange(2**31)
        self._llm.set_seed(seed)
        # llama-cpp-python reuses any common prefix of the KV cache. Reusing only a short stray prefix
        # (e.g. just BOS) changed seeded samples here, so reuse only when this prompt extends the last one
        # (the chat case: previous prompt + reply + new turn); otherwise start clean.
        if prompt_tokens[: len(self._cached_prompt)] != self._cached_prompt:
            self._llm.reset()
        self._cached_prompt = prompt_tokens
        grammar = self._grammar(params.grammar) if params.grammar else None
        logits_processor = None
        if params.ban_eos_token:
            eos = self._llm.token_eos()

            def ban_eos(_ids, logits):
                logits[eos] = -float("inf")
                return logits

            logits_processor = self._lib.LogitsProcessorList([ban_eos])
        stops = StopMatcher(params.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n = 0
        finish = "length"
        pending: list[dict] = []  # log-probabilities of tokens whose text the stop matcher still holds
        tokens = self._llm.generate(
            prompt_tokens,
            temp=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            typical_p=params.typical_p,
            repeat_penalty=params.repetition_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            mirostat_mode=params.mirostat_mode,
            mirostat_tau=params.mirostat_tau,
            mirostat_eta=params.mirostat_eta,
            grammar=grammar,
            logits_processor=logits_processor,
        )
        try:
            for token in tokens:
                if cancel.cancelled:
                    finish = "cancelled"
                    break
                if self._is_eog(token) and not params.ban_eos_token:
                    finish = "stop"
                    break
                n += 1
                watch.mark_token()
                # special=True renders control tokens (e.g. <start_of_turn>) so stop strings can match them
                piece = self._llm.detokenize([token], special=True)
                if params.logprobs >= 0:
                    pending.append(self._logprobs(token, piece, params.logprobs))
                text = stops.feed(decoder.decode(piece))
                if text:
                    yield Chunk(text, logprobs=pending or None)
                    pending = []
                if stops.stopped:
                    finish = "stop"
                    break
                if n >= budget:
                    break
        finally:
            tokens.close()
        if not stops.stopped:
            tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
            if tail:
                yield Chunk(tail, logprobs=pending or None)
        yield Chunk(finish_reason=finish, usage=watch.usage(len(prompt_tokens), n))

    def _logprobs(self, token: int, piece: bytes, top: int) -> dict:
        """Log-probabilities from the logits that chose ``token`` (still in the context until the next eval)."""
        import numpy as np

        n_vocab = self._llm.n_vocab()
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._llm._ctx.ctx, -1), shape=(n_vocab,))
        peak = float(logits.max())
        logprobs = logits - (peak + float(np.log(np.exp(logits - peak).sum())))
        entry = {"token": piece.decode("utf-8", errors="replace"), "logprob": float(logprobs[token]),
                 "bytes": list(piece), "top": []}  # fmt: skip
        if top > 0:
            best = np.argpartition(-logprobs, top)[:top]
            for t in sorted(best.tolist(), key=lambda t: -logprobs[t]):
                alt = self._llm.detokenize([t], special=True)
                entry["top"].append({"token": alt.decode("utf-8", errors="replace"), "logprob": float(logprobs[t]),
                                     "bytes": list(alt)})  # fmt: skip
        return entry

    def _grammar(self, text: str):
        """A LlamaGrammar, parsed once here first: llama.cpp crashes on a grammar it cannot parse."""
        lib = self._lib
        probe = lib.llama_sampler_init_grammar(self._llm._model.vocab, text.encode("utf-8"), b"root")
        if not probe:
            raise GenerationError("the grammar does not parse (GBNF syntax error, or no 'root' rule)")
        lib.llama_sampler_free(probe)
        return lib.LlamaGrammar.from_string(text, verbose=False)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


class LlamaCppLoader(Loader):
    name = "llama.cpp"
    description = "GGUF files through llama-cpp-python (CPU, or GPU with n_gpu_layers)"
    settings_type = LlamaCppSettings
    supported_params = frozenset(
        {
            "temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty",
            "presence_penalty", "frequency_penalty", "seed", "mirostat_mode", "mirostat_tau",
            "mirostat_eta", "grammar", "ban_eos_token", "logprobs",
        }
    )  # fmt: skip
    install_hint = "pip install llama-cpp-python"
    loads = ".gguf files"

    def available(self) -> str | None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            return f"llama-cpp-python is not installed ({exc}); {self.install_hint}"
        return None

    def can_load(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".gguf"

    def check(self, path: Path, settings: LoadSettings | None = None) -> None:
        if not path.is_file():
            raise ModelLoadError(f"{path} is not a file")
        read_header(path)

    def load(self, path: Path, settings: LoadSettings) -> Model:
        if not path.is_file():
            raise ModelLoadError(f"{path} is not a file")
        header = read_header(path)
        missing = self.available()
        if missing:
            raise ModelLoadError(missing)
        import llama_cpp

        try:
            llm = llama_cpp.Llama(**llama_kwargs(path, settings))
        except Exception as exc:
            raise ModelLoadError(f"llama.cpp could not load {path.name}: {exc}") from exc
        vocab = llm._model.vocab
        info = ModelInfo(
            name=path.stem,
            loader=self.name,
            path=str(path),
            architecture=header.architecture,
            parameter_count=header.parameter_count,
            quantization=header.quantization,
            context_length=_usable_ctx(llm),
            chat_template=header.chat_template,
            file_size=path.stat().st_size,
            bos_token=_piece(llm, llama_cpp.llama_vocab_bos(vocab)),
            eos_token=_piece(llm, llama_cpp.llama_vocab_eos(vocab)),
            metadata={k: str(v) for k, v in header.metadata.items() if k.startswith("general.")},
        )
        return LlamaCppModel(llm, info)


def llama_kwargs(path: Path, settings: LoadSettings) -> dict:
    """The ``llama_cpp.Llama`` arguments for ``settings`` (also used by ``inglenook bench`` for its raw baseline)."""
    if not isinstance(settings, LlamaCppSettings):
        settings = LlamaCppSettings(n_ctx=settings.n_ctx, threads=settings.threads)
    threads = settings.threads or max(1, (os.cpu_count() or 2))
    return {
        "model_path": str(path),
        "n_ctx": settings.n_ctx,
        "n_threads": threads,
        "n_threads_batch": threads,
        "n_gpu_layers": settings.n_gpu_layers,
        "n_batch": settings.n_batch,
        "use_mmap": settings.use_mmap,
        "use_mlock": settings.use_mlock,
        "flash_attn": settings.flash_attn,
        "verbose": False,
    }


def _usable_ctx(llm) -> int:
    """The context a prompt may fill: llama.cpp pads a small n_ctx up (to 256), but llama-cpp-python's token
    buffer keeps the size asked for, and a longer prompt overflows it (a numpy broadcast error)."""
    return min(llm.n_ctx(), len(llm.input_ids))


def _piece(llm, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


@hookimpl
def register_loaders(register) -> None:
    register(LlamaCppLoader())
