"""Reading and checking a client's JSON body, just enough to admit it safely.

The backend validates the rest; what is checked here is what the gateway itself relies on
(types of ``model``, ``messages``, ``prompt``, ``input``, ``max_tokens``, ``stream``), so a
hostile body gets a 400 and never trips the gateway.

A Responses API request (``/v1/responses``) is counted as the chat messages vLLM builds from it
(``instructions`` as a system message, then ``input``: a string as one user message, or its
items; see vLLM's ``responses/utils.py``), so its count is the one generation sees.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from fleetgate.gateway.errors import bad_request
from fleetgate.gateway.tokens import chat_token_bound, prompt_token_bound

# Fields that change what the chat template renders: their requests are always counted by the
# backend, and they travel to /tokenize so the count matches what generation will see.
_TEMPLATE_FIELDS = (
    "tools",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "mm_processor_kwargs",
)
_PLAIN_MESSAGE_KEYS = frozenset({"role", "content", "name"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: forwarded, it would be the non-JSON Infinity
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


# One decoder for every body: json.loads with a keyword argument builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_CHECK_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)
# Deeper than this is refused: the body is encoded again (upstream) further down the stack than
# it was decoded, and a depth the decoder just managed would exhaust the stack there.
MAX_DEPTH = 128
# A lone UTF-16 surrogate can only come from a \uD800-\uDFFF escape or from raw surrogate
# bytes (read with surrogatepass); bodies without either need no check.
_MAY_HAVE_SURROGATES = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def load_json(raw: bytes) -> Any:
    """JSON or a 400: no NaN/Infinity or numbers out of a double's range, no nesting past
    :data:`MAX_DEPTH`, no lone surrogate (a string cut inside an emoji) that cannot be
    written out again as UTF-8."""
    try:
        # bytes read as json.loads reads them: UTF-8, -16 or -32, told by the first bytes
        encoding = json.detect_encoding(raw)
        value = _DECODER.decode(raw.decode(encoding, "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        msg = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise bad_request(f"the request body is not valid JSON: {msg[:200]}") from None
    brackets = raw.count(b"[") + raw.count(b"{")  # a cheap bound on the depth
    if brackets > MAX_DEPTH and isinstance(value, (dict, list)) and _too_deep(value):
        raise bad_request(f"the request body is nested more than {MAX_DEPTH} levels deep")
    suspect = b"\\u" in raw or b"\xed" in raw  # cheap; the pattern only when one is there
    if encoding != "utf-8" or (suspect and _MAY_HAVE_SURROGATES.search(raw)):
        try:
            _CHECK_ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise bad_request(
                f"the request body has a lone UTF-16 surrogate ({exc.object[exc.start]!a}) in "
                "a string, which is not valid Unicode: was a string cut inside an emoji?"
            ) from None
    return value


@dataclass
class ParsedRequest:
    """What admission needs from a completion request; ``body`` is forwarded after edits."""

    kind: str  # "chat" | "completion" | "responses"
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    n: int
    # An upper bound on prompt tokens per prompt, or None when only the backend can count.
    bound: int | None
    prompts: int  # how many prompts the request carries (completions accept a batch)
    # the chat messages (and chat-style tools) a Responses request renders as
    messages: list[Any] | None = None
    tools: list[Any] | None = None

    @property
    def prompt_field(self) -> str:
        """What the client calls its prompt, as error messages and ``param`` name it."""
        return {"chat": "messages", "completion": "prompt"}.get(self.kind, "input")

    @property
    def output_field(self) -> str:
        """What the client calls its output limit."""
        return "max_output_tokens" if self.kind == "responses" else "max_tokens"

    def tokenize_payloads(self) -> list[dict[str, Any]]:
        """Bodies for the backend's /tokenize, one per prompt (without ``model``)."""
        body = self.body
        if self.kind == "responses":
            # vLLM tokenizes a rendered Responses prompt with special tokens added (a second
            # BOS on templates that write one), unlike a chat request: count it the same way.
            payload: dict[str, Any] = {"messages": self.messages, "add_special_tokens": True}
            if self.tools:
                payload["tools"] = self.tools
            return [payload]
        if self.kind == "chat":
            payload = {"messages": body["messages"]}
            payload.update({k: body[k] for k in _TEMPLATE_FIELDS if k in body})
            return [payload]
        prompt = body["prompt"]
        if isinstance(prompt, str):
            return [{"prompt": prompt}]
        return [{"prompt": p} for p in prompt if isinstance(p, str)]

    def token_id_prompt_lengths(self) -> list[int]:
        """Prompts already given as token ids need no counting."""
        prompt = self.body.get("prompt")
        if self.kind != "completion" or not isinstance(prompt, list) or not prompt:
            return []
        if _is_int(prompt[0]):
            return [len(prompt)]
        return [len(p) for p in prompt if isinstance(p, list)]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _optional_int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not _is_int(v):
        raise bad_request(f"{key} must be an integer, got {type(v).__name__}", param=key)
    if v < minimum:
        raise bad_request(f"{key} must be at least {minimum}, got {v}", param=key)
    return v


