"""Whether C kernels built on this machine run AMX tiles, and the flag that says they did."""
from __future__ import annotations

import ctypes
import subprocess

from scalefold.runtime.cache import build, compiler


def amx_expected() -> bool:
    """Whether kernels built here run AMX tiles: the CPU has AMX-INT8 and the compiler
    targets it."""
    try:
        host = "amx_int8" in open("/proc/cpuinfo").read()
    except OSError:
        return False
    return host and "__AMX_INT8__" in subprocess.run(
        [compiler(), "-march=native", "-dM", "-E", "-"], input="", capture_output=True, text=True).stdout


def amx_used(source: str):
    """The ``sf_amx_used`` flag of the built kernel ``source``, reset to 0 (the shared object
    the executor loaded: dlopen hands back its handle; layers of one shape share it)."""
    used = ctypes.c_int.in_dll(ctypes.CDLL(str(build(source))), "sf_amx_used")
    used.value = 0
    return used
