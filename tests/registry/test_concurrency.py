"""Processes registering at the same time never share a version number or lose an alias."""

import subprocess
import sys
import textwrap
import time

from modelcycle.registry import Registry

PROCESSES, REGISTRATIONS = 2, 10

WRITER = textwrap.dedent("""
    import pathlib, sys, time
    from modelcycle.registry import Registry

    root, writer, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
    registry = Registry(root)
    (go.parent / f"ready-{writer}").touch()
    while not go.exists():  # start together, so that the registrations interleave
        time.sleep(0.001)
    for i in range(count):
        version = registry.register("fraud", {"writer": writer, "i": i}, lineage={"writer": writer},
                                    params={"i": i}, metrics={})
        registry.set_alias("fraud", f"last-of-{writer}", version.version)
""")


def test_concurrent_processes_get_distinct_versions_and_keep_every_alias(tmp_path, root):
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), f"w{k}", str(REGISTRATIONS), str(go)],
                                stderr=subprocess.PIPE, text=True) for k in range(PROCESSES)]
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("ready-*"))) < PROCESSES and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        for writer in writers:
            _, stderr = writer.communicate(timeout=60)
            assert writer.returncode == 0, stderr
    finally:
        for writer in writers:
            writer.kill()

    registry = Registry(root)
    versions = registry.versions("fraud")
    total = PROCESSES * REGISTRATIONS
    assert [v.version for v in versions] == list(range(1, total + 1))
    loaded = [registry.load("fraud", v.version) for v in versions]
    expected = [(f"w{k}", i) for k in range(PROCESSES) for i in range(REGISTRATIONS)]
    assert sorted((m["writer"], m["i"]) for m in loaded) == expected
    for version, model in zip(versions, loaded):
        assert version.lineage.writer == model["writer"] and version.params == {"i": model["i"]}
    for k in range(PROCESSES):
        last = registry.get("fraud", f"last-of-w{k}")
        assert registry.load("fraud", last.version) == {"writer": f"w{k}", "i": REGISTRATIONS - 1}
