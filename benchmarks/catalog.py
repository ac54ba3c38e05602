"""What the framework comparison and the parity check share: the frameworks, the modules each
needs (and how to install them), where the data is, and a description of the machine a figure
was taken on (CPU model, family and the vector flags that decide which kernels run, the load).

Kept apart from ``frameworks.py`` and ``parity.py`` so that each imports it and neither imports
the other.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

from common import cpu_name

FRAMEWORKS = ("mnistlab", "mnistlab-auto", "pytorch", "tf-v1", "keras", "jax")
"""``mnistlab`` runs each preset as it is (``train.route=exact``, its default); ``mnistlab-auto``
the same with ``train.route=auto`` (the fused dense step's fastest route for the CPU)."""
NEEDS = {
    "mnistlab": ("mnistlab", "torch"),
    "mnistlab-auto": ("mnistlab", "torch"),
    "pytorch": ("torch",),
    "tf-v1": ("tensorflow",),
    "keras": ("tensorflow", "keras"),
    "jax": ("jax", "optax"),
}
INSTALL = {
    "tensorflow": "pip install 'mnistlab[compare]' (or: pip install tensorflow-cpu)",
    "keras": "pip install 'mnistlab[compare]' (or: pip install tensorflow-cpu)",
    "jax": "pip install 'mnistlab[compare]' (or: pip install 'jax[cpu]' optax)",
    "optax": "pip install 'mnistlab[compare]' (or: pip install optax)",
    "torch": "pip install torch",
    "mnistlab": "pip install -e . (from the checkout)",
}
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
"""The /proc/cpuinfo flags that decide which GEMM kernels a library picks on this CPU."""


def missing(framework: str) -> str | None:
    """Why ``framework`` cannot run here (the module missing and how to install it), or None."""
    for module in NEEDS[framework]:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: {INSTALL[module]}"
    return None


def data_folder(dataset: str, data_dir: str | None) -> tuple[str, int]:
    """The folder of the four IDX files and the validation size mnistlab uses for ``dataset``."""
    from mnistlab.data.registry import get_dataset

    spec = get_dataset(dataset)
    if data_dir:
        return data_dir, spec.validation_size
    if dataset == "mnist-sample":
        import mnistlab.data

        return str(Path(mnistlab.data.__file__).parent / "sample"), spec.validation_size
    raise SystemExit(f"--data-dir is needed for {dataset}")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu() -> dict[str, object]:
    """The CPU as a record: model name, vendor, family/model/stepping, the vector flags it has,
    the cores this process may use."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model_name": cpu_name(),
        "vendor": info.get("vendor_id", platform.machine()),
        "family": info.get("cpu family", "?"),
        "model": info.get("model", "?"),
        "stepping": info.get("stepping", "?"),
        "vector_flags": [f for f in VECTOR_FLAGS if f in flags],
        "cores": cores,
    }


def cpu_line(c: dict[str, object] | None = None) -> str:
    """One line naming the CPU: ``AMD EPYC (AuthenticAMD family 25 model 17), 2 cores, ...``."""
    c = c or cpu()
    flags = ", ".join(c["vector_flags"]) or "no AVX"  # type: ignore[arg-type]
    return (
        f"{c['model_name']} ({c['vendor']} family {c['family']} model {c['model']}), "
        f"{c['cores']} cores, {flags}"
    )


def load_average() -> tuple[float, float, float] | None:
    """The 1-, 5- and 15-minute load averages (None where the system has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine() -> str:
    """The machine without torch's settings: every framework here picks its own threads."""
    return f"{cpu_line()}, Python {platform.python_version()}, {platform.platform()}"
