"""Value types for config keys, each with a one-line message that says what is allowed.

pydantic routes each value to its key (``pipeline[1].sigma``); these validators decide what a
value may be and word the complaint the way the user should read it: ``must be > 0 (got -2)``.
YAML already gives typed values, so nothing is coerced from strings: ``sigma: "2"`` is an error
(the config loader reads ``1e-3`` as the number YAML 1.2 says it is; see ``convpipe.config``).
Keys that size a kernel, a window or an allocation have upper bounds, so an absurd value is one
line at validation rather than a MemoryError or an OverflowError later (README, "Config keys":
limits). A value echoed back is cut short (``shown``): the config may have built it from aliases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

#: The longest kernel, window, pad or stride along one axis, in pixels (README, "Config keys": limits).
#: A 2**14-tap separable pass is cheap; what a block then needs is the memory check's business.
MAX_TAPS = 2**14

#: The most samples in one window or dense kernel (2**24, 128 MiB in float64): rank filters and
#: dense kernels hold all of them at once.
MAX_WINDOW = 2**24

#: Gaussian ``sigma`` in pixels: below 0.001 the kernel is one tap whatever ``truncate`` (and
#: 1/sigma**4, used by ``log``, stays finite); above 2000 it would pass MAX_TAPS at ``truncate`` 4.
SIGMA_RANGE = (1e-3, 2000.0)

#: Gaussian ``truncate``, in sigmas: scipy's default is 4; beyond 100 the tails are below 1e-2000.
MAX_TRUNCATE = 100.0

#: How long an echoed value may be before it is cut with an ellipsis.
SHOWN_LENGTH = 80


def shown(value: Any) -> str:
    """``repr(value)`` cut to SHOWN_LENGTH characters: a YAML alias can build a list of millions."""
    text = repr(value)
    return text if len(text) <= SHOWN_LENGTH else text[: SHOWN_LENGTH - 1] + "…"


def fail(message: str) -> PydanticCustomError:
    """An error whose text pydantic passes through untouched."""
    return PydanticCustomError("convpipe", message.replace("{", "{{").replace("}", "}}"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(value: Any) -> float:
    if not _is_number(value) or math.isnan(value):
        hint = "; write it without quotes" if isinstance(value, str) and _spells_number(value) else ""
        raise fail(f"must be a number (got {shown(value)}{hint})")
    if math.isinf(value):
        raise fail(f"must be a finite number (got {value:g})")
    return float(value)


def _spells_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def positive(value: Any) -> float:
    value = number(value)
    if not value > 0:
        raise fail(f"must be > 0 (got {value:g})")
    return value


def within(low: float, high: float, unit: str = "") -> Callable[[Any], float]:
    """A number in [low, high]: ``sigma``, ``truncate``."""
    suffix = f" {unit}" if unit else ""

    def check(value: Any) -> float:
        value = positive(value) if low > 0 else number(value)  # "must be > 0" first, as for any length
        if not low <= value <= high:
            raise fail(f"must be from {low:g} to {high:g}{suffix} (got {value:g})")
        return value

    return check


def truncate(value: Any) -> float:
    """A Gaussian's radius in sigmas: > 0 and at most MAX_TRUNCATE."""
    value = positive(value)
    if value > MAX_TRUNCATE:
        raise fail(f"must be at most {MAX_TRUNCATE:g} sigmas (got {value:g})")
    return value


def integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(f"must be an integer >= {minimum} (got {shown(value)})")
        if value < minimum:
            raise fail(f"must be >= {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise fail(f"must be at most {maximum} (got {shown(value)})")
        return value

    return check


def per_axis(check: Callable[[Any], Any], what: str, most: int = 3) -> Callable[[Any], Any]:
    """One value for every spatial axis, or a list with one per axis (length checked later
    against the data; ``most`` refuses at once a list no image could match)."""

    def check_per_axis(value: Any) -> Any:
        if isinstance(value, list | tuple):
            if not value:
                raise fail(f"must be {what} or a non-empty list of them (got [])")
            if len(value) > most:
                raise fail(f"must be {what} or a list of at most {most} of them (got {len(value)} items)")
            items = []
            for index, item in enumerate(value):
                try:
                    items.append(check(item))
                except PydanticCustomError as error:
                    raise fail(f"item {index} {error.message()}") from None
            return tuple(items)
        return check(value)

    return check_per_axis


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(f"must be true or false (got {shown(value)})")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fail(f"must be a non-empty string (got {shown(value)})")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise fail(f"must be one of {', '.join(choices)} (got {shown(value)})")
        return str(value)

    return check


#: Per-axis values are tuples inside, lists in YAML and JSON.
as_plain = PlainSerializer(lambda value: list(value) if isinstance(value, tuple) else value)

Number = Annotated[float, PlainValidator(number)]
Positive = Annotated[float, PlainValidator(positive)]
Truncate = Annotated[float, PlainValidator(truncate)]
Sigma = Annotated[
    float | tuple[float, ...],
    PlainValidator(per_axis(within(*SIGMA_RANGE, "pixels"), f"a number from {SIGMA_RANGE[0]:g} to {SIGMA_RANGE[1]:g}")),
    as_plain,
]
Size = Annotated[
    int | tuple[int, ...],
    PlainValidator(per_axis(integer(1, MAX_TAPS), f"an integer from 1 to {MAX_TAPS}")),
    as_plain,
]
Boolean = Annotated[bool, PlainValidator(boolean)]
Text = Annotated[str, PlainValidator(text)]


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``null`` (or leaving the key out) means "not set"; anything else must pass ``check``."""
    return lambda value: None if value is None else check(value)


OptionalNumber = Annotated[float | None, PlainValidator(optional(number))]
OptionalText = Annotated[str | None, PlainValidator(optional(text))]
