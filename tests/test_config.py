from pathlib import Path

import pytest

from imagegate.config import ConfigError, Settings, load_settings


def test_precedence_defaults_file_env_flags(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('port = 9001\nhost = "0.0.0.0"\nurl_ttl_seconds = 60\napi_keys = ["a", "b"]\n')
    settings = load_settings(config, environ={}, overrides={})
    assert (settings.port, settings.host, settings.url_ttl_seconds, settings.api_keys) == (9001, "0.0.0.0", 60, ("a", "b"))
    settings = load_settings(config, environ={"IMAGEGATE_PORT": "9002", "IMAGEGATE_API_KEYS": "x, y"}, overrides={})
    assert settings.port == 9002 and settings.api_keys == ("x", "y") and settings.host == "0.0.0.0"
    settings = load_settings(config, environ={"IMAGEGATE_PORT": "9002"}, overrides={"port": 9003, "host": None})
    assert settings.port == 9003 and settings.host == "0.0.0.0"


def test_defaults_need_nothing():
    settings = load_settings(None, environ={})
    assert settings.port == 8000 and settings.data_dir == Path("imagegate-data")
    assert settings.url_ttl_seconds == 7 * 24 * 3600


@pytest.mark.parametrize("text, where", [('port = 99999\n', "port"), ('nonsense = 1\n', "nonsense")])
def test_bad_config_names_the_entry(tmp_path, text, where):
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=where):
        load_settings(config, environ={})


def test_an_empty_path_variable_unsets_it_and_a_misspelt_one_is_warned_about(caplog):
    settings = load_settings(None, environ={"IMAGEGATE_PRICE_FILE": "", "IMAGEGATE_API_KEY": "sk-x",
                                            "IMAGEGATE_WORKER_SETTINGS": "{}"})
    assert settings.price_file is None and settings.api_keys == ()
    warned = [r.getMessage() for r in caplog.records if r.name == "imagegate.config"]
    assert warned == ["IMAGEGATE_API_KEY is not a setting and is ignored; see docs/configuration.md for the names"]


def test_a_blank_admin_token_is_no_token(tmp_path):
    from imagegate.config import metering_enabled

    settings = load_settings(None, environ={"IMAGEGATE_ADMIN_TOKEN": "  "}, overrides={"data_dir": tmp_path})
    assert settings.admin_token == "" and not metering_enabled(settings)  # no admin API, no database made
    assert load_settings(None, environ={"IMAGEGATE_ADMIN_TOKEN": " t0ken\n"}).admin_token == "t0ken"


PATH_SETTINGS = [name for name, field in Settings.model_fields.items() if "Path" in str(field.annotation)]


def test_the_path_settings_are_found():
    assert set(PATH_SETTINGS) == {"data_dir", "guard_rule_files", "price_file"}


@pytest.mark.parametrize("name", PATH_SETTINGS)
def test_an_empty_variable_for_any_path_setting_means_its_default(name):
    # `IMAGEGATE_DATA_DIR=` is how a shell unsets it, not the current directory (docs/configuration.md).
    settings = load_settings(None, environ={f"IMAGEGATE_{name.upper()}": ""})
    assert getattr(settings, name) == Settings.model_fields[name].default


def test_the_test_database_variable_is_no_misspelt_setting(caplog):
    # .ci/run and the database tests set it on purpose; it is read by the tests, never by the server.
    settings = load_settings(None, environ={"IMAGEGATE_TEST_DATABASE_URL": "postgresql+asyncpg://u@h/db"})
    assert settings.database_url == ""
    assert [r.getMessage() for r in caplog.records if r.name == "imagegate.config"] == []
