"""TRL config fields as data: their types, defaults and help, and values checked against them.

Values come from YAML, a ``config`` dict or command-line flags, so they may be
strings where TRL wants numbers: PyYAML reads ``learning_rate: 1e-4`` as the
string ``"1e-4"``. As TRL's own parser does, such strings are converted to the
field's type. What cannot be converted, or is out of a field's sensible range
(``per_device_train_batch_size: 0``, ``learning_rate: -0.5``), is refused in one
line naming the field and the fix, before any model loads. Imports no trl: the
classes come from the caller.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from cai.errors import UserInputError

_TRUE = {"true", "yes", "y", "t", "1", "on"}
_FALSE = {"false", "no", "n", "f", "0", "off"}


class TrainingConfigError(UserInputError):
    """A trainer config file, option or value that TRL would not accept (or that would not train)."""


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: Any
    default: Any  # dataclasses.MISSING when the field has none
    help: str


@functools.cache
def field_infos(config_cls: type) -> dict[str, FieldInfo]:
    """Every init field of a TRL config dataclass, with its resolved type, default and help text."""
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # an unresolvable annotation: check those fields' values loosely
        hints = {}
    out = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out[f.name] = FieldInfo(f.name, hints.get(f.name, Any), default, " ".join(str(f.metadata.get("help", "")).split()))
    return out


# --- types -----------------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def describe(tp: Any) -> str:
    """A field type in words, for error messages."""
    parts = []
    members = _members(tp)
    has_choices = any(_choices(m) for m in members)
    for m in members:
        origin = typing.get_origin(m)
        if m is type(None) or (m is str and has_choices):
            continue
        if isinstance(m, type) and issubclass(m, enum.Enum):
            parts.append("one of " + ", ".join(str(e.value) for e in m))
        elif origin is Literal:
            parts.append("one of " + ", ".join(str(a) for a in typing.get_args(m)))
        elif m is bool:
            parts.append("true or false")
        elif m is int:
            parts.append("a whole number")
        elif m is float:
            parts.append("a number")
        elif m is str:
            parts.append("text")
        elif origin in (list, tuple):
            parts.append("a list")
        elif origin is dict or m is dict:
            parts.append("a mapping")
        else:
            parts.append(getattr(m, "__name__", str(m)))
    return " or ".join(dict.fromkeys(parts)) or "null"


def _choices(tp: Any) -> list[str]:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [str(e.value) for e in tp]
    if typing.get_origin(tp) is Literal:
        return [str(a) for a in typing.get_args(tp)]
    return []


def _hint(value: Any, tp: Any) -> str:
    import difflib

    choices = [c for m in _members(tp) for c in _choices(m)]
    close = difflib.get_close_matches(str(value), choices, n=2, cutoff=0.6) if choices else []
    return f"; did you mean {' or '.join(close)}?" if close else "; fix that value"


def _scalar(value: Any, tp: Any) -> Any:
    """``value`` as the (non-union) type ``tp``, converting text as TRL's parser does; raises _Mismatch."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        raise _Mismatch
    if value is None:
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        number = _number(value)
        if float(number).is_integer():
            return int(number)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        return float(_number(value))
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        choices = {str(e.value): e.value for e in tp}
        if isinstance(value, str) and value in choices:
            return value  # TRL converts the string itself
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        items = _sequence(value)
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(items, args))
        item_tp = args[0] if args else Any
        converted = [_coerce(v, item_tp) for v in items]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or tp is dict:
        parsed = _json(value, dict) if isinstance(value, str) else value
        if isinstance(parsed, dict):
            return parsed
        raise _Mismatch
    return value  # a class cai does not know how to check (e.g. ParallelismConfig): TRL's to judge


def _number(value: Any) -> float | int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise _Mismatch


