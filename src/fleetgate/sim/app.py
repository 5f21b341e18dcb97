"""The HTTP side of the simulator: vLLM 0.32's OpenAI-compatible routes on aiohttp."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from fleetgate.sim import errors
from fleetgate.sim.config import Faults, SimConfig
from fleetgate.sim.engine import Output, Sequence, SimEngine
from fleetgate.sim.metrics import CONTENT_TYPE, SimMetrics
from fleetgate.sim.protocol import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    ResponsesRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from fleetgate.sim.tokenizer import BOS, ReplyText, SimTokenizer

VLLM_VERSION = "0.32.0"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
Model = TypeVar("Model", bound=BaseModel)


@dataclass
class SimState:
    """Everything the routes share: the config, the engine, the tokenizer and the metrics."""

    config: SimConfig
    engine: SimEngine
    metrics: SimMetrics
    tokenizer: SimTokenizer = field(default_factory=SimTokenizer)
    created: int = field(default_factory=lambda: int(time.time()))
    fingerprint: str = field(default_factory=lambda: f"vllm-{VLLM_VERSION}-{secrets.token_hex(4)}")
    on_faults: Callable[[Faults], None] | None = None
    # sleep mode: what is off the GPU (level 1 and 2 offload both; level 0 only pauses)
    asleep_tags: set[str] = field(default_factory=set)

    @property
    def faults(self) -> Faults:
        return self.engine.faults


STATE = web.AppKey("state", SimState)


def make_app(state: SimState) -> web.Application:
    app = web.Application(middlewares=[_api_errors], client_max_size=64 * 1024**2)
    app[STATE] = state
    app.router.add_get("/health", health)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    if state.config.sleep_mode:
        # vLLM attaches these only with VLLM_SERVER_DEV_MODE=1 (entrypoints/serve/dev/sleep)
        app.router.add_post("/sleep", sleep)
        app.router.add_post("/wake_up", wake_up)
        app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_post("/admin/faults", post_faults)
    return app


@web.middleware
async def _api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.ApiError as exc:
        return exc.response()
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        # unknown routes and methods answer as FastAPI does
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _json({"detail": exc.reason}, status=exc.status, headers=allow)


# -- small routes -----------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    dead = request.app[STATE].faults.mode == "dead"
    return web.Response(status=503 if dead else 200)


async def version(request: web.Request) -> web.Response:
    return _json({"version": VLLM_VERSION})


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = state.config.model
    card = {
        "id": name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": name,
        "parent": None,
        "max_model_len": state.config.max_model_len,
        "permission": [
            {
                "id": f"modelperm-{secrets.token_hex(8)}",
                "object": "model_permission",
                "created": int(time.time()),
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
    return _json({"object": "list", "data": [card]})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    engine = state.engine
    state.metrics.set_load(len(engine.running), len(engine.waiting), engine.kv_usage)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def tokenize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _json_body(request)
    tok = state.tokenizer
    if "messages" in body:
        chat = _validate(TokenizeChatRequest, body)
        _check_model(state, chat.model)
        ids = tok.apply_chat_template(
            chat.messages, add_generation_prompt=chat.add_generation_prompt
        )
        if chat.add_special_tokens:
            ids = [BOS, *ids]  # vLLM adds the tokenizer's BOS to the rendered template's
        strs = chat.return_token_strs
    elif "prompt" in body:
        plain = _validate(TokenizeCompletionRequest, body)
        _check_model(state, plain.model)
        ids = tok.encode(plain.prompt, add_bos=plain.add_special_tokens)
        strs = plain.return_token_strs
    else:
        raise errors.missing_fields(["prompt", "messages"], body)
    return _json(
        {
            "count": len(ids),
            "max_model_len": state.config.max_model_len,
            "tokens": ids,
            "token_strs": tok.token_strs(ids) if strs else None,
        }
    )


async def detokenize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    req = _validate(DetokenizeRequest, await _json_body(request))
    _check_model(state, req.model)
    return _json({"prompt": state.tokenizer.decode(req.tokens)})


# -- sleep mode (vLLM's entrypoints/serve/dev/sleep/api_router.py) -----------------------------

_PAUSE_MODES = ("abort", "wait", "keep")


def _query_level(request: web.Request) -> int:
    raw = request.query.get("level", "1")
    loc = ("query", "level")
    if not raw.lstrip("-").isdigit():
        raise errors.query_validation(
            [
                {
                    "type": "int_parsing",
                    "loc": loc,
                    "msg": "Input should be a valid integer, unable to parse string as an integer",
                    "input": raw,
                }
            ]
        )
    level = int(raw)
    if not 0 <= level <= 2:
        kind, bound = ("greater_than_equal", 0) if level < 0 else ("less_than_equal", 2)
        word = "greater" if level < 0 else "less"
        raise errors.query_validation(
            [
                {
                    "type": kind,
                    "loc": loc,
                    "msg": f"Input should be {word} than or equal to {bound}",
                    "input": raw,
                    "ctx": {"ge" if level < 0 else "le": str(bound)},
                }
            ]
        )
    return level


async def sleep(request: web.Request) -> web.Response:
    """``POST /sleep?level=1&mode=abort``: pause the scheduler (level 0), offload the weights to
    host RAM and drop the KV cache (1), or drop the weights too (2)."""
    state = request.app[STATE]
    level = _query_level(request)
    mode = request.query.get("mode", "abort")
    if mode not in _PAUSE_MODES:
        raise errors.query_validation(
            [
                {
                    "type": "literal_error",
                    "loc": ("query", "mode"),
                    "msg": "Input should be 'abort', 'wait' or 'keep'",
                    "input": mode,
                    "ctx": {"expected": "'abort', 'wait' or 'keep'"},
                }
            ]
        )
    engine = state.engine
    engine.sleep(level, mode)
    state.asleep_tags |= {"weights", "kv_cache"} if level >= 1 else set()
    while mode == "wait" and engine.running:
        await asyncio.sleep(0.01)
    return _json({"status": "sleeping", "level": level})


async def wake_up(request: web.Request) -> web.Response:
    """``POST /wake_up`` (optionally ``tags=weights&tags=kv_cache``): weights back from host RAM,
    taking ``wake_s``; the scheduler resumes only once every tag is resident again."""
    state = request.app[STATE]
    tags = request.query.getall("tags", []) or None
    asleep = state.asleep_tags
    waking = set(asleep) if tags is None else asleep & set(tags)
    if "weights" in waking and state.config.wake_s > 0:
        await asyncio.sleep(state.config.wake_s)
    asleep -= waking
    if not asleep and state.engine.sleep_level is not None:
        state.engine.wake_up()
    awake = state.engine.sleep_level is None
    return _json({"status": "awake" if awake else "sleeping", "tags": tags})


async def is_sleeping(request: web.Request) -> web.Response:
    return _json({"is_sleeping": request.app[STATE].engine.sleep_level is not None})


async def get_faults(request: web.Request) -> web.Response:
    f = request.app[STATE].faults
    return _json({"mode": f.mode, "error_rate": f.error_rate, "slow_factor": f.slow_factor})


async def post_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _json_body(request)
    current = state.faults
    try:
        faults = Faults(
            mode=body.get("mode", current.mode),
            error_rate=float(body.get("error_rate", current.error_rate)),
            slow_factor=float(body.get("slow_factor", current.slow_factor)),
        )
    except (TypeError, ValueError) as exc:
        raise errors.ApiError(400, str(exc)) from None
    if state.on_faults is not None:
        state.on_faults(faults)
    else:
        state.engine.set_faults(faults)
    return await get_faults(request)


# -- generation -------------------------------------------------------------------------------


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    req = _validate(ChatRequest, await _json_body(request))
    _check_stream_options(req.stream, req.stream_options)
    _check_model(state, req.model)
    if not req.messages:
        raise errors.ApiError(
            400,
            "Cannot apply chat template to an empty conversation. Provide at least one message.",
        )
    ids = state.tokenizer.apply_chat_template(
        req.messages, add_generation_prompt=req.add_generation_prompt
    )
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    return await _generate(request, state, "chat", ids, max_tokens, req)


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    req = _validate(CompletionRequest, await _json_body(request))
    _check_stream_options(req.stream, req.stream_options)
    _check_model(state, req.model)
    prompt: Any = req.prompt
    if prompt == []:
        raise errors.ApiError(400, "You must pass at least one prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) > 1:
            raise errors.ApiError(
                400, "The simulator takes one prompt per request.", param="prompt"
            )
        prompt = prompt[0]
    if not prompt:
        raise errors.bad_param(
            "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
        )
    ids = state.tokenizer.encode(prompt, add_bos=True) if isinstance(prompt, str) else list(prompt)
    return await _generate(request, state, "completion", ids, req.max_tokens, req)


def _admit(
    state: SimState,
    ids: list[int],
    max_tokens: int | None,
    req: ChatRequest | CompletionRequest | ResponsesRequest,
    param: str = "max_tokens",
) -> int:
    """vLLM's checks, in vLLM's order; returns the effective max_tokens."""
    limit = state.config.max_model_len
    if max_tokens is not None and max_tokens > limit:
        raise errors.max_tokens_over_len(max_tokens, limit, param)
    if len(ids) > limit:
        raise errors.prompt_too_long(limit)
    n = getattr(req, "n", None)  # the Responses API has no n
    if n is not None and n < 1:
        raise errors.ApiError(400, f"n must be at least 1, got {n}.")
    if req.temperature is not None:
        if req.temperature < 0:
            raise errors.bad_param(
                f"temperature must be non-negative, got {req.temperature}.",
                "temperature",
                req.temperature,
            )
        if req.temperature > 2:
            raise errors.bad_param(
                f"temperature must be in [0, 2], got {req.temperature}.",
                "temperature",
                req.temperature,
            )
    room = limit - len(ids)
    effective = room if max_tokens is None else min(max_tokens, room)
    if effective < 1:
        raise errors.max_tokens_too_small(effective)
    if n is not None and n > 1:
        raise errors.ApiError(400, f"The simulator supports n=1 only, got n={n}.", param="n")
    if state.faults.mode == "dead" or state.engine.roll_error():
        raise errors.engine_dead()
    return effective


async def _generate(
    request: web.Request,
    state: SimState,
    kind: str,
    ids: list[int],
    max_tokens: int | None,
    req: ChatRequest | CompletionRequest,
) -> web.StreamResponse:
    effective = _admit(state, ids, max_tokens, req)
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(s for s in req.stop or () if s)
    seq, outputs = _sequence(state, ids, effective, req.seed, req.ignore_eos, stops)
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    reply_id = f"{prefix}{secrets.token_hex(8)}"
    try:
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _stream(request, state, kind, reply_id, seq, outputs, include_usage)
        return await _complete(state, kind, reply_id, seq, outputs, req.model)
    finally:
        state.engine.abort(seq)  # a no-op unless the client left (or a write failed) early


def _sequence(
    state: SimState,
    ids: list[int],
    max_tokens: int,
    seed: int | None,
    ignore_eos: bool,
    stops: tuple[str, ...] = (),
) -> tuple[Sequence, asyncio.Queue[Output]]:
    """A generation added to the engine, and the queue its outputs arrive on."""
    reply = ReplyText(state.tokenizer, state.config.seed if seed is None else seed, ids)
    outputs: asyncio.Queue[Output] = asyncio.Queue()
    seq = Sequence(
        prompt_len=len(ids),
        max_tokens=max_tokens,
        reply=reply,
        eos_at=None if ignore_eos else reply.natural_length(state.config.reply_tokens),
        stops=stops,
        deliver=outputs.put_nowait,
    )
    state.engine.add(seq)
    return seq, outputs


async def _complete(
    state: SimState,
    kind: str,
    reply_id: str,
    seq: Sequence,
    outputs: asyncio.Queue[Output],
    model: str | None,
) -> web.Response:
    parts: list[str] = []
    while True:
        out = await outputs.get()
        if out.failed:
            raise errors.engine_dead()
        parts.append(out.text)
        if out.finish_reason is not None:
            break
    text = "".join(parts)
    created = int(time.time())
    name = state.config.model
    usage = {
        "prompt_tokens": seq.prompt_len,
        "total_tokens": seq.prompt_len + seq.generated,
        "completion_tokens": seq.generated,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    if kind == "chat":
        body = {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": out.finish_reason,
                    "stop_reason": out.stop_reason,
                    "token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": state.fingerprint,
            "usage": usage,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    else:
        body = {
            "id": reply_id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": out.finish_reason,
                    "stop_reason": out.stop_reason,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": state.fingerprint,
            "usage": usage,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    return _json(body)


async def _stream(
    request: web.Request,
    state: SimState,
    kind: str,
    reply_id: str,
    seq: Sequence,
    outputs: asyncio.Queue[Output],
    include_usage: bool,
) -> web.StreamResponse:
    created = int(time.time())
    name = state.config.model
    chat = kind == "chat"
    head = {
        "id": reply_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": name,
    }
    # vLLM sends the headers with the first output, after prefill: an error before that is JSON
    out = await outputs.get()
    if out.failed:
        raise errors.engine_dead()
    resp = web.StreamResponse(headers={"Content-Type": SSE_CONTENT_TYPE})
    await resp.prepare(request)
    if chat:
        first = {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
            "prompt_token_ids": None,
            "prompt_text": None,
        }
        await resp.write(_event(first))
    while True:
        if out.failed:
            error = errors.engine_dead()
            await resp.write(
                _event(
                    {
                        "error": {
                            "message": error.message,
                            "type": error.type,
                            "param": None,
                            "code": error.status,
                        }
                    }
                )
            )
            break
        final = out.finish_reason is not None
        if out.text or final:
            choice: dict[str, Any]
            if chat:
                choice = {
                    "index": 0,
                    "delta": {"content": out.text},
                    "logprobs": None,
                    "finish_reason": out.finish_reason,
                }
                if final:
                    choice["stop_reason"] = out.stop_reason
                choice["token_ids"] = None
            else:
                choice = {
                    "index": 0,
                    "text": out.text,
                    "logprobs": None,
                    "finish_reason": out.finish_reason,
                    "stop_reason": out.stop_reason,
                    "prompt_token_ids": None,
                    "token_ids": None,
                }
            chunk: dict[str, Any] = {**head, "choices": [choice]}
            if final and not include_usage:
                chunk["system_fingerprint"] = state.fingerprint
            await resp.write(_event(chunk))
        if final:
            if include_usage:
                usage = {
                    "prompt_tokens": seq.prompt_len,
                    "total_tokens": seq.prompt_len + seq.generated,
                    "completion_tokens": seq.generated,
                }
                await resp.write(
                    _event(
                        {
                            **head,
                            "choices": [],
                            "usage": usage,
                            "system_fingerprint": state.fingerprint,
                        }
                    )
                )
            break
        out = await outputs.get()
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _json(data: Any, status: int = 200, headers: Any = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=errors.compact_json)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + errors.compact_json(data).encode() + b"\n\n"


# -- request parsing --------------------------------------------------------------------------


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except json.JSONDecodeError as exc:
        raise errors.from_json_error(exc) from None
    except UnicodeDecodeError:
        raise errors.ApiError(400, "request body is not UTF-8", type_="Bad Request") from None
    if not isinstance(body, dict):
        raise errors.not_an_object(body)
    return body


def _validate(model: type[Model], body: dict[str, Any]) -> Model:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise errors.from_validation(exc) from None


def _check_model(state: SimState, name: str | None) -> None:
    if name is not None and name != state.config.model:
        raise errors.unknown_model(name, state.config.model)


def _check_stream_options(stream: bool | None, options: object) -> None:
    if options is not None and not stream:
        raise errors.bad_param(
            "Stream options can only be defined when `stream=True`.", "stream_options"
        )


# -- the Responses API ------------------------------------------------------------------------


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses`` for a plain text model, shaped as vLLM 0.32 answers it: the input
    rendered as chat messages (``instructions`` first) and tokenized with special tokens added,
    one ``message`` output item, usage as ``input_tokens``/``output_tokens``, and a stream of
    named events (``event:`` lines) that ends with ``response.completed`` (no ``[DONE]``)."""
    state = request.app[STATE]
    req = _validate(ResponsesRequest, await _json_body(request))
    _check_model(state, req.model)
    messages = _response_messages(req)
    ids = [BOS, *state.tokenizer.apply_chat_template(messages)]
    effective = _admit(state, ids, req.max_output_tokens, req, "max_output_tokens")
    seq, outputs = _sequence(state, ids, effective, req.seed, req.ignore_eos)
    head = _response_head(state, req)
    try:
        if req.stream:
            return await _stream_response(request, state, head, seq, outputs)
        parts: list[str] = []
        while True:
            out = await outputs.get()
            if out.failed:
                raise errors.engine_dead()
            parts.append(out.text)
            if out.finish_reason is not None:
                break
        item = _message_item(f"msg_{secrets.token_hex(8)}", "".join(parts), "completed")
        return _json(_response_done(head, item, seq, out.finish_reason))
    finally:
        state.engine.abort(seq)


