"""Folding text into a canonical form that rules and prompts are compared in.

Rule terms and prompts go through exactly the same fold, so every folding decision here only has to be
*consistent*, not linguistically perfect: if two spellings fold to the same string they match, whatever that
string looks like.  The fold is done one original character at a time, which lets us keep, for every folded
character, the index of the original character it came from; that mapping is what lets the guard report and
rewrite spans of the prompt exactly as the user typed them.

What the fold does, per character:

* NFKC: full-width ``ＭＩＹＡＺＡＫＩ`` -> ``MIYAZAKI``, half-width katakana -> full-width, ligatures -> letters.
* casefold: ``HAYAO`` -> ``hayao``, ``ß`` -> ``ss``.
* drop accents: NFKD, remove combining marks, NFC again (``é`` -> ``e``, ``ñ`` -> ``n``).  The Japanese voicing
  marks are *kept* so that ``ガ`` and ``カ`` stay different, and Hangul, which NFKD splits into jamo, is put back
  together by the final NFC.
* katakana -> hiragana, so a name written in either kana matches.
* a small table of traditional-Chinese / Japanese-kanji forms -> simplified Chinese (``宮崎駿`` -> ``宫崎骏``), so a
  name or term written once in simplified Chinese also matches its Japanese and Taiwanese/Hong Kong spellings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Folded", "fold", "fold_char", "CJK_CLASS", "LATIN_TOKEN_RE", "has_cjk"]

# Scripts written without spaces between words.  Terms in these scripts are matched as substrings; everything
# else (Latin, Cyrillic, Greek, ...) is matched as whole tokens so that "grape" never matches "rape".
CJK_CLASS = (
    "\u1100-\u11ff"  # Hangul jamo
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3005-\u3007\u3021-\u3029"  # 々 〆 〇, Suzhou numerals
    "\u3040-\u30ff"  # hiragana, katakana (incl. the ー prolonged sound mark)
    "\u3130-\u318f"  # Hangul compatibility jamo
    "\u31f0-\u31ff"  # katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B..H
)
_CJK_RE = re.compile(f"[{CJK_CLASS}]")
# A token is a maximal run of word characters that are not CJK (and not "_", which \w includes).
LATIN_TOKEN_RE = re.compile(f"[^\\W_{CJK_CLASS}]+")

# Combining marks we must not strip: the kana voicing marks (dakuten / handakuten).
_KEEP_MARKS = frozenset("\u3099\u309a")

# Traditional Chinese / Japanese shinjitai -> simplified Chinese, for characters that occur in the rule files
# (names, sensitive terms).  Each item is "source target".  Only unambiguous pairs are listed: a character that is
# itself a common simplified character with another meaning is left alone.
_CJK_FOLD_PAIRS = """
宮宫 駿骏 誠诚 龍龙 東东 鳥鸟 島岛 藝艺 畫画 書书 動动 風风 際际 劉刘 張张 陳陈 黃黄 楊杨 趙赵 吳吴 鄭郑 謝谢
馬马 國国 會会 廣广 広广 澤泽 沢泽 邊边 辺边 邉边 橋桥 齋斋 斎斋 齊齐 斉齐 櫻樱 桜樱 鬥斗 闘斗 蓮莲 恵惠 濱滨
浜滨 關关 関关 滿满 満满 黒黑 與与 寫写 飛飞 樂乐 楽乐 語语 優优 亞亚 亜亚 戰战 戦战 劇剧 團团 団团 貓猫 隊队
彈弹 弾弹 裝装 擊击 撃击 殺杀 屍尸 體体 內内 褲裤 兒儿 學学 蘿萝 嬰婴 薩萨 歐欧 羅罗 萊莱 蘭兰 爾尔 麥麦 華华
維维 達达 傑杰 諾诺 納纳 貝贝 絲丝 紋纹 標标 誌志 號号 帶带 頭头 斬斩 殘残 腸肠 臟脏 臓脏 傷伤 毆殴 槍枪 視视
滅灭 絕绝 獄狱 麗丽 愛爱 親亲 鋼钢 鐵铁 鉄铁 寶宝 夢梦 獸兽 龜龟 亀龟 俠侠 選选 統统 總总 習习 蘇苏 對对 軍军
氣气 灣湾 臺台 賓宾 聞闻 記记 開开 門门 聖圣 點点 觸触 幣币 買买 賣卖 錢钱 銀银 電电 腦脑 車车 機机 歲岁 歳岁
長长 紅红 綠绿 緑绿 藍蓝 顏颜 實实 実实 驗验 験验 線线 紙纸 鏡镜 陰阴 莖茎 襪袜 誘诱 膚肤 戀恋 態态 變变 変变
強强 姦奸 兇凶 謀谋 燒烧 焼烧 絞绞 縊缢 劃划 藥药 薬药 過过 應应 這这 個个 們们 為为 說说 話话 還还 讓让 從从
種种 樣样 術术 現现 陽阳 進进 劍剑 剣剑 筆笔 靈灵 霊灵 閃闪 艦舰 賽赛 驚惊 異异 蘋苹 當当 勞劳 馳驰 漢汉 館馆
億亿 萬万 髮发 髪发 臉脸 瑪玛 聯联 產产 産产 黨党 員员 義义 專专 製制 鮮鲜 腳脚 舊旧 齒齿 歯齿 蟲虫 禮礼 醫医
師师 報报 紀纪 織织 雲云 圖图 図图 極极 細细 層层 構构 題题 類类 觀观 観观 覺觉 覚觉 輕轻 軽轻 衛卫 緊紧 濕湿
騷骚 艷艳 豔艳 勢势 擺摆 慾欲 脫脱 寬宽 鬆松 軟软 條条 纖纤 豐丰 溝沟 領领 熱热 惡恶 悪恶 獵猎 猟猎 慘惨 斃毙
彌弥 間间 問问 倫伦 潤润 榮荣 栄荣 剛刚 樹树 節节 嚴严 厳严 貞贞 濃浓 湯汤 淺浅 幾几 鄧邓 龐庞 孫孙 聶聂 賈贾
賢贤 凱凯 連连 嬌娇 奧奥 蓋盖 鋒锋 頓顿 賴赖 麼么 頁页 顯显 聲声 響响 壓压 圧压 擴扩 拡扩 廠厂 證证 証证 讀读
読读 權权 権权 鐘钟 鍾钟 雙双 鶴鹤 鷹鹰 鳳凤 戲戏 戯戏 雞鸡 鶏鸡 魚鱼 鯨鲸 鯊鲨 狀状 隨随 麵面 鏈链 擊击 躍跃
罵骂 歧歧 穢秽 淫淫 婦妇 孃娘 嬢娘 貞贞 妝妆 粧妆 紗纱 縛缚 綁绑 鞭鞭 獄狱 煉炼 錬炼 鍊炼 遊游 戀恋 腦脑 蠻蛮
蛻蜕 蝦虾 憂忧 鬱郁 療疗 癒愈 縮缩 輪轮 姬姬 姫姬 兩两 両两 繪绘 絵绘 漫漫 訊讯 測测 紳绅 淨净 浄净 彫雕
""".split()

_CJK_FOLD: dict[str, str] = {}
for _pair in _CJK_FOLD_PAIRS:
    assert len(_pair) == 2, _pair
    _src, _dst = _pair
    assert _CJK_FOLD.get(_src, _dst) == _dst, f"conflicting fold for {_src}"
    if _src != _dst:
        _CJK_FOLD[_src] = _dst

_HIRAGANA_SHIFT = 0x30A1 - 0x3041  # katakana ァ..ヶ sit exactly this far above hiragana ぁ..ゖ

def _compute(ch: str) -> str:
    text = unicodedata.normalize("NFKC", ch).casefold()
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if c in _KEEP_MARKS or unicodedata.category(c) != "Mn")
    text = unicodedata.normalize("NFC", text)
    if text.strip() in _KEEP_MARKS:
        text = text.strip()  # "゛" (spacing voiced mark) -> the combining mark, so it can join its kana
    out = []
    for c in text:
        c = _CJK_FOLD.get(c, c)
        if "\u30a1" <= c <= "\u30f6":
            c = chr(ord(c) - _HIRAGANA_SHIFT)
        out.append(c)
    return "".join(out)


class _FoldTable(dict):
    """``str.translate`` table (code point -> folded text) filled on first sight of each character.

    Prompts reuse a small alphabet, so after warm-up almost every character is a hit and the whole prompt is
    folded by ``str.translate`` in C.  Characters whose fold is not exactly one character long ("ß" -> "ss", a
    lone combining accent -> "") are remembered, because only they break the 1:1 index mapping.
    """

    CAP = 65536  # protects memory against a prompt that streams every code point through the guard

    def __init__(self) -> None:
        super().__init__()
        self.non_unit: set[str] = set()
        self._non_unit_re: re.Pattern[str] | None = None

    def __missing__(self, code: int) -> str:
        if len(self) >= self.CAP:
            self.clear()
        ch = chr(code)
        folded = _compute(ch)
        self[code] = folded
        # Zero or several characters break the 1:1 mapping; a lone voicing mark ("ﾋﾟ" half-width) must be merged
        # into the kana before it.  Both need the slow path.
        if (len(folded) != 1 or folded in _KEEP_MARKS) and ch not in self.non_unit:
            self.non_unit.add(ch)
            self._non_unit_re = None
        return folded

    def has_non_unit(self, text: str) -> bool:
        if not self.non_unit:
            return False
        if self._non_unit_re is None:
            self._non_unit_re = re.compile("[" + re.escape("".join(sorted(self.non_unit.copy()))) + "]")
        return self._non_unit_re.search(text) is not None


_TABLE = _FoldTable()


def fold_char(ch: str) -> str:
    """Fold one character; may return "" (a lone combining mark) or several characters ("ß" -> "ss")."""
    return _TABLE[ord(ch)]


@dataclass(frozen=True, slots=True)
class Folded:
    """A folded string plus, for each of its characters, where it came from in the original text."""

    text: str
    origin: Sequence[int]  # origin[i]: index of the original character that folded text[i] starts at
    original_length: int
    origin_end: Sequence[int] | None = None  # where it ends, when that is not origin[i] + 1 (merged characters)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Map a half-open span of the folded text back to a half-open span of the original text."""
        if self.origin_end is None:
            return self.origin[start], self.origin[end - 1] + 1
        return self.origin[start], self.origin_end[end - 1]


