"""Compiled Triton kernels carried in engine files: recorded through Triton's cache manager,
written back in the layout Triton reads (the GPU half runs in bench/gpu_probe.sh cold)."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("triton")

from triton.runtime.cache import FileCacheManager, get_cache_manager  # noqa: E402

from ecoinfer.engine.triton_binaries import collect, install, size_bytes  # noqa: E402


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _put_kernel(key: str, name: str, cubin: bytes) -> None:
    """What Triton's compile() leaves in its cache for one kernel."""
    mgr = get_cache_manager(key)
    group = {
        f"{name}.cubin": mgr.put(cubin, f"{name}.cubin"),
        f"{name}.ptx": mgr.put("ptx text", f"{name}.ptx", binary=False),
        f"{name}.json": mgr.put(json.dumps({"name": name}), f"{name}.json", binary=False),
    }
    mgr.put_group(f"{name}.json", group)


def test_collect_records_what_the_run_reads_and_install_restores_it(
    cache_dir, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    _put_kernel("aa01", "gemm", b"\x7fELF-gemm")
    _put_kernel("bb02", "unused", b"\x7fELF-unused")
    get_cache_manager("cc03").put(b"launcher-so", "__triton_launcher.cpython-312.so")

    def run_once() -> None:  # looks up one kernel and one launcher, as a launch does
        assert get_cache_manager("aa01").get_group("gemm.json")
        assert get_cache_manager("cc03").get_file("__triton_launcher.cpython-312.so")

    got = collect(run_once)
    # the unused kernel is not carried, nor is the launcher (a host library)
    assert set(got) == {get_cache_manager("aa01").key}
    k1 = got[get_cache_manager("aa01").key]
    assert set(k1) == {"gemm.cubin", "gemm.json"}  # no intermediate IR
    assert base64.b64decode(k1["gemm.cubin"]) == b"\x7fELF-gemm"
    assert size_bytes(got) >= len(b"\x7fELF-gemm")
    # the recorder is gone after the run
    assert type(get_cache_manager("aa01")) is FileCacheManager

    # a fresh machine: an empty cache gets the entries, in the layout Triton reads back
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "fresh"))
    assert get_cache_manager("aa01").get_group("gemm.json") is None
    assert install(got) == 1
    group = get_cache_manager("aa01").get_group("gemm.json")
    assert group is not None and set(group) == {"gemm.cubin", "gemm.json"}
    with open(group["gemm.cubin"], "rb") as f:
        assert f.read() == b"\x7fELF-gemm"
    assert install(got) == 0  # already there: left alone


def test_install_never_writes_a_host_library_or_outside_the_cache(cache_dir, tmp_path) -> None:  # noqa: ANN001
    """An engine file is not trusted code: a launcher library it carries (engines built before
    launchers were dropped) is not installed, and a key or file name that could leave the
    cache folder is refused before anything is written."""
    so = {"cc03": {"__triton_launcher.cpython-312.so": base64.b64encode(b"evil").decode()}}
    assert install(so) == 0
    assert get_cache_manager("cc03").get_file("__triton_launcher.cpython-312.so") is None
    data = base64.b64encode(b"x").decode()
    for bad in ({"../../escape": {"k.json": data}}, {"aa01": {"../k.cubin": data}},
                {"aa01": {"sub/k.cubin": data}}, {"..": {"k.json": data}}):  # fmt: skip
        with pytest.raises(ValueError, match="not a plain file name"):
            install(bad)
    assert not (tmp_path / "escape").exists() and not any(cache_dir.rglob("k.*"))
