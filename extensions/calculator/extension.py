"""Calculator: a tool (the ``tools`` hook) that evaluates arithmetic for the model, in chats with tools on.

The expression is parsed with :mod:`ast` and only numbers, ``+ - * / // % **``, parentheses and a few math
functions are evaluated: no names, attributes or calls of anything else, and no ``eval``. Powers and results
are bounded, so ``9**9**9`` is an error, not a frozen server.
"""

from __future__ import annotations

import ast
import math
import operator

from webui.extension_api import ExtensionTool, hookimpl

MAX_CHARS = 200
MAX_EXPONENT = 1000
MAX_DIGITS = 1000
OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil,
             "log": math.log, "sin": math.sin, "cos": math.cos, "tan": math.tan}  # fmt: skip
CONSTANTS = {"pi": math.pi, "e": math.e}
SCHEMA = {
    "type": "object",
    "properties": {"expression": {"type": "string", "description": "e.g. (2 + 3) * 4 / sqrt(16)"}},
    "required": ["expression"],
    "additionalProperties": False,
}


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic ``expression``; ValueError saying what is not allowed or cannot be computed."""
    if len(expression) > MAX_CHARS:
        raise ValueError(f"the expression is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    try:
        return _value(tree.body)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("the result is too large") from None


def _value(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (
            abs(right) > MAX_EXPONENT or abs(right) * math.log10(max(abs(left), 1)) > MAX_DIGITS
        ):
            raise ValueError(f"powers are limited to exponents of at most {MAX_EXPONENT} and {MAX_DIGITS} digits")
        result = OPERATORS[type(node.op)](left, right)
        if isinstance(result, int) and abs(result) > 10**MAX_DIGITS:
            raise ValueError("the result is too large")
        if isinstance(result, complex):
            raise ValueError("the result is not a real number")
        return result
    if (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
        and not node.keywords and 1 <= len(node.args) <= 2
    ):  # fmt: skip
        return FUNCTIONS[node.func.id](*(_value(a) for a in node.args))
    raise ValueError(f"not allowed in an expression: {ast.unparse(node)!r}")


def calculate(arguments: dict) -> str:
    """The tool: ``{"expression": "2+2"}`` → ``"4"``."""
    value = evaluate(str(arguments["expression"]))
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value)


@hookimpl
def tools(context) -> list[ExtensionTool]:
    return [ExtensionTool("calculator", "Evaluate an arithmetic expression exactly.", SCHEMA, calculate)]
