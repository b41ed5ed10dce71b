from xenblock import config


def test_defaults_without_a_file(tmp_path):
    loaded = config.load({"XENBLOCK_CONFIG": str(tmp_path / "missing.conf")})
    assert loaded == config.Config()
    assert loaded.state_dir == "/run/xenblock" and loaded.direct_io


def test_file_and_environment(tmp_path):
    path = tmp_path / "x.conf"
    path.write_text("[general]\nstate_dir = /tmp/xb\ndebug = no\nlock_timeout = 5\n[file]\ndirect_io = no\n")
    loaded = config.load({"XENBLOCK_CONFIG": str(path), "XENBLOCK_DEBUG": "1"})
    assert (loaded.state_dir, loaded.debug, loaded.lock_timeout, loaded.direct_io) == ("/tmp/xb", True, 5.0, False)


def test_shipped_config_file_states_the_defaults():
    # etc/xenblock.conf documents every setting commented out at its default.
    loaded = config.load({"XENBLOCK_CONFIG": "etc/xenblock.conf"})
    assert loaded == config.Config()
    text = open("etc/xenblock.conf").read()
    for name, value in [("state_dir", "/run/xenblock"), ("log_file", "/var/log/xen/xen-hotplug.log"),
                        ("lock_timeout", "30"), ("direct_io", "yes"), ("debug", "no"), ("syslog", "yes")]:
        assert f"#{name} = {value}\n" in text
