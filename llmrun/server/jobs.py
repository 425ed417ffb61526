"""A checked request made ready for the engine: the prompt tokens, grammar and answer reader.

Both APIs build their jobs here, so a chat is the same prompt whichever API
asks: the model's template (or --chat-template) with tools and reasoning
(templates/plan.py), tokenized with special tokens; completions are the prompt
as given, text or token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from llmrun.engine.batch import Extras
from llmrun.engine.images import RemoteImage, fetch_image
from llmrun.errors import BadInput
from llmrun.prompt import rendered_tokens
from llmrun.server.openai_errors import ApiError
from llmrun.templates.plan import Tools, plan_chat
from llmrun.templates.stream import AnswerReader

if TYPE_CHECKING:
    from llmrun.engine.sampling import Grammar
    from llmrun.server.schemas import Generate
    from llmrun.server.service import Service


@dataclass
class Job:
    """What to evaluate and how to read the answers."""

    prompts: list[list[int]]
    grammar: Grammar | str | None
    extras: Extras
    reader: AnswerReader = field(default_factory=AnswerReader)
    prompt_texts: list[str] = field(default_factory=list)  # completions: for echo, offsets


def chat_job(service: Service, req: Generate, raw_remedy: str, param: str = "messages") -> Job:
    """A chat request's prompt through the template; ApiError 400 when it cannot be built.

    `raw_remedy` says how this API sends a prompt without the template.
    """
    try:
        template = service.template()
    except BadInput as e:  # its remedy (--raw) is the command line's
        raise ApiError(400, f"{e.message}; {raw_remedy}", param=param, code="no_template") from None
    reasoning = service.reasoning
    if req.reasoning is not None:
        reasoning = "on" if req.reasoning else "off"
    try:
        plan = plan_chat(
            template,
            req.messages,
            tools=Tools(req.tools, req.tool_choice, req.parallel_tool_calls),
            reasoning=reasoning,
            template_kwargs=req.template_kwargs,
            system=service.system,
        )
    except BadInput as e:  # the template refused this conversation
        raise ApiError(400, e.message, param=param, code="template_error") from None
    reader = plan.reader
    if req.reasoning is False:
        reader = replace(reader, thinking=False)  # thinking stays in the content
    try:
        tokens = rendered_tokens(service.engine.model, plan.prompt, req.messages)
    except BadInput as e:  # a bad image, or images for a model without a projector
        raise ApiError(400, str(e), param=param, code="invalid_image") from None
    extras = Extras(logprobs=req.logprobs, special=reader.active, lora=lora_scales(service, req))
    return Job([tokens], plan.grammar or req.grammar, extras, reader)


IMAGE_URL_TIMEOUT = 10.0  # seconds to fetch one http(s) image (with --allow-image-urls)


def fetch_images(messages: list[dict[str, Any]], allow_urls: bool) -> None:
    """Replace the http(s) image URLs in the messages by the images they name, when the
    server allows it (--allow-image-urls); ApiError 400 otherwise, or when one fails."""
    for msg in messages:
        images = msg.get("images") or []
        for i, image in enumerate(images):
            if not isinstance(image, RemoteImage):
                continue
            if not allow_urls:
                raise ApiError(
                    400,
                    f"{image.source}: this server does not fetch image URLs; send the image "
                    "as a data: URL, or start the server with --allow-image-urls",
                    param="messages",
                    code="invalid_image",
                )
            try:
                images[i] = fetch_image(image, timeout=IMAGE_URL_TIMEOUT)
            except BadInput as e:
                raise ApiError(400, str(e), param="messages", code="invalid_image") from None


def completion_job(service: Service, req: Generate) -> Job:
    """Prompts as given: text tokenized as it is, or token ids."""
    model = service.engine.model
    prompts = [service.tokens(prompt, "prompt") for prompt in req.prompts]
    texts = [p if isinstance(p, str) else model.detokenize(p) for p in req.prompts]
    want_prompt = req.echo and req.logprobs is not None
    extras = Extras(
        logprobs=req.logprobs,
        echo=want_prompt,
        generate=not req.prompt_only,
        lora=lora_scales(service, req),
    )
    return Job(prompts, req.grammar, extras, prompt_texts=texts)


def lora_scales(service: Service, req: Generate) -> tuple[float, ...] | None:
    """A request's `lora` as one scale per adapter of the model; as in llama-server, an
    adapter the list leaves out gets 0. None: the scales serve was started with."""
    if req.lora is None:
        return None
    adapters = service.engine.model.load_options.lora
    unknown = [i for i in req.lora if i >= len(adapters)]
    if unknown:
        have = f"ids 0 to {len(adapters) - 1}" if adapters else "none (serve MODEL --lora FILE)"
        raise ApiError(400, f"no LoRA adapter with id {unknown[0]}: this model has {have}",
                       param="lora")  # fmt: skip
    return tuple(req.lora.get(i, 0.0) for i in range(len(adapters)))