def _sequence(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return _json(text, list)
        return [v.strip() for v in text.split(",") if v.strip()]
    return [value]


def _json(text: str, kind: type) -> Any:
    """A JSON list or object given as text (how a flag passes one)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        raise _Mismatch from None
    if not isinstance(parsed, kind):
        raise _Mismatch
    return parsed


def _coerce(value: Any, tp: Any) -> Any:
    members = _members(tp)
    if len(members) == 1:
        return _scalar(value, tp)
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    if enums and isinstance(value, str) and str in members:
        return _scalar(value, enums[0])  # `SchedulerType | str`: the string must still name one
    # A value that already has one of the types stays as it is; otherwise convert, text last.
    for m in members:
        if m is not type(None) and typing.get_origin(m) is None and isinstance(m, type) \
                and isinstance(value, m) and not (isinstance(value, bool) and m is not bool):
            return value
    for m in sorted(members, key=lambda m: m is str):
        try:
            return _scalar(value, m)
        except _Mismatch:
            continue
    raise _Mismatch


# --- ranges ------------------------------------------------------------------------------------

#: Fields whose TRL type admits values that cannot train: (lowest, highest, whether lowest itself is allowed).
BOUNDS: dict[str, tuple[float | None, float | None, bool]] = {
    **dict.fromkeys(("learning_rate", "num_train_epochs", "logging_steps", "save_steps", "eval_steps",
                     "temperature", "adam_epsilon"), (0, None, False)),
    **dict.fromkeys(("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "max_length", "max_prompt_length", "max_completion_length", "response_length",
                     "num_ppo_epochs", "num_mini_batches", "total_episodes", "local_rollout_forward_batch_size",
                     "generation_batch_size", "steps_per_generation", "num_iterations"), (1, None, True)),
    **dict.fromkeys(("weight_decay", "max_grad_norm", "warmup_steps", "beta", "kl_coef", "epsilon",
                     "dataloader_num_workers", "label_smoothing_factor", "vf_coef", "cliprange",
                     "cliprange_value", "center_rewards_coefficient"), (0, None, True)),
    **dict.fromkeys(("warmup_ratio", "adam_beta1", "adam_beta2", "label_smoothing"), (0, 1, True)),
    "top_p": (0, 1, False),
    "num_generations": (2, None, True),
    **dict.fromkeys(("seed", "data_seed"), (0, 2**32 - 1, True)),
}


def _check_bounds(name: str, value: Any, where: str) -> None:
    if name == "max_steps" and isinstance(value, int) and not (value == -1 or value >= 1):
        raise TrainingConfigError(f"{where} must be a positive number of steps (or -1 to train for "
                                  f"num_train_epochs), got {value}; fix that value")
    bound = BOUNDS.get(name)
    if bound is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high, low_ok = bound
    too_low = low is not None and (value < low or (value == low and not low_ok))
    too_high = high is not None and value > high
    if too_low or too_high:
        if high is not None:
            want = f"between {low} and {high}" if low_ok else f"above {low} and at most {high}"
        else:
            want = f"at least {low}" if low_ok else f"above {low}"
        raise TrainingConfigError(f"{where} must be {want}, got {value}; fix that value")


def coerce_fields(config_cls: type, fields: dict[str, Any], source: str) -> dict[str, Any]:
    """``fields`` with each value converted to its field's type and checked; one-line error otherwise.

    Field names must already be known (see ``cai.training.config.check_known``).
    """
    infos = field_infos(config_cls)
    out = {}
    for name, value in fields.items():
        info = infos.get(name)
        if info is None:
            out[name] = value
            continue
        where = f"{source}: {config_cls.__name__} field '{name}'"
        try:
            out[name] = _coerce(value, info.type)
        except _Mismatch:
            shown = repr(value) if not isinstance(value, str) else f"'{value}'"
            raise TrainingConfigError(f"{where} expects {describe(info.type)}, got {shown}"
                                      f"{_hint(value, info.type)}") from None
        _check_bounds(name, out[name], where)
    return out


__all__ = ["FieldInfo", "TrainingConfigError", "field_infos", "coerce_fields", "describe", "BOUNDS"]
