"""llama.cpp loader (llama-cpp-python) for GGUF files.

Generation drives ``Llama.generate`` token by token instead of
``create_completion``: that keeps detokenizing incremental (O(1) per token),
lets us poll the cancel flag between tokens and count tokens exactly.

Sampling is our own llama.cpp sampler chain (:func:`sampler_plan`), not the
fixed one ``Llama.generate`` builds: that one has no DRY, XTC, dynamic
temperature or sampler order, and its penalties never see the prompt.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backends.base import (
    SAMPLER_NAMES,
    CancelToken,
    Chunk,
    GenerationError,
    Loader,
    LoadProgress,
    LoadSettings,
    Model,
    ModelInfo,
    ModelLoadError,
    ModelNotLoaded,
    PromptTooLong,
    SamplingParams,
    StopMatcher,
    Stopwatch,
)
from backends.cpu import ThreadGovernor, cpu_info
from backends.gguf_file import read_header
from backends.hookspecs import hookimpl
from backends.llamacpp_cache import MB, MIN_PREFIX, PrefixCache, common_prefix, read_seq_state, write_seq_state

log = logging.getLogger(__name__)
EMBED_CTX_MAX = 4096  # the longest input embed() takes, in tokens (its context is allocated at this size)


@dataclass
class LlamaCppSettings(LoadSettings):
    n_gpu_layers: int = 0
    n_batch: int = 512
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attn: bool = False
    # llama.cpp's extra buffer types (weight repacking, and AMX on CPUs that advertise it). auto = on, unless
    # the CPU advertises AMX: then the app's probe decides (webui/hardware.py), and without a probe, off.
    extra_buffer_types: Literal["auto", "on", "off"] = "auto"
    # Generations decoded together in one batch (continuous batching, llama-server's --parallel): 1 = one at a
    # time (requests beyond it wait in the engine's fair queue); 0 = auto (parallel_slots). Each of them gets
    # the whole n_ctx: the KV cache is unified and holds parallel × n_ctx cells.
    parallel: int = 1
    # The per-conversation KV cache (backends/llamacpp_cache.py): the states of the last conversations' prompts,
    # kept so that going back to one reads only its new turn. RAM budget in MB (0 = off), and a disk budget
    # under user_data/cache/kv/ (0 = off; what RAM evicts goes there).
    kv_cache_ram_mb: int = 512
    kv_cache_disk_mb: int = 0
    # Speculative decoding by prompt lookup (backends/llamacpp_draft.py): guess up to draft_tokens next tokens
    # from the text so far and check them in one batch. Greedy generations only (temperature 0 / do_sample off,
    # without logprobs), where the output is exactly what it is without drafting; others decode as usual.
    draft: Literal["off", "prompt-lookup"] = "off"
    draft_tokens: int = 8


# Decides ``auto`` for a model path: (use extra buffer types, why). The app supplies one that probes once per
# machine (webui.hardware.ExtraBufferPolicy); it must pickle, as the loader travels to the model's worker process.
AutoExtraBuffers = Callable[[Path], tuple[bool, str]]


def decide_extra_buffers(
    setting: str, path: Path, policy: AutoExtraBuffers | None, amx: bool | None = None
) -> tuple[bool, str]:
    """Whether to load with llama.cpp's extra buffer types, and the reason, in words, for the Model info panel."""
    if setting not in ("auto", "on", "off"):
        raise ModelLoadError(f"extra_buffer_types must be auto, on or off, not {setting!r}")
    if setting == "on":
        return True, "on (set explicitly)"
    if setting == "off":
        return False, "off (set explicitly)"
    if amx is None:
        amx = cpu_info().amx
    if not amx:
        return True, "on (auto: this CPU advertises no AMX; llama.cpp's default)"
    if policy is None:
        return False, "off (auto: this CPU advertises AMX and no probe was run, so the safe choice)"
    return policy(path)


# Llama() builds its model parameters itself and has no argument for use_extra_bufts; loads swap the defaults
# function it calls, one load at a time (a lock, not state: it holds nothing between loads).
_PARAMS_LOCK = threading.Lock()


@contextmanager
def model_params(use_extra_bufts: bool, n_seq_max: int = 1, progress: LoadProgress | None = None) -> Iterator[None]:
    """Loads inside this block get ``llama_model_params.use_extra_bufts = use_extra_bufts`` (and llama.cpp's
    ``progress_callback`` calling ``progress`` with the fraction loaded, when given) and, with
    ``n_seq_max > 1``, a context of that many sequences, each with its own KV stream (``kv_unified = false``,
    llama-server's default): a unified cache interleaves the sequences' cells, and the attention's sums then
    run in another order than in a lone run, so greedy output would depend on the other streams."""
    from llama_cpp import llama_cpp as lib

    with _PARAMS_LOCK:
        original = lib.llama_model_default_params
        original_context = lib.llama_context_default_params

        def defaults():
            params = original()
            params.use_extra_bufts = use_extra_bufts
            if progress is not None:  # the struct keeps the ctypes callback alive as long as the params live
                params.progress_callback = lib.llama_progress_callback(_progress_callback(progress))
            return params

        def context_defaults():
            params = original_context()
            if n_seq_max > 1:
                params.n_seq_max = n_seq_max
                params.kv_unified = False  # a KV stream per sequence: cells in the order a lone run has them
            return params

        lib.llama_model_default_params = defaults
        lib.llama_context_default_params = context_defaults
        try:
            yield
        finally:
            lib.llama_model_default_params = original
            lib.llama_context_default_params = original_context


