import subprocess
import sys

from xenblock.state import StateDir


def test_xenblock_list_shows_each_record(tmp_path, capsys):
    state = StateDir(str(tmp_path / "run"))
    state.save({"key": "backend/vbd/3/51712", "type": "file", "mode": "w", "state": "connected",
                "target": "/srv/web.img", "steps": [{"undo": "loop", "node": "/dev/loop3"}]})
    from xenblock import admin
    assert admin.list_records(state) == 0
    out = capsys.readouterr().out
    assert out == "backend/vbd/3/51712\tfile\tw\tconnected\t/dev/loop3\t/srv/web.img\n"


def test_xenblock_without_a_subcommand_explains_itself():
    result = subprocess.run([sys.executable, "-m", "xenblock.admin"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: xenblock" in result.stderr and "the following arguments are required: command" in result.stderr


def test_xenblock_names_a_mistake_in_its_config_file(tmp_path):
    config = tmp_path / "x.conf"
    config.write_text("[general]\nlog_file = relative\n")
    result = subprocess.run([sys.executable, "-m", "xenblock.admin", "list"], capture_output=True, text=True,
                            env={"XENBLOCK_CONFIG": str(config), "PYTHONPATH": "."})
    assert result.returncode == 1
    assert result.stderr == f"xenblock: {config} line 2: 'relative': expected an absolute path\n"


def _config_command(env):
    return subprocess.run([sys.executable, "-m", "xenblock.admin", "config"], capture_output=True, text=True,
                          env={"PYTHONPATH": ".", **env})


def test_xenblock_config_shows_every_setting_in_force_and_where_it_comes_from(tmp_path):
    config = tmp_path / "x.conf"
    config.write_text("[general]\n# comment\nfill_warning = 92.5%\n[cow]\nsize = 2048M\nsparse = on\n")
    result = _config_command({"XENBLOCK_CONFIG": str(config), "XENBLOCK_DEBUG": "1"})
    assert result.returncode == 0 and result.stderr == ""
    settings = {line.split(" = ")[0]: line.split(" = ")[1] for line in result.stdout.splitlines() if " = " in line}
    assert settings["fill_warning"].split() == ["92.5%", "#", f"{config}", "line", "3"]
    assert settings["size"].split() == ["2G", "#", f"{config}", "line", "5"]
    assert settings["sparse"].split() == ["yes", "#", f"{config}", "line", "6"]
    assert settings["debug"].split("#")[1].strip() == "XENBLOCK_DEBUG in the environment"
    assert settings["max_size"].split() == ["none", "#", "default"]  # [snapshot]'s, the last one
    assert settings["syslog"].split() == ["yes", "#", "default"]
    assert result.stdout.splitlines()[0] == f"# {config}"
    from xenblock.config import SETTINGS
    assert sum(" = " in line for line in result.stdout.splitlines()) == len(SETTINGS)


def test_xenblock_config_without_a_file_shows_the_defaults_and_a_mistake_fails_it(tmp_path):
    missing = _config_command({"XENBLOCK_CONFIG": str(tmp_path / "none.conf")})
    assert missing.returncode == 0
    assert missing.stdout.splitlines()[0] == f"# {tmp_path / 'none.conf'} (missing: every setting is its default)"
    assert all(line.endswith("# default") for line in missing.stdout.splitlines() if " = " in line)
    config = tmp_path / "x.conf"
    config.write_text("[cow]\nsize = 2X\nmax_size = 8G\n")
    broken = _config_command({"XENBLOCK_CONFIG": str(config)})
    assert broken.returncode == 1
    assert f"{config} line 2: '2X'" in broken.stderr
    assert "max_size = 8G" in broken.stdout and "size = 1G" in broken.stdout  # the good line counts, the bad does not