def fold(text: str) -> Folded:
    if text.isascii():
        # The common case: ASCII only needs lower-casing and the mapping is the identity (a range costs nothing).
        return Folded(text.lower(), range(len(text)), len(text))
    folded = text.translate(_TABLE)
    if not _TABLE.has_non_unit(text):
        return Folded(folded, range(len(text)), len(text))
    # Some character folds to zero or several characters, or is a voicing mark to merge into the previous kana:
    # build the mapping one character at a time.
    chars: list[str] = []
    origin: list[int] = []
    origin_end: list[int] = []
    for i, ch in enumerate(text):
        f = _TABLE[ord(ch)]
        if f in _KEEP_MARKS and chars:
            merged = _merge_voicing(chars[-1], f)
            if merged is not None:
                chars[-1] = merged
                origin_end[-1] = i + 1
                continue
        if not f and chars:
            origin_end[-1] = i + 1  # a dropped accent belongs to the letter before it ("e" + U+0301)
            continue
        for c in f:
            chars.append(c)
            origin.append(i)
            origin_end.append(i + 1)
    return Folded("".join(chars), origin, len(text), origin_end)


def _merge_voicing(kana: str, mark: str) -> str | None:
    """"ひ" + "゚" -> "ぴ" (the folded, hiragana form), or None if they do not combine."""
    composed = unicodedata.normalize("NFC", kana + mark)
    return _TABLE[ord(composed)] if len(composed) == 1 else None


def has_cjk(text: str) -> bool:
    return _CJK_RE.search(text) is not None