def _progress_callback(progress: LoadProgress) -> Callable[[float, object], bool]:
    """llama.cpp's progress callback around ``progress``: never raises into C, never aborts the load."""

    def callback(fraction: float, _user_data: object) -> bool:
        try:
            progress(float(fraction))
        except Exception:  # a broken listener must not end the load
            log.debug("load progress listener failed", exc_info=True)
        return True

    return callback


# A drafted pick is taken from a batched decode only when its top logit leads the runner-up by this much: more
# than the batched and the lone decode of the same position were measured to differ (~0.2 on gemma-3-270m).
DRAFT_MARGIN = 1.0
# After drafts that all missed, drafting rests 1, 3, 7, ... steps (at most this many) before guessing again.
DRAFT_REST_MAX = 32
MAX_PARALLEL = 8  # more sequences than this gain nothing on a CPU and cost KV memory
AUTO_KV_CELLS = 32768  # auto parallel keeps parallel × n_ctx within this many KV cells


def parallel_slots(setting: int, n_ctx: int, cores: int) -> int:
    """The sequences to decode together for the ``parallel`` setting (0 = auto).

    Auto: 4 (a CPU's decode is bound by memory bandwidth, so a batch of 4 costs little more than one token;
    llama-server and LM Studio use 4 too), fewer when the unified KV cache (4 × n_ctx) would pass
    ``AUTO_KV_CELLS``, and 1 on a single core (nothing to win there, the batch's prompt chunks slow every stream).
    """
    if setting < 0:
        raise ModelLoadError(f"parallel must be 0 (auto) or a number of sequences, not {setting}")
    if setting > 0:
        return min(setting, MAX_PARALLEL)
    if cores < 2:
        return 1
    return max(1, min(4, AUTO_KV_CELLS // max(1, n_ctx)))


class LlamaCppModel(Model):
    def __init__(
        self,
        llm,
        info: ModelInfo,
        governor: ThreadGovernor | None = None,
        parallel: int = 1,
        n_ctx: int = 0,
        kv_cache: PrefixCache | None = None,
        draft_tokens: int = 0,
    ) -> None:
        """``llm``: a ``llama_cpp.Llama``; ``governor``: picks the decode threads as the load changes (None
        when the user set ``threads``: then that count is obeyed); ``parallel`` > 1: a batch decoder of that
        many sequences of ``n_ctx`` each; ``kv_cache``: where the states of earlier prompts are kept;
        ``draft_tokens`` > 0: greedy generations draft that many tokens by prompt lookup."""
        import llama_cpp

        self._llm = llm
        self._lib = llama_cpp
        self.info = info
        self._governor = governor
        self._threads = llm.context_params.n_threads
        self._cached_prompt: list[int] = []
        self.kv_cache = kv_cache if kv_cache is not None and kv_cache.enabled else None
        self._sampler = None  # the chain for the generation about to start (see _take_sampler)
        self._embed_ctx = None  # (context, batch, size) for embed(), made on first use
        # Llama.generate builds its sampler through this method; ours hands it the chain built from our plan.
        llm._init_sampler = self._take_sampler
        self.parallel = parallel
        self.draft_tokens = draft_tokens if parallel == 1 else 0
        self._batch = None
        if parallel > 1:
            from backends.llamacpp_batch import BatchDecoder

            self._batch = BatchDecoder(llm, parallel, n_ctx, self._is_eog, self._logprobs, self.kv_cache)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._llm._model.vocab, token))

    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        if self._llm is None:
            raise ModelNotLoaded("the model was unloaded")
        if self._batch is not None:
            yield from self._generate_batched(prompt, params, cancel)
            return
        watch = Stopwatch()
        prompt_tokens = self.tokenize(prompt)
        n_ctx = _usable_ctx(self._llm)
        if len(prompt_tokens) >= n_ctx:
            raise PromptTooLong(
                f"the prompt is {len(prompt_tokens)} tokens but the context holds {n_ctx}; "
                "shorten it or load the model with a larger context length"
            )
        budget = min(params.max_new_tokens, n_ctx - len(prompt_tokens))
        seed = params.seed if params.seed >= 0 else random.randrange(2**31)
        self._llm.set_seed(seed)
        # llama-cpp-python reuses any common prefix of the KV cache. Reusing only a short stray prefix
        # (e.g. just BOS) changed seeded samples here, so reuse when this prompt extends the last one
        # (the chat case: previous prompt + reply + new turn); otherwise the KV cache's state is kept in the
        # per-conversation cache and the longest cached prefix of this prompt is restored (or we start clean).
        if not self._cached_prompt or prompt_tokens[: len(self._cached_prompt)] != self._cached_prompt:
            self._switch_kv(prompt_tokens)
        self._cached_prompt = prompt_tokens
        held = self._llm._input_ids[: self._llm.n_tokens].tolist()
        cached = min(common_prefix(held, prompt_tokens), len(prompt_tokens) - 1)  # Llama.generate reads the rest
        if params.grammar:
            self._check_grammar(params.grammar)
        plan = sampler_plan(params, seed, n_ctx, self._eog_tokens())
        self._sampler = self.build_sampler(plan, prompt_tokens)
        stops = StopMatcher(params.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        n = 0
        finish = "length"
        pending: list[dict] = []  # log-probabilities of tokens whose text the stop matcher still holds
        # drafting picks the top logit itself: only for a plain greedy chain (no penalties, grammar or bias)
        drafting = self.draft_tokens > 0 and plan == [("greedy", {})] and params.logprobs < 0
        tally = [0, 0]  # tokens drafted, drafts accepted
        if drafting:
            tokens = self._drafted_tokens(prompt_tokens, min(self.draft_tokens, max(0, budget - 1)), tally)
        else:
            tokens = self._llm.generate(prompt_tokens)  # samples with self._sampler (see _take_sampler)
        last = 0.0  # when the previous token came (the first one's time is the prompt's: not timed)
        try:
            for token in tokens:
                if cancel.cancelled:
                    finish = "cancelled"
                    break
                if self._governor is not None and not drafting:  # drafting times its decodes itself (per token)
                    now = time.perf_counter()
                    if last:
                        self._set_threads(self._governor.observe(now - last))
                    last = now
                if self._is_eog(token) and not params.ban_eos_token:
                    finish = "stop"
                    break
                n += 1
                watch.mark_token()
                # special=True renders control tokens (e.g. <start_of_turn>) so stop strings can match them
                piece = self._llm.detokenize([token], special=True)
                if params.logprobs >= 0:
                    pending.append(self._logprobs(-1, token, piece, params.logprobs))
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
        usage = watch.usage(len(prompt_tokens), n)
        usage.cached_tokens = max(0, cached)
        usage.draft_tokens, usage.draft_accepted = tally
        yield Chunk(finish_reason=finish, usage=usage)

    # -- prompt-lookup drafting (parallel = 1, greedy) -------------------------------------------------------
    def _drafted_tokens(self, prompt_tokens: list[int], n_draft: int, tally: list[int]) -> Iterator[int]:
        """The greedy tokens of ``prompt_tokens``' continuation, as ``Llama.generate`` yields them, decoded with
        prompt-lookup drafts: each step decodes the token just picked and up to ``n_draft`` guesses in one batch,
        then picks (the top logit) at each position in turn while the guesses match. ``tally``: [drafted,
        accepted].

        llama.cpp's kernels are not batch-invariant: a logit computed in a batch of several tokens differs in its
        last bits (measured here: up to ~0.2) from the same logit decoded alone, so a near tie could go the other
        way than without drafting. A pick whose margin over the runner-up is under ``DRAFT_MARGIN`` is therefore
        never taken from the batch: the token before it is decoded again alone, as without drafting, and the
        pick comes from that decode.

        The KV cache holds every decoded token; ``Llama``'s record of them (``input_ids``, ``n_tokens``) is kept
        in step, so the next prompt reuses (and the per-conversation cache keeps) them as usual."""
        import numpy as np

        from backends.llamacpp_draft import lookup_draft

        llm, lib = self._llm, self._lib
        ctx = llm._ctx.ctx
        self._sampler = None  # a pure greedy chain: the top logit is its pick
        n_vocab = llm.n_vocab()

        def pick(index: int) -> tuple[int, float]:
            """(the top token at batch ``index``, its margin over the runner-up)."""
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
            best = int(np.argmax(logits))  # the first of equal maxima, as llama.cpp's greedy sampler
            top = float(logits[best])
            logits[best] = -np.inf  # the logits buffer is rewritten by the next decode
            margin = top - float(logits.max())
            logits[best] = top
            return best, margin

        def decode(tokens: list[int], past: int, batch) -> None:
            batch.n_tokens = len(tokens)
            for i, t in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, past + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            started = time.perf_counter()
            rc = lib.llama_decode(ctx, batch)
            if rc != 0:
                raise GenerationError(f"llama_decode returned {rc}" + (" (the context is full)" if rc == 1 else ""))
            if self._governor is not None:  # a busy core stalls a batch as it stalls one token: time it per token
                self._set_threads(self._governor.observe((time.perf_counter() - started) / len(tokens)))
            llm.input_ids[past : past + len(tokens)] = tokens
            llm.n_tokens = past + len(tokens)

        held = llm._input_ids[: llm.n_tokens].tolist()
        reuse = min(common_prefix(held, prompt_tokens), len(prompt_tokens) - 1)  # as Llama.generate does
        if reuse > 0 and llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            llm.n_tokens = reuse
        else:
            llm.reset()
        llm.eval(prompt_tokens[llm.n_tokens :])
        n_ctx = _usable_ctx(llm)
        history = list(prompt_tokens)
        batch = lib.llama_batch_init(n_draft + 1, 0, 1)
        misses = resting = 0  # drafts in a row that gained nothing; steps to decode without one (backing off)
        try:
            token = pick(-1)[0]
            while True:
                yield token
                history.append(token)
                past = llm.n_tokens
                draft = lookup_draft(history, min(n_draft, n_ctx - past - 1)) if n_draft and not resting else []
                resting = max(0, resting - 1)
                fed = [token, *draft]
                decode(fed, past, batch)
                tally[0] += len(draft)
                before = tally[1]
                for i in range(len(fed)):
                    token, margin = pick(i)
                    if len(fed) > 1 and margin < DRAFT_MARGIN:  # a near tie: decided as without drafting
                        llm._ctx.kv_cache_seq_rm(0, past + i, -1)
                        decode([fed[i]], past + i, batch)
                        token = pick(0)[0]
                        break
                    if i == len(draft) or token != draft[i]:
                        break  # a miss (or the guesses ran out): the token picked here is decoded next step
                    tally[1] += 1
                    yield token
                    history.append(token)
                if draft:  # guesses that keep missing (text that does not repeat) cost a wider decode for nothing
                    misses = 0 if tally[1] > before else misses + 1
                    resting = min(DRAFT_REST_MAX, 2**misses - 1)
                kept = past + 1 + i  # the cells of the tokens picked so far; the rest were wrong guesses
                if kept < llm.n_tokens:
                    llm._ctx.kv_cache_seq_rm(0, kept, -1)
                    llm.n_tokens = kept
        finally:
            lib.llama_batch_free(batch)

    # -- the per-conversation KV cache (parallel = 1; the batch decoder keeps its slots' states itself) --------
    def _switch_kv(self, prompt_tokens: list[int]) -> None:
        """Give the KV cache to ``prompt_tokens``: keep what it holds in :attr:`kv_cache`, then restore the cached
        state sharing the longest start with the prompt (at least ``MIN_PREFIX`` tokens), keep the live one if it
        shares more, or start clean."""
        llm = self._llm
        cache = self.kv_cache
        if cache is not None:
            held = tuple(llm._input_ids[: llm.n_tokens].tolist())
            match = cache.best_match(prompt_tokens)
            if match is not None and match[1] <= common_prefix(held, prompt_tokens):
                match = None  # what the KV cache holds shares as much: keep it (Llama.generate trims the rest)
            state = cache.get(match[0]) if match is not None else None  # taken first: keeping ours may evict it
            if len(held) >= MIN_PREFIX and held not in cache:
                cache.put(held, self._kv_state())
            if state is not None and self._restore_kv(match[0], state):
                return  # Llama.generate drops the cells past the shared start and reads the rest
            if common_prefix(held, prompt_tokens) >= MIN_PREFIX:
                return
        llm.reset()

    def _kv_state(self) -> bytes:
        """The state of sequence 0 (its K/V cells), as llama.cpp serialises it."""
        return read_seq_state(self._lib, self._llm._ctx.ctx, 0)

    def _restore_kv(self, tokens: tuple[int, ...], state: bytes) -> bool:
        """Make the KV cache hold ``tokens`` from their saved ``state``; False (and a clean cache) if llama.cpp
        refuses it (e.g. a state from another context size)."""
        llm, lib = self._llm, self._lib
        lib.llama_memory_clear(lib.llama_get_memory(llm._ctx.ctx), True)
        if len(tokens) >= len(llm.input_ids) or not write_seq_state(lib, llm._ctx.ctx, state, 0):
            log.warning("a cached KV state of %d tokens did not load; the prompt is read in full", len(tokens))
            llm.reset()
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        llm._requires_eval = True  # the logits are not restored: Llama.generate reads at least one token again
        return True

    def forget_kv(self) -> None:
        """Empty the KV cache and the RAM tier of the per-conversation cache (``inglenook bench`` times cold
        prompts)."""
        if self._batch is not None:
            self._batch.forget()
        self._llm.reset()
        self._cached_prompt = []
        if self.kv_cache is not None:
            self.kv_cache.clear()

    @property
    def decode_threads(self) -> int:
        """The threads llama.cpp decodes with now (the governor may have lowered them)."""
        return int(self._lib.llama_n_threads(self._llm._ctx.ctx))

    @property
    def tokens_at_threads(self) -> dict[int, int]:
        """Tokens decoded per thread count so far (empty without a governor)."""
        return dict(self._governor.tokens_at) if self._governor is not None else {}

    def _set_threads(self, threads: int) -> None:
        """Decode (and the next prompt's batch) with ``threads`` from the next step on."""
        if threads != self._threads:
            self._lib.llama_set_n_threads(self._llm._ctx.ctx, threads, threads)
            self._threads = threads
            log.debug("decode threads now %d", threads)

    def _generate_batched(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        """``generate`` as one sequence of the batch decoder: prepared here, decoded on the decoder's thread."""
        from backends.llamacpp_batch import Job

        prompt_tokens = self.tokenize(prompt)
        n_ctx = self._batch.n_ctx_seq
        if len(prompt_tokens) >= n_ctx:
            raise PromptTooLong(
                f"the prompt is {len(prompt_tokens)} tokens but the context holds {n_ctx}; "
                "shorten it or load the model with a larger context length"
            )
        seed = params.seed if params.seed >= 0 else random.randrange(2**31)
        if params.grammar:
            self._check_grammar(params.grammar)
        plan = sampler_plan(params, seed, n_ctx, self._eog_tokens())
        job = Job(
            prompt=prompt_tokens,
            params=params,
            sampler=self.build_sampler(plan, prompt_tokens),
            budget=min(params.max_new_tokens, n_ctx - len(prompt_tokens)),
            cancel=cancel,
        )
        yield from self._batch.submit(job)

    def _logprobs(self, index: int, token: int, piece: bytes, top: int) -> dict:
        """Log-probabilities from the logits (of batch position ``index``, -1 = the last) that chose ``token``."""
        import numpy as np

        n_vocab = self._llm.n_vocab()
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._llm._ctx.ctx, index), shape=(n_vocab,))
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

    def _check_grammar(self, text: str) -> None:
        """Parse the grammar once on its own first: llama.cpp crashes on a grammar it cannot parse."""
        lib = self._lib
        probe = lib.llama_sampler_init_grammar(self._llm._model.vocab, text.encode("utf-8"), b"root")
        if not probe:
            raise GenerationError("the grammar does not parse (GBNF syntax error, or no 'root' rule)")
        lib.llama_sampler_free(probe)

    def _eog_tokens(self) -> list[int]:
        vocab = self._llm._model.vocab
        found = {self._lib.llama_vocab_eos(vocab), self._lib.llama_vocab_eot(vocab)}
        return sorted(t for t in found if t >= 0)

    def build_sampler(self, plan: list[tuple[str, dict]], prompt_tokens: list[int] | None = None):
        """A llama.cpp sampler chain (``_internals.LlamaSampler``) holding ``plan``'s steps in order.

        The penalty and DRY samplers are shown the end of the prompt (their range) before generation
        starts, so a repetition of the prompt is penalised too, as in text-generation-webui.
        """
        from llama_cpp import _internals

        lib, llm = self._lib, self._llm
        chain = _internals.LlamaSampler()
        n_vocab = lib.llama_vocab_n_tokens(llm._model.vocab)
        for name, args in plan:
            if name == "grammar":
                chain.add_grammar(llm._model, lib.LlamaGrammar.from_string(args["grammar"], verbose=False))
            elif name == "dry":
                chain.add_dry(llm._model, **args)
            elif name in ("penalties", "logit_bias", "mirostat"):
                getattr(chain, f"add_{name}")(n_vocab=n_vocab, **args)
            else:
                getattr(chain, f"add_{name}")(**args)
        for i, (name, args) in enumerate(plan):
            last_n = args.get("penalty_last_n", args.get("dry_penalty_last_n"))
            if name in ("penalties", "dry") and prompt_tokens:
                step = lib.llama_sampler_chain_get(chain.sampler, i)
                for token in prompt_tokens[-last_n:]:
                    lib.llama_sampler_accept(step, token)
        return chain

    def _take_sampler(self, **_llama_defaults):
        """Stands in for ``Llama._init_sampler``: the chain :meth:`generate` prepared, used once."""
        if self._sampler is None:
            raise GenerationError("internal error: no sampler was prepared for this generation")
        sampler, self._sampler = self._sampler, None
        return sampler

    def embed(self, texts: list[str]) -> list[list[float]]:
        """L2-normalised embeddings from a second llama.cpp context on the same weights, made with
        ``embeddings=True`` on first use: the generation context is untouched (its KV cache, its settings), and
        a model that never embeds never pays for it. Pooling is the GGUF's own (``ARCH.pooling_type``: an
        embedding model's mean or CLS); a model without one (a chat model) is mean-pooled."""
        if self._llm is None:
            raise ModelNotLoaded("the model was unloaded")
        from llama_cpp import _internals

        ctx, batch, n_ctx = self._embedder()
        n_embd = self._lib.llama_model_n_embd(self._llm._model.model)
        vectors = []
        for text in texts:
            tokens = self.tokenize(text)
            if len(tokens) > n_ctx:
                raise PromptTooLong(f"an input is {len(tokens)} tokens but the embedding context holds {n_ctx}")
            batch.reset()
            batch.add_sequence(tokens, 0, True)
            ctx.kv_cache_clear()
            ctx.decode(batch)
            pooled = self._lib.llama_get_embeddings_seq(ctx.ctx, 0)
            if not pooled:
                raise GenerationError(f"{self.info.name}: llama.cpp returned no pooled embedding")
            vectors.append(_internals.normalize_embedding(list(pooled[:n_embd])))
        return vectors

    def _embedder(self):
        """(context, batch, its size) for embeddings, made once; pooling from the GGUF, else mean."""
        if self._embed_ctx is not None:
            return self._embed_ctx
        from llama_cpp import _internals

        lib, llm = self._lib, self._llm
        # its own KV cache: kept small (a chat model's 32k context would double its memory), within training
        n_ctx = min(llm.n_ctx(), lib.llama_model_n_ctx_train(llm._model.model) or EMBED_CTX_MAX, EMBED_CTX_MAX)
        for pooling in (lib.LLAMA_POOLING_TYPE_UNSPECIFIED, lib.LLAMA_POOLING_TYPE_MEAN):
            params = lib.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = n_ctx  # a whole input in one ubatch (non-causal)
            params.n_seq_max = 1
            params.n_threads, params.n_threads_batch = llm.n_threads, llm.n_threads_batch
            params.embeddings = True
            params.pooling_type = pooling
            ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
            if ctx.pooling_type() != lib.LLAMA_POOLING_TYPE_NONE:
                break
            ctx.close()  # the GGUF names no pooling: mean, next round
        batch = _internals.LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=1, verbose=False)
        self._embed_ctx = (ctx, batch, n_ctx)
        return self._embed_ctx

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()  # its thread decodes with the context: stopped before the context is freed
            self._batch = None
        if self._embed_ctx is not None:
            ctx, batch, _ = self._embed_ctx
            batch.close()
            ctx.close()
            self._embed_ctx = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None


