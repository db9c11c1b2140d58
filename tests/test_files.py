"""engine.files.atomic_write as an output surface: regular files are replaced whole, keeping their permissions;
links are written through; devices and fifos are written to, never replaced; and every command refuses input
that is not a regular file (a fifo would block the reader, /dev/zero never ends) or a name the file system cannot
hold, in one line, instead of hanging or a traceback."""
from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.design.model import save_design
from engine.design.templates import make_template
from engine.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def test_a_private_file_stays_private_and_a_link_is_written_through(tmp_path):
    private = tmp_path / "p.json"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write_text(private, "new")
    assert private.read_text() == "new" and stat.S_IMODE(private.stat().st_mode) == 0o600
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target.name)
    atomic_write_text(link, "through")
    assert link.is_symlink() and target.read_text() == "through"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to("made.json")
    atomic_write_text(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made.json").read_text() == "made"
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path, "x")
    long = tmp_path / ("n" * 250)  # the file system allows 255: the temporary name must not be longer
    atomic_write_text(long, "ok")
    assert long.read_text() == "ok" and sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_fifo_is_written_to_not_replaced(tmp_path):
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic_write_text(fifo, "streamed")
    reader.join(10)
    assert got == [b"streamed"] and stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_is_written_to_not_replaced(tmp_path):
    null, full = tmp_path / "null", tmp_path / "full"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    atomic_write_text(null, "gone")
    assert stat.S_ISCHR(null.stat().st_mode)
    r = subprocess.run([sys.executable, "-m", "engine.cli", "template", "mpo", "--in", "12", "--out", "6", "-o",
                        str(full)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "No space left on device" in r.stderr and stat.S_ISCHR(full.stat().st_mode)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_input_that_is_no_regular_file_or_too_long_a_name_is_one_line(tmp_path):
    """`export FIFO` and `train FIFO --dry-run` hung (the network-file sniff read it whole), `export /dev/zero` ate
    gigabytes, and a 300-character name was an OSError traceback in validate, cost, export, train and network."""
    os.mkfifo(tmp_path / "fifo")
    long = "a" * 300 + ".json"
    cases = [["export", "fifo"], ["train", "fifo", "--dry-run"], ["export", "/dev/zero"], ["validate", long],
             ["cost", long], ["network", "show", long], ["network", "cost", "fifo"], ["train", long, "--dry-run"],
             ["template", "mpo", "--in", "12", "--out", "6", "-o", long]]
    for args in cases:
        r = _cli(args, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr[-800:])
        assert "Traceback" not in r.stderr


def test_a_write_that_cannot_start_names_the_file_asked_for(tmp_path):
    """Where the temporary file beside the target cannot be made (here /proc, which takes no new files), the error
    named the temporary file (`cannot write /proc/.x.py.5315dd92d5a7.tmp`); it names the file asked for now."""
    from engine.cli import main

    with pytest.raises(OSError) as info:
        atomic_write_text("/proc/tnstudio-x.json", "{}")
    assert info.value.filename == "/proc/tnstudio-x.json"
    design = tmp_path / "d.json"
    save_design(make_template("mpo", 16, 16, 2), design)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["export", str(design), "--to", "torch", "-o", "/proc/tnstudio-x.py"]) == 2
    line = err.getvalue().strip()  # ENOENT as root, EACCES otherwise
    assert line.startswith("error: cannot write /proc/tnstudio-x.py: ") and "\n" not in line, line
