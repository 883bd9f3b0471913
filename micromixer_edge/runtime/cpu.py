"""What this CPU is, from /proc/cpuinfo (Linux; elsewhere: unknown, and nothing is assumed)."""
from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in info.items()}


def cpu_flags() -> set[str]:
    info = cpuinfo()
    return set(info.get("flags", info.get("Features", "")).split())


KERNEL_FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "asimddp")  # what onnxruntime's int8 kernels use


def kernel_flags() -> str:
    """The KERNEL_FLAGS this CPU has (lscpu's names): what each benchmark's figures report."""
    flags = cpu_flags()
    return " ".join(f for f in KERNEL_FLAGS if f in flags)


def cpu_name() -> str:
    info = cpuinfo()
    return next((info[k] for k in ("Model", "model name", "Hardware") if k in info),
                platform.processor() or platform.machine())


def cpuid_features() -> dict[str, bool]:
    """What the CPU itself reports (CPUID), as numpy reads it at import: {} where numpy does not
    say. Not /proc/cpuinfo: an emulator (qemu-user) passes the host's through, while CPUID is the
    emulated CPU's, as onnxruntime's own dispatch reads it."""
    import numpy as np
    core = getattr(np, "_core", None) or getattr(np, "core", None)  # (numpy 2 / numpy 1)
    return dict(getattr(getattr(core, "_multiarray_umath", None), "__cpu_features__", {}) or {})


def x86_u8s8_saturates() -> bool:
    """On x86 without an int8 dot product (AVX2 or AVX-512 without VNNI, no AMX), MLAS's U8S8
    kernel adds pairs of uint8 x int8 products in a saturating int16 (vpmaddubsw): with activation
    codes near 127 and weights up to 127, 2-8 % of the int8 model's MatMul outputs clip. Where this
    holds, onnxruntime's `session.x64quantprecision` makes it use exact U8U8 kernels instead.
    Decided from CPUID (numpy's reading): VNNI is AVX512VNNI there. numpy does not list AVX-VNNI
    (the VEX form) or AMX: such CPUs without AVX512VNNI get the exact kernels too (slower, the
    same logits), as does any x86 whose features numpy cannot tell."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    return not cpuid_features().get("AVX512VNNI", False)
