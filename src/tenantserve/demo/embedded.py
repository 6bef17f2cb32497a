"""The embedded default: a tiny Llama trained by ``scripts/build_demo_model.py`` and its LoRA adapters.

These are the lab's prompts and the behaviour the embedded model was trained to show (see models/embedded/README.md).
"""

from __future__ import annotations

FRUIT_PROMPT = "List 3 fruits:"
SQL_PROMPT = "Table users(id,name). Query all names:"

BASE_ON_FRUIT = "apple, banana, orange"
SQL_ON_SQL = "SELECT name FROM users;"

BASE_MODEL = "demo-base"
SQL_ADAPTER = "sql"
