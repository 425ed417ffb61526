"""JSON Schema to a GBNF grammar, checked first: one converter for `run` and `serve`.

Each caller words the failure for its own input (a --json-schema file, a response_format
field), so the problems come back as SchemaProblem with a kind and the detail.
"""

from __future__ import annotations

import json

from llama_cpp.llama_grammar import json_schema_to_gbnf


class SchemaProblem(Exception):
    """Why a schema gives no grammar: kind is "not_object", "invalid" or "unconvertible"."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def schema_grammar(schema_text: str) -> str:
    """A GBNF grammar for a JSON Schema given as JSON text; raises SchemaProblem."""
    import jsonschema  # only needed here; keeps start-up lean

    schema = json.loads(schema_text)
    if not isinstance(schema, dict):
        raise SchemaProblem("not_object", type(schema).__name__)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        raise SchemaProblem("invalid", f"({where}): {e.message}") from None
    try:
        return json_schema_to_gbnf(schema_text)
    except Exception as e:  # the converter raises plain exceptions on what it cannot express
        raise SchemaProblem("unconvertible", str(e)) from None
