"""A deterministic tokenizer and text source, so limits and usage count the same tokens.

Words from a fixed vocabulary (with or without a leading space) are one token each; anything
else falls back to one token per UTF-8 byte, so every text encodes and decodes exactly. The chat
template mirrors the test model's: ``<s>`` then ``<|role|>content<|end|>`` per message, then
``<|assistant|>`` when a generation prompt is added.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
ROLE_IDS = {"system": 3, "user": 4, "assistant": 5}
END = 6
BYTE_BASE = len(SPECIALS)
WORD_BASE = BYTE_BASE + 256

WORDS = (
    "the of and to in is that it for on with as was be by this are or at from an have not "
    "but they which one you all were her she there would their we him been has when who will "
    "more no if out so said what up its about into than them can only other new some time "
    "could these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three hi "
    "hello token model queue fleet gateway context window cache memory server request reply "
    "stream batch limit prompt answer question system user assistant quick brown fox jumps lazy "
    "dog river mountain light green blue red small large fast slow open close start stop"
).split()

_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s")


class SimTokenizer:
    """Encode, decode and apply the chat template; ids are stable across runs."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = [s.encode() for s in SPECIALS]
        self.pieces += [bytes([b]) for b in range(256)]
        for word in WORDS:
            self.pieces += [word.encode(), b" " + word.encode()]
        self._ids = {p.decode(): i for i, p in enumerate(self.pieces) if i >= WORD_BASE}
        # generated text uses the space-led words, so it re-encodes to the same count
        self.reply_ids = list(range(WORD_BASE + 1, len(self.pieces), 2))

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = [BOS] if add_bos else []
        get = self._ids.get
        for piece in _PIECE.findall(text):
            i = get(piece)
            if i is not None:
                ids.append(i)
            else:
                ids.extend(BYTE_BASE + b for b in piece.encode())
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        n = len(self.pieces)
        first = BYTE_BASE if skip_special else 0
        return b"".join(self.pieces[i] for i in ids if first <= i < n).decode(errors="replace")

    def token_strs(self, ids: Sequence[int]) -> list[str]:
        return [
            self.pieces[i].decode(errors="replace") if 0 <= i < len(self.pieces) else ""
            for i in ids
        ]

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        ids = [BOS]
        for message in messages:
            role = str(message.get("role", ""))
            role_id = ROLE_IDS.get(role)
            if role_id is None:
                ids += self.encode(f"<|{role}|>")
            else:
                ids.append(role_id)
            ids += self.encode(message_text(message.get("content")))
            ids.append(END)
        if add_generation_prompt:
            ids.append(ROLE_IDS["assistant"])
        return ids


def message_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a content list joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


class ReplyText:
    """The deterministic reply to one prompt: a seeded stream of vocabulary words."""

    def __init__(self, tokenizer: SimTokenizer, seed: int, prompt_ids: Sequence[int]) -> None:
        self._choices = tokenizer.reply_ids
        self._pieces = tokenizer.pieces
        self._rng = random.Random(hash((seed, len(prompt_ids), tuple(prompt_ids[-64:]))))

    def natural_length(self, typical: int | None) -> int | None:
        if typical is None:
            return None
        return self._rng.randint(max(1, typical // 2), max(1, typical * 3 // 2))

    def next_piece(self) -> str:
        return self._pieces[self._rng.choice(self._choices)].decode()
