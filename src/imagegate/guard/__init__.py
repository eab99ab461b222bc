"""Prompt guard: a moderation pre-flight that refuses (or rewrites) prompts before any upstream money is spent.

    guard = PromptGuard.load(extra_paths=[...])          # once, at start-up
    verdict = guard.check(prompt, moderation="auto", policy="block")
    if verdict.blocked: ...                               # verdict.message says why and what to write instead

The rules are data: ``rules/artists.toml`` (living artists and safe style phrases), ``rules/categories.toml``
(sensitive categories with hard/soft severity) and ``rules/allow.toml`` (deceased artists, named styles and
innocent phrases).  Operator files of the same shape are merged on top.
"""

from imagegate.guard.checker import REFUSAL_LEAD, Finding, PromptGuard, Verdict
from imagegate.guard.rules import RuleError, RuleSet, load_rules

__all__ = ["PromptGuard", "Verdict", "Finding", "RuleError", "RuleSet", "load_rules", "REFUSAL_LEAD"]
