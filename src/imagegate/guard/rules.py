"""Loading the rule files (TOML) and compiling them into one matcher.

Every rule file, shipped or operator-supplied, has the same shape; any section may be left out::

    [category.<name>]                 # a sensitive category; repeated files extend it
    severity = "hard" | "soft"        # hard: refused at every moderation level; soft: only at moderation="auto"
    describe = "mentions a living artist"          # used in refusal messages: "It <describe> (...)"
    describe_plural = "mentions living artists"    # optional, when several different terms matched
    suggestion = "..."                # optional default safe replacement for every entry
    templates = ["{name} logo", ...]  # optional: surface forms generated from each entry name/alias
    reverse_names = true              # optional: also match "Surname Given" for two-word names
    combine_with = ["sexual", ...]    # optional: this category only counts next to one of these ...
    combined_category = "sexual/minors"   # ... and is then reported under this name
    combined_describe = "..."
    detect_ages = true                # optional: stated ages under 18 count as terms of this category
    terms = ["...", ...]              # plain terms; or a table by language: terms.en = [...], terms.zh = [...]
    entries = [ { name = "...", aliases = ["..."], suggestion = "...", terms = ["..."], severity = "..." }, ]

    [allow]                           # phrases that are never flagged, and that hide overlapping shorter hits
    <any key> = ["...", ...]          # e.g. deceased_artists, styles, phrases

Files are applied in order (shipped files first, then operator files).  Scalars set later win; lists are extended.
When two files map the same surface form to different terms, the later one wins at match time and the clash is
listed in ``RuleSet.conflicts`` (the shipped files are tested to have none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from imagegate.guard.matcher import Matcher, latin_form
from imagegate.guard.normalize import fold, has_cjk
from imagegate.tomlfile import read_toml

__all__ = ["Rule", "RuleSet", "RuleError", "CategorySpec", "load_rules", "SHIPPED_FILES", "RULES_DIR", "ALLOW"]

RULES_DIR = Path(__file__).with_name("rules")
SHIPPED_FILES = ("artists.toml", "categories.toml", "allow.toml")
ALLOW = -1  # matcher payload of allow-list phrases
Severity = Literal["hard", "soft"]

_CATEGORY_KEYS = {
    "severity", "describe", "describe_plural", "suggestion", "templates", "reverse_names", "combine_with",
    "combined_category", "combined_describe", "detect_ages", "terms", "entries", "note",
}
_ENTRY_KEYS = {"name", "aliases", "suggestion", "terms", "severity", "field", "note"}
_MIN_JOINED = 5  # "hayao miyazaki" also matches "hayaomiyazaki"; too-short joins ("a b") would be noise


class RuleError(ValueError):
    """A rule file is unreadable or does not follow the schema; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    category: str
    term: str  # canonical name reported in findings
    severity: Severity
    suggestion: str | None


@dataclass
class CategorySpec:
    name: str
    severity: Severity | None = None
    describe: str | None = None
    describe_plural: str | None = None
    suggestion: str | None = None
    templates: list[str] = field(default_factory=list)
    reverse_names: bool = False
    combine_with: list[str] = field(default_factory=list)
    combined_category: str | None = None
    combined_describe: str | None = None
    detect_ages: bool = False
    terms: dict[str, list[str]] = field(default_factory=dict)  # language ("" = unspecified) -> terms
    entries: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    categories: Mapping[str, CategorySpec]
    matcher: Matcher
    allow_phrases: tuple[str, ...]
    age_rules: Mapping[str, Rule]  # category -> the synthetic rule stated ages are reported as
    conflicts: tuple[str, ...]  # one line per surface form claimed by two different terms
    allow_overrides: tuple[str, ...]  # surface forms that are both a term and an allow phrase
    form_count: int

    def stats(self) -> dict[str, Any]:
        """Counts for humans: entries and terms per category, terms per language, allow phrases."""
        per_category: dict[str, dict[str, int]] = {}
        per_language: dict[str, int] = {}
        for name, spec in self.categories.items():
            term_count = sum(len(v) for v in spec.terms.values())
            per_category[name] = {"entries": len(spec.entries), "terms": term_count}
            for lang, terms in spec.terms.items():
                per_language[lang or "unspecified"] = per_language.get(lang or "unspecified", 0) + len(terms)
        return {
            "categories": per_category,
            "terms_by_language": per_language,
            "allow_phrases": len(self.allow_phrases),
            "surface_forms": self.form_count,
        }


