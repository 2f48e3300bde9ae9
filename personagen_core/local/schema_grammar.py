"""JSON schemas tightened for llama.cpp's schema-to-grammar converter, for every llama.cpp-based backend.

The embedded model (``runtime``) and llama.cpp's servers (``llama-cpp-python``'s and the C++ ``llama-server``,
which receive the schema from :mod:`personagen_core.generation.llm`) turn a response schema into a grammar
with the same converter, so both get the same tightened copy; answers are still checked against the original.
No llama-cpp import here: the client uses it without the runtime installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MAX_STRING_CHARS", "grammar_schema"]

_MAX_INT_ENUM = 1000
#: Longest string a grammar-constrained answer may hold when the schema sets no ``maxLength``. Small models
#: at temperature 0 tend to loop inside a free-text field ("reason") until ``max_tokens`` cuts the JSON off;
#: with the cap every answer closes its JSON. 80 characters is a short sentence: 15-40 tokens even when a
#: looping model emits two-character tokens, inside the pipeline's budget of 60 tokens per verdict.
DEFAULT_MAX_STRING_CHARS = 80


def grammar_schema(schema: Any, max_string_chars: int | None = DEFAULT_MAX_STRING_CHARS) -> Any:
    """Copy of ``schema`` tightened for llama.cpp's grammar converter; answers still validate against it.

    * Small bounded integer ranges become enums: the converter ignores ``minimum``/``maximum`` but enforces
      an enum, so a judge score declared 1-5 can only ever be 1, 2, 3, 4 or 5 (and a batch answer's ids
      0..n-1: small models count from 1).
    * Strings without ``maxLength`` (and without enum/const/pattern/format) get ``max_string_chars``
      (None: no cap).
    """
    if isinstance(schema, list):
        return [grammar_schema(s, max_string_chars) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: grammar_schema(v, max_string_chars) for k, v in schema.items()}
    if out.get("type") == "integer" and "enum" not in out:
        low = out.get("minimum", out["exclusiveMinimum"] + 1 if "exclusiveMinimum" in out else None)
        high = out.get("maximum", out["exclusiveMaximum"] - 1 if "exclusiveMaximum" in out else None)
        if isinstance(low, int) and isinstance(high, int) and 0 <= high - low < _MAX_INT_ENUM:
            out["enum"] = list(range(low, high + 1))
    if (out.get("type") == "string" and max_string_chars is not None
            and not {"maxLength", "enum", "const", "pattern", "format"} & out.keys()):
        out["maxLength"] = max_string_chars
    return out
