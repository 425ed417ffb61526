"""One-shot generation: resolve a model, load it, build the prompt, stream the answer.

`run()` takes the same keyword names as `llmrun run`'s flags. Everything the
user gave is checked before the model is loaded, so a bad value costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF

from llmrun.engine import Model, Stats, load_model
from llmrun.engine.speculative import DRAFT_KINDS, Drafter, ModelDrafter, NgramDrafter
from llmrun.errors import BadInput, BadOption, ModelNotFound
from llmrun.ggufinfo import read_info
from llmrun.grammar import SchemaProblem, schema_grammar
from llmrun.options import Load, Sampling, check_load, check_param, parse_gpu_layers, parse_rpc
from llmrun.prompt import prompt_tokens
from llmrun.resolve import ResolvedModel, resolve_model

FORMATS = ("json",)

# How a SchemaProblem reads for a --json-schema file.
CLI_SCHEMA_PROBLEMS = {
    "not_object": "--json-schema file {path} must hold a JSON object, got {detail}",
    "invalid": "--json-schema file {path} is not a valid JSON Schema {detail}",
    "unconvertible": "--json-schema {path} cannot be turned into a grammar: {detail}",
}


@dataclass(frozen=True)
class Prepared:
    """What a command needs to generate: model, load and sampling settings, system prompt."""

    resolved: ResolvedModel
    load: Load
    sampling: Sampling
    system: str | None


def prepare(
    model: str | None = None,
    *,
    system: str | None = None,
    n_gpu_layers: str | int = "auto",
    ctx_size: int | None = None,
    threads: int | None = None,
    flash_attn: str = "auto",
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    verbose: bool = False,
    rpc: str | None = None,
    pull: bool = True,
    progress: Any = None,
    **sampling_flags: Any,
) -> Prepared:
    """Check every option and resolve the model; flags win over the model's models.toml params.

    A model that is not here yet is pulled first (`pull=False`: it is an error), reporting
    to `progress` (see llmrun.hub.PullProgress).
    """
    given = {k: check_param(k, v) for k, v in sampling_flags.items() if v is not None}
    if system is not None:
        given["system"] = check_param("system", system)
    ngl = parse_gpu_layers(str(n_gpu_layers))
    if ctx_size is not None and ctx_size <= 0:
        raise BadOption(f"-c/--ctx-size must be > 0, got {ctx_size}")
    if threads is not None and threads <= 0:
        raise BadOption(f"-t/--threads must be > 0, got {threads}")

    try:
        resolved = resolve_model(model)
    except ModelNotFound:
        if not pull:
            raise
        from llmrun import hub  # loads huggingface_hub: only when a download may be needed

        resolved = hub.ensure_local(model, progress=progress)
    read_info(resolved.path)  # a damaged file is an error here, not a crash inside llama.cpp
    entry_params = dict(resolved.entry.params) if resolved.entry else {}
    params = {**entry_params, **given}
    load = check_load(
        Load(
            n_gpu_layers=ngl,
            ctx_size=ctx_size
            or (resolved.entry.context if resolved.entry and resolved.entry.context else 0),
            threads=threads or 0,
            flash_attn=flash_attn,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            verbose=verbose,
            rpc=parse_rpc(rpc),
        )
    )
    return Prepared(resolved, load, Sampling().merged(params), params.get("system"))


def grammar_for(format: str | None, json_schema: Path | None) -> str | None:
    """A GBNF grammar for --format json or --json-schema FILE, checked up front."""
    if format is not None and format not in FORMATS:
        raise BadOption(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if json_schema is None:
        return JSON_GBNF if format == "json" else None
    try:
        text = json_schema.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read --json-schema file {json_schema}: {e.strerror}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"--json-schema file {json_schema} is not valid JSON: {e}") from None
    try:
        return schema_grammar(json.dumps(schema))
    except SchemaProblem as e:
        message = CLI_SCHEMA_PROBLEMS[e.kind].format(path=json_schema, detail=e.detail)
        raise BadInput(message) from None


class Generation:
    """The pieces of an answer as they come; `stats` holds the timings once done."""

    def __init__(self, model: Model, pieces: Iterator[str]) -> None:
        self.model = model
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def stats(self) -> Stats:
        return self.model.stats


def run(
    model: str | None = None,
    prompt: str = "",
    *,
    system: str | None = None,
    raw: bool = False,
    format: str | None = None,
    json_schema: Path | None = None,
    draft: str | None = None,
    draft_model: str | None = None,
    **options: Any,
) -> Generation:
    """Generate an answer to `prompt`; see `prepare` for the options.

    `draft="ngram"` or `draft_model=MODEL` turn on speculative decoding; the
    answer is the same, sooner.
    """
    grammar = grammar_for(format, json_schema)
    if draft is not None and draft not in DRAFT_KINDS:
        raise BadOption(f"--draft must be one of {', '.join(DRAFT_KINDS)}, got {draft!r}")
    prepared = prepare(model, system=system, **options)
    draft_path = prepare(draft_model).resolved.path if draft_model else None
    engine = load_model(prepared.resolved.path, prepared.load)
    tokens = prompt_tokens(engine, prompt, system=prepared.system, raw=raw)
    engine.check_fits(len(tokens))
    drafter: Drafter | None = NgramDrafter() if draft == "ngram" else None
    if draft_path is not None:
        drafter = ModelDrafter(load_model(draft_path, prepared.load), engine)
    pieces = engine.generate(tokens, prepared.sampling, grammar=grammar, drafter=drafter)
    return Generation(engine, pieces)