class LlamaCppLoader(Loader):
    name = "llama.cpp"
    description = "GGUF files through llama-cpp-python (CPU, or GPU with n_gpu_layers)"
    settings_type = LlamaCppSettings
    supported_params = frozenset(
        {
            "temperature", "top_p", "top_k", "min_p", "typical_p", "top_n_sigma", "repetition_penalty",
            "repetition_penalty_range", "presence_penalty", "frequency_penalty", "dry_multiplier", "dry_base",
            "dry_allowed_length", "dry_sequence_breakers", "xtc_threshold", "xtc_probability",
            "dynamic_temperature", "dynatemp_low", "dynatemp_high", "dynatemp_exponent", "temperature_last",
            "mirostat_mode", "mirostat_tau", "mirostat_eta", "do_sample", "seed", "grammar", "ban_eos_token",
            "sampler_priority", "logprobs",
        }
    )  # fmt: skip
    install_hint = "pip install llama-cpp-python"
    loads = ".gguf files"

    def __init__(self, auto_extra_buffers: AutoExtraBuffers | None = None, cache_dir: Path | None = None) -> None:
        """``cache_dir``: the folder of the KV cache's disk tier (the app gives ``user_data/cache/kv``)."""
        self.auto_extra_buffers = auto_extra_buffers
        self.cache_dir = cache_dir

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
        if isinstance(settings, LlamaCppSettings) and settings.extra_buffer_types not in ("auto", "on", "off"):
            raise ModelLoadError(f"extra_buffer_types must be auto, on or off, not {settings.extra_buffer_types!r}")
        if isinstance(settings, LlamaCppSettings):
            parallel_slots(settings.parallel, settings.n_ctx, usable_cores())
            self._check_kv_cache(settings)
            _check_draft(settings)
        read_header(path)

    def _check_kv_cache(self, settings: LlamaCppSettings) -> None:
        if settings.kv_cache_ram_mb < 0 or settings.kv_cache_disk_mb < 0:
            raise ModelLoadError("kv_cache_ram_mb and kv_cache_disk_mb must be 0 (off) or a number of megabytes")
        if settings.kv_cache_disk_mb and self.cache_dir is None:
            raise ModelLoadError("kv_cache_disk_mb needs a cache folder (the app's user_data/cache), and there is none")

    def _kv_cache(self, path: Path, settings: LoadSettings, kwargs: dict, parallel: int) -> PrefixCache | None:
        """The per-conversation KV cache for a model loaded with ``kwargs`` (None when off). With ``parallel`` > 1
        it holds the states of conversations whose slot went to another prompt."""
        if not isinstance(settings, LlamaCppSettings):
            return None
        self._check_kv_cache(settings)
        if not (settings.kv_cache_ram_mb or settings.kv_cache_disk_mb):
            return None
        import llama_cpp

        stat = path.stat()
        # a state fits only the same weights, context and cache types: a file of another is never read
        fingerprint = (f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|n_ctx={kwargs['n_ctx']}|"
                       f"flash_attn={kwargs['flash_attn']}|parallel={parallel}|"
                       f"llama-cpp-python {llama_cpp.__version__}")  # fmt: skip
        return PrefixCache(settings.kv_cache_ram_mb * MB, settings.kv_cache_disk_mb * MB, self.cache_dir, fingerprint)

    def load_reporting(self, path: Path, settings: LoadSettings, progress: LoadProgress) -> Model:
        """:meth:`load` with llama.cpp's own progress (tensors read), then 1.0."""
        model = self.load(path, settings, progress)
        progress(1.0)
        return model

    def load(self, path: Path, settings: LoadSettings, progress: LoadProgress | None = None) -> Model:
        if not path.is_file():
            raise ModelLoadError(f"{path} is not a file")
        header = read_header(path)
        missing = self.available()
        if missing:
            raise ModelLoadError(missing)
        import llama_cpp

        chosen = settings.extra_buffer_types if isinstance(settings, LlamaCppSettings) else "auto"
        kwargs = llama_kwargs(path, settings)
        setting = settings.parallel if isinstance(settings, LlamaCppSettings) else 1
        parallel = parallel_slots(setting, kwargs["n_ctx"], usable_cores())
        if parallel > 1 and chosen == "auto":
            # The repacked kernels compute a batch's rows in groups of 4 (gemm) and the rest one by one (gemv),
            # so a stream's logits would depend on which other streams share its step (measured: greedy
            # replies diverged after a few words). Off, each row is computed as in a lone run.
            use_extra_bufts, why = False, "off (auto: parallel decoding needs batch-independent kernels)"
        else:
            use_extra_bufts, why = decide_extra_buffers(chosen, path, self.auto_extra_buffers)
        log.info("%s: extra buffer types %s", path.name, why)
        if parallel > 1:
            if kwargs["n_ctx"] <= 0:
                raise ModelLoadError("parallel decoding needs an explicit n_ctx (the context of each sequence)")
            kwargs["n_ctx"] *= parallel  # unified KV: each sequence may fill n_ctx of the parallel × n_ctx cells
        try:
            with model_params(use_extra_bufts, parallel, progress):
                llm = llama_cpp.Llama(**kwargs)
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
            context_length=_usable_ctx(llm) if parallel == 1 else settings.n_ctx,
            chat_template=header.chat_template,
            file_size=path.stat().st_size,
            bos_token=_piece(llm, llama_cpp.llama_vocab_bos(vocab)),
            eos_token=_piece(llm, llama_cpp.llama_vocab_eos(vocab)),
            metadata={
                **{k: str(v) for k, v in header.metadata.items() if k.startswith("general.")},
                "inglenook.extra_buffer_types": why,
                "inglenook.parallel": str(parallel),
            },
        )
        explicit = (settings.threads or 0) > 0
        # the governor times the one-sequence decode; the batch decoder keeps the threads it was given
        governor = None if explicit or parallel > 1 else ThreadGovernor(llm.context_params.n_threads)
        try:
            kv_cache = self._kv_cache(path, settings, kwargs, parallel)
        except Exception:
            llm.close()
            raise
        draft = settings.draft_tokens if isinstance(settings, LlamaCppSettings) and settings.draft != "off" else 0
        return LlamaCppModel(llm, info, governor, parallel, settings.n_ctx, kv_cache, draft)


