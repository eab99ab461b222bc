"""The chat-image relay's reading of an answer's text: its image links and its status lines."""

from __future__ import annotations

from imagegate.engines.chat_relay import _Echo, _StatusLines, image_links

URL = "https://files.example/gen_1.png"


def test_image_links_in_every_markdown_form():
    text = (
        "> ✅ Generation complete\n\n"
        f"![gen_1]({URL})\n"
        "![a [bracketed] alt](<https://files.example/gen_2.png>)\n"
        '![gen_3](https://files.example/gen_3.png "a title")\n'
        "![gen_4](https://files.example/wiki/Lighthouse_(Ireland).png)\n"
    )
    assert image_links(text, sent="a lighthouse") == [
        URL,
        "https://files.example/gen_2.png",
        "https://files.example/gen_3.png",
        "https://files.example/wiki/Lighthouse_(Ireland).png",
    ]


def test_image_links_leave_out_the_prompts_own_links_and_those_before_completion():
    prompt = f"like ![ref]({URL}) but at night"
    text = (f'```json\n{{"prompt": "{prompt}"}}\n```\n'
            "![early](https://files.example/x.png)\n✅\n![gen](https://files.example/y.png)")
    assert image_links(text, sent=prompt) == ["https://files.example/y.png"]


def test_a_link_after_a_long_run_of_unclosed_brackets_is_found():
    # Each "![" here began a match that, with brackets allowed inside an alt's brackets, read to the text's end.
    text = "![" * 20_000 + f"\n![gen_1]({URL})"
    assert image_links(text, sent="") == [URL]


def _read(pieces: list[str]) -> _StatusLines:
    status = _StatusLines()
    for piece in pieces:
        status.read(piece)
    return status


def test_status_markers_cut_between_pieces_are_seen():
    status = _read(["> 🕐 Que", "uing, position 3\n"])
    assert status.queued and not status.generating
    status.read("> Gener")
    assert not status.generating
    status.read("ating\n")
    assert status.generating


def test_progress_is_the_last_number_after_the_last_marker_however_the_answer_is_cut():
    line = "> 🏃 Progress 11....19....27...[100](https://v.example/a%2F1.png?st=2025-04-21T13%3A08%3A48Z)\n"
    for cut in range(1, len(line)):
        status = _read(["```json\n{}\n```\n", line[:cut], line[cut:]])
        assert status.percent == 100, cut
    # A number cut between pieces is read whole; one at the very end is read as it stands so far.
    assert _read(["🏃 Progress 1", "9....2"]).percent == 2
    assert _read(["🏃 Progress 1", "9...."]).percent == 19
    assert _read(["🏃 Progress 90....100.", "..."]).percent == 100  # one dot does not tell a number yet
    # A new progress line starts over; numbers before any marker are not progress.
    assert _read(["42.. 🏃 Progress 80..", "\n🏃 Progreso ", "7.."]).percent == 7
    assert _read(["42.. 50.. "]).percent is None


def _feed(prompt: str, pieces: list[str]) -> tuple[_Echo, _StatusLines]:
    """The relay's reading of an answer in these pieces (as ChatImageEngine._attempt does)."""
    echo, status = _Echo(prompt), _StatusLines()
    for piece in pieces:
        if echo.end is None and (after := echo.read(piece)) is not None:
            status, piece = _StatusLines(), after
        status.read(piece)
    return echo, status


def test_the_prompts_echo_is_found_however_the_answer_is_cut():
    prompt = "paint the word Generating and 🏃 Progress 40.. on a wall"
    text = f'```json\n{{"prompt": "{prompt}"}}\n```\n\n> 🕐 Queuing\n🏃 Progress 7..'
    for cut in range(1, len(text), 3):
        echo, status = _feed(prompt, [text[:cut], text[cut:]])
        assert echo.end == text.index(prompt) + len(prompt), cut
        # What was read in the echo says nothing: "Generating" and "40" were the prompt's.
        assert status.queued and not status.generating and status.percent == 7, cut


def test_a_queue_after_a_long_prompt_shows_at_once():
    # The upstream may say it is queued and then send nothing for minutes: that must show before more text comes,
    # though the prompt's own "⚡" came first and the answer is shorter than the echo plus a quarter.
    prompt = "a ⚡ lightning poster, " * 20
    text = f'```json\n{{"prompt": "{prompt}", "ratio": "1:1"}}\n```\n\n>🕐 Queuing.\n\n'
    echo, status = _feed(prompt, [text[i:i + 7] for i in range(0, len(text), 7)])
    assert echo.end is not None and status.queued and not status.generating


def test_an_echo_is_found_at_the_end_when_little_followed_it():
    prompt = "a lighthouse " * 150
    text = f'```json\n{{"prompt": "{prompt}"}}\n```\nSorry, I cannot make that.'
    echo, _ = _feed(prompt, [text])
    assert echo.end is None  # not looked at yet: less than a quarter of the echo followed it
    echo.finish()
    assert text[echo.end:] == '"}\n```\nSorry, I cannot make that.'


def test_an_echo_never_sent_is_never_found():
    echo = _Echo("a prompt the upstream does not quote")
    assert all(echo.read(piece) is None for piece in ["> 🕐 Queuing\n"] * 50) and echo.end is None
    echo.finish()
    assert echo.end is None
