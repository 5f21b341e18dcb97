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
"""

from __future__ import annotations

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
