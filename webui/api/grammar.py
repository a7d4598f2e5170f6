"""GBNF grammars for JSON output (the API's ``response_format``), built with llama-cpp-python's converter.

The grammar is text handed to the loader through ``SamplingParams.grammar``; nothing here loads a model.
"""

from __future__ import annotations

import json


def grammar_for(kind: str, json_schema: dict | None = None) -> str:
    """GBNF for ``json_object`` (any JSON object) or ``json_schema`` (OpenAI's ``{"name", "schema", ...}``)."""
    try:
        from llama_cpp import llama_grammar
    except ImportError as exc:  # the grammar support comes with llama-cpp-python
        raise ValueError(f"JSON output needs llama-cpp-python ({exc})") from None
    if kind == "json_object":
        return OBJECT_GBNF
    if kind != "json_schema":
        raise ValueError(f"response_format type {kind!r} is not supported")
    schema = (json_schema or {}).get("schema")
    if not isinstance(schema, dict):
        raise ValueError("response_format json_schema needs a 'schema' object")
    try:
        return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises assorted errors on schemas it cannot express
        raise ValueError(f"cannot turn this JSON schema into a grammar: {type(exc).__name__}: {exc}") from None


# llama.cpp's json.gbnf with the root narrowed to an object, as OpenAI's json_object mode promises.
OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4})
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

ws ::= | " " | "\n" [ \t]{0,20}
"""
