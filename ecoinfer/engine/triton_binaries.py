"""Compiled Triton kernels carried inside an engine file, so a fresh machine does not compile.

Triton compiles a kernel (and a small C launcher for its signature) the first time a process
launches it and keeps the results in its on-disk cache (~/.triton/cache, TRITON_CACHE_DIR),
keyed by a hash of the source, the compiler version, the GPU target and the options. On a
machine whose cache is empty, an engine's first inference would spend seconds compiling.

collect() runs an engine once per profile while recording which cache entries Triton reads:
every kernel the engine launches is looked up afresh (the in-memory kernel caches are set
aside for the run), so the record holds exactly the kernels of the chosen tactics, nothing
the tuner merely tried. Only the files needed to launch are kept (the cubin and its metadata
JSON), not the intermediate IRs. Triton's launchers are not carried: they are host shared
libraries, and loading an engine file must never run host code from it (a file with a valid
checksum can still be a forger's). A fresh machine compiles them, a fraction of a second per
kernel signature, once.

install() writes them back through Triton's own cache manager before the engine's tactics are
instantiated. The entries are content-addressed (same hash: same kernel, same compiler, same
GPU), and the engine fingerprint already guarantees the same GPU model and Triton version, so
an entry that exists is left alone and a new one can never shadow a different kernel. Every
entry's key and file names are checked first: a name that could leave the cache folder, or a
file of another kind (a launcher library from an engine built before they were dropped) is
not written.
"""

from __future__ import annotations

import base64
import gc
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ecoinfer.engine")

# the files a launch needs from the engine file: kernel binaries and their metadata (GPU code
# and data; never a host library)
_KEEP_SUFFIXES = (".json", ".cubin", ".hsaco")
# a cache key (a hash) and a file name of one cache entry: no path separators, no "..", so
# nothing written can land outside Triton's cache folder
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")

Binaries = dict[str, dict[str, str]]  # cache key -> file name -> base64 content


def _keep(filename: str) -> bool:
    return filename.endswith(_KEEP_SUFFIXES)


def collect(run_once: Callable[[], None]) -> Binaries:
    """The Triton cache entries that `run_once()` (an inference per profile) launches."""
    import triton  # noqa: PLC0415
    from triton import knobs  # noqa: PLC0415
    from triton.runtime.cache import FileCacheManager  # noqa: PLC0415
    from triton.runtime.jit import JITFunction  # noqa: PLC0415

    record: dict[str, dict[str, str]] = defaultdict(dict)  # key -> filename -> path

    class Recorder(FileCacheManager):
        def get_file(self, filename: str) -> str | None:
            path = super().get_file(filename)
            if path is not None and _keep(filename):
                record[self.key][filename] = path
            return path

        def get_group(self, filename: str) -> dict[str, str] | None:
            group = super().get_group(filename)
            for child, path in (group or {}).items():
                if _keep(child):
                    record[self.key][child] = path
            return group

        def put(self, data: Any, filename: str, binary: bool = True) -> str:
            path = super().put(data, filename, binary)
            if _keep(filename) and not filename.startswith("__grp__"):
                record[self.key][filename] = path  # compiled during the run: keep it too
            return path

    # type(), not isinstance(): some lazy module proxies warn when their __class__ is read
    jits = [o for o in gc.get_objects() if issubclass(type(o), JITFunction)]
    saved = {id(j): j.device_caches for j in jits}
    previous = knobs.cache.__dict__.get("manager_class")
    try:
        for j in jits:  # every launch looks its kernel up again, through the recorder
            j.device_caches = defaultdict(j.create_binder)
        knobs.cache.manager_class = Recorder
        run_once()
    finally:
        for j in jits:
            j.device_caches = saved[id(j)]
        if previous is None:
            knobs.cache.__dict__.pop("manager_class", None)
        else:
            knobs.cache.manager_class = previous
    out: Binaries = {}
    for key, files in record.items():
        entry = {}
        for name, path in files.items():
            with open(path, "rb") as f:
                entry[name] = base64.b64encode(f.read()).decode("ascii")
        out[key] = entry
    log.debug("collected %d Triton cache entries (triton %s)", len(out), triton.__version__)
    return out


def install(binaries: Binaries) -> int:
    """Write carried kernels into Triton's cache (entries already there are kept); returns
    how many entries were written."""
    if not binaries:
        return 0
    from triton.runtime.cache import FileCacheManager  # noqa: PLC0415

    for key, files in binaries.items():
        for name in [key, *files]:
            if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
                raise ValueError(
                    f"the engine file's compiled-kernel entry {name!r} is not a plain file name"
                )
    written = 0
    for key, all_files in binaries.items():
        files = {n: d for n, d in all_files.items() if _keep(n)}
        if not files:
            continue
        mgr = FileCacheManager(key)
        kernels = [n for n in files if n.endswith(".json")]
        if all(mgr.has_file(n) for n in files) and all(
            mgr.has_file(f"__grp__{n}") for n in kernels
        ):
            continue
        paths = {
            name: mgr.put(base64.b64decode(data), name, binary=True) for name, data in files.items()
        }
        for meta in kernels:  # a kernel entry: its group file lists the files of the kernel
            mgr.put_group(meta, paths)
        written += 1
    return written


def size_bytes(binaries: Binaries) -> int:
    return sum(len(d) * 3 // 4 for files in binaries.values() for d in files.values())
