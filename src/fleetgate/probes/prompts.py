"""Build a chat prompt of an exact token count, measured by the backend's own tokenizer.

The count has to be the backend's (its chat template included), not an estimate: the smoke
test's whole point is that exactly the limit passes and one token more does not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fleetgate.errors import FleetgateError

Messages = list[dict[str, str]]
Counter = Callable[[Messages], Awaitable[int]]

_UNIT = " hello"
# Short pieces tried at the end when whole units step over the target (a unit may be 2 tokens).
_FILLERS = (" a", ".", "!", " b", ",", " x", "?", " z")
_MAX_STEPS = 24


class PromptFitError(FleetgateError):
    """No prompt of exactly the requested count was found."""


def messages_for(text: str) -> Messages:
    return [{"role": "user", "content": text}]


async def fit_prompt(count: Counter, target: int) -> tuple[Messages, int]:
    """Messages whose token count (as ``count`` measures it) is exactly ``target``.

    Returns the messages and the count. Raises :class:`PromptFitError` when the chat template
    alone is longer than ``target`` or no combination of units and fillers lands on it.
    """
    base = await count(messages_for(""))
    if base > target:
        raise PromptFitError(f"the chat template alone is {base} tokens, over {target}")
    if base == target:
        return messages_for(""), base
    probe = 64
    per_unit = max((await count(messages_for(_UNIT * probe))) - base, 1) / probe

    lo, hi = 0, None  # largest unit count known under target, smallest known over
    units = max(1, round((target - base) / per_unit))
    for _ in range(_MAX_STEPS):
        got = await count(messages_for(_UNIT * units))
        if got == target:
            return messages_for(_UNIT * units), got
        if got < target:
            lo = units
        else:
            hi = units
        if hi is not None and hi - lo <= 1:
            break
        guess = units + round((target - got) / per_unit)
        units = max(lo + 1, guess) if hi is None else min(max(lo + 1, guess), hi - 1)

    # Whole units step over the target: top up the largest undershoot with short fillers.
    text = _UNIT * lo
    got = await count(messages_for(text))
    for _ in range(_MAX_STEPS):
        if got == target:
            return messages_for(text), got
        for filler in _FILLERS:
            trial = await count(messages_for(text + filler))
            if trial == target:
                return messages_for(text + filler), trial
            if got < trial < target:
                text, got = text + filler, trial
                break
        else:
            break
    raise PromptFitError(f"could not build a prompt of exactly {target} tokens (closest {got})")
