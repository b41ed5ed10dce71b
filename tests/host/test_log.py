from tests.support.cases import DOM_A


def test_debug_switch_in_the_environment_adds_detail(driver, images):
    path = images("debug.img")
    key = driver.backend(path, frontend_id=DOM_A)
    assert driver.add(key, env={"XENBLOCK_DEBUG": "1"}).returncode == 0
    assert driver.remove(key).returncode == 0
    with open(driver.log_file) as f:
        text = f.read()
    assert f"add {key}: Request(key='{key}', target='{path}', mode='w', frontend_id={DOM_A})" in text
    assert "conflicting user: None" in text


def test_without_debug_only_the_summary_lines(driver, images):
    key = driver.backend(images("quiet.img"))
    assert driver.add(key).returncode == 0
    assert driver.remove(key).returncode == 0
    with open(driver.log_file) as f:
        lines = f.read().splitlines()
    assert len(lines) == 2 and "add " in lines[0] and "remove " in lines[1]


def test_errors_reach_stderr_when_run_by_hand(driver):
    key = driver.backend("/nonexistent/xenblock.img")
    result = driver.add(key)
    assert result.returncode == 1
    assert "/nonexistent/xenblock.img: no such file or block device" in result.stderr
