"""The prompt guard: refuse (or rewrite) prompts the upstream model would refuse, before any money is spent.

Upstream providers bill for calls their moderation blocks, so every refusal we can predict locally is money saved
and a clearer error for the user: we can say *which* words caused it and what to write instead.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imagegate.guard.ages import find_minor_ages
from imagegate.guard.matcher import Match, Prepared
from imagegate.guard.rules import ALLOW, RuleSet, load_rules

__all__ = ["Finding", "Verdict", "PromptGuard", "REFUSAL_LEAD"]

Action = Literal["allow", "block", "rewrite"]
Moderation = Literal["auto", "low"]
Policy = Literal["block", "rewrite", "off"]

# The first sentence of OpenAI's own moderation refusal, so clients that key on it keep working.
REFUSAL_LEAD = "Your request was rejected as a result of our safety system."
_NOT_SENT = "It was refused before reaching the image model, so nothing was charged."
_FOLLOWING_WORD = re.compile(r"[\s-]*(\w+)\b")


@dataclass(frozen=True)
class Finding:
    category: str  # "living_artist", "sexual", "suggestive", "sexual/minors", "trademarks", ...
    term: str  # canonical term or name, e.g. "Hayao Miyazaki"
    matched: str  # the text exactly as it appears in the prompt
    start: int  # span in the original prompt
    end: int
    severity: Literal["hard", "soft"]
    suggestion: str | None  # safe replacement phrase, if the rules have one


@dataclass(frozen=True)
class Verdict:
    action: Action
    prompt: str  # the prompt to send: the original, or the rewritten one when action == "rewrite"
    findings: tuple[Finding, ...]  # everything found, including soft findings that did not count
    categories: tuple[str, ...]  # distinct categories of the findings that caused the action, in prompt order
    message: str | None  # block: user-facing refusal; rewrite: what was changed; allow: None

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def rewritten(self) -> bool:
        return self.action == "rewrite"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for logs and error details)."""
        return {
            "action": self.action,
            "categories": list(self.categories),
            "message": self.message,
            "findings": [
                {"category": f.category, "term": f.term, "matched": f.matched, "start": f.start, "end": f.end,
                 "severity": f.severity, "suggestion": f.suggestion}
                for f in self.findings
            ],
        }


