"""Messages, rewriting and the Verdict/Finding API."""

import dataclasses

import pytest

from imagegate.guard import REFUSAL_LEAD, Finding, PromptGuard, Verdict

HAYAO_STYLE = "Studio Ghibli-inspired, bright modern Japanese anime style"
SHINKAI_STYLE = "luminous, detailed modern Japanese anime style with dramatic skies"


def test_block_message_names_the_alternative(guard) -> None:
    verdict = guard.check("a cat bus by Hayao Miyazaki")
    assert verdict.action == "block" and verdict.blocked and not verdict.rewritten
    assert verdict.message.startswith(REFUSAL_LEAD + " ")
    assert "before reaching the image model" in verdict.message
    assert "It mentions a living artist (Hayao Miyazaki)" in verdict.message
    assert f"use '{HAYAO_STYLE}' instead of 'Hayao Miyazaki'" in verdict.message
    assert verdict.prompt == "a cat bus by Hayao Miyazaki"
    assert verdict.categories == ("living_artist",)


def test_block_message_quotes_the_text_as_typed(guard) -> None:
    verdict = guard.check("sky by Shinkai Makoto")
    assert "It mentions a living artist (Makoto Shinkai)" in verdict.message
    assert f"use '{SHINKAI_STYLE}' instead of 'Shinkai Makoto'" in verdict.message


def test_block_message_with_several_findings_is_readable(guard) -> None:
    verdict = guard.check("Hayao Miyazaki and 新海诚 draw a nude figure next to the Nike logo")
    assert verdict.categories == ("living_artist", "sexual", "trademarks")
    message = verdict.message
    assert "It mentions living artists (Hayao Miyazaki, Makoto Shinkai)" in message
    assert f"use '{HAYAO_STYLE}' instead of 'Hayao Miyazaki'" in message
    assert f"use '{SHINKAI_STYLE}' instead of '新海诚'" in message
    assert "It asks for sexual or nude content (nude)." in message
    assert "use 'a generic sports brand logo' instead of 'the Nike logo'" in message
    # one sentence per category, in prompt order
    assert message.index("living artist") < message.index("nude content") < message.index("brand logo")


def test_soft_only_block_says_low_moderation_would_pass(guard) -> None:
    verdict = guard.check("a sexy vampire")
    assert verdict.blocked
    assert "moderation set to 'low'" in verdict.message
    assert "moderation set to 'low'" not in guard.check("a nude vampire").message


def test_low_moderation_keeps_soft_findings_for_information(guard) -> None:
    verdict = guard.check("a sexy vampire", moderation="low")
    assert verdict.action == "allow"
    assert [f.category for f in verdict.findings] == ["suggestive"]
    assert verdict.categories == ()


def test_rewrite_replaces_the_name_and_keeps_the_rest(guard) -> None:
    prompt = "A quiet train station at dusk, by Hayao Miyazaki, watercolor, 16:9"
    verdict = guard.check(prompt, policy="rewrite")
    assert verdict.action == "rewrite" and verdict.rewritten and not verdict.blocked
    assert verdict.prompt == f"A quiet train station at dusk, by {HAYAO_STYLE}, watercolor, 16:9"
    assert "Hayao Miyazaki" not in verdict.prompt
    assert "replaced 'Hayao Miyazaki' with" in verdict.message
    assert verdict.categories == ("living_artist",)
    # the rewritten prompt is itself clean
    assert guard.check(verdict.prompt).action == "allow"


def test_rewrite_several_spans_and_scripts(guard) -> None:
    verdict = guard.check("宫崎骏 + Shinkai Makoto, a t-shirt with the Nike logo", policy="rewrite")
    assert verdict.action == "rewrite"
    assert verdict.prompt == f"{HAYAO_STYLE} + {SHINKAI_STYLE}, a t-shirt with a generic sports brand logo"
    assert verdict.categories == ("living_artist", "trademarks")


def test_rewrite_replaces_obfuscated_original_text(guard) -> None:
    verdict = guard.check("forest, M i y a z a k i, moss", policy="rewrite")
    assert verdict.prompt == f"forest, {HAYAO_STYLE}, moss"


def test_rewrite_does_not_stutter_style_style(guard) -> None:
    assert guard.check("a Miyazaki-style cat", policy="rewrite").prompt == f"a {HAYAO_STYLE} cat"
    assert guard.check("Hayao Miyazaki style, cat", policy="rewrite").prompt == f"{HAYAO_STYLE}, cat"


def test_rewrite_falls_back_to_block_without_a_suggestion(guard) -> None:
    verdict = guard.check("Hayao Miyazaki, explicit sex scene", policy="rewrite")
    assert verdict.action == "block"
    assert verdict.prompt == "Hayao Miyazaki, explicit sex scene"
    assert f"use '{HAYAO_STYLE}' instead of 'Hayao Miyazaki'" in verdict.message


def test_rewrite_ignores_soft_findings_at_low(guard) -> None:
    verdict = guard.check("a sexy vampire by Greg Rutkowski", moderation="low", policy="rewrite")
    assert verdict.action == "rewrite"
    assert "sexy vampire" in verdict.prompt and "Rutkowski" not in verdict.prompt
    assert verdict.categories == ("living_artist",)


def test_policy_off_does_not_scan(guard) -> None:
    verdict = guard.check("Hayao Miyazaki, nude", policy="off")
    assert verdict == Verdict("allow", "Hayao Miyazaki, nude", (), (), None)


def test_invalid_arguments(guard) -> None:
    with pytest.raises(ValueError):
        guard.check("x", moderation="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        guard.check("x", policy="warn")  # type: ignore[arg-type]


def test_findings_are_frozen_and_complete(guard) -> None:
    prompt = "Nike logo, by Banksy"
    verdict = guard.check(prompt)
    assert [(f.category, f.term, f.matched, f.severity) for f in verdict.findings] == [
        ("trademarks", "Nike", "Nike logo", "hard"),
        ("living_artist", "Banksy", "Banksy", "hard"),
    ]
    for f in verdict.findings:
        assert isinstance(f, Finding) and prompt[f.start:f.end] == f.matched and f.suggestion
        with pytest.raises(dataclasses.FrozenInstanceError):
            f.term = "x"  # type: ignore[misc]
    data = verdict.to_dict()
    assert data["action"] == "block" and data["categories"] == ["trademarks", "living_artist"]
    assert data["findings"][1]["matched"] == "Banksy"


def test_allow_phrase_only_hides_shorter_overlaps(guard) -> None:
    assert guard.check("Pixar style robot").action == "allow"
    assert guard.check("the Pixar logo").action == "allow"  # no Pixar trademark entry shipped
    assert guard.check("the Disney logo").blocked  # "Disney style" is allowed, the logo is not
    assert guard.check("Disney style castle").action == "allow"


def test_empty_and_whitespace_prompts(guard) -> None:
    for prompt in ("", "   ", "\n\t", "。。。"):
        assert guard.check(prompt).action == "allow"


def test_guard_type(guard) -> None:
    assert isinstance(guard, PromptGuard)