def ensure_backends() -> None:
    """Load ggml's CPU backend when llama-cpp-python was built portable (``GGML_BACKEND_DL``: one
    ``libggml-cpu-<variant>.so`` per CPU generation beside the library, the best one chosen at run time).

    ggml looks for them beside the Python executable and in the working directory, not in ``llama_cpp/lib``,
    so without this a portable build loads no backend at all. A no-op for a native build (one libggml-cpu.so).
    """
    import ctypes

    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    if not any(lib_dir.glob("libggml-cpu-*")):
        return
    ggml = _ggml()
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    if ggml.ggml_backend_reg_count() == 0:
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())


def _ggml():
    """ggml's functions as libllama sees them: looked up through libllama's own handle (its dependencies), never
    by opening a libggml file again (the wheel holds copies, not links: a second copy has its own registry)."""
    from llama_cpp import llama_cpp as lib

    return lib._lib


def ggml_cpu_report() -> dict:
    """Which ggml CPU backend this process runs (the library file, the features it was built with) and the
    extra buffer types it offers (e.g. CPU_REPACK, AMX), as ggml itself reports them."""
    import ctypes

    import llama_cpp

    ensure_backends()
    llama_cpp.llama_backend_init()  # loads the backends of a native build (idempotent)
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    ggml = base = _ggml()
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    report: dict = {"library": "", "portable": any(lib_dir.glob("libggml-cpu-*")), "features": {}, "buffer_types": []}
    try:
        maps = Path("/proc/self/maps").read_text()
        report["library"] = next((Path(x.split()[-1]).name for x in maps.splitlines() if "libggml-cpu" in x), "")
    except OSError:
        pass
    reg = ggml.ggml_backend_reg_by_name(b"CPU")
    if not reg:
        return report

    class Feature(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]

    features_fn = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
    if features_fn:
        feats = ctypes.CFUNCTYPE(ctypes.POINTER(Feature), ctypes.c_void_p)(features_fn)(reg)
        i = 0
        while feats[i].name:
            report["features"][feats[i].name.decode()] = feats[i].value.decode()
            i += 1
    bufts_fn = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if bufts_fn:
        dev = base.ggml_backend_reg_dev_get(reg, 0)
        bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(bufts_fn)(dev)
        i = 0
        while bufts and bufts[i]:
            report["buffer_types"].append(base.ggml_backend_buft_name(bufts[i]).decode())
            i += 1
    return report


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask / cpuset), not every core the machine has."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def decode_threads(requested: int, usable: int) -> int:
    """llama.cpp's threads: ``requested`` if given (> 0), else one per usable core.

    One per core is fastest on an idle machine; under a competing load the model's
    :class:`backends.cpu.ThreadGovernor` lowers the count while that is faster (unless ``threads`` was set).
    More threads than usable cores never help.
    """
    return requested if requested > 0 else max(1, usable)


