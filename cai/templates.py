"""Prompt templates: sandboxed Jinja, strict about undefined variables, linted before long runs.

Lookup order for a template name: the user's template directory, then the
constitution's own ``templates:`` mapping, then the templates shipped in the wheel.

A template renders to a chat conversation. Lines of the form ``[[user]]``,
``[[assistant]]`` or ``[[system]]`` start a new message; text before the first
marker (or a template with no markers) is one user message. A final
``[[assistant]]`` message is a prefix the model continues (used to put the
option letter right after ``(`` for multiple-choice scoring).

Only markers written in the template count: when a template is loaded its marker
lines are tagged with a random per-instance nonce, so a prompt or model output
containing a ``[[user]]`` line cannot forge a turn.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2
import jinja2.sandbox
from jinja2 import StrictUndefined, meta, nodes
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from cai.constitution import Constitution
from cai.errors import TemplateError

Message = dict[str, str]
Conversation = list[Message]

ROLE_MARKER = re.compile(r"^[ \t]*\[\[(system|user|assistant)\]\][ \t]*$", re.MULTILINE)
# `{premise}`: Python format syntax inside Jinja renders literally and silently.
SINGLE_BRACE = re.compile(r"(?<![{\\$%]){\s*([A-Za-z_][A-Za-z0-9_.]*)\s*}(?!})")
SUFFIX = ".jinja"


def _name(name: str) -> str:
    return name if name.endswith(SUFFIX) else name + SUFFIX


@dataclass(frozen=True)
class TemplateSource:
    name: str
    text: str
    origin: str  # where it was found, for errors and provenance

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


class PromptTemplates:
    """Finds, renders and lints the templates for one run."""

    def __init__(
        self,
        template_dir: str | Path | None = None,
        constitution: Constitution | None = None,
    ) -> None:
        self.template_dir = Path(template_dir) if template_dir else None
        if self.template_dir is not None and not self.template_dir.is_dir():
            raise TemplateError(
                f"{self.template_dir}: template directory does not exist; pass an existing directory"
            )
        self.constitution = constitution
        self._nonce = secrets.token_hex(8)
        self._env = SandboxedEnvironment(
            loader=jinja2.FunctionLoader(self._load),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )

    # --- lookup --------------------------------------------------------------------

    def _candidates(self, name: str) -> list[Path]:
        fname = _name(name)
        out: list[Path] = []
        if self.template_dir is not None:
            out.append(self.template_dir / fname)
        c = self.constitution
        if c is not None and c.templates:
            rel = c.templates.get(name.removesuffix(SUFFIX))
            if rel is not None:
                base = Path(c.source).parent if c.source else Path.cwd()
                out.append(base / rel)
        out.append(Path(str(resources.files("cai.prompts").joinpath(fname))))
        return out

    def source(self, name: str) -> TemplateSource:
        for path in self._candidates(name):
            if path.is_file():
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise TemplateError(f"{path}: cannot read template ({e})") from None
                return TemplateSource(name=_name(name), text=text, origin=str(path))
        tried = ", ".join(str(p) for p in self._candidates(name))
        raise TemplateError(
            f"template '{_name(name)}' not found (looked in: {tried}); "
            "add it to your template directory or fix the name"
        )

    def _load(self, name: str):
        src = self.source(name)
        tagged = ROLE_MARKER.sub(lambda m: f"[[{m.group(1)}:{self._nonce}]]", src.text)
        return tagged, src.origin, lambda: False

    def _compile(self, name: str) -> jinja2.Template:
        try:
            return self._env.get_template(_name(name))
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                f"{e.filename or name}:{e.lineno}: template syntax error ({e.message}); fix the Jinja syntax"
            ) from None

    # --- rendering -----------------------------------------------------------------

    def render(self, name: str, **context: Any) -> str:
        """The rendered text (role markers carry this instance's nonce; see render_messages)."""
        template = self._compile(name)
        try:
            return template.render(**context)
        except SecurityError as e:
            raise TemplateError(
                f"{self.source(name).origin}: refused by the sandbox ({e}); "
                "templates may only use the variables they are given"
            ) from None
        except jinja2.UndefinedError as e:
            raise TemplateError(
                f"{self.source(name).origin}: {e.message}; "
                f"use only the variables this template is given"
            ) from None

    def render_messages(
        self, name: str, *, system_prompt: str | None = None, **context: Any
    ) -> Conversation:
        return split_messages(self.render(name, **context), system_prompt=system_prompt, nonce=self._nonce)

    # --- provenance and lint -------------------------------------------------------

    def sha256(self, name: str) -> str:
        return self.source(name).sha256

    def provenance(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        return {
            _name(n): {"sha256": self.source(n).sha256, "origin": self.source(n).origin}
            for n in names
        }

    def digests(self, names: Iterable[str]) -> dict[str, str]:
        """File name -> sha256 of each template: the part of `provenance` that enters a fingerprint
        (where a template was found does not change the rows; its text does)."""
        return {k: v["sha256"] for k, v in self.provenance(names).items()}

    def lint(self, name: str, provides: Iterable[str]) -> list[str]:
        """Problems with one template, given the variables its stage supplies."""
        src = self.source(name)
        problems: list[str] = []
        for lineno, line in enumerate(src.text.splitlines(), start=1):
            for m in SINGLE_BRACE.finditer(line):
                problems.append(
                    f"{src.origin}:{lineno}: '{m.group(0)}' is Python format syntax and renders "
                    f"literally; write '{{{{ {m.group(1)} }}}}'"
                )
        try:
            ast = self._env.parse(src.text, name=src.name, filename=src.origin)
        except jinja2.TemplateSyntaxError as e:
            return problems + [f"{src.origin}:{e.lineno}: template syntax error ({e.message})"]
        problems += [f"{src.origin}:{lineno}: {what}" for lineno, what in python_internals(ast)]
        supplied = set(provides)
        for var in sorted(meta.find_undeclared_variables(ast) - supplied):
            problems.append(
                f"{src.origin}: uses undefined variable '{var}'; "
                f"available: {', '.join(sorted(supplied)) or 'none'}"
            )
        return problems

    def validate(self, requirements: Mapping[str, Iterable[str]]) -> None:
        """Lint every template a stage will use; raise on the first problem, before any work."""
        for name, provides in requirements.items():
            problems = self.lint(name, provides)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise TemplateError(problems[0] + more)


#: Attributes the sandbox refuses that do not start with "_" (frames and code of generators, ...).
_UNSAFE_ATTRIBUTES = (
    jinja2.sandbox.UNSAFE_FUNCTION_ATTRIBUTES | jinja2.sandbox.UNSAFE_METHOD_ATTRIBUTES
    | jinja2.sandbox.UNSAFE_GENERATOR_ATTRIBUTES | jinja2.sandbox.UNSAFE_COROUTINE_ATTRIBUTES
    | jinja2.sandbox.UNSAFE_ASYNC_GENERATOR_ATTRIBUTES | {"mro", "func_globals", "func_code", "f_globals",
                                                          "f_locals", "f_builtins", "tb_frame"}
)
# A str.format field that walks to an attribute or key starting with "_": '{0.__class__}'.
_FORMAT_INTERNAL = re.compile(r"\{[^{}]*(?:\.|\[)\s*_")


def _internal(name: str) -> bool:
    return name.startswith("_") or name in _UNSAFE_ATTRIBUTES


def python_internals(ast: nodes.Template) -> list[tuple[int, str]]:
    """Where a template reaches for Python internals (``''.__class__``, ``x['__globals__']``,
    ``x | attr(name)``): (line, problem). The sandbox refuses these at render time; lint
    refuses them before any model loads."""
    fix = "the sandbox refuses that: templates may use only the variables they are given and their plain fields"
    found: list[tuple[int, str]] = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call)):
        if isinstance(node, nodes.Getattr) and _internal(node.attr):
            found.append((node.lineno, f"reaches for Python internals ('.{node.attr}'); {fix}"))
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str) and _internal(node.arg.value):
            found.append((node.lineno, f"reaches for Python internals ([{node.arg.value!r}]); {fix}"))
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
                found.append((node.lineno, f"uses attr() with a computed name; write the field name itself, {fix}"))
            elif _internal(arg.value):
                found.append((node.lineno, f"reaches for Python internals (attr({arg.value!r})); {fix}"))
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr) \
                and node.node.attr in ("format", "format_map") and isinstance(node.node.node, nodes.Const) \
                and isinstance(node.node.node.value, str) and _FORMAT_INTERNAL.search(node.node.node.value):
            found.append((node.lineno, f"reaches for Python internals (through str.{node.node.attr}); {fix}"))
    return sorted(set(found))