def _fail(source: str, where: str, why: str) -> RuleError:
    return RuleError(f"{source}: {where}: {why}")


def _str_list(value: Any, source: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(source, where, "expected a list of non-empty strings")
    return list(value)


class _Builder:
    """Accumulates raw rule files in order, then compiles them."""

    def __init__(self) -> None:
        self.categories: dict[str, CategorySpec] = {}
        self.allow: list[str] = []

    def add_file(self, path: Path) -> None:
        self.add_document(read_toml(path, "rule file", RuleError), str(path))

    def add_document(self, doc: Mapping[str, Any], source: str) -> None:
        for key in doc:
            if key not in ("category", "allow", "meta"):
                raise _fail(source, key, "unknown top-level section (expected [category.<name>], [allow], [meta])")
        for name, table in doc.get("category", {}).items():
            if not isinstance(table, dict):
                raise _fail(source, f"category.{name}", "expected a table")
            self._add_category(name, table, source)
        allow = doc.get("allow", {})
        if not isinstance(allow, dict):
            raise _fail(source, "allow", "expected a table of phrase lists")
        for key, phrases in allow.items():
            self.allow.extend(_str_list(phrases, source, f"allow.{key}"))

    def _add_category(self, name: str, table: Mapping[str, Any], source: str) -> None:
        where = f"category.{name}"
        unknown = set(table) - _CATEGORY_KEYS
        if unknown:
            raise _fail(source, where, f"unknown keys {sorted(unknown)}")
        spec = self.categories.setdefault(name, CategorySpec(name))
        spec.sources.append(source)
        if "severity" in table:
            if table["severity"] not in ("hard", "soft"):
                raise _fail(source, f"{where}.severity", "must be 'hard' or 'soft'")
            spec.severity = table["severity"]
        for key in ("describe", "describe_plural", "suggestion", "combined_category", "combined_describe"):
            if key in table:
                if not isinstance(table[key], str) or not table[key].strip():
                    raise _fail(source, f"{where}.{key}", "expected a non-empty string")
                setattr(spec, key, table[key])
        for key in ("reverse_names", "detect_ages"):
            if key in table:
                if not isinstance(table[key], bool):
                    raise _fail(source, f"{where}.{key}", "expected true or false")
                setattr(spec, key, table[key])
        if "templates" in table:
            templates = _str_list(table["templates"], source, f"{where}.templates")
            if any("{name}" not in t for t in templates):
                raise _fail(source, f"{where}.templates", "every template must contain {name}")
            spec.templates.extend(templates)
        if "combine_with" in table:
            spec.combine_with.extend(_str_list(table["combine_with"], source, f"{where}.combine_with"))
        terms = table.get("terms")
        if isinstance(terms, dict):
            for lang, items in terms.items():
                spec.terms.setdefault(lang, []).extend(_str_list(items, source, f"{where}.terms.{lang}"))
        elif terms is not None:
            spec.terms.setdefault("", []).extend(_str_list(terms, source, f"{where}.terms"))
        entries = table.get("entries", [])
        if not isinstance(entries, list):
            raise _fail(source, f"{where}.entries", "expected a list of tables")
        for i, entry in enumerate(entries):
            spec.entries.append(self._entry(entry, source, f"{where}.entries[{i}]"))

    @staticmethod
    def _entry(entry: Any, source: str, where: str) -> dict[str, Any]:
        if not isinstance(entry, dict):
            raise _fail(source, where, "expected a table")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise _fail(source, where, f"unknown keys {sorted(unknown)}")
        if not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise _fail(source, where, "missing 'name'")
        if "severity" in entry and entry["severity"] not in ("hard", "soft"):
            raise _fail(source, f"{where}.severity", "must be 'hard' or 'soft'")
        if "suggestion" in entry and (not isinstance(entry["suggestion"], str) or not entry["suggestion"].strip()):
            raise _fail(source, f"{where}.suggestion", "expected a non-empty string")
        return {
            "name": entry["name"],
            "aliases": _str_list(entry.get("aliases", []), source, f"{where}.aliases"),
            "terms": _str_list(entry.get("terms", []), source, f"{where}.terms"),
            "suggestion": entry.get("suggestion"),
            "severity": entry.get("severity"),
        }

    def compile(self) -> RuleSet:
        for spec in self.categories.values():
            where = f"category.{spec.name}"
            source = ", ".join(spec.sources)
            if spec.severity is None or spec.describe is None:
                raise _fail(source, where, "needs 'severity' and 'describe' (in some file)")
            for other in spec.combine_with:
                if other not in self.categories:
                    raise _fail(source, f"{where}.combine_with", f"unknown category '{other}'")
            if spec.combine_with and not spec.combined_category:
                raise _fail(source, where, "'combine_with' needs 'combined_category'")

        matcher = Matcher()
        rules: list[Rule] = []
        owner: dict[object, tuple[Rule, bool]] = {}
        conflicts: list[str] = []
        form_count = 0

        def register(form: str, rule: Rule, *, entry: bool) -> None:
            nonlocal form_count
            key = matcher.add(fold(form).text, rule.id)
            if key is None:
                raise RuleError(f"category.{rule.category}: {form!r} ({rule.term}) has no letters or digits to match")
            form_count += 1
            previous, previous_entry = owner.get(key, (None, False))
            # Two spellings of one plain term ("性行为"/"性行為") are harmless; the same form claimed by another
            # category, or by two different named entries (two artists), is a data error or an override.
            if previous is not None and (previous.category != rule.category or
                                         (entry and previous_entry and previous.term != rule.term)):
                conflicts.append(f"{form!r}: {previous.category}/{previous.term} vs {rule.category}/{rule.term}")
            owner[key] = (rule, entry)

        def new_rule(category: str, term: str, severity: Severity, suggestion: str | None) -> Rule:
            rule = Rule(len(rules), category, term, severity, suggestion)
            rules.append(rule)
            return rule

        age_rules: dict[str, Rule] = {}
        for spec in self.categories.values():
            severity: Severity = spec.severity  # type: ignore[assignment]
            for terms in spec.terms.values():
                for term in terms:
                    rule = new_rule(spec.name, term, severity, spec.suggestion)
                    for form in _variants(term, reverse=False):
                        register(form, rule, entry=False)
            for entry in spec.entries:
                rule = new_rule(spec.name, entry["name"], entry["severity"] or severity,
                                entry["suggestion"] or spec.suggestion)
                for alias in [entry["name"], *entry["aliases"]]:
                    for variant in _variants(alias, reverse=spec.reverse_names):
                        if spec.templates:
                            for template in spec.templates:
                                register(template.replace("{name}", variant), rule, entry=True)
                        else:
                            register(variant, rule, entry=True)
                for term in entry["terms"]:
                    for form in _variants(term, reverse=False):
                        register(form, rule, entry=True)
            if spec.detect_ages:
                age_rules[spec.name] = new_rule(spec.name, "stated age under 18", severity, None)

        allow_overrides = []
        for phrase in self.allow:
            for form in _variants(phrase, reverse=False):
                key = matcher.add(fold(form).text, ALLOW)
                if key in owner:
                    hidden = owner[key][0]
                    allow_overrides.append(f"{phrase!r} hides {hidden.category}/{hidden.term}")
        matcher.freeze()
        return RuleSet(
            rules=tuple(rules),
            categories=dict(self.categories),
            matcher=matcher,
            allow_phrases=tuple(self.allow),
            age_rules=age_rules,
            conflicts=tuple(conflicts),
            allow_overrides=tuple(allow_overrides),
            form_count=form_count,
        )


def _variants(text: str, *, reverse: bool) -> Iterable[str]:
    """Surface forms of one written term: itself, its words run together, and (for names) Surname Given."""
    folded = fold(text).text
    if has_cjk(folded):
        yield folded
        return
    tokens = latin_form(folded)
    if not tokens:
        yield folded  # nothing to match: let register() report it
        return
    yield " ".join(tokens)
    joined = "".join(tokens)
    if len(tokens) > 1 and len(joined) >= _MIN_JOINED:
        yield joined
    if reverse and len(tokens) == 2:
        yield f"{tokens[1]} {tokens[0]}"
        yield tokens[1] + tokens[0]


def load_rules(extra_paths: Sequence[Path | str] = (), *, include_shipped: bool = True) -> RuleSet:
    builder = _Builder()
    paths = [RULES_DIR / name for name in SHIPPED_FILES] if include_shipped else []
    paths.extend(Path(p) for p in extra_paths)
    for path in paths:
        builder.add_file(path)
    return builder.compile()
