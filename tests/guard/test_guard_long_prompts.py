"""Long prompts: a 32,000-character prompt is checked in one pass (no timing assertions, just that it works)."""

from imagegate.guard import PromptGuard


def _long(unit: str, size: int = 32_000) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def test_long_clean_prompts_pass(guard: PromptGuard) -> None:
    for unit in ("a cat on a windowsill in soft morning light, ",
                 "一只猫坐在窗台上，柔和的晨光，明亮的现代日式动漫风格。",
                 "窓辺に座る猫、柔らかな朝の光、スタジオジブリ風。",
                 "un gato en la ventana, luz suave de la mañana, estilo Ghibli. "):
        prompt = _long(unit)
        assert len(prompt) == 32_000
        assert guard.check(prompt).action == "allow"


def test_long_prompt_with_a_name_at_the_very_end(guard: PromptGuard) -> None:
    prompt = _long("a cat on a windowsill, ", 32_000 - len(" by Makoto Shinkai")) + " by Makoto Shinkai"
    verdict = guard.check(prompt, policy="rewrite")
    assert verdict.action == "rewrite"
    assert verdict.findings[0].end == len(prompt)
    assert verdict.prompt.endswith("with dramatic skies")


def test_long_prompt_full_of_findings(guard: PromptGuard) -> None:
    prompt = _long("Hayao Miyazaki 宫崎骏 nude sexy child Nike logo M i y a z a k i Ghibli trump card ")
    verdict = guard.check(prompt)
    assert verdict.blocked
    assert len(verdict.findings) > 1000
    assert verdict.categories == ("living_artist", "sexual", "suggestive", "sexual/minors", "trademarks")
