"""One-shot generation: resolve a model, load it, build the prompt, stream the answer.

`run()` takes the same keyword names as `llmrun run`'s flags. Everything the
user gave is checked before the model is loaded, so a bad value costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF

from llmrun.adapters import check_adapters
from llmrun.engine import Model, Stats, load_model
from llmrun.engine.images import Image, with_markers
from llmrun.engine.sampling import Grammar
from llmrun.engine.speculative import DRAFT_KINDS, Drafter, ModelDrafter, NgramDrafter
from llmrun.errors import BadInput, BadModelFile, BadOption, ModelNotFound
from llmrun.ggufinfo import read_info
from llmrun.grammar import SchemaProblem, schema_grammar
from llmrun.options import (
    Load,
    Sampling,
    check_load,
    check_param,
    parse_gpu_layers,
    parse_lora,
    parse_rpc,
    parse_size,
)
from llmrun.prompt import prefix_points, raw_text, raw_tokens, user_message
from llmrun.promptcache import DEFAULT_MIN_TOKENS, DEFAULT_SIZE, PromptCache
from llmrun.resolve import ResolvedModel, resolve_model
from llmrun.templates.calls import Parsed
from llmrun.templates.plan import REASONING_MODES, Tools, check_tools, plan_chat
from llmrun.templates.render import ChatTemplate, read_template_file
from llmrun.templates.stream import AnswerReader, AnswerStream, Delta

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
    n_cpu_moe: int | None = None,
    lora: Sequence[str] | None = None,
    mmproj: str | None = None,
    vision: bool = True,
    pull: bool = True,
    progress: Any = None,
    **sampling_flags: Any,
) -> Prepared:
    """Check every option and resolve the model; flags win over the model's models.toml params.

    A model that is not here yet is pulled first (`pull=False`: it is an error), reporting
    to `progress` (see llmrun.hub.PullProgress). A vision model's projector (`mmproj`, else
    the one stored with it) is loaded too, unless `vision=False` (text only: bench, eval).
    """
    given = {k: check_param(k, v) for k, v in sampling_flags.items() if v is not None}
    if system is not None:
        given["system"] = check_param("system", system)
    ngl = parse_gpu_layers(str(n_gpu_layers))
    if ctx_size is not None and ctx_size <= 0:
        raise BadOption(f"-c/--ctx-size must be > 0, got {ctx_size}")
    if threads is not None and threads <= 0:
        raise BadOption(f"-t/--threads must be > 0, got {threads}")
    adapters = parse_lora(lora)

    try:
        resolved = resolve_model(model)
    except ModelNotFound:
        if not pull:
            raise
        from llmrun import hub  # loads huggingface_hub: only when a download may be needed

        resolved = hub.ensure_local(model, progress=progress)
    info = read_info(resolved.path)  # a damaged file is an error here, not a crash in llama.cpp
    check_adapters(adapters, info)
    projector = find_projector(resolved, mmproj) if vision or mmproj else None
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
            n_cpu_moe=n_cpu_moe,
            lora=adapters,
            mmproj=projector,
        )
    )
    return Prepared(resolved, load, Sampling().merged(params), params.get("system"))


def find_projector(resolved: ResolvedModel, mmproj: str | None) -> Path | None:
    """The image projector to load with the model: --mmproj FILE, else the one stored with
    it (pulled beside it); None for a text-only model."""
    if mmproj is None:
        return resolved.mmproj
    path = Path(mmproj).expanduser()
    if not path.is_file():
        raise BadInput(f"--mmproj: no such file: {mmproj}")
    info = read_info(path)  # a damaged file is an error here, not a crash in llama.cpp
    if info.architecture != "clip":
        raise BadModelFile(
            f"--mmproj {mmproj} is not a projector (its architecture is {info.architecture})",
            "give the model's mmproj-*.gguf file",
        )
    return path


def grammar_for(
    format: str | None, json_schema: Path | None, grammar_file: Path | None = None
) -> str | None:
    """A GBNF grammar for --format json, --json-schema FILE or --grammar-file, checked up front."""
    if format is not None and format not in FORMATS:
        raise BadOption(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if grammar_file is not None:
        if format or json_schema:
            raise BadOption("choose one of --grammar-file, --json-schema and --format")
        try:
            return grammar_file.read_text(encoding="utf-8")
        except OSError as e:
            raise BadInput(f"cannot read --grammar-file {grammar_file}: {e.strerror}") from None
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
    """The pieces of an answer as they come; `stats` holds the timings once done.

    Iterating gives the answer's text. When the answer has to be read (thinking to split
    off, tool calls), `events()` gives it as Deltas instead: reasoning, content and calls,
    and `parsed` holds the whole answer once it is done.
    """

    def __init__(
        self, model: Model, pieces: Iterator[str], reader: AnswerReader | None = None
    ) -> None:
        self.model = model
        self._pieces = pieces
        self.reader = reader or AnswerReader()
        self.parsed: Parsed | None = None
        self.prompt = ""  # the rendered prompt (for --verbose-prompt)

    def __iter__(self) -> Iterator[str]:
        if not self.reader.active:
            return self._pieces
        return (d.content for d in self.events() if d.content)

    def events(self) -> Iterator[Delta]:
        """The answer as Deltas (for plain text, each piece as content)."""
        stream = AnswerStream(self.reader)
        for piece in self._pieces:
            yield from stream.feed(piece)
        cut = self.model.stats.stop_reason in ("length", "context")
        deltas, self.parsed = stream.finish(cut=cut)
        yield from deltas

    @property
    def stats(self) -> Stats:
        return self.model.stats


def prompt_cache(cache_min: int, cache_size: str) -> PromptCache:
    """The prompt cache as --cache-min and --cache-size say, checked before anything loads."""
    if cache_min < 1:
        raise BadOption(f"--cache-min must be at least 1, got {cache_min}")
    return PromptCache(min_tokens=cache_min, max_bytes=parse_size(cache_size, "--cache-size"))


def read_tools(path: Path) -> list[dict[str, Any]]:
    """A --tools FILE: a JSON list of OpenAI tool definitions, checked."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"cannot read --tools file {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise BadInput(f"--tools file {path} is not valid JSON: {e}") from None
    try:
        return check_tools(value)
    except BadInput as e:
        raise BadInput(f"--tools file {path}: {e.message}") from None


def check_choices(think: str, tool_choice: str, tools: list[dict[str, Any]]) -> None:
    if think not in REASONING_MODES:
        raise BadOption(f"--think must be one of {', '.join(REASONING_MODES)}, got {think!r}")
    names = [t["function"]["name"] for t in tools]
    if tool_choice not in ("auto", "none", "required", *names):
        known = ", ".join(["auto", "none", "required", *names])
        raise BadOption(f"--tool-choice must be one of {known}, got {tool_choice!r}")
    if tool_choice != "auto" and not tools:
        raise BadOption("--tool-choice needs --tools FILE")


def run(
    model: str | None = None,
    prompt: str = "",
    *,
    system: str | None = None,
    raw: bool = False,
    format: str | None = None,
    json_schema: Path | None = None,
    grammar_file: Path | None = None,
    draft: str | None = None,
    draft_model: str | None = None,
    chat_template: Path | None = None,
    tools: Path | None = None,
    tool_choice: str = "auto",
    think: str = "auto",
    no_cache: bool = False,
    cache_min: int = DEFAULT_MIN_TOKENS,
    cache_size: str = DEFAULT_SIZE,
    images: Sequence[Image] = (),
    **options: Any,
) -> Generation:
    """Generate an answer to `prompt`; see `prepare` for the options.

    `draft="ngram"` or `draft_model=MODEL` turn on speculative decoding; the
    answer is the same, sooner. `chat_template` (a file) replaces the model's;
    `tools` (a file of OpenAI tool definitions) lets the model call them, as
    `tool_choice` says; `think` is auto, on or off (see README). The prompt cache
    (llmrun.promptcache) keeps prefixes of at least `cache_min` tokens, up to
    `cache_size` in all, unless `no_cache`. `images` go before the prompt, for a
    model with a projector (a pulled vision model, or --mmproj FILE).
    """
    cache = None if no_cache else prompt_cache(cache_min, cache_size)
    grammar: str | Grammar | None = grammar_for(format, json_schema, grammar_file)
    if draft is not None and draft not in DRAFT_KINDS:
        raise BadOption(f"--draft must be one of {', '.join(DRAFT_KINDS)}, got {draft!r}")
    offered = read_tools(tools) if tools is not None else []
    check_choices(think, tool_choice, offered)
    if raw and (offered or chat_template):
        raise BadOption("--raw uses no chat template; drop it to use --tools or --chat-template")
    template_source = read_template_file(chat_template) if chat_template else None
    if images and (draft or draft_model):
        raise BadOption("--draft does not work with --image yet", "drop one of them")
    if images:
        cache = None  # the prompt cache keys prefixes by tokens; an image is not one
    prepared = prepare(model, system=system, vision=bool(images), **options)
    if images and prepared.load.mmproj is None:
        raise BadInput(
            f"{prepared.resolved.name} cannot read images: it has no projector",
            "use a vision model (llmrun pull fetches its mmproj), or give --mmproj FILE",
        )
    draft_path = prepare(draft_model).resolved.path if draft_model else None
    engine = load_model(prepared.resolved.path, prepared.load)
    reader = AnswerReader()
    if raw:
        text = ""
        tokens = raw_tokens(engine, with_markers(prompt, len(images)), system=prepared.system,
                            images=images)  # fmt: skip
        whole = raw_text(prompt, system=prepared.system)
        points = prefix_points(engine, tokens, whole, prompt, parse_special=False)
    else:
        template = ChatTemplate(engine, chat_template, source=template_source)
        plan = plan_chat(
            template,
            [user_message(prompt, images)],
            tools=Tools(offered, tool_choice),
            reasoning=think,
            system=prepared.system,
        )
        text, reader = plan.prompt, plan.reader
        tokens = engine.tokenize(text, add_special=True, parse_special=True, images=images)
        grammar = plan.grammar or grammar
        points = prefix_points(engine, tokens, text, prompt)
    engine.check_fits(len(tokens))
    drafter: Drafter | None = NgramDrafter() if draft == "ngram" else None
    if draft_path is not None:
        drafter = ModelDrafter(load_model(draft_path, prepared.load), engine)
    pieces = engine.generate(
        tokens,
        prepared.sampling,
        grammar=grammar,
        drafter=drafter,
        special=reader.active,
        store=cache.for_prompt(points) if cache else None,
    )
    answer = Generation(engine, pieces, reader)
    answer.prompt = text or engine.detokenize(tokens, special=True)
    return answer
