"""The bench's parts on a fake model and on made-up samples (fast tier): the UI contender reads its reply
from the saved conversation (not the page's HTML), and the report's medians, ratios and goals.

The whole command against llama.cpp is tests/test_bench*.py (slow)."""

from __future__ import annotations

from conftest import FAKE_HELLO

from webui.bench.contenders import UIContender
from webui.bench.measure import Contender, Sample, run_interleaved
from webui.bench.report import format_table, summarise
from webui.serve import free_port
from webui.server import build_server


def test_the_ui_contender_times_a_real_ui_stream_and_reads_the_saved_reply(make_fake_app, tmp_path):
    app = make_fake_app(host="127.0.0.1")
    ui = UIContender(app, build_server, free_port(), "Tell me a story", tokens=64)
    try:
        sample = ui.run()
    finally:
        ui.close()
    assert sample.text == FAKE_HELLO  # the reply as saved: no stats line, no HTML
    assert sample.tokens == len(FAKE_HELLO.encode())  # counted again by the model's tokenizer (fake: bytes)
    assert sample.finish_reason == "stop" and sample.reported is None
    assert sample.ttft_s > 0 and sample.decode_s >= 0


class Scripted(Contender):
    """A contender whose runs are given: the report's arithmetic on known numbers."""

    def __init__(self, name: str, samples: list[Sample]) -> None:
        super().__init__(name)
        self.script = list(samples)

    def run(self) -> Sample:
        return self.script.pop(0)


def test_medians_ratios_and_goals_against_raw():
    raw = Scripted("raw", [Sample(0.05, 1.0, 101, "length")] * 4)  # 100 tok/s, 50 ms
    fast = Scripted("engine", [Sample(0.055, 1.0, 101, "length")] * 4)  # same speed, +5 ms
    slow = Scripted("ui", [Sample(0.2, 2.0, 101, "length"), Sample(0.2, 2.0, 101, "stop")] * 2)  # 50 tok/s, +150 ms
    messages: list[str] = []
    run_interleaved([raw, fast, slow], 3, messages.append)  # one warm-up each, then 3 runs
    assert messages == ["warming up: raw, engine, ui", "run 1/3", "run 2/3", "run 3/3"]
    result = summarise([raw, fast, slow], tokens=101)
    assert result["raw"]["tokens_per_s"] == 100.0 and result["raw"]["ratio_tokens_per_s"] == 1.0
    assert result["engine"]["extra_ttft_ms"] == 5.0
    assert (result["engine"]["goal_tokens_per_s"], result["engine"]["goal_ttft"]) == ("PASS", "PASS")
    assert result["ui"]["ratio_tokens_per_s"] == 0.5
    assert (result["ui"]["goal_tokens_per_s"], result["ui"]["goal_ttft"]) == ("MISS", "MISS")
    assert result["ui"]["finish_reasons"] == ["length", "stop"] and not result["ui"]["stopped_early"]
    table = format_table({"contenders": result, "tokens_requested": 101})
    assert "engine: tok/s ≥ 0.97× raw PASS, TTFT ≤ +10 ms PASS" in table
    assert "ui: tok/s ≥ 0.97× raw MISS" in table


def test_the_text_note_says_why_a_parallel_model_may_differ_from_raw_and_flags_only_a_real_mismatch():
    from webui.bench.report import text_note

    lone = {"inglenook.parallel": "1", "inglenook.extra_buffer_types": "on (auto: ...)"}
    batched = {"inglenook.parallel": "4", "inglenook.extra_buffer_types": "off (auto: parallel decoding ...)"}
    assert text_note("the API's", True, batched) == ""  # equal text: nothing to say
    assert "it should not" in text_note("the API's", False, lone)  # same kernels: a real mismatch
    note = text_note("the API's", False, batched)
    assert "parallel=4" in note and "expected" in note and "should not" not in note
    assert "may" in text_note("the engine's", False, {"inglenook.extra_buffer_types": "off (set explicitly)"})


def test_the_page_row_says_how_far_its_first_token_is_from_the_servers_own():
    raw = Scripted("raw", [Sample(0.05, 1.0, 101, "length")] * 3)
    runs = [Sample(0.08, 1.0, 101, "length", reported={"ttft_ms": 60.0, "tokens_per_s": 125.0}),
            Sample(0.3, 2.0, 101, "length", reported={"ttft_ms": 290.0, "tokens_per_s": 50.0})]  # fmt: skip
    page = Scripted("page", [runs[0], *runs])  # the warm-up, then the two runs
    run_interleaved([raw, page], 2, lambda _: None)
    result = summarise([raw, page], tokens=101)
    assert result["page"]["server_reported"]["ttft_ms"] == 175.0  # medians of all runs, each on its own
    # run by run: +20 and +10 ms over the same reply's own TTFT; 100/125 and 50/50 of its own tok/s
    assert result["page"]["over_server_ttft_ms"] == 15.0 and result["page"]["ratio_to_server_tokens_per_s"] == 0.9
    table = format_table({"contenders": result, "tokens_requested": 101})
    assert "page: as Chromium shows the reply" in table and "0.900× its tok/s, TTFT +15 ms" in table


def test_the_parallel_lines_give_the_ratios_and_the_least_a_step_of_k_streams_adds_to_ttft():
    from webui.cli.bench import format_parallel

    result = {
        "parallel": 4,
        "load_test_single": {"clients": 1, "tokens_per_s": 80.0, "ttft_ms_median": 25.0},
        "load_test": {"clients": 4, "tokens_per_s": 100.0, "ttft_ms_median": 75.0},
        "raw_batch": {"clients": 4, "batch_tokens_per_s": 120.0, "single_tokens_per_s": 100.0, "ratio": 1.2},
    }
    text = format_parallel(result)
    assert "4 clients give 1.25× the tok/s of 1" in text and "median TTFT 3.00×" in text
    # raw: 4 tokens in 33.3 ms a step against 1 in 10 ms, so a joining request waits 3.33× a lone step
    assert "a step of 4 sequences takes 33.3 ms against 10.0 ms for 1 (3.33×)" in text
    assert "note:" not in text  # loaded with as many slots as clients
    assert format_parallel({**result, "raw_batch": None}) == ""
