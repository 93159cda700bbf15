"""CLI options generated from a pydantic config class: one default and one help text per field.

`config_options(Model)` adds a flag for every leaf field of ``Model`` (nested sections
are joined with ``-``: ``critique.max_new_tokens`` is ``--critique-max-new-tokens``, and
``--critique_max_new_tokens`` works too, as in TRL) plus ``--config FILE.yaml``. Flags
default to "not given", so `build_config` layers: the class's defaults < the YAML file <
the flags. The help text is the field's description and its default, read from the class,
so the CLI and the config cannot drift apart.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Callable, Literal, get_args, get_origin

import click
from pydantic import BaseModel, ValidationError

from cai.errors import UserInputError

F = Callable[..., Any]


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaves(ann, (*prefix, name))
        else:
            out.append(((*prefix, name), field))
    return out


def _default_of(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    node: Any = model()
    for part in path:
        node = getattr(node, part)
    return node


def _is_text(ann: Any) -> bool:
    return ann is str or (get_origin(ann) is Literal and all(isinstance(a, str) for a in get_args(ann)))


def _click_type(ann: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a field annotation; unknown shapes are read as YAML scalars."""
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:  # Optional[X] -> X
        ann = args[0]
    if ann is bool:
        return None, True
    if ann in (int, float, str):
        return ann, False
    if get_origin(ann) is Literal and all(isinstance(a, str) for a in get_args(ann)):
        return click.Choice(list(get_args(ann))), False
    if get_origin(ann) is list and len(get_args(ann)) == 1 and _is_text(get_args(ann)[0]):
        return _COMMA_LIST, False
    return _YAML, False


class _YamlScalar(click.ParamType):
    name = "value"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        import yaml

        return yaml.safe_load(value) if isinstance(value, str) else value


_YAML = _YamlScalar()


class _CommaList(_YamlScalar):
    """A list of words: ``a,b`` (as a shell user writes it) or a YAML list ``[a, b]``."""

    name = "a,b,..."

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return super().convert(value, param, ctx)


_COMMA_LIST = _CommaList()


def config_options(model: type[BaseModel], *, exclude: tuple[str, ...] = (),
                   aliases: dict[str, tuple[str, ...]] | None = None) -> Callable[[F], F]:
    """Decorator: a flag per leaf field of ``model`` (except dotted paths in ``exclude``), and ``--config``.

    ``aliases`` gives a field more flag names (``{"k_samples": ("--k",)}``): the names a
    command had before its flags came from the config, so they keep working.
    """

    def apply(f: F) -> F:
        for path, field in reversed(_leaves(model)):
            dotted = ".".join(path)
            if dotted in exclude or any(dotted.startswith(e + ".") for e in exclude):
                continue
            flag = "-".join(path).replace("_", "-")
            dest = "cfg__" + "__".join(path)
            typ, is_flag = _click_type(field.annotation)
            default = _default_of(model, path)
            desc = (field.description or "").rstrip(".")
            shown = ",".join(default) if typ is _COMMA_LIST and isinstance(default, list) else default
            help_text = f"{desc + '. ' if desc else ''}[default: {shown}]"
            names = [f"--{flag}"] + ([f"--{'_'.join(path)}"] if "_" in "_".join(path) else [])
            names += list((aliases or {}).get(dotted, ()))
            if is_flag:
                opt = click.option(f"--{flag}/--no-{flag}", dest, default=None, help=help_text)
            else:
                opt = click.option(*names, dest, type=typ, default=None, help=help_text)
            f = opt(f)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                            help=f"YAML file of {model.__name__} fields; flags given here override it.")(f)

    return apply


def pop_config_flags(kwargs: dict[str, Any]) -> tuple[str | None, dict[tuple[str, ...], Any]]:
    """Take the generated flags out of a command's kwargs: (config file, {field path: value given})."""
    config_file = kwargs.pop("config_file", None)
    given = {}
    for key in [k for k in kwargs if k.startswith("cfg__")]:
        value = kwargs.pop(key)
        if value is not None:
            given[tuple(key[len("cfg__"):].split("__"))] = value
    return config_file, given


def build_config(model: type[BaseModel], config_file: str | None, given: dict[tuple[str, ...], Any],
                 shortcuts: dict[tuple[str, ...], Any] | None = None) -> BaseModel:
    """defaults < ``config_file`` < ``shortcuts`` (e.g. one --max-new-tokens for several sections) < flags."""
    from cai.yamlfile import load_yaml_model

    base = load_yaml_model(config_file, model) if config_file else model()
    data = base.model_dump()
    for path, value in [*(shortcuts or {}).items(), *given.items()]:
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        src = f" (or {config_file})" if config_file else ""
        raise UserInputError(f"{flag}{src}: {err['msg']}; fix the value") from None


def flag_name(path: tuple[str, ...]) -> str:
    return "--" + "-".join(path).replace("_", "-")


__all__ = ["config_options", "pop_config_flags", "build_config", "flag_name"]
