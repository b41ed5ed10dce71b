import pytest

from xenblock import config


def test_defaults_without_a_file(tmp_path):
    loaded = config.load({"XENBLOCK_CONFIG": str(tmp_path / "missing.conf")})
    assert loaded == config.Config()
    assert loaded.log_file == "/var/log/xen/xen-hotplug.log" and loaded.direct_io


def test_file_and_environment(tmp_path):
    path = tmp_path / "x.conf"
    path.write_text("# a comment\n[general]\nlog_file = /tmp/xb.log\n  ; another\ndebug = no\n"
                    "syslog=off\n[file]\ndirect_io = No\n[nbd]\nio_timeout = 15\n")
    loaded = config.load({"XENBLOCK_CONFIG": str(path), "XENBLOCK_DEBUG": "1"})
    assert loaded == config.Config(log_file="/tmp/xb.log", debug=True, syslog=False, direct_io=False,
                                   nbd_io_timeout=15)


def test_shipped_config_file_states_the_defaults():
    # etc/xenblock.conf documents every setting commented out at its default.
    loaded = config.load({"XENBLOCK_CONFIG": "etc/xenblock.conf"})
    assert loaded == config.Config()
    text = open("etc/xenblock.conf").read()
    for name, value in [("log_file", "/var/log/xen/xen-hotplug.log"),
                        ("direct_io", "yes"), ("debug", "no"), ("syslog", "yes")]:
        assert f"#{name} = {value}\n" in text
    # ... and nothing else: every setting the code knows is documented there.
    assert {name for _, name in config.SETTINGS} == {
        line[1:].split(" = ")[0] for line in text.splitlines() if line.startswith("#") and line[1:2].isalpha()}


@pytest.mark.parametrize("text, words", [
    ("[general]\ndebgu = yes\n", "line 2: unknown setting 'debgu' in [general]"),
    ("[generl]\n", "line 1: unknown section [generl]"),
    ("debug = yes\n", "line 1: expected `name = value` under a [section]"),
    ("[general]\ndebug\n", "line 2: expected `name = value`"),
    ("[general]\ndebug = maybe\n", "line 2: 'maybe': expected yes or no"),
    ("[general]\n\nsyslog = soon\n", "line 3: 'soon': expected yes or no"),
    ("[general]\nlog_file = xen.log\n", "'xen.log': expected an absolute path"),
    ("[nbd]\nio_timeout = 0\n", "line 2: '0': expected a whole number of seconds from 1 to 86400"),
    ("[nbd]\nio_timeout = 2.5\n", "line 2: '2.5': expected a whole number of seconds from 1 to 86400"),
    ("[nbd]\nio_timeout = 86401\n", "line 2: '86401': expected a whole number of seconds from 1 to 86400"),
    ("[nbd]\nio_timeout = 30s\n", "line 2: '30s': expected a whole number of seconds from 1 to 86400"),
    # Not settings any more: the state directory is fixed, waits follow libxl's limits.
    ("[general]\nstate_dir = /run/xb\n", "line 2: unknown setting 'state_dir' in [general]"),
    ("[general]\nlock_timeout = 5\n", "line 2: unknown setting 'lock_timeout' in [general]"),
])
def test_mistakes_name_the_file_and_line(tmp_path, text, words):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=f"^{path} ") as raised:
        config.load({"XENBLOCK_CONFIG": str(path)})
    assert words in str(raised.value)


def test_a_bad_debug_switch_in_the_environment_is_named(tmp_path):
    with pytest.raises(config.ConfigError, match="XENBLOCK_DEBUG in the environment: 'verbose'"):
        config.load({"XENBLOCK_CONFIG": str(tmp_path / "none.conf"), "XENBLOCK_DEBUG": "verbose"})


def test_load_all_keeps_the_good_lines_and_lists_every_mistake(tmp_path):
    # What a remove goes on with: the log file it was told, despite the typo.
    path = tmp_path / "half.conf"
    path.write_text("[general]\ndebgu = yes\nlog_file = /tmp/mine.log\nsyslog = perhaps\n")
    loaded, mistakes = config.load_all({"XENBLOCK_CONFIG": str(path)})
    assert loaded == config.Config(log_file="/tmp/mine.log")
    assert [str(m) for m in mistakes] == [f"{path} line 2: unknown setting 'debgu' in [general]",
                                          f"{path} line 4: 'perhaps': expected yes or no"]


def test_the_lines_of_an_unknown_section_do_not_count_for_the_one_before(tmp_path):
    path = tmp_path / "section-typo.conf"
    path.write_text("[general]\ndebug = yes\n[generl]\nlog_file = /tmp/elsewhere.log\n")
    loaded, mistakes = config.load_all({"XENBLOCK_CONFIG": str(path)})
    assert loaded == config.Config(debug=True)
    assert [str(m) for m in mistakes] == [f"{path} line 3: unknown section [generl]",
                                          f"{path} line 4: 'log_file' is under the unknown section [generl]"]
