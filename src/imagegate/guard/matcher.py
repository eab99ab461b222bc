"""Finding every rule term in a prompt in one pass, whatever the number of terms.

Two tries are built once at load time:

* Latin-script terms are token sequences (``("hayao", "miyazaki")``).  The prompt is split into tokens once and
  each token costs a dict lookup or two, so the cost depends on the prompt length, not on the number of rules.
  Whole-token comparison is what keeps "grape", "therapist" and "Scunthorpe" clean.
* CJK terms (Chinese, Japanese and Korean put no spaces between words) are substrings of a "skeleton" of the
  prompt that keeps only letters and digits, so ``宮崎・駿`` and ``宫 崎 骏`` both contain ``宫崎骏``.  A compiled
  character class of the possible first characters finds candidate positions at C speed.

Spaced-out spellings ("M i y a z a k i", "M.I.Y.A.Z.A.K.I") are handled by a second token stream in which a run of
three or more single-letter tokens is joined into one token.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from imagegate.guard.normalize import CJK_CLASS, LATIN_TOKEN_RE, Folded, fold, has_cjk

__all__ = ["Matcher", "Prepared", "latin_form", "Match"]

_ALNUM_RE = re.compile(r"[^\W_]")
_NON_ALNUM_RE = re.compile(r"[\W_]+")
_NON_ALNUM_CHAR_RE = re.compile(r"[\W_]")
_MAX_GAP = 2  # non-space punctuation allowed between two tokens of one term: "Hayao.Miyazaki", "Hayao - Miyazaki"
_MIN_LETTER_RUN = 3  # "M i y a z a k i" joins; "J. K." (initials) does not
_LETTER = f"[^\\W_{CJK_CLASS}]"
_LETTER_RE = re.compile(_LETTER)
# Cheap pre-check (one C-level scan) for three single-letter tokens in a row; the exact rules are applied after.
_LETTER_RUN_HINT = re.compile(f"(?<!{_LETTER}){_LETTER}[\\W_]+{_LETTER}[\\W_]+{_LETTER}(?!{_LETTER})")


def latin_form(folded: str) -> tuple[str, ...]:
    return tuple(LATIN_TOKEN_RE.findall(folded))


def _gap_ok(gap: str) -> bool:
    stripped = gap.strip()
    return len(stripped) <= _MAX_GAP and _ALNUM_RE.search(stripped) is None


def _plural_keys(token: str) -> tuple[str, ...]:
    """The forms a prompt token may take in the index: itself, or a plural/possessive-less form (nazis -> nazi)."""
    if token[-1] == "s" and len(token) > 3:
        if len(token) > 4 and token.endswith("es"):
            return token, token[:-1], token[:-2]
        return token, token[:-1]
    return (token,)


@dataclass(slots=True)
class _Stream:
    texts: list[str]
    starts: list[int]
    ends: list[int]
    joined: list[bool]  # True for tokens made by joining a run of single letters


class Prepared:
    """A prompt folded and tokenised once, ready to be matched against any number of matchers."""

    __slots__ = ("folded", "tokens", "_spelled", "_skeleton", "_removed")

    def __init__(self, prompt: str) -> None:
        self.folded: Folded = fold(prompt)
        text = self.folded.text
        texts, starts, ends = [], [], []
        for m in LATIN_TOKEN_RE.finditer(text):
            texts.append(m.group())
            starts.append(m.start())
            ends.append(m.end())
        self.tokens = _Stream(texts, starts, ends, [False] * len(texts))
        self._spelled: _Stream | None | bool = False  # False = not computed yet, None = no letter runs
        self._skeleton: str | None = None
        self._removed: list[int] | None = None

    @property
    def text(self) -> str:
        return self.folded.text

    def gap_ok(self, stream: _Stream, i: int) -> bool:
        """May token i and token i+1 belong to one term?  Only whitespace and a little punctuation between them."""
        return _gap_ok(self.folded.text[stream.ends[i]:stream.starts[i + 1]])

    def spelled(self) -> _Stream | None:
        """The token stream with runs of single letters joined ("M i y a z a k i" -> "miyazaki"), or None."""
        if self._spelled is not False:
            return self._spelled  # type: ignore[return-value]
        if _LETTER_RUN_HINT.search(self.folded.text) is None:
            self._spelled = None
            return None
        src = self.tokens
        texts, starts, ends, joined = [], [], [], []
        found = False
        i, n = 0, len(src.texts)
        while i < n:
            j = i
            while j < n and len(src.texts[j]) == 1 and (j == i or self.gap_ok(src, j - 1)):
                j += 1
            if j - i >= _MIN_LETTER_RUN:
                texts.append("".join(src.texts[i:j]))
                starts.append(src.starts[i])
                ends.append(src.ends[j - 1])
                joined.append(True)
                found = True
                i = j
            else:
                texts.append(src.texts[i])
                starts.append(src.starts[i])
                ends.append(src.ends[i])
                joined.append(False)
                i += 1
        self._spelled = _Stream(texts, starts, ends, joined) if found else None
        return self._spelled

    def skeleton(self) -> str:
        """Letters and digits only: "宮崎・駿" -> "宫崎骏" (folded), so punctuation and spaces cannot hide a term."""
        if self._skeleton is None:
            self._skeleton = _NON_ALNUM_RE.sub("", self.folded.text)
        return self._skeleton

    def skeleton_to_text(self, k: int) -> int:
        """Position in the folded text of skeleton character k."""
        if self._removed is None:
            # For the i-th removed character, how many characters were kept before it; then the number of removed
            # characters before skeleton character k is a bisection away.
            self._removed = [m.start() - i for i, m in enumerate(_NON_ALNUM_CHAR_RE.finditer(self.folded.text))]
        return k + bisect.bisect_right(self._removed, k)


@dataclass(frozen=True, slots=True)
class Match:
    start: int  # span in the ORIGINAL prompt
    end: int
    payload: int  # the rule id the matched form was registered with


_END = ""  # trie key holding the payloads of forms that end at a node; never a token or a character


class Matcher:
    """Maps surface forms to payloads (rule ids); several payloads may share one form.

    Both indexes are tries, so the work per prompt position is bounded by how far the text agrees with some
    form, not by how many forms share a prefix ("the hulk", "the nike logo", ... are one branch under "the").

    * Latin forms: a trie over tokens.
    * CJK forms: a trie over skeleton characters, rooted at the form's first CJK character (its "anchor").  A
      form may start with Latin letters ("nike标志"); that part is stored at the end node as a prefix that must
      precede the anchor, so Latin positions never have to be visited.
    """

    def __init__(self) -> None:
        self._latin: dict[str, dict] = {}
        self._cjk: dict[str, dict] = {}
        self._anchor_re: re.Pattern[str] | None = None
        self._seen: set[tuple[object, int]] = set()

    def add(self, folded_form: str, payload: int) -> str | tuple[str, ...] | None:
        """Register an already folded form.  Returns the key it was stored under (None if it has no letters)."""
        if has_cjk(folded_form):
            skeleton = "".join(_ALNUM_RE.findall(folded_form))
            if (skeleton, payload) not in self._seen:
                self._seen.add((skeleton, payload))
                at = next(i for i, c in enumerate(skeleton) if has_cjk(c))
                node = self._cjk
                for ch in skeleton[at:]:
                    node = node.setdefault(ch, {})
                # Forms ending here, by the length of their Latin prefix: one slice and lookup per distinct length
                # ("nike", "adidas", ... before "のロゴ"), however many brands share the ending.
                prefix = skeleton[:at]
                node.setdefault(_END, {}).setdefault(len(prefix), {}).setdefault(prefix, []).append(payload)
                self._anchor_re = None
            return skeleton
        tokens = latin_form(folded_form)
        if not tokens:
            return None
        if (tokens, payload) not in self._seen:
            self._seen.add((tokens, payload))
            node = self._latin
            for token in tokens:
                node = node.setdefault(token, {})
            node.setdefault(_END, []).append(payload)
        return tokens

    def freeze(self) -> None:
        """Compile the CJK anchor class and drop load-time bookkeeping; call once after the last add."""
        if self._cjk:
            self._anchor_re = re.compile("[" + re.escape("".join(sorted(self._cjk))) + "]")
        self._seen = set()

    def find(self, prepared: Prepared) -> list[Match]:
        found: list[Match] = []
        if self._latin:
            self._find_latin(prepared, prepared.tokens, found, only_joined=False)
            spelled = prepared.spelled()
            if spelled is not None:
                self._find_latin(prepared, spelled, found, only_joined=True)
        if self._cjk and has_cjk(prepared.text):
            self._find_cjk(prepared, found)
        return found

    def _find_latin(self, prepared: Prepared, stream: _Stream, out: list[Match], *, only_joined: bool) -> None:
        root = self._latin
        texts, starts, ends, joined = stream.texts, stream.starts, stream.ends, stream.joined
        n = len(texts)
        span = prepared.folded.span
        for i, token in enumerate(texts):
            frontier = [node for key in _plural_keys(token) if (node := root.get(key)) is not None]
            k = i
            while frontier:
                for node in frontier:
                    payloads = node.get(_END)
                    # In the joined stream, report only what involves a joined run (the rest was found already).
                    if payloads and (not only_joined or any(joined[i:k + 1])):
                        for payload in payloads:
                            out.append(Match(*span(starts[i], ends[k]), payload))
                if k + 1 >= n or not any(len(node) > (_END in node) for node in frontier):
                    break
                if not prepared.gap_ok(stream, k):
                    break
                k += 1
                keys = _plural_keys(texts[k])
                frontier = [child for node in frontier for key in keys if (child := node.get(key)) is not None]

    def _find_cjk(self, prepared: Prepared, out: list[Match]) -> None:
        if self._anchor_re is None:
            self.freeze()
        skeleton = prepared.skeleton()
        size = len(skeleton)
        root = self._cjk
        hits: list[tuple[int, int, int, bool]] = []
        for m in self._anchor_re.finditer(skeleton):  # type: ignore[union-attr]
            j = m.start()
            node = root[m.group()]
            k = j + 1
            while True:
                ends_here = node.get(_END)
                if ends_here:
                    for width, by_prefix in ends_here.items():
                        if width <= j:
                            for payload in by_prefix.get(skeleton[j - width:j], ()):
                                hits.append((j - width, k, payload, width > 0))
                if k >= size:
                    break
                node = node.get(skeleton[k])
                if node is None:
                    break
                k += 1
        span, to_text, text = prepared.folded.span, prepared.skeleton_to_text, prepared.text
        for start, end, payload, latin_prefix in hits:
            first = to_text(start)
            if latin_prefix and first > 0 and _LETTER_RE.match(text, first - 1):
                continue  # "pineapple标志" is not "apple标志": a Latin prefix must start a word
            out.append(Match(*span(first, to_text(end - 1) + 1), payload))
