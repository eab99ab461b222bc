"""The chat-image relay's reading of an answer's text: its image links and its status lines."""

from __future__ import annotations

from imagegate.engines.base import Progress
from imagegate.engines.chat_relay import _AnswerProgress, _StatusLines, image_links

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
    # A number cut between pieces is read whole; one at the very end counts once what follows tells it.
    assert _read(["🏃 Progress 1", "9....2"]).percent == 19
    assert _read(["🏃 Progress 1"]).percent is None
    assert _read(["🏃 Progress 1", "9...."]).percent == 19
    assert _read(["🏃 Progress 90....100.", "..."]).percent == 100  # one dot does not tell a number yet
    # A new progress line starts over; numbers before any marker are not progress.
    assert _read(["42.. 🏃 Progress 80..", "\n🏃 Progreso ", "7.."]).percent == 7
    assert _read(["42.. 50.. "]).percent is None


def _progress(prompt: str, pieces: list[str]) -> tuple[_AnswerProgress, list[Progress]]:
    """What the relay reports while an answer arrives in these pieces."""
    reader = _AnswerProgress(prompt)
    events = [event for piece in pieces if (event := reader.read(piece)) is not None]
    return reader, events


def _cut(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_the_prompts_own_words_are_never_taken_for_status_however_the_answer_is_cut():
    prompt = "paint the words Generating and 🏃 Progress 40.. and 80 percent on a wall"
    text = f'```json\n{{"prompt": "{prompt}"}}\n```\n\n> 🕐 Queuing\n> 🏃 Progress 7....12..'
    for size in (1, 2, 3, 5, 8, 13, 40, len(text)):
        reader, events = _progress(prompt, _cut(text, size))
        assert reader.echo.end == text.index(prompt) + len(prompt), size
        # The upstream's own percentages (both, or the last, as the pieces fall): never 40 or 80 from the prompt,
        # and never "generating" before them.
        percents = [e.percent for e in events if e.stage == "generating"]
        assert percents in ([7, 12], [12]) and {e.stage for e in events} <= {"queued", "generating"}, size
        if size < 10:
            assert events[0].stage == "queued" and percents == [7, 12], size


def test_a_queue_after_a_long_prompt_shows_at_once():
    # The upstream may say it is queued and then send nothing for minutes: that must show before more text comes,
    # though the answer is shorter than the echo and the slack the echo is looked for with.
    prompt = "a ⚡ lightning poster, " * 20
    text = f'```json\n{{"prompt": "{prompt}", "ratio": "1:1"}}\n```\n\n>🕐 Queuing.\n\n'
    reader, events = _progress(prompt, _cut(text, 7))
    assert reader.echo.end is not None and {(e.percent, e.stage) for e in events} == {(0, "queued")}


def test_an_echo_is_found_at_the_end_when_little_followed_it():
    prompt = "a lighthouse " * 150
    text = f'```json\n{{"prompt": "{prompt}"}}\n```\nSorry, I cannot make that.'
    reader, _ = _progress(prompt, [text])
    assert reader.echo.end is None  # not looked for yet: the answer could still be short of the slack
    reader.echo.finish()
    assert text[reader.echo.end:] == '"}\n```\nSorry, I cannot make that.'


def test_an_answer_without_the_echo_is_read_as_status_once_the_echo_is_ruled_out():
    reader, events = _progress("a prompt the upstream does not quote", ["> 🕐 Queuing\n"] * 30)
    assert reader.echo.settled and reader.echo.end is None and events and events[0].stage == "queued"
    assert reader.echo.held == []  # nothing is held, or read again, from then on
