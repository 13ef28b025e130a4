from pathlib import Path

import pytest

from freezeframe.settings import SettingsError, load


def test_defaults():
    s = load(environ={})
    assert s.server.port == 9292 and s.server.host == "127.0.0.1"
    assert s.auth.mode == "tokens"
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("freezeframe.db")
    assert s.store_path == s.data_dir / "images"
    assert s.images.hash_algo == "sha512" and s.images.legacy_md5 is True


def test_precedence_defaults_file_env_flags(tmp_path):
    cfg = tmp_path / "ff.toml"
    cfg.write_text('data_dir = "/srv/ff"\n[server]\nport = 9000\nhost = "0.0.0.0"\n[images]\nlegacy_md5 = false\n')
    s = load(cfg, environ={"FREEZEFRAME_SERVER__PORT": "9100"}, flags={"server.port": None})
    assert s.server.port == 9100          # env beats file
    assert s.server.host == "0.0.0.0"     # file beats default
    assert s.data_dir == Path("/srv/ff")
    assert s.images.legacy_md5 is False
    s = load(cfg, environ={"FREEZEFRAME_SERVER__PORT": "9100"}, flags={"server.port": 9200})
    assert s.server.port == 9200          # flags beat env


def test_config_file_from_environment(tmp_path):
    cfg = tmp_path / "ff.toml"
    cfg.write_text("[reaper]\ninterval = 5\n")
    assert load(environ={"FREEZEFRAME_CONFIG": str(cfg)}).reaper.interval == 5.0


@pytest.mark.parametrize("text,message", [
    ("[server]\nprot = 1\n", "server.prot: unknown setting"),
    ("[server]\nport = 'abc'\n", "server.port: expected int"),
    ("[images]\nlegacy_md5 = 'maybe'\n", "expected a boolean"),
    ("[auth]\nmode = 'open'\n", "auth.mode"),
    ("[images]\nhash_algo = 'sha999'\n", "unknown hash algorithm"),
    ("server = 5\n", "expected a table"),
    ("[server\n", "config file"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    cfg = tmp_path / "ff.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load(cfg, environ={})


def test_missing_config_file():
    with pytest.raises(SettingsError, match="does not exist"):
        load("/nonexistent/ff.toml", environ={})