def _response_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """vLLM's ``construct_input_messages`` for text input: instructions as a system message,
    a string as one user message, items as chat messages."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    for item in req.input:
        kind = item.get("type")
        if kind == "function_call_output":
            messages.append({"role": "tool", "content": item.get("output")})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": None})
        elif "role" in item:
            messages.append({"role": item["role"], "content": item.get("content")})
        elif kind != "reasoning":
            raise errors.ApiError(400, f"Unsupported input item type: {kind}", param="input")
    return messages


def _response_head(state: SimState, req: ResponsesRequest) -> dict[str, Any]:
    """The response object as it stands before any output (vLLM's ``from_request``)."""
    return {
        "id": f"resp_{secrets.token_hex(8)}",
        "created_at": int(time.time()),
        "incomplete_details": None,
        "instructions": req.instructions,
        "metadata": req.metadata,
        "model": state.config.model,
        "object": "response",
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "tool_choice": "none" if not req.tools else req.tool_choice,
        "tools": req.tools,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "background": False,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": None,
        "previous_response_id": req.previous_response_id,
        "prompt": None,
        "reasoning": None,
        "service_tier": req.service_tier,
        "status": "in_progress",
        "text": None,
        "top_logprobs": None,
        "truncation": req.truncation,
        "usage": None,
        "user": req.user,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "input_messages": None,
        "output_messages": None,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [_text_part(text, None)]
    return {
        "id": item_id,
        "content": content,
        "role": "assistant",
        "status": status,
        "type": "message",
        "phase": None,
    }


def _text_part(text: str, logprobs: list[Any] | None) -> dict[str, Any]:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _response_done(
    head: dict[str, Any], item: dict[str, Any], seq: Sequence, finish_reason: str | None
) -> dict[str, Any]:
    """The finished response: ``incomplete`` when it ran into max_output_tokens."""
    incomplete = finish_reason == "length"
    usage = {
        "input_tokens": seq.prompt_len,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": seq.generated,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": seq.prompt_len + seq.generated,
    }
    return {
        **head,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": [item],
        "status": "incomplete" if incomplete else "completed",
        "usage": usage,
    }


async def _stream_response(
    request: web.Request,
    state: SimState,
    head: dict[str, Any],
    seq: Sequence,
    outputs: asyncio.Queue[Output],
) -> web.StreamResponse:
    out = await outputs.get()
    if out.failed:
        raise errors.engine_dead()
    resp = web.StreamResponse(headers={"Content-Type": SSE_CONTENT_TYPE})
    await resp.prepare(request)
    number = 0

    async def send(kind: str, data: dict[str, Any]) -> None:
        nonlocal number
        event = {**data, "sequence_number": number, "type": kind}
        number += 1
        payload = errors.compact_json(event).encode()
        await resp.write(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")

    item_id = f"msg_{secrets.token_hex(8)}"
    where = {"content_index": 0, "item_id": item_id}
    await send("response.created", {"response": head})
    await send("response.in_progress", {"response": head})
    await send(
        "response.output_item.added",
        {"item": _message_item(item_id, "", "in_progress"), "output_index": 0},
    )
    await send(
        "response.content_part.added",
        {**where, "output_index": 0, "part": _text_part("", [])},
    )
    parts: list[str] = []
    while True:
        if out.failed:
            error = errors.engine_dead()
            await send("error", {"code": str(error.status), "message": error.message})
            await resp.write_eof()
            return resp
        if out.text:
            parts.append(out.text)
            await send(
                "response.output_text.delta",
                {**where, "delta": out.text, "logprobs": [], "output_index": 0},
            )
        if out.finish_reason is not None:
            break
        out = await outputs.get()
    text = "".join(parts)
    await send(
        "response.output_text.done", {**where, "logprobs": [], "output_index": 0, "text": text}
    )
    await send(
        "response.content_part.done",
        {**where, "output_index": 0, "part": _text_part(text, None)},
    )
    item = _message_item(item_id, text, "completed")
    await send("response.output_item.done", {"item": item, "output_index": 0})
    await send(
        "response.completed", {"response": _response_done(head, item, seq, out.finish_reason)}
    )
    await resp.write_eof()
    return resp
