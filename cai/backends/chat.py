"""Chat rendering that keeps message content out of the control tokens, for every backend that renders text."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

from cai.backends.base import Conversation
from cai.errors import UserInputError

# Used only when a tokenizer has no chat template (base models): plain role-tagged turns.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if not (loop.last and continue_final_message) %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

#
# A chat template writes special tokens (``<|im_start|>``, ``<|eot_id|>``, ...) around each
# message's content. Tokenizing the rendered text as a whole would turn the same strings
# inside a prompt, or inside a model's output shown to a judge, into those very tokens: a
# forged turn. So the template is also rendered with placeholder content, which shows where
# each message's content lies in the text, and a control token is kept only where the
# template itself wrote it; inside content its text is encoded as plain text. Content
# without such strings tokenizes exactly as before (the same ids).

_PLACEHOLDER = "\ue000cai-content-{}\ue001"
_PLACEHOLDER_RE = re.compile("\ue000cai-content-(\\d+)\ue001")


@dataclass(frozen=True)
class RenderedChat:
    """The text a model sees for a conversation, and where message content lies in it."""

    text: str
    #: [start, end) character spans of message content (never template text), in order
    spans: tuple[tuple[int, int], ...]
    #: the template's own text, content left out
    skeleton: str


class ChatEncoder:
    """Renders conversations with a tokenizer's chat template and encodes them safely.

    ``encode`` gives the ids a model is fed: special tokens only where the template wrote
    them, never from message content, for any tokenizer. Used by every backend that
    renders text itself (transformers, vLLM, and `cai serve` through them).
    """

    def __init__(self, tokenizer: Any, chat_template: str | None = None, *, closed: bool = False) -> None:
        """``closed``: render every conversation as finished (no generation prompt, the last
        turn ended, not continued), as TRL's trainers tokenize a whole chat row; a reward
        model reads prompt + response that way."""
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.closed = closed
        unk = getattr(tokenizer, "unk_token_id", None)
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
        self._other_added: dict[str, int] = {}
        for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(tok, "special", False):
                special.add(int(i))
            elif str(tok):
                self._other_added[str(tok)] = int(i)
        self._special = frozenset(special)
        #: how each control token is spelled (a token that only stands for unknown text is no forgery)
        self._spelling: dict[int, str] = {}
        self._protected: dict[str, frozenset[int]] = {}
        self._skeletons: dict[tuple[str, ...], list[str]] = {}
        self._unk = unk

    # --- rendering -----------------------------------------------------------------

    def _apply(self, conversation: Conversation) -> str:
        continues = bool(conversation) and conversation[-1]["role"] == "assistant"
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": False} if self.closed else {
            "tokenize": False,
            "add_generation_prompt": not continues,
            "continue_final_message": continues,
        }
        if self.chat_template:
            kwargs["chat_template"] = self.chat_template
        return self.tokenizer.apply_chat_template([dict(m) for m in conversation], **kwargs)

    def _layout(self, conversation: Conversation) -> list[str]:
        """The template rendered with placeholder content, split at the placeholders:
        ``[text0, index0, text1, index1, ..., textN]`` (cached per sequence of roles)."""
        roles = tuple(m["role"] for m in conversation)
        pieces = self._skeletons.get(roles)
        if pieces is None:
            masked = [{"role": r, "content": _PLACEHOLDER.format(i)} for i, r in enumerate(roles)]
            pieces = _PLACEHOLDER_RE.split(self._apply(masked))
            if len(self._skeletons) < 256:
                self._skeletons[roles] = pieces
        return pieces

    def render(self, conversation: Conversation) -> RenderedChat:
        """The chat template applied: a final assistant message is continued, otherwise a
        generation prompt is added. Records which characters are message content."""
        text = self._apply(conversation)
        pieces = self._layout(conversation)
        parts, order = pieces[0::2], [int(i) for i in pieces[1::2]]
        skeleton = "".join(parts)
        contents = [conversation[i]["content"] for i in order]
        spans = _align(text, parts, contents)
        if spans is not None:
            return RenderedChat(text, tuple(spans), skeleton)
        # The template treats real content unlike a placeholder (it rewrites it, or branches on it).
        if any(m["content"] for i, m in enumerate(conversation) if i not in set(order)):
            # Content that never shows as a placeholder: it cannot be located in the text.
            found = sorted({s for s in self._protected_strings(skeleton) for m in conversation if s in m["content"]})
            if found:
                raise UserInputError(
                    f"the data spells special tokens ({', '.join(found)}) and this model's chat template rewrites "
                    "message content, so cai cannot keep them plain text; remove them from the prompts or use another model"
                )
            return RenderedChat(text, (), skeleton)  # no special-token text in any content: nothing to forge
        # Its layout, with the content put in verbatim.
        out, spans, pos = [parts[0]], [], len(parts[0])
        for c, after in zip(contents, parts[1:]):
            spans.append((pos, pos + len(c)))
            out += [c, after]
            pos += len(c) + len(after)
        return RenderedChat("".join(out), tuple(spans), skeleton)

    # --- encoding ------------------------------------------------------------------

    def protected(self, skeleton: str = "") -> frozenset[int]:
        """Ids content must never produce: every special token, and any other added token
        the template writes itself (``<think>``, ...)."""
        got = self._protected.get(skeleton)
        if got is None:
            got = self._special | {i for s, i in self._other_added.items() if s in skeleton}
            missing = sorted(got - set(self._spelling))
            self._spelling.update(zip(missing, self.tokenizer.convert_ids_to_tokens(missing)))
            if len(self._protected) < 256:
                self._protected[skeleton] = got
        return got

    def _forged(self, tid: int, piece: str) -> bool:
        """Whether a control token's text spells it (not, say, the unknown token for an odd character)."""
        spelled = self._spelling.get(tid)
        return bool(spelled) and spelled in piece

    def _protected_strings(self, skeleton: str) -> list[str]:
        ids = sorted(self.protected(skeleton))
        return [s for s in self.tokenizer.convert_ids_to_tokens(ids) if s]

    def encode(self, chat: RenderedChat | Conversation, suffix: str = "") -> list[int]:
        """Token ids of the rendered text (+ ``suffix``, scored as content, e.g. an option):
        control tokens only where the template wrote them."""
        rendered = chat if isinstance(chat, RenderedChat) else self.render(chat)
        tok = self.tokenizer
        text = rendered.text + suffix
        spans = list(rendered.spans)
        if suffix:
            spans.append((len(rendered.text), len(text)))
        spans = [(a, b) for a, b in spans if b > a]
        if not spans:
            return list(tok(text, add_special_tokens=False)["input_ids"])
        protected = self.protected(rendered.skeleton)
        if getattr(tok, "is_fast", False):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            starts = [a for a, _ in spans]
            out: list[int] = []
            for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
                if tid in protected:
                    k = bisect.bisect_left(starts, b) - 1  # the last span starting before the token ends
                    if k >= 0 and spans[k][1] > a and self._forged(tid, text[a:b]):  # spelled in content
                        out += self.plain(text[a:b], protected)
                        continue
                out.append(tid)
            return out
        # No offsets (a slow tokenizer): when no content holds special-token text and the text
        # has only the template's control tokens, it tokenizes as a whole, as before.
        strings = self._protected_strings(rendered.skeleton)
        if not any(s in text[a:b] for a, b in spans for s in strings):
            ids = list(tok(text, add_special_tokens=False)["input_ids"])
            own = tok(rendered.skeleton, add_special_tokens=False)["input_ids"]
            if sum(i in protected for i in ids) == sum(i in protected for i in own):
                return ids
        out, pos = [], 0
        for a, b in spans:
            if a > pos:
                out += tok(text[pos:a], add_special_tokens=False)["input_ids"]
            out += self.plain(text[a:b], protected)
            pos = b
        if pos < len(text):
            out += tok(text[pos:], add_special_tokens=False)["input_ids"]
        return out

    def plain(self, text: str, protected: frozenset[int] | None = None) -> list[int]:
        """Ids of ``text`` read as plain text: special-token strings in it stay characters."""
        protected = self.protected() if protected is None else protected
        if not text:
            return []
        ids = self._continued(text)
        if all(i not in protected or i == self._unk for i in ids):  # unknown characters stay unknown
            return ids
        if len(text) == 1:  # a one-character control token: the unknown token stands in
            return [self._unk] if self._unk is not None else []
        # An added token that is not special (split_special_tokens keeps those): split its text.
        mid = len(text) // 2
        return self.plain(text[:mid], protected) + self.plain(text[mid:], protected)

    def _continued(self, text: str) -> list[int]:
        """``text`` encoded as it continues the text before it, special tokens split.

        Encoded alone, some tokenizers (SentencePiece) start a new word: encode after a
        letter and drop that letter's ids when they come out unchanged.
        """
        def enc(t: str) -> list[int]:
            return list(self.tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"])

        base, full = enc("a"), enc("a" + text)
        if len(full) > len(base) and full[: len(base)] == base:
            return full[len(base):]
        return enc(text)


def _align(text: str, parts: list[str], contents: list[str]) -> list[tuple[int, int]] | None:
    """Content spans such that ``text == parts[0] + c0 + parts[1] + c1 + ... + parts[-1]``.

    Each ``ci`` is the content as given or stripped of surrounding whitespace (templates
    that ``| trim`` content; a continued final message). None when the text is not so.
    """
    if not text.startswith(parts[0]):
        return None
    dead: set[tuple[int, int]] = set()

    def walk(k: int, pos: int) -> list[tuple[int, int]] | None:
        if k == len(contents):
            return [] if pos == len(text) else None
        if (k, pos) in dead:
            return None
        c, after = contents[k], parts[k + 1]
        for cand in dict.fromkeys((c, c.strip(), c.rstrip(), c.lstrip())):
            end = pos + len(cand)
            if text.startswith(cand, pos) and text.startswith(after, end):
                rest = walk(k + 1, end + len(after))
                if rest is not None:
                    return [(pos, end), *rest]
        dead.add((k, pos))
        return None

    return walk(0, len(parts[0]))
