"""An operator's TOML file that cannot be used (the config file, a price file, a rule file) is refused in one line
naming the file and what is wrong, never with an OSError's or a decoder's traceback (a 500 on
/admin/prices/reload, a crash of `serve`)."""

from __future__ import annotations

import pytest

from imagegate.billing import PriceBookError, load_price_book
from imagegate.config import ConfigError, load_settings
from imagegate.guard import PromptGuard, RuleError

UNREADABLE = {
    "missing": (lambda path: None, "not found"),
    "directory": (lambda path: path.mkdir(), "cannot read: Is a directory"),
    "not UTF-8": (lambda path: path.write_bytes(b'host = "caf\xe9"\n'), "not UTF-8"),
    "invalid TOML": (lambda path: path.write_text("port = [\n"), "invalid TOML"),
}
READERS = {
    "config file": (lambda path: load_settings(path, environ={}), ConfigError),
    "price file": (load_price_book, PriceBookError),
    "rule file": (lambda path: PromptGuard.load(extra_paths=[path]), RuleError),
}


@pytest.mark.parametrize("case", UNREADABLE)
@pytest.mark.parametrize("what", READERS)
def test_an_unusable_file_is_refused_in_one_line(tmp_path, what, case):
    make, problem = UNREADABLE[case]
    read, error = READERS[what]
    path = tmp_path / "file.toml"
    make(path)
    with pytest.raises(error) as exc:
        read(path)
    message = str(exc.value)
    assert message.startswith(what) and problem in message and str(path) in message
    assert "\n" not in message and exc.value.__cause__ is None and exc.value.__suppress_context__
