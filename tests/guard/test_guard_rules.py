"""The rule files as data: size, consistency, and operator extension files."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from imagegate.guard import PromptGuard, RuleError, load_rules
from imagegate.guard.rules import RULES_DIR, SHIPPED_FILES

LANGUAGES = ("en", "es", "zh", "ja")
KANA = re.compile("[\u3040-\u30ff]")
HAN = re.compile("[\u4e00-\u9fff]")


def _artists() -> list[dict]:
    with open(RULES_DIR / "artists.toml", "rb") as fh:
        return tomllib.load(fh)["category"]["living_artist"]["entries"]


def test_shipped_files_exist_and_parse() -> None:
    for name in SHIPPED_FILES:
        with open(RULES_DIR / name, "rb") as fh:
            tomllib.load(fh)


def test_living_artists_list_is_large_with_a_suggestion_each() -> None:
    artists = _artists()
    assert len(artists) >= 250
    names = [a["name"] for a in artists]
    assert len(names) == len(set(names))
    for artist in artists:
        assert artist.get("suggestion", "").strip(), artist["name"]
        assert artist["suggestion"].lower() != artist["name"].lower()
    # native-script aliases exist for the Japanese/Chinese/Korean entries
    aliases = [alias for a in artists for alias in a.get("aliases", [])]
    assert sum(bool(HAN.search(x)) for x in aliases) >= 100
    assert sum(bool(KANA.search(x)) for x in aliases) >= 20
    assert sum(bool(re.search("[\uac00-\ud7af]", x)) for x in aliases) >= 5


def test_no_deceased_artist_is_listed_as_living(guard) -> None:
    for name in ("Akira Toriyama", "鳥山明", "Kentaro Miura", "Satoshi Kon", "Osamu Tezuka", "Moebius",
                 "H. R. Giger", "Kim Jung Gi", "David Lynch", "Stanley Kubrick", "Isao Takahata", "Leiji Matsumoto",
                 "Kazuo Umezu", "Sebastiao Salgado", "Fernando Botero", "Frank Frazetta", "Syd Mead"):
        assert guard.check(f"in the style of {name}").action == "allow", name
    living = {a["name"] for a in _artists()}
    assert not living & {"Akira Toriyama", "Kentaro Miura", "Satoshi Kon", "Kim Jung Gi", "David Lynch"}


def test_no_conflicts_and_no_allow_phrase_hides_a_term(guard) -> None:
    assert guard.rules.conflicts == ()
    assert guard.rules.allow_overrides == ()


def test_every_category_has_terms_in_four_languages(guard) -> None:
    term_categories = [spec for spec in guard.rules.categories.values() if spec.terms]
    assert {spec.name for spec in term_categories} >= {"sexual", "suggestive", "minors", "violence", "hate",
                                                       "self-harm"}
    for spec in term_categories:
        for lang in LANGUAGES:
            assert len(spec.terms.get(lang, [])) >= 5, (spec.name, lang)
    # Entry categories (names) carry their CJK spellings as aliases; Spanish comes from aliases or templates.
    for name in ("public_figures", "trademarks", "copyrighted_characters", "living_artist"):
        spec = guard.rules.categories[name]
        aliases = [alias for entry in spec.entries for alias in entry["aliases"]]
        assert sum(bool(HAN.search(a)) for a in aliases) >= 20, name
        assert sum(bool(KANA.search(a)) for a in aliases + spec.templates) >= 1, name


def test_severities(guard) -> None:
    severity = {name: spec.severity for name, spec in guard.rules.categories.items()}
    assert severity["suggestive"] == "soft"
    for name in ("living_artist", "sexual", "minors", "violence", "hate", "self-harm", "public_figures",
                 "trademarks", "copyrighted_characters"):
        assert severity[name] == "hard", name


def test_every_term_and_alias_is_found_as_itself(guard) -> None:
    """Self-consistency: each listed spelling folds, tokenises and matches to its own entry."""
    missing = []
    for name, spec in guard.rules.categories.items():
        for terms in spec.terms.values():
            for term in terms:
                probe = f"{term} sexy" if spec.combine_with else term
                if not any(f.category in (name, spec.combined_category) for f in guard.scan(probe)):
                    missing.append((name, term))
        for entry in spec.entries:
            for alias in (entry["name"], *entry["aliases"]):
                probe = spec.templates[0].replace("{name}", alias) if spec.templates else alias
                if not any(f.category == name and f.term == entry["name"] for f in guard.scan(probe)):
                    missing.append((name, alias))
    assert missing == []


def test_every_suggestion_is_itself_safe(guard) -> None:
    suggestions = {rule.suggestion for rule in guard.rules.rules if rule.suggestion}
    assert len(suggestions) > 250
    flagged = {s: guard.check(s).findings for s in suggestions if guard.check(s).action != "allow"}
    assert flagged == {}


def test_stats_report_counts(guard) -> None:
    stats = guard.rules.stats()
    assert stats["categories"]["living_artist"]["entries"] >= 250
    assert all(stats["terms_by_language"][lang] >= 50 for lang in LANGUAGES)
    assert stats["surface_forms"] > stats["categories"]["living_artist"]["entries"]


# --- operator files ----------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_operator_file_adds_artist_terms_category_and_allow(tmp_path: Path) -> None:
    extra = _write(tmp_path, "site.toml", """
