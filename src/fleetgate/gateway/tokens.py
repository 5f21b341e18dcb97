"""When the backend's token count is needed, and a safe bound for when it is not.

The count that matters is the backend's own: vLLM's ``POST /tokenize`` applies the model's chat
template, so its number is what the engine will see. That costs a round trip, which is wasted
on a prompt that cannot possibly reach the limit. :func:`prompt_token_bound` gives an upper
bound from the text alone:

* A byte-level BPE tokenizer (GPT-2, Llama 3, Qwen, Mistral's tekken) emits at most one token
  per UTF-8 byte; SentencePiece with byte fallback (Llama 2, Mistral v1) at most one per byte
  plus a dummy-prefix piece. Tokenizers that normalize with NFKC can expand text before that:
  the worst code point (U+FDFA) grows from 3 to 33 bytes, so non-ASCII text counts 11 tokens
  per byte. ASCII is unchanged by NFKC.
* The chat template adds framing around each message (role headers, end-of-turn markers) and
  a preamble (BOS, a default system prompt with a date). Templates of the usual families add
  under 40 tokens of preamble and under 10 per message; the allowances below are several times
  that. Requests whose template input is not plain text (tools, documents, a client-supplied
  template, images, tool calls) are always counted by the backend.

If the bound is within every limit the request is admitted on it (and TPM reserves the bound,
settled on the real usage later); otherwise the backend counts.

:func:`check_tokens` is that admission step: the prompt and output limits of a public model,
and what the request reserves against TPM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetgate.gateway.errors import bad_request, context_length

if TYPE_CHECKING:  # parse imports the bounds below
    from fleetgate.gateway.config import ModelConfig
    from fleetgate.gateway.parse import ParsedRequest
    from fleetgate.gateway.upstream import Upstream

TEMPLATE_ALLOWANCE = 512
MESSAGE_ALLOWANCE = 32
PROMPT_ALLOWANCE = 8  # BOS/EOS and a dummy prefix for a plain completion prompt
NFKC_MAX_BYTE_GROWTH = 11


def text_token_bound(text: str) -> int:
    """At most this many tokens for ``text`` under any byte-level or byte-fallback tokenizer."""
    if text.isascii():
        return len(text)
    return NFKC_MAX_BYTE_GROWTH * len(text.encode("utf-8", "surrogatepass"))


def chat_token_bound(texts: list[str], messages: int) -> int:
    return (
        sum(text_token_bound(t) for t in texts) + MESSAGE_ALLOWANCE * messages + TEMPLATE_ALLOWANCE
    )


def prompt_token_bound(text: str) -> int:
    return text_token_bound(text) + PROMPT_ALLOWANCE


class Admitted:
    """A request that passed the token checks: what it reserves and what it may generate."""

    __slots__ = ("max_tokens", "prompt_tokens", "reserved", "used")

    def __init__(self, prompt_tokens: int, max_tokens: int | None, reserved: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.reserved = reserved
        # Settled at the end: nothing if the backend never answered 200, the reservation if it
        # answered without usage, the real usage when it reported one.
        self.used = 0


async def check_tokens(upstream: Upstream, model: ModelConfig, req: ParsedRequest) -> Admitted:
    """Prompt and output limits, counted by the backend unless the byte bound already fits."""
    asked = req.max_tokens
    limit_in, limit_out, context = (
        model.max_input_tokens,
        model.max_output_tokens,
        model.max_model_len,
    )
    bound = req.bound
    needed_out = asked or limit_out or 1
    if asked is not None and limit_out is not None and asked > limit_out:
        needed_out = limit_out if model.clamp_max_tokens else asked
    if (
        bound is not None
        and (limit_in is None or bound <= limit_in)
        and (context is None or bound + needed_out <= context)
    ):
        prompt = bound
    else:
        lengths = req.token_id_prompt_lengths()
        payloads = req.tokenize_payloads()
        if payloads:  # the backend counts: an on-demand one has to be up first
            await upstream.admission.ensure_serving(
                model.lane, model.route, model.deployments, model.queue_depth, model.load_wait_s
            )
        for payload in payloads:
            lengths.append(await upstream.count_tokens(model.deployments, payload))
        prompt = max(lengths)
    what, out_field = req.prompt_field, req.output_field
    if limit_in is not None and prompt > limit_in:
        # Worded as OpenAI and vLLM word it ("This model's maximum context length is"): that is
        # how LiteLLM and LangChain-style wrappers recognise a context overflow.
        raise context_length(
            f"This model's maximum context length is {limit_in} input tokens on "
            f"{model.name!r} (its max_input_tokens). However, your {what} resulted in {prompt} "
            f"input tokens. Please reduce the length of the {what}.",
            param=what,
        )
    max_tokens = asked
    if asked is not None and limit_out is not None and asked > limit_out:
        if not model.clamp_max_tokens:
            raise bad_request(
                f"{out_field}={asked} is over the maximum of {limit_out} output tokens "
                f"allowed on {model.name!r}",
                param=out_field,
                code="max_tokens_exceeded",
            )
        max_tokens = limit_out
    if context is not None:
        if max_tokens is not None and prompt + max_tokens > context:
            raise context_length(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt + max_tokens} tokens ({prompt} in the {what}, {max_tokens} "
                f"in the completion: {out_field}). Please reduce the length of the {what} or "
                "completion.",
                param=out_field,
            )
        if max_tokens is None and prompt >= context:
            raise context_length(
                f"This model's maximum context length is {context} tokens. However, your "
                f"{what} resulted in {prompt} tokens, which leaves no room for the completion. "
                f"Please reduce the length of the {what}.",
                param=what,
            )
    if max_tokens is None and limit_out is not None:
        max_tokens = limit_out if context is None else min(limit_out, context - prompt)
    out = max_tokens if max_tokens is not None else (context - prompt if context else 0)
    reserved = req.prompts * (prompt + req.n * out)
    return Admitted(prompt, max_tokens, reserved)
