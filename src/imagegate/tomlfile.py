"""Reading an operator's TOML file (the config file, a price file, a rule file): a file that cannot be used is
refused in one line naming it and what is wrong, never with an OSError's or a decoder's traceback."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Callable


def read_toml(path: Path, what: str, error: Callable[[str], Exception]) -> dict[str, Any]:
    """The TOML document in ``path``. ``what`` names the file in messages ("price file"); a file that is missing,
    unreadable (a directory, no permission), not UTF-8 or not TOML raises ``error(message)``, a one-line message
    (the caller's own type: ConfigError or a subclass of it, or the guard's RuleError)."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path}: not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path}: invalid TOML: {exc}") from None
