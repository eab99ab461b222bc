"""The chat-image relay's reading of an answer's text: its image links and its status lines."""

from __future__ import annotations

from imagegate.engines.chat_relay import _StatusLines, image_links

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
    text = f'```json\n{{"prompt": "{prompt}"}}\n```\n![early](https://files.example/x.png)\n✅\n![gen](https://files.example/y.png)'
    assert image_links(text, sent=prompt) == ["https://files.example/y.png"]


def test_a_link_after_a_long_run_of_unclosed_brackets_is_found():
    # Each "![" here began a match that, with brackets allowed inside an alt's brackets, read to the text's end.
    text = "![" * 20_000 + f"\n![gen_1]({URL})"
    assert image_links(text, sent="") == [URL]


def test_status_markers_cut_between_chunks_are_seen():
    status = _StatusLines()
    text = ""
    for piece in ("> 🕐 Que", "uing, position 3\n", "> Gener", "ating\n"):
        text += piece
        status.read(text)
        if piece == "uing, position 3\n":
            assert status.queued and not status.generating
    assert status.generating


def test_status_markers_in_the_echoed_prompt_do_not_count():
    echo = "paint the word Generating on a wall"
    text = f'{{"prompt": "{echo}"}}\n'
    status = _StatusLines(text.index(echo) + len(echo))
    status.read(text)
    assert not status.generating and not status.queued
    text += "> 🕐 Queuing\n"
    status.read(text)
    assert status.queued and not status.generating