class PromptGuard:
    """Built once at start-up (all rules are compiled then); ``check`` is cheap and safe to call concurrently."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._describe: dict[str, tuple[str, str]] = {}
        for spec in rules.categories.values():
            self._describe[spec.name] = (spec.describe or spec.name, spec.describe_plural or spec.describe or spec.name)
            if spec.combined_category:
                text = spec.combined_describe or spec.describe or spec.combined_category
                self._describe[spec.combined_category] = (text, text)

    @classmethod
    def load(cls, extra_paths: Sequence[Path | str] = ()) -> PromptGuard:
        """The shipped rules plus operator rule files (same schema), applied in order."""
        return cls(load_rules(extra_paths))

    # -- scanning --------------------------------------------------------------------------------------------

    def scan(self, prompt: str) -> tuple[Finding, ...]:
        """Every finding in the prompt, whatever the moderation level (soft findings included)."""
        prepared = Prepared(prompt)
        rules = self.rules.rules
        matches = self.rules.matcher.find(prepared)
        if self.rules.age_rules:
            ages = find_minor_ages(prepared.text)
            for rule in self.rules.age_rules.values():
                matches.extend(Match(*prepared.folded.span(start, end), rule.id) for start, end in ages)

        allowed = sorted((m.start, m.end) for m in matches if m.payload == ALLOW)
        hits = [m for m in matches if m.payload != ALLOW]
        if allowed:
            longest = max(end - start for start, end in allowed)
            hits = [m for m in hits if not _hidden(m, allowed, longest)]
        kept = _resolve_overlaps(hits)

        present = {rules[m.payload].category for m in kept}
        findings = []
        for m in kept:
            rule = rules[m.payload]
            spec = self.rules.categories[rule.category]
            category = rule.category
            if spec.combine_with:
                # e.g. minors: "a child" is fine; "a child" next to sexual or suggestive words is a hard block.
                if not present.intersection(spec.combine_with):
                    continue
                category = spec.combined_category or category
            findings.append(Finding(category, rule.term, prompt[m.start:m.end], m.start, m.end, rule.severity,
                                    rule.suggestion))
        return tuple(findings)

    # -- deciding --------------------------------------------------------------------------------------------

    def check(self, prompt: str, *, moderation: Moderation = "auto", policy: Policy = "block") -> Verdict:
        if moderation not in ("auto", "low"):
            raise ValueError(f"moderation must be 'auto' or 'low', not {moderation!r}")
        if policy not in ("block", "rewrite", "off"):
            raise ValueError(f"policy must be 'block', 'rewrite' or 'off', not {policy!r}")
        if policy == "off":
            return Verdict("allow", prompt, (), (), None)

        findings = self.scan(prompt)
        counting = [f for f in findings if f.severity == "hard" or moderation == "auto"]
        if not counting:
            return Verdict("allow", prompt, findings, (), None)
        categories = tuple(dict.fromkeys(f.category for f in counting))
        if policy == "rewrite" and all(f.suggestion for f in counting):
            return Verdict("rewrite", _rewrite(prompt, counting), findings, categories, self._rewrite_message(counting))
        return Verdict("block", prompt, findings, categories, self._block_message(counting, moderation))

    def _block_message(self, counting: list[Finding], moderation: str) -> str:
        sentences = [REFUSAL_LEAD, _NOT_SENT]
        for category in dict.fromkeys(f.category for f in counting):
            group = [f for f in counting if f.category == category]
            names = list(dict.fromkeys(f.term for f in group))
            singular, plural = self._describe.get(category, (category, category))
            sentence = f"It {plural if len(names) > 1 else singular} ({', '.join(names)})"
            swaps = dict.fromkeys((f.suggestion, f.matched) for f in group if f.suggestion)
            if swaps:
                sentence += "; " + "; ".join(f"use '{new}' instead of '{old}'" for new, old in swaps)
            sentences.append(sentence + ".")
        if moderation == "auto" and all(f.severity == "soft" for f in counting):
            sentences.append("With moderation set to 'low' this prompt would be allowed.")
        return " ".join(sentences)

    def _rewrite_message(self, counting: list[Finding]) -> str:
        swaps = dict.fromkeys((f.matched, f.suggestion, f.category) for f in counting)
        changes = "; ".join(f"replaced '{old}' with '{new}' ({category.replace('_', ' ')})"
                            for old, new, category in swaps)
        return f"The prompt was rewritten before reaching the image model: {changes}."


def _hidden(match: Match, allowed: list[tuple[int, int]], longest: int) -> bool:
    """Is this hit inside an allow-listed phrase?  An allow phrase hides the hits it overlaps that are no longer
    than itself: "Studio Ghibli" hides an overlapping "Ghibli" hit, "trump card" hides "trump", but "Pixar" does
    not hide "Pixar logo"."""
    length = match.end - match.start
    # Spans are sorted by start, and an overlapping one starts at most `longest` characters before the hit.
    lo = bisect.bisect_left(allowed, (match.start - longest, -1))
    hi = bisect.bisect_left(allowed, (match.end, -1))
    for start, end in allowed[lo:hi]:
        if match.start < end and end - start >= length:
            return True
    return False


def _resolve_overlaps(hits: list[Match]) -> list[Match]:
    """Longest hit wins where hits overlap ("Hayao Miyazaki" over "Miyazaki"); ties go to the later rule, which
    lets an operator file re-assign a shipped term.  Returns the kept hits in prompt order."""
    kept_starts: list[int] = []
    kept: list[Match] = []
    for m in sorted(set(hits), key=lambda h: (-(h.end - h.start), h.start, -h.payload)):
        i = bisect.bisect_left(kept_starts, m.start)
        if i < len(kept) and kept[i].start < m.end:
            continue
        if i > 0 and kept[i - 1].end > m.start:
            continue
        kept_starts.insert(i, m.start)
        kept.insert(i, m)
    return kept


def _rewrite(prompt: str, findings: list[Finding]) -> str:
    out, last = [], 0
    ordered = sorted(findings, key=lambda f: f.start)
    for i, f in enumerate(ordered):
        out.append(prompt[last:f.start])
        replacement = f.suggestion or f.matched
        out.append(replacement)
        last = f.end
        # "Miyazaki-style cat" -> "... anime style cat", not "... anime style-style cat".
        echo = _FOLLOWING_WORD.match(prompt, f.end)
        limit = ordered[i + 1].start if i + 1 < len(ordered) else len(prompt)
        if echo and echo.end() <= limit and echo.group(1).casefold() == replacement.split()[-1].casefold():
            last = echo.end()
    out.append(prompt[last:])
    return "".join(out)