def llama_kwargs(path: Path, settings: LoadSettings) -> dict:
    """The ``llama_cpp.Llama`` arguments for ``settings`` (also used by ``inglenook bench`` for its raw baseline)."""
    if not isinstance(settings, LlamaCppSettings):
        settings = LlamaCppSettings(n_ctx=settings.n_ctx, threads=settings.threads)
    ensure_backends()  # a portable build's CPU backend, before the first Llama() (bench's raw baseline too)
    threads = decode_threads(settings.threads or 0, usable_cores())
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


# sampler_priority names -> the llama.cpp sampler that implements them (names it has no sampler for are skipped)
_STAGE = {
    "repetition_penalty": "penalties", "presence_penalty": "penalties", "frequency_penalty": "penalties",
    "dry": "dry", "temperature": "temp", "dynamic_temperature": "temp", "top_n_sigma": "top_n_sigma",
    "top_k": "top_k", "top_p": "top_p", "typical_p": "typical", "min_p": "min_p", "xtc": "xtc",
}  # fmt: skip


def sampler_plan(params: SamplingParams, seed: int, n_ctx: int, eog_tokens: list[int]) -> list[tuple[str, dict]]:
    """The llama.cpp sampler chain for ``params``: ``(sampler, arguments)`` steps in the order they apply.

    Each step names a ``LlamaSampler.add_<sampler>`` method and its arguments. A sampler whose parameters
    are neutral is left out, so the plan shows exactly what acts on the model's choice. The order follows
    ``sampler_priority`` (text-generation-webui's names); ``temperature_last`` moves temperature to the end.
    Greedy decoding (temperature 0 or ``do_sample: false``) keeps only the penalties before picking the top
    token; Mirostat replaces the truncation samplers, as it does in llama.cpp and text-generation-webui.
    """
    last_n = params.repetition_penalty_range or n_ctx
    stages: dict[str, tuple[str, dict]] = {}
    if params.repetition_penalty != 1 or params.presence_penalty or params.frequency_penalty:
        stages["penalties"] = ("penalties", {
            "penalty_last_n": last_n, "penalty_repeat": params.repetition_penalty,
            "penalty_freq": params.frequency_penalty, "penalty_present": params.presence_penalty,
        })  # fmt: skip
    if params.dry_multiplier > 0:
        stages["dry"] = ("dry", {
            "dry_multiplier": params.dry_multiplier, "dry_base": params.dry_base,
            "dry_allowed_length": params.dry_allowed_length, "dry_penalty_last_n": last_n,
            "seq_breakers": dry_breakers(params.dry_sequence_breakers),
        })  # fmt: skip
    if params.dynamic_temperature:
        low, high = params.dynatemp_low, params.dynatemp_high
        stages["temp"] = ("temp_ext", {"t": (low + high) / 2, "delta": (high - low) / 2,
                                       "exponent": params.dynatemp_exponent})  # fmt: skip
    elif params.temperature != 1:
        stages["temp"] = ("temp", {"temp": params.temperature})
    if params.top_n_sigma > 0:
        stages["top_n_sigma"] = ("top_n_sigma", {"n": params.top_n_sigma})
    if params.top_k > 0:
        stages["top_k"] = ("top_k", {"k": params.top_k})
    if params.top_p < 1:
        stages["top_p"] = ("top_p", {"p": params.top_p, "min_keep": 1})
    if params.typical_p < 1:
        stages["typical"] = ("typical", {"p": params.typical_p, "min_keep": 1})
    if params.min_p > 0:
        stages["min_p"] = ("min_p", {"p": params.min_p, "min_keep": 1})
    if params.xtc_probability > 0:
        stages["xtc"] = ("xtc", {"p": params.xtc_probability, "t": params.xtc_threshold, "min_keep": 1,
                                 "seed": seed})  # fmt: skip

    order = [_STAGE[n] for n in params.sampler_priority if n in _STAGE]
    order += [_STAGE[n] for n in SAMPLER_NAMES if n in _STAGE]  # active samplers the list left out
    order = list(dict.fromkeys(order))
    if params.temperature_last:
        order = [s for s in order if s != "temp"] + ["temp"]

    plan: list[tuple[str, dict]] = []
    # A grammar ends by allowing only end-of-text: banning it then would leave no token to pick.
    if params.ban_eos_token and eog_tokens and not params.grammar:
        plan.append(("logit_bias", {"logit_bias": {t: -math.inf for t in eog_tokens}}))
    if params.grammar:
        plan.append(("grammar", {"grammar": params.grammar}))
    if params.greedy:
        plan += [stages[s] for s in order if s in ("penalties", "dry") and s in stages]
        return [*plan, ("greedy", {})]
    if params.mirostat_mode:
        plan += [stages[s] for s in order if s in ("penalties", "dry", "temp") and s in stages]
        tune = {"seed": seed, "tau": params.mirostat_tau, "eta": params.mirostat_eta}
        return [*plan, ("mirostat", {**tune, "m": 100}) if params.mirostat_mode == 1 else ("mirostat_v2", tune)]
    plan += [stages[s] for s in order if s in stages]
    return [*plan, ("dist", {"seed": seed})]


def dry_breakers(text: str) -> list[str]:
    """text-generation-webui's ``dry_sequence_breakers`` (``"\\n", ":", "*"``: quoted, comma-separated) as strings."""
    try:
        found = json.loads(f"[{text}]")
    except json.JSONDecodeError:
        raise GenerationError(f"dry_sequence_breakers is not a list of quoted strings: {text!r}") from None
    if not all(isinstance(b, str) for b in found):
        raise GenerationError(f"dry_sequence_breakers is not a list of quoted strings: {text!r}")
    return found


def _check_draft(settings: LlamaCppSettings) -> None:
    if settings.draft not in ("off", "prompt-lookup"):
        raise ModelLoadError(f"draft must be off or prompt-lookup, not {settings.draft!r}")
    if settings.draft != "off" and not 1 <= settings.draft_tokens <= 64:
        raise ModelLoadError(f"draft_tokens must be 1 to 64, not {settings.draft_tokens}")


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
