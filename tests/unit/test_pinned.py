"""A container's file opened inside the container's root (pinned.py), on a directory tree built here."""

import errno
import os

import pytest

from probeset_agent import pinned


def test_symlinks_resolve_inside_the_root(tmp_path):
    """An absolute symlink in a container means the container's /, whatever the agent's own root
    holds at that path (here: this process's real /etc/hostname)."""
    root = tmp_path / "root"
    (root / "srv").mkdir(parents=True)
    (root / "srv/bin").write_bytes(b"\x7fELF inside")
    (root / "app").symlink_to("/etc")                                  # /etc of the container: absent
    (root / "up").symlink_to("../../../../../../srv")                  # .. stops at the container's /
    with pytest.raises(OSError) as e:
        pinned.open_in_root(str(root), "/app/hostname")
    assert e.value.errno == errno.ENOENT and os.path.exists("/etc/hostname")
    fd = pinned.open_in_root(str(root), "/up/bin")
    try:
        assert os.read(fd, 100) == b"\x7fELF inside"
    finally:
        os.close(fd)


def test_a_pin_names_the_file_it_opened(tmp_path):
    """/proc/<pid>/root/... paths go through open_in_root; the pin's name stays that file even when
    the path is replaced."""
    (tmp_path / "bin").write_bytes(b"first")
    pin = pinned.Pin(f"/proc/{os.getpid()}/root{tmp_path}/bin")
    try:
        (tmp_path / "bin.new").write_bytes(b"second")
        os.rename(tmp_path / "bin.new", tmp_path / "bin")
        with open(pin.path, "rb") as f:
            assert f.read() == b"first"
        assert pin.key == (pin.stat.st_dev, pin.stat.st_ino) != (os.stat(tmp_path / "bin").st_dev,
                                                                   os.stat(tmp_path / "bin").st_ino)
    finally:
        pin.close()
    assert pin.fd == -1


def test_without_openat2_the_path_is_opened_as_it_is(tmp_path, monkeypatch, caplog):
    """Linux < 5.6: the caller's check that it is the file found is what remains (placement.py)."""
    def missing(root, path):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setattr(pinned, "open_in_root", missing)
    monkeypatch.setattr(pinned, "_warned", False)
    (tmp_path / "bin").write_bytes(b"x")
    pin = pinned.Pin(f"/proc/{os.getpid()}/root{tmp_path}/bin")
    pin.close()
    assert "openat2 is missing" in caplog.text
