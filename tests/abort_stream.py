"""Abort a stream with the official ``openai`` Python client the way apps do, then keep running (the Python twin
of tests/js/abort_stream.mjs, so every client is measured the same way).

usage: python tests/abort_stream.py BASE_URL MODEL CHUNKS HOW STAY_MS
  HOW: "close" = ``stream.close()`` after leaving the loop, "with" = leave a ``with`` block (which closes it).
Prints one JSON line per event ({"event": "aborted", "t": epoch ms, ...}), then stays STAY_MS before exiting.
"""

from __future__ import annotations

import json
import sys
import time

import openai


def say(event: str, **extra: object) -> None:
    print(json.dumps({"event": event, "t": time.time() * 1000, **extra}), flush=True)


def main(base_url: str, model: str, chunks: int, how: str, stay_ms: float) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    seen = 0
    stream = client.completions.create(model=model, prompt="Count from 1 to 1000:", max_tokens=1000, stream=True)
    if how == "with":
        with stream:
            for chunk in stream:
                seen += bool(chunk.choices and chunk.choices[0].text)
                if seen >= chunks:
                    say("aborted", seen=seen)  # the moment it lets go (the close follows at once)
                    break
    else:
        for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].text)
            if seen >= chunks:
                say("aborted", seen=seen)
                break
        stream.close()
    if seen < chunks:
        say("ended", seen=seen)  # the reply ended before CHUNKS chunks: nothing was aborted
    time.sleep(stay_ms / 1000)
    say("exit")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