def split_messages(text: str, *, system_prompt: str | None = None, nonce: str | None = None) -> Conversation:
    """Turn rendered template text into chat messages (see the module docstring).

    With ``nonce``, only ``[[role:nonce]]`` lines split turns; plain ``[[role]]`` lines
    (which could come from user data) stay text.
    """
    marker = ROLE_MARKER if nonce is None else re.compile(
        rf"^[ \t]*\[\[(system|user|assistant):{re.escape(nonce)}\]\][ \t]*$", re.MULTILINE)
    parts = marker.split(text)
    messages: Conversation = []
    head = parts[0].strip()
    if head:
        messages.append({"role": "user", "content": head})
    for role, body in zip(parts[1::2], parts[2::2]):
        body = body.strip()
        if body or role == "assistant":
            messages.append({"role": role, "content": body})
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    if not messages or all(m["role"] == "system" for m in messages):
        raise TemplateError("template rendered to no user message; check its content")
    return messages


def packaged_templates() -> list[str]:
    root = resources.files("cai.prompts")
    return sorted(e.name for e in root.iterdir() if e.name.endswith(SUFFIX))


#: The contract between stages and templates: what each template is given.
#: Stages render with exactly these; `lint` flags a template that uses anything else.
TEMPLATE_VARIABLES: dict[str, set[str]] = {
    "initial_response": {"prompt", "constitution"},
    "critique": {"prompt", "response", "principle", "few_shot", "constitution"},
    "revision": {"prompt", "response", "critique", "principle", "few_shot", "constitution"},
    "preference": {"prompt", "conversation", "response_a", "response_b", "question", "principle", "constitution"},
    "preference_cot": {"prompt", "conversation", "response_a", "response_b", "question", "principle", "constitution"},
    "cot_answer": {"question"},
    "cot_few_shot": {"question", "examples"},
    "cot_rationalize": {"question", "hint"},
    "synthetic_prompts": {"seeds", "kind", "n"},
}


def lint_all(templates: "PromptTemplates", names: Iterable[str] | None = None) -> list[str]:
    """Lint the named (default: all known) templates that can be found."""
    problems: list[str] = []
    for name in names or TEMPLATE_VARIABLES:
        try:
            problems += templates.lint(name, TEMPLATE_VARIABLES.get(name.removesuffix(SUFFIX), set()))
        except TemplateError as e:
            problems.append(str(e))
    return problems
