"""``imagegate accounts | keys | usage`` on SQLite and PostgreSQL, including the refusals an operator can meet."""

from __future__ import annotations

import json

import pytest

from imagegate.cli import main
from tests.db.backends import BACKENDS, fresh_url


@pytest.fixture(params=BACKENDS)
def cli(request, tmp_path, capsys):
    url, drop = fresh_url(request.param, tmp_path)
    where = ["--data-dir", str(tmp_path / "data"), "--database-url", url]

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, *where])
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    drop()


def test_accounts_keys_and_usage(cli):
    assert cli("accounts", "create", "acme", "--balance", "2.5")[0] == 0
    code, out, _ = cli("accounts", "topup", "acme", "0.5", "--note", "invoice 1")
    assert code == 0 and "3.000000 USD (213,000.00 credits)" in out
    code, out, _ = cli("keys", "create", "--account", "acme", "--name", "ci", "--expires", "30d",
                       "--models", "gpt-image-1,dall-e-2", "--limit", "1")
    key = out.splitlines()[-1]
    assert code == 0 and key.startswith("sk-ig-") and len(key) > 40 and key not in out.splitlines()[0]
    code, out, _ = cli("keys", "list", "--json")
    listed = json.loads(out)
    assert [(k["prefix"], k["name"], k["state"], k["spend_limit_micro"]) for k in listed] == [
        (key[:12], "ci", "active", 1_000_000)]
    assert listed[0]["allowed_models"] == ["gpt-image-1", "dall-e-2"] and key not in out
    code, out, _ = cli("accounts", "show", "acme", "--json")
    shown = json.loads(out)
    assert shown["balance_micro"] == 3_000_000 and shown["totals"]["topup"] == 3_000_000
    code, out, _ = cli("accounts", "show", "acme")
    assert "available  3.000000 USD" in out and key[:12] in out
    assert cli("keys", "revoke", key[:12])[0] == 0
    assert json.loads(cli("keys", "list", "--account", "acme", "--json")[1])[0]["state"] == "revoked"
    code, out, _ = cli("usage", "--account", "acme", "--json")
    assert code == 0 and json.loads(out) == []
    assert "acme" in cli("accounts", "list")[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (("accounts", "topup", "acme", "-5"), "must not be negative"),
        (("accounts", "topup", "acme", "0"), "must be more than 0"),
        (("accounts", "topup", "acme", "5000000"), "allowed at once"),
        (("accounts", "topup", "acme", "lots"), "expected an amount"),
        (("accounts", "topup", "nobody", "1"), "No account named 'nobody'"),
        (("accounts", "show", "nobody"), "No account named 'nobody'"),
        (("accounts", "create", "acme"), "already exists"),
        (("accounts", "create", "no way"), "Invalid 'name'"),
        (("accounts", "create", "other", "--group", "gold"), "'gold' is not a price group"),
        (("keys", "create", "--account", "nobody"), "No account named 'nobody'"),
        (("keys", "create", "--account", "acme", "--expires", "tomorrow"), "Invalid '--expires'"),
        (("keys", "create", "--account", "acme", "--models", "gpt-9"), "unknown model 'gpt-9'"),
        (("keys", "revoke", "sk-ig-nother"), "No API key with prefix"),
        (("keys", "revoke", "sk-ig-"), "is not a key's prefix"),  # would have matched any one key
    ],
)
def test_bad_input_is_refused_with_a_message(cli, args, message):
    assert cli("accounts", "create", "acme")[0] == 0
    code, out, err = cli(*args)
    assert code == 1 and message in err, err


def test_looking_at_an_unmetered_data_dir_leaves_it_unmetered(tmp_path, capsys, monkeypatch):
    """The data dir's database turns metering on at the next `serve`: listing must not create it."""
    from imagegate.config import DB_FILE, load_settings, metering_enabled

    monkeypatch.delenv("IMAGEGATE_DATABASE_URL", raising=False)
    data = tmp_path / "data"
    for args in (["usage"], ["accounts", "list"], ["keys", "list"]):
        assert main([*args, "--data-dir", str(data)]) == 0, args
        assert main([*args, "--json", "--data-dir", str(data)]) == 0
        assert json.loads(capsys.readouterr().out) == []
    assert main(["accounts", "show", "acme", "--data-dir", str(data)]) == 1
    assert "No account named 'acme'" in capsys.readouterr().err
    assert not (data / DB_FILE).exists()
    assert not metering_enabled(load_settings(None, environ={}, overrides={"data_dir": data}))


@pytest.mark.parametrize(
    "args, message",
    [
        (("keys", "revoke", "sk-ig-abcdef"), "No API key with prefix 'sk-ig-abcdef'"),
        (("keys", "revoke", "sk-ig-"), "is not a key's prefix"),
        (("accounts", "topup", "nobody", "1"), "No account named 'nobody'"),
        (("accounts", "group", "nobody", "default"), "No account named 'nobody'"),
        (("keys", "create", "--account", "nobody"), "No account named 'nobody'"),
    ],
)
def test_a_refused_write_leaves_an_unmetered_data_dir_unmetered(tmp_path, capsys, monkeypatch, args, message):
    """Only `accounts create` (and `db upgrade`) may make the data dir's database: a mistyped write that is refused
    anyway must not leave one behind, which would turn metering on at the next `serve`."""
    from imagegate.config import DB_FILE, load_settings, metering_enabled

    monkeypatch.delenv("IMAGEGATE_DATABASE_URL", raising=False)
    data = tmp_path / "data"
    assert main([*args, "--data-dir", str(data)]) == 1
    assert message in capsys.readouterr().err
    assert not (data / DB_FILE).exists()
    assert not metering_enabled(load_settings(None, environ={}, overrides={"data_dir": data}))
    assert main(["accounts", "create", "acme", "--data-dir", str(data)]) == 0  # creating still creates it
    assert (data / DB_FILE).exists()
    assert metering_enabled(load_settings(None, environ={}, overrides={"data_dir": data}))
