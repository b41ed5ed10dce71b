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
