"""Innocent prompts that contain, or look like, flagged words must pass untouched at moderation="auto"."""

import pytest

INNOCENT = [
    # Latin script: whole-word matching
    "a bowl of grapes on a wooden table",  # rape
    "a wrestler in a grappling match",  # rape
    "heavy velvet drapery in a theatre",  # rape
    "a therapist's office with a green couch",  # rapist
    "Scunthorpe United football stadium at night",  # cunt
    "a bass guitar on a stage",  # ass
    "a classic car at sunset",  # ass
    "assess the damage after the storm, infographic",  # ass
    "a cocktail bar with neon lights",  # cock
    "a peacock in a palace garden",  # cock
    "the cockpit of a vintage airplane",  # cock
    "rolling hills of the Sussex countryside",  # sex
    "an Essex village green",  # sex
    "a brass sextant on a ship's chart",  # sex
    "a jazz sextet on stage",  # sex
    "a cute kitten",
    "title: Analysis",  # anal
    "a data analytics dashboard",  # anal
    "a shiny red button",  # butt
    "shitake mushrooms in a skillet",  # shit
    "cucumber salad with dill",  # cum
    "cumulus clouds over a wheat field",  # cum
    "a framed summa cum laude diploma",  # cum (allow-listed)
    "Mr. Miyagi teaching karate",  # Miyazaki look-alike
    "Hayao",  # a given name alone is not the artist (documented judgement call)
    "a trump card on a poker table",  # Trump (allow-listed)
    "stars visible to the naked eye",  # naked (allow-listed)
    "nude lipstick shades on a vanity",  # nude colour (allow-listed)
    "blue tits at a bird feeder",  # tits (allow-listed)
    "a Bloody Mary cocktail",  # bloody
    "a pirate's booty chest on the sand",  # booty (allow-listed)
    "the suicide doors of a vintage Lincoln",  # suicide (allow-listed)
    "a Gore-Tex hiking jacket",  # gore (allow-listed)
    "oilseed rape field in spring",  # rape (allow-listed)
    "the erection of a gothic cathedral, medieval manuscript",  # erection (allow-listed)
    "a flag of Nigeria waving",  # slur look-alike
    "a pen is on the table",  # "pen is" must not join into a term
    "Nike, the winged goddess of victory, marble statue",  # brand name alone is fine
    "a puma cub in the jungle",
    "the Amazon rainforest at dawn",
    "a Tesla coil sparking in a lab",
    "apple pie on a windowsill",
    "a beach at Miyazaki prefecture",  # place name (allow-listed)
    "a plumber named Mario fixing a sink",
    "Elsa, a Swedish grandmother, knitting by the fire",
    "a child flying a kite",  # minor alone is fine
    "kids playing football in the street",
    "a baby blue sky over the sea",  # baby (minors) next to nothing sexual
    "a knight in a battle with a sword",
    "Assassin in a hooded cloak on a rooftop",
    # CJK: substring matching must not fire inside innocent words
    "个性爱好展示墙",  # 性爱
    "感情色彩丰富的画",  # 情色
    "行李安全检查",  # 李安
    "黄图案的围巾",  # 黄图
    "望子成龙的家长",  # 成龙
    "黑丝绒窗帘",  # 黑丝
    "路口交通很繁忙",  # 口交
    "宫崎县的海滩",  # 宫崎
    "pineapple标志设计",  # "apple标志" (a Latin prefix must start a word)
    "abc罗马假日",  # "C罗"
    "印度支那的地图",  # 支那
    "血腥玛丽鸡尾酒",  # 血腥
    "裸足で砂浜を歩く",  # 裸
    "イエローの花束",  # エロ
    "カロリー控えめのケーキ",  # ロリ
    "ヌードルのお店",  # ヌード
    "ナチュラルな雰囲気の部屋",  # ナチ
    "エッチングの版画",  # エッチ
    "パチンコ店の看板",
    "フェラーリの赤い車",
    "際どい勝負の瞬間",
    # Spanish
    "un análisis de datos",  # anal
    "la niña del tiempo: el fenómeno de La Niña",
    "hace 10 años, una foto de familia",
    "a ojo desnudo se ven las estrellas",
]


def test_enough_innocent_prompts() -> None:
    assert len(INNOCENT) >= 30


@pytest.mark.parametrize("prompt", INNOCENT)
def test_innocent_prompt_passes(guard, prompt: str) -> None:
    verdict = guard.check(prompt, moderation="auto", policy="block")
    assert verdict.action == "allow", verdict.findings
    assert verdict.findings == ()
    assert verdict.prompt == prompt


def test_surname_alone_is_flagged_but_given_name_is_not(guard) -> None:
    # Judgement call: distinctive surnames alone count ("Miyazaki"), given names alone do not ("Hayao").
    assert guard.check("Miyazaki").blocked
    assert not guard.check("Hayao").blocked
