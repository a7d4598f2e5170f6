"""``inglenook bench``: what our streaming costs over raw llama-cpp-python, measured on one machine.

One model file, one prompt, greedy decoding (temperature 0), the same ``n_ctx``/threads/batch settings our
llama.cpp loader uses. Each contender is given one untimed warm-up run, then the runs are interleaved
(raw, engine, ui, raw, engine, ui, ...) so that machine noise hits all alike; medians are reported.

- :mod:`webui.bench.measure` — a timed run (:class:`Sample`), a contender, the interleaved runs.
- :mod:`webui.bench.raw` — raw llama-cpp-python in a process of its own.
- :mod:`webui.bench.contenders` — our engine, our UI stream, our API stream, llama-cpp-python's server,
  and the API load test. The UI and API contenders serve an ASGI app the caller builds (the CLI hands
  them ``webui.server.build_server``), so this package sits below the faces it measures.
- :mod:`webui.bench.report` — medians, goals, the table and the switch report.
- :mod:`webui.bench.switch` — load/unload cycles: load time and resident memory.

The command line (``webui/cli/bench.py``) parses the flags, builds the App and the contenders, and prints.
"""
