"""Tape files (issue 16, item 14): ``tape.save`` is atomic, a member that is not ``.npy`` data
is a TapeFormatError, and declared sizes are checked before anything is decompressed."""
import io
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.io


def _tape(scale=1.0):
    tape = tg.Tape()
    w = tape.param(scale * np.arange(6.0).reshape(2, 3), name="w")
    x = tape.input("x", shape=(3,))
    (w @ x).sum().name = "out"
    return tape


def _members(tape, tmp_path):
    """The arrays of a saved tape, as {key: ndarray}."""
    p = tmp_path / "ref.npz"
    tape.save(p)
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_killed_mid_save_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.tape.npz"
    _tape(1.0).save(path)
    child = textwrap.dedent(f"""
        import io, sys, time
        import numpy as np
        import tapegrad as tg
        real = np.savez

        def slow_savez(f, **arrays):   # half of the real bytes, then hang until killed
            buf = io.BytesIO()
            real(buf, **arrays)
            data = buf.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            print("WRITING", flush=True)
            time.sleep(120)
            f.write(data[len(data) // 2:])

        np.savez = slow_savez
        tape = tg.Tape()
        tape.param(np.full((2, 3), 7.0), name="w")
        tape.save({str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t = tg.Tape.load(path)                       # the previous tape, whole
    np.testing.assert_array_equal(t["w"].value, np.arange(6.0).reshape(2, 3))


def test_failed_save_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    _tape(1.0).save(path)

    def broken(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(tapegrad.io.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        _tape(2.0).save(path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
    np.testing.assert_array_equal(tg.Tape.load(path)["w"].value, np.arange(6.0).reshape(2, 3))
    _tape(2.0).save(path)                        # and a good save replaces it
    np.testing.assert_array_equal(tg.Tape.load(path)["w"].value, 2 * np.arange(6.0).reshape(2, 3))
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "m.npz"
    _tape().save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask     # a new file: as open() would
    os.chmod(path, 0o600)
    _tape(3.0).save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600


def _zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_members_that_are_not_npy_data(tmp_path):
    arrays = _members(_tape(), tmp_path)
    plain = tmp_path / "plain.npz"   # right names without ".npy": NumPy hands back raw bytes
    _zip(plain, {k: _npy(a) for k, a in arrays.items()})
    with pytest.raises(tg.TapeFormatError, match="not .npy arrays"):
        tg.Tape.load(plain)
    garbage = tmp_path / "garbage.npz"
    _zip(garbage, {**{f"{k}.npy": _npy(a) for k, a in arrays.items()},
                   "instr.npy": b"this is not an array"})
    with pytest.raises(tg.TapeFormatError, match="'instr' is not .npy array data"):
        tg.Tape.load(garbage)
    objects = tmp_path / "objects.npz"
    _zip(objects, {**{f"{k}.npy": _npy(a) for k, a in arrays.items()},
                   "names.npy": _npy(np.array(["a", None], dtype=object))})
    with pytest.raises(tg.TapeFormatError, match="'names' must be a 1-d unicode array"):
        tg.Tape.load(objects)


def _bomb(path, arrays, n_floats):
    """A deflated archive whose 'val' member declares n_floats zeros (compressing ~1000x)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, a in arrays.items():
            if k != "val":
                zf.writestr(f"{k}.npy", _npy(a))
        with zf.open("val.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (n_floats,)})
            chunk = bytes(2 ** 20)
            for _ in range(n_floats * 8 // len(chunk)):
                f.write(chunk)


def test_declared_sizes_are_checked_before_decompressing(tmp_path):
    arrays = _members(_tape(), tmp_path)
    path = tmp_path / "bomb.npz"
    _bomb(path, arrays, 8 * 2 ** 20)             # 64 MiB of zeros in a ~70 kB file
    assert os.path.getsize(path) < 2 ** 20
    tracemalloc.start()
    try:
        with pytest.raises(tg.TapeFormatError, match="declare .* bytes uncompressed"):
            tg.Tape.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MiB while refusing the file"


def test_member_size_must_match_its_header(tmp_path):
    """A small stored member whose .npy header claims 10^8 elements: refused from the header,
    before NumPy would allocate 800 MB for it."""
    arrays = _members(_tape(), tmp_path)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 8,)})
    path = tmp_path / "liar.npz"
    _zip(path, {**{f"{k}.npy": _npy(a) for k, a in arrays.items()},
                "val.npy": head.getvalue() + bytes(64)})
    tracemalloc.start()
    try:
        with pytest.raises(tg.TapeFormatError, match="'val' declares .* header describes"):
            tg.Tape.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2 ** 20


def test_a_compressed_honest_file_still_loads(tmp_path):
    arrays = _members(_tape(), tmp_path)
    path = tmp_path / "small.npz"
    _zip(path, {f"{k}.npy": _npy(a) for k, a in arrays.items()}, zipfile.ZIP_DEFLATED)
    t = tg.Tape.load(path)
    np.testing.assert_array_equal(t["w"].value, np.arange(6.0).reshape(2, 3))
