"""Atomic writes of files and folders (modeling_mscl._files)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from modeling_mscl._files import (
    atomic_folder,
    atomic_path,
    atomic_write,
    replace_folder,
    write_json_atomic,
)


class Boom(RuntimeError):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_failure_mid_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(Boom), atomic_write(path, "w") as handle:
        handle.write("half of the new cont")
        handle.flush()  # the bytes are on disk, under the temporary name
        assert path.read_text() == "old"
        raise Boom
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["report.json"]


def test_failure_before_the_first_write_leaves_no_file(tmp_path):
    path = tmp_path / "sub" / "new.npy"
    with pytest.raises(Boom), atomic_write(path, "wb"):
        raise Boom
    assert _names(tmp_path / "sub") == []


def test_a_finished_write_replaces_the_file_with_normal_permissions(tmp_path):
    path = tmp_path / "deep" / "er" / "a.npy"  # parents are created
    for value in (1.0, 2.0):
        with atomic_write(path, "wb") as handle:
            np.save(handle, np.full(3, value))
        np.testing.assert_array_equal(np.load(path), np.full(3, value))
    assert _names(path.parent) == ["a.npy"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    path = tmp_path / "frames.f32"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".frames.f32.")
        np.arange(4, dtype=np.float32).tofile(tmp)
        assert not path.exists()
    np.testing.assert_array_equal(np.fromfile(path, np.float32), np.arange(4))
    with pytest.raises(Boom), atomic_path(path) as tmp:
        np.zeros(2, np.float32).tofile(tmp)
        raise Boom
    np.testing.assert_array_equal(np.fromfile(path, np.float32), np.arange(4))
    assert _names(tmp_path) == ["frames.f32"]


def test_write_json_atomic_passes_the_format_and_refuses_a_bad_value_before_writing(tmp_path):
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]}, indent=1, sort_keys=True)
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=1, sort_keys=True)
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert _names(tmp_path) == ["meta.json"]


def test_atomic_write_refuses_modes_that_read_or_append(tmp_path):
    for mode in ("a", "r+", "w+"):
        with pytest.raises(ValueError, match="mode"):
            atomic_write(tmp_path / "x", mode).__enter__()


def test_atomic_folder_replaces_the_old_folder_only_when_complete(tmp_path):
    final = tmp_path / "encoder"
    with atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
        assert not final.exists()
    assert (final / "weights").read_text() == "v1"
    with pytest.raises(Boom), atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v2, half")
        raise Boom
    assert _names(final) == ["weights"] and (final / "weights").read_text() == "v1"
    with atomic_folder(final) as tmp:
        (tmp / "config").write_text("v3")
    assert _names(final) == ["config"]  # the old content is gone, not merged
    assert _names(tmp_path) == ["encoder"]


def test_replace_folder_over_an_existing_folder(tmp_path):
    final, tmp = tmp_path / "checkpoint-1", tmp_path / ".tmp-checkpoint-1"
    final.mkdir()
    (final / "old").write_text("old")
    tmp.mkdir()
    (tmp / "new").write_text("new")
    replace_folder(tmp, final)
    assert _names(final) == ["new"] and _names(tmp_path) == ["checkpoint-1"]