[category.living_artist]
entries = [ { name = "Jane Placeholder", aliases = ["ジェーン"], suggestion = "a cozy gouache storybook style" } ]

[category.violence.terms]
en = ["zombie apocalypse"]

[category.gambling]
severity = "soft"
describe = "mentions gambling"
terms = ["slot machine", "老虎机"]

[allow]
local = ["Banksy"]
""")
    guard = PromptGuard.load(extra_paths=[extra])
    verdict = guard.check("a mural by Jane Placeholder", policy="rewrite")
    assert verdict.action == "rewrite" and verdict.prompt == "a mural by a cozy gouache storybook style"
    assert guard.check("ジェーン").blocked
    assert guard.check("Placeholder Jane").blocked  # reverse_names comes from the shipped category
    assert "violence" in guard.check("zombie apocalypse").categories
    assert guard.check("a slot machine").categories == ("gambling",)
    assert guard.check("老虎机", moderation="low").action == "allow"
    assert guard.check("Banksy rat").action == "allow"  # operator allow-list overrides a shipped term
    assert guard.rules.allow_overrides  # ... and says so
    # the shipped rules are still there
    assert guard.check("Hayao Miyazaki").blocked


def test_operator_file_can_reassign_a_form(tmp_path: Path) -> None:
    extra = _write(tmp_path, "reassign.toml", """
[category.living_artist]
entries = [ { name = "Hidetaka Miyazaki", aliases = ["Miyazaki"], suggestion = "bleak gothic game aesthetic" } ]
""")
    guard = PromptGuard.load(extra_paths=[str(extra)])
    assert guard.check("Miyazaki").findings[0].term == "Hidetaka Miyazaki"  # later file wins
    assert any("Miyazaki" in line for line in guard.rules.conflicts)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[category.x]\nseverity = 'medium'\ndescribe = 'x'\nterms = ['a b c']\n", "severity"),
        ("[category.x]\nseverity = 'hard'\nterms = ['abc']\n", "describe"),
        ("[category.x]\nseverity = 'hard'\ndescribe = 'x'\ncolour = 'red'\n", "unknown keys"),
        ("[categories.x]\nseverity = 'hard'\n", "unknown top-level"),
        ("[category.x]\nseverity = 'hard'\ndescribe = 'x'\nterms = [1, 2]\n", "list of non-empty strings"),
        ("[category.x]\nseverity = 'hard'\ndescribe = 'x'\nentries = [ { aliases = ['a'] } ]\n", "name"),
        ("[category.x]\nseverity = 'hard'\ndescribe = 'x'\ntemplates = ['logo']\n", "{name}"),
        ("[category.x]\nseverity = 'hard'\ndescribe = 'x'\ncombine_with = ['nope']\ncombined_category = 'y'\n",
         "unknown category"),
        ("[allow]\nphrases = 'not a list of strings' \nother = [3]\n", "allow.other"),
        ("[category.x]\nseverity = 'hard'\ndescribe = 'x'\nterms = ['!!!']\n", "no letters"),
    ],
)
def test_bad_operator_files_are_rejected_with_a_clear_message(tmp_path: Path, text: str, fragment: str) -> None:
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(RuleError) as info:
        load_rules([path])
    assert fragment in str(info.value)
    if fragment != "no letters":  # compile-time errors name the category rather than the file
        assert "bad.toml" in str(info.value)


