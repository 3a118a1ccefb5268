"""Value types for config keys, each with a one-line message that says what is allowed.

pydantic routes each value to its key (``pipeline[1].sigma``); these validators decide what a
value may be and word the complaint the way the user should read it: ``must be > 0 (got -2)``.
YAML already gives typed values, so nothing is coerced from strings: ``sigma: "2"`` is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError


def fail(message: str) -> PydanticCustomError:
    """An error whose text pydantic passes through untouched."""
    return PydanticCustomError("convpipe", message.replace("{", "{{").replace("}", "}}"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(value: Any) -> float:
    if not _is_number(value) or math.isnan(value):
        raise fail(f"must be a number (got {value!r})")
    if math.isinf(value):
        raise fail(f"must be a finite number (got {value:g})")
    return float(value)


def positive(value: Any) -> float:
    value = number(value)
    if not value > 0:
        raise fail(f"must be > 0 (got {value:g})")
    return value


def integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(f"must be an integer >= {minimum} (got {value!r})")
        if value < minimum:
            raise fail(f"must be >= {minimum} (got {value})")
        return value

    return check


def per_axis(check: Callable[[Any], Any], what: str) -> Callable[[Any], Any]:
    """One value for every spatial axis, or a list with one per axis (length checked later)."""

    def check_per_axis(value: Any) -> Any:
        if isinstance(value, list | tuple):
            if not value:
                raise fail(f"must be {what} or a non-empty list of them (got [])")
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
        raise fail(f"must be true or false (got {value!r})")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fail(f"must be a non-empty string (got {value!r})")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise fail(f"must be one of {', '.join(choices)} (got {value!r})")
        return str(value)

    return check


#: Per-axis values are tuples inside, lists in YAML and JSON.
as_plain = PlainSerializer(lambda value: list(value) if isinstance(value, tuple) else value)

Number = Annotated[float, PlainValidator(number)]
Positive = Annotated[float, PlainValidator(positive)]
PositivePerAxis = Annotated[float | tuple[float, ...], PlainValidator(per_axis(positive, "a number > 0")), as_plain]
Size = Annotated[int | tuple[int, ...], PlainValidator(per_axis(integer(1), "an integer >= 1")), as_plain]
Boolean = Annotated[bool, PlainValidator(boolean)]
Text = Annotated[str, PlainValidator(text)]


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``null`` (or leaving the key out) means "not set"; anything else must pass ``check``."""
    return lambda value: None if value is None else check(value)


OptionalNumber = Annotated[float | None, PlainValidator(optional(number))]
OptionalText = Annotated[str | None, PlainValidator(optional(text))]
