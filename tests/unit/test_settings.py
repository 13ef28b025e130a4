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


# -- [testing]: test-only knobs, refused unless enabled -------------------------------------------

KNOBS = {"FAKE_FAIL_ON": "copy", "FAKE_COPY_DELAY": "0.5", "FAKE_READ_DELAY": "0.1",
         "FAULT_KILL_AT": "PENDING", "FAULT_PAUSE_AT": "UPLOAD_COMPLETE", "FAULT_PAUSE_SECONDS": "5"}


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_a_test_knob_is_refused_unless_testing_is_enabled(knob):
    env = {"FREEZEFRAME_COMPUTE__DRIVER": "fake", f"FREEZEFRAME_TESTING__{knob}": KNOBS[knob]}
    with pytest.raises(SettingsError, match=rf"testing\.{knob.lower()}: a test-only knob .*"
                                            r"FREEZEFRAME_TESTING__ENABLED=true"):
        load(environ=env)
    with pytest.raises(SettingsError, match="test-only"):
        load(environ={**env, "FREEZEFRAME_TESTING__ENABLED": "false"})
    enabled = load(environ={**env, "FREEZEFRAME_TESTING__ENABLED": "true"}).testing
    assert enabled.enabled and enabled.knobs_set() == [knob.lower()]


def test_testing_defaults_are_off_and_enabling_alone_is_allowed():
    assert load(environ={}).testing.enabled is False and load(environ={}).testing.knobs_set() == []
    assert load(environ={"FREEZEFRAME_TESTING__ENABLED": "true"}).testing.enabled is True


def test_testing_section_from_a_file(tmp_path):
    cfg = tmp_path / "ff.toml"
    cfg.write_text('[compute]\ndriver = "fake"\n[testing]\nfake_fail_on = "copy, open_snapshot"\n')
    with pytest.raises(SettingsError, match="testing.fake_fail_on"):
        load(cfg, environ={})
    cfg.write_text('[compute]\ndriver = "fake"\n[testing]\nenabled = true\nfake_fail_on = "copy, open_snapshot"\n'
                   'fault_kill_at = "PENDING,UPLOAD_30_COMPLETE"\n')
    testing = load(cfg, environ={}).testing
    assert testing.states(testing.fake_fail_on) == {"copy", "open_snapshot"}
    assert testing.states(testing.fault_kill_at) == {"PENDING", "UPLOAD_30_COMPLETE"}


def test_fake_driver_knobs_need_the_fake_driver():
    env = {"FREEZEFRAME_TESTING__ENABLED": "true", "FREEZEFRAME_TESTING__FAKE_COPY_DELAY": "1"}
    with pytest.raises(SettingsError, match="fake virt driver only"):
        load(environ=env)
    # fault injection works with any driver (the libvirt crash tests use it)
    assert load(environ={"FREEZEFRAME_TESTING__ENABLED": "true", "FREEZEFRAME_TESTING__FAULT_KILL_AT": "PENDING"})


@pytest.mark.parametrize("old,new", [
    ("FREEZEFRAME_COMPUTE__FAKE_FAIL_ON", "testing.fake_fail_on"),
    ("FREEZEFRAME_COMPUTE__FAKE_COPY_DELAY", "testing.fake_copy_delay"),
    ("FREEZEFRAME_CONDUCTOR__FAULT_KILL_AT", "testing.fault_kill_at"),
    ("FREEZEFRAME_CONDUCTOR__FAULT_PAUSE_SECONDS", "testing.fault_pause_seconds"),
])
def test_the_old_places_of_the_knobs_say_where_they_went(old, new):
    with pytest.raises(SettingsError, match=rf"moved to {new}"):
        load(environ={old: "1"})
