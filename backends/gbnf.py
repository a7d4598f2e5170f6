"""Bounds on a GBNF grammar, checked before llama.cpp parses it.

llama.cpp's grammar parser recurses once per nested group, so ``root ::= ((((…"a"…))))`` 20,000 deep
overflows its C stack and kills the process (10,000 survived). No real grammar comes near these bounds:
the JSON-schema grammars the API builds nest a few dozen deep at most.
"""

from __future__ import annotations

MAX_GRAMMAR_CHARS = 512 * 1024
MAX_GRAMMAR_DEPTH = 256  # nested ( … ) groups
MAX_GRAMMAR_RULES = 4096


def grammar_problem(text: str) -> str | None:
    """Why ``text`` is refused before parsing (too large, too deeply nested, too many rules), or None.

    Counts group nesting outside string literals, character classes and comments, the way GBNF reads them.
    """
    if len(text) > MAX_GRAMMAR_CHARS:
        return f"the grammar is {len(text):,} characters long; the limit is {MAX_GRAMMAR_CHARS:,}"
    depth = deepest = rules = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":  # a comment runs to the end of the line
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in '"[':
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_GRAMMAR_DEPTH:
                return f"the grammar nests groups more than {MAX_GRAMMAR_DEPTH} deep"
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == ":" and text.startswith("::=", i):
            rules += 1
            if rules > MAX_GRAMMAR_RULES:
                return f"the grammar has more than {MAX_GRAMMAR_RULES:,} rules"
        i += 1
    return None