def parse_request(kind: str, raw: bytes) -> ParsedRequest:
    body = load_json(raw)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required and must be a non-empty string", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", param="stream_options")
    include_usage = bool(options and options.get("include_usage") is True)
    if kind == "responses":
        max_tokens = _optional_int(body, "max_output_tokens", 1)
        messages, tools, bound = _check_responses(body)
        return ParsedRequest(
            kind, body, model, stream, False, max_tokens, 1, bound, 1, messages, tools
        )
    max_tokens = _optional_int(body, "max_tokens", 1)
    if kind == "chat":
        completion_tokens = _optional_int(body, "max_completion_tokens", 1)
        if completion_tokens is not None:
            max_tokens = completion_tokens  # vLLM prefers it over max_tokens too
    n = _optional_int(body, "n", 1) or 1
    if kind == "chat":
        bound, prompts = _check_chat(body), 1
    else:
        bound, prompts = _check_completion(body)
    return ParsedRequest(kind, body, model, stream, include_usage, max_tokens, n, bound, prompts)


def _check_chat(body: dict[str, Any]) -> int | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages is required and must be a non-empty array", param="messages")
    texts: list[str] = []
    plain = not any(k in body for k in _TEMPLATE_FIELDS)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", param=f"messages.{i}")
        role = m.get("role")
        if not isinstance(role, str):
            raise bad_request(
                f"messages[{i}].role is required and must be a string", param=f"messages.{i}.role"
            )
        texts.append(role)
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise bad_request(
                        f"messages[{i}].content[{j}] must be an object",
                        param=f"messages.{i}.content",
                    )
                text = part.get("text")
                if part.get("type") == "text" and isinstance(text, str):
                    texts.append(text)
                else:
                    plain = False
        elif content is not None:
            raise bad_request(
                f"messages[{i}].content must be a string, an array of parts or null",
                param=f"messages.{i}.content",
            )
        if not _PLAIN_MESSAGE_KEYS.issuperset(m):
            plain = False
        name = m.get("name")
        if isinstance(name, str):
            texts.append(name)
    return chat_token_bound(texts, len(messages)) if plain else None


def _check_responses(body: dict[str, Any]) -> tuple[list[Any], list[Any] | None, int | None]:
    """The chat messages and tools a Responses request is rendered with, and a token bound
    when they are plain text."""
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("instructions must be a string", param="instructions")
    raw = body.get("input")
    messages: list[Any] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    plain = True
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list) and raw:
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise bad_request(f"input[{i}] must be an object", param="input")
            message, item_plain = _response_item(item, messages[-1] if messages else None)
            plain = plain and item_plain
            if message is not None:
                messages.append(message)
    else:
        raise bad_request(
            "input is required: a string or a non-empty array of items", param="input"
        )
    tools = body.get("tools")
    chat_tools = None
    if tools:
        if not isinstance(tools, list):
            raise bad_request("tools must be an array", param="tools")
        chat_tools = [
            {"type": "function", "function": {k: t[k] for k in _TOOL_KEYS if k in t}}
            for t in tools
            if isinstance(t, dict) and t.get("type") == "function"
        ]
        plain = False
    if not plain or not messages:
        return messages, chat_tools, None
    return messages, None, _check_chat({"messages": messages})


_TOOL_KEYS = ("name", "description", "parameters")
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _response_item(item: dict[str, Any], prev: Any) -> tuple[dict[str, Any] | None, bool]:
    """One input item as a chat message, the way vLLM maps it (``None``: merged into the
    previous assistant message), and whether it is plain text the byte bound covers."""
    kind = item.get("type")
    assistant = prev if isinstance(prev, dict) and prev.get("role") == "assistant" else None
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        if assistant is not None and isinstance(assistant.get("tool_calls", []), list):
            assistant.setdefault("tool_calls", []).append(call)
            return None, False
        return {"role": "assistant", "tool_calls": [call]}, False
    if kind == "function_call_output":
        return {
            "role": "tool",
            "content": item.get("output"),
            "tool_call_id": item.get("call_id"),
        }, False
    if kind == "reasoning":
        return None, False  # the templates of plain chat models drop it
    role = item.get("role")
    if not isinstance(role, str):
        raise bad_request(
            f"input items need a role or a known type, got type {str(kind)[:50]!r}",
            param="input",
        )
    content = item.get("content")
    if isinstance(content, list):
        parts = []
        plain = True
        for part in content:
            if isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                parts.append({"type": "text", "text": part.get("text")})
            else:
                parts.append(part)
                plain = False
        if role == "assistant" and parts and plain:
            text = parts[0]["text"]
            if assistant is not None and assistant.get("content") is None:
                assistant["content"] = text
                return None, True
            return {"role": "assistant", "content": text}, True
        return {"role": role, "content": parts}, plain
    return {"role": role, "content": content}, True


def _check_completion(body: dict[str, Any]) -> tuple[int | None, int]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt_token_bound(prompt), 1
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return len(prompt), 1
        if all(isinstance(p, str) for p in prompt):
            return max(prompt_token_bound(p) for p in prompt), len(prompt)
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return max(len(p) for p in prompt), len(prompt)
    raise bad_request(
        "prompt is required: a string, an array of strings, or token ids", param="prompt"
    )


def parse_tokenize(raw: bytes) -> tuple[str, dict[str, Any]]:
    """A ``/tokenize`` body as vLLM takes it: ``model`` plus ``messages`` or a ``prompt``
    string. Returns the public model name and the rest, to forward to the backend."""
    body = load_json(raw)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.pop("model", None)
    if not isinstance(model, str) or not model:
        raise bad_request("model is required and must be a non-empty string", param="model")
    if "messages" in body:
        _check_chat(body)
    elif not isinstance(body.get("prompt"), str):
        raise bad_request("messages (an array) or prompt (a string) is required", param="prompt")
    return model, body
