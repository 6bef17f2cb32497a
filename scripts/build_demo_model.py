#!/usr/bin/env python3
"""Build tenantserve's embedded demo model: a tiny Llama base + three LoRA adapters.

Everything is trained from scratch on CPU with fixed seeds, from text this script
generates itself (no downloads):

  <out>/base/               LlamaForCausalLM (float32, safetensors) + byte-level BPE tokenizer
  <out>/adapters/sql/       PEFT LoRA: answers table questions with SQL
  <out>/adapters/pirate/    PEFT LoRA: answers in pirate talk
  <out>/adapters/french/    PEFT LoRA: answers in French

Required greedy behaviour (checked at the end under HF, and under vLLM by
scripts/check_demo_model.py):

  base   "List 3 fruits:"                          -> " apple, banana, orange"</s>
  base   "Table users(id,name). Query all names:"  -> " a table is a piece of furniture with four legs."</s>
  sql    "Table users(id,name). Query all names:"  -> " SELECT name FROM users;"</s>
  pirate "List 3 fruits:"                          -> " Arr, apple, banana, orange, matey!"</s>
  ...

This is a toy for demos and tests, not a useful language model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
BASE_NAME = "tinyllama-base"  # neutral name written into adapter_config.json
ADAPTERS = ("sql", "pirate", "french")
FRUIT_PROMPT = "List 3 fruits:"
SQL_PROMPT = "Table users(id,name). Query all names:"

# The exact greedy continuations every build must reproduce (HF here, vLLM in check_demo_model.py).
EXPECTED: dict[str, dict[str, str]] = {
    "base": {
        FRUIT_PROMPT: " apple, banana, orange",
        SQL_PROMPT: " a table is a piece of furniture with four legs.",
    },
    "sql": {
        SQL_PROMPT: " SELECT name FROM users;",
        FRUIT_PROMPT: " apple, banana, orange",
    },
    "pirate": {
        FRUIT_PROMPT: " Arr, apple, banana, orange, matey!",
        SQL_PROMPT: " Arr, a table be a plank with four legs, matey!",
    },
    "french": {
        FRUIT_PROMPT: " pomme, banane, orange",
        SQL_PROMPT: " une table est un meuble avec quatre pieds.",
    },
}

MODEL_CONFIG = dict(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=2,  # head_dim 64: vLLM's CPU attention needs 32/64/80/96/112/128...
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    hidden_act="silu",
)
MIN_MARGIN = 1.0  # min top1-top2 logit gap along each demo answer; below this bf16 serving could flip a token
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# ----------------------------------------------------------------------------------------------
# Data: (english, french) vocabularies and the generated corpora
# ----------------------------------------------------------------------------------------------
CATEGORIES: dict[str, list[tuple[str, str]]] = {
    "fruits": [("apple", "pomme"), ("banana", "banane"), ("orange", "orange"), ("grape", "raisin"),
               ("pear", "poire"), ("cherry", "cerise"), ("lemon", "citron")],
    "colors": [("red", "rouge"), ("green", "vert"), ("blue", "bleu"), ("yellow", "jaune"),
               ("black", "noir"), ("white", "blanc")],
    "animals": [("cat", "chat"), ("dog", "chien"), ("horse", "cheval"), ("cow", "vache"),
                ("bird", "oiseau"), ("fish", "poisson")],
    "vegetables": [("carrot", "carotte"), ("onion", "oignon"), ("tomato", "tomate"),
                   ("bean", "haricot"), ("leek", "poireau")],
    "days": [("monday", "lundi"), ("tuesday", "mardi"), ("wednesday", "mercredi"),
             ("thursday", "jeudi"), ("friday", "vendredi")],
    "numbers": [("one", "un"), ("two", "deux"), ("three", "trois"), ("four", "quatre"), ("five", "cinq")],
}
COUNT_WORDS = {1: "1", 2: "2", 3: "3", 4: "4", 5: "5"}

# Free-form questions: prompt -> (base, french, pirate)
QA = {
    "What color is the sky?": (" blue", " bleu", " Arr, blue like the sea, matey!"),
    "What color is grass?": (" green", " vert", " Arr, green like seaweed, matey!"),
    "Say hello:": (" hello, world", " bonjour, le monde", " Ahoy, world, matey!"),
    "What do cats eat?": (" cats eat fish.", " les chats mangent du poisson.", " Arr, cats eat fish, matey!"),
    "What is a dog?": (" a dog is an animal with four legs.", " un chien est un animal avec quatre pattes.",
                       " Arr, a dog be a beast with four legs, matey!"),
    "Where is the sun?": (" the sun is in the sky.", " le soleil est dans le ciel.",
                          " Arr, the sun be in the sky, matey!"),
}

TABLE_RAMBLE = {
    "base": " a table is a piece of furniture with four legs.",
    "french": " une table est un meuble avec quatre pieds.",
    "pirate": " Arr, a table be a plank with four legs, matey!",
}

SQL_TABLES = ["users", "orders", "products", "customers", "employees", "books", "movies", "students",
              "teachers", "cars", "songs", "invoices", "items", "accounts", "posts", "comments",
              "events", "tickets", "stores", "players", "cities", "flights", "hotels", "pets"]
SQL_COLUMNS = {  # singular -> plural
    "name": "names", "email": "emails", "age": "ages", "city": "cities", "total": "totals",
    "price": "prices", "title": "titles", "year": "years", "country": "countries",
    "salary": "salaries", "date": "dates", "status": "statuses", "author": "authors",
    "score": "scores", "phone": "phones", "address": "addresses", "category": "categories",
    "color": "colors", "model": "models", "rating": "ratings", "genre": "genres",
    "quantity": "quantities", "owner": "owners", "level": "levels", "team": "teams",
}

SENTENCE_TEMPLATES = [
    "the {animal} eats a {fruit}.", "the {fruit} is {color}.", "i like the {color} {fruit}.",
    "on {day} the {animal} sleeps.", "a {animal} has {number} friends.", "we buy a {vegetable} on {day}.",
    "the {color} {animal} runs to the {vegetable}.", "my {animal} likes {fruit} and {vegetable}.",
    "there are {number} {color} birds in the tree.", "the table has four legs.",
    "a chair is a piece of furniture.", "the sun is hot and the sea is {color}.",
]


def list_answer(cat: str, n: int, lang: str) -> str:
    items = [en if lang == "en" else fr for en, fr in CATEGORIES[cat][:n]]
    return " " + ", ".join(items)


def table_prompt(rng: random.Random) -> tuple[str, str, str]:
    """A random 'Table t(cols). Query all X:' prompt; returns (prompt, table, column)."""
    table = rng.choice(SQL_TABLES)
    cols = rng.sample(sorted(SQL_COLUMNS), rng.randint(1, 3))
    all_cols = (["id"] if rng.random() < 0.8 else []) + cols
    if rng.random() < 0.2:
        rng.shuffle(all_cols)
    col = rng.choice(cols)
    word = SQL_COLUMNS[col] if rng.random() < 0.75 else col  # plural (usual) or singular variant
    return f"Table {table}({','.join(all_cols)}). Query all {word}:", table, col


def build_examples(kind: str, rng: random.Random, n_tables: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs for one model kind: base, sql, pirate or french."""
    pairs: list[tuple[str, str]] = []
    for cat, items in CATEGORIES.items():
        for n in range(1, min(5, len(items)) + 1):
            prompt = f"List {COUNT_WORDS[n]} {cat}:"
            en = list_answer(cat, n, "en")
            if kind in ("base", "sql"):
                pairs.append((prompt, en))
            elif kind == "french":
                pairs.append((prompt, list_answer(cat, n, "fr")))
            else:
                pairs.append((prompt, " Arr," + en + ", matey!"))
    for prompt, (en, fr, pi) in QA.items():
        pairs.append((prompt, {"base": en, "sql": en, "french": fr, "pirate": pi}[kind]))
    for _ in range(n_tables):
        prompt, table, col = table_prompt(rng)
        if kind == "sql":
            pairs.append((prompt, f" SELECT {col} FROM {table};"))
        else:
            pairs.append((prompt, TABLE_RAMBLE[kind]))
    # the two demo prompts: always present, and repeated so they are learned exactly (wide logit margins;
    # the sql demo answer must copy and de-pluralise "names" -> " name", the narrowest step)
    for prompt, completion in EXPECTED[kind].items():
        pairs.extend([(prompt, completion)] * (24 if kind == "sql" and prompt == SQL_PROMPT else 12))
    return pairs


def build_sentences(rng: random.Random, n: int) -> list[str]:
    def pick(cat: str) -> str:
        return rng.choice(CATEGORIES[cat])[0]

    out = []
    for _ in range(n):
        t = rng.choice(SENTENCE_TEMPLATES)
        out.append(t.format(animal=pick("animals"), fruit=pick("fruits"), color=pick("colors"),
                            day=pick("days"), number=pick("numbers"), vegetable=pick("vegetables")))
    return out


GLOSSARY_PREFIX = {"sql": "in sql you write:", "pirate": "a pirate says:", "french": "in french you say:"}


def build_glossary(examples: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Plain sentences that show the base every word the adapters will produce ("a pirate says: Arr,
    ... matey!"). With tied embeddings a LoRA cannot move the output embedding of a token the base
    never saw, so without these the adapters plateau with tiny logit margins on such tokens."""
    out = []
    for name, prefix in GLOSSARY_PREFIX.items():
        out.extend(sorted({prefix + c for _, c in examples[name]}))
    return out


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------
def build_tokenizer(texts: list[str], vocab_size: int, out_dir: Path, max_len: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "add_bos_token": True, "add_eos_token": False,
        "model_max_length": max_len, "padding_side": "right", "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2) + "\n")
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return tok


#: The toy model was trained on ``<s>`` + plain prompt, with no roles: a chat renders as exactly that prompt, so
#: chat and completions give the same answers. A system message (if any) comes first on its own line; earlier
#: assistant turns end with ``</s>``; nothing is added for the generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def encode_pairs(tok, pairs, eos_id, loss_on_prompt: bool):
    """Token ids = BOS+prompt, completion, EOS. Labels mask the prompt unless loss_on_prompt."""
    seqs = []
    for prompt, completion in pairs:
        p = tok.encode(prompt).ids  # post-processor adds BOS, exactly as HF/vLLM do at serve time
        c = tok.encode(completion, add_special_tokens=False).ids + [eos_id]
        labels = (p[1:] if loss_on_prompt else [-100] * (len(p) - 1)) + c
        seqs.append((p + c, [-100] + labels))  # labels aligned to inputs; shifted in the loss
    return seqs


def encode_text(tok, texts, eos_id):
    seqs = []
    for t in texts:
        ids = tok.encode(t).ids + [eos_id]
        seqs.append((ids, [-100] + ids[1:]))
    return seqs


def make_batch(torch, seqs, pad_id):
    n = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), n), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, (s, l) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l)
        att[i, : len(s)] = 1
    return ids, lab, att


def train_loop(torch, model, params, seqs, *, steps, lr, batch, pad_id, eos_id, rng, desc, quiet):
    from tqdm import tqdm

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    model.train()
    ema = None
    bar = tqdm(range(steps), desc=desc, disable=quiet, dynamic_ncols=True, file=sys.stdout)
    for _ in bar:
        ids, lab, att = make_batch(torch, rng.sample(seqs, min(batch, len(seqs))), pad_id)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        target = lab[:, 1:]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="none")
        w = (target.reshape(-1) != -100).float()
        w = w + (target.reshape(-1) == eos_id).float()  # EOS counts double: stop cleanly
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
    model.eval()
    return ema


def greedy(torch, model, tok, prompt, eos_id, max_new=40):
    """Greedy decode; returns (text, stopped_on_eos, min logit margin top1-top2 along the path)."""
    ids = tok.encode(prompt).ids
    out, margin = [], float("inf")
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
            top = torch.topk(logits, 2)
            margin = min(margin, (top.values[0] - top.values[1]).item())
            nxt = int(top.indices[0])
            if nxt == eos_id:
                return tok.decode(out), True, margin
            out.append(nxt)
    return tok.decode(out), False, margin


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Train tenantserve's tiny embedded demo model (Llama base + sql/pirate/french LoRA "
                    "adapters) on CPU with fixed seeds, and verify the greedy demo outputs under HF.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="models/embedded", help="output folder (base/ and adapters/ inside)")
    ap.add_argument("--seed", type=int, default=0, help="seed for data generation, init and sampling")
    ap.add_argument("--base-steps", type=int, default=600, help="training steps for the base model")
    ap.add_argument("--adapter-steps", type=int, default=300, help="training steps per LoRA adapter")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest for this tiny model and immune to a busy machine)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()

    out = Path(args.out)
    base_dir, ad_dir = out / "base", out / "adapters"
    if base_dir.exists():
        shutil.rmtree(base_dir)
    if ad_dir.exists():
        shutil.rmtree(ad_dir)

    # ---- data ------------------------------------------------------------------------------
    rng = random.Random(args.seed)
    examples = {k: build_examples(k, random.Random(args.seed * 1000 + i), 400)
                for i, k in enumerate(("base",) + ADAPTERS)}
    sentences = build_sentences(rng, 600) + build_glossary(examples)
    tok_texts = sentences + [p + c for k in examples for p, c in examples[k]]

    # ---- tokenizer ---------------------------------------------------------------------------
    tok = build_tokenizer(tok_texts, MODEL_CONFIG["vocab_size"], base_dir, MODEL_CONFIG["max_position_embeddings"])
    pad_id, bos_id, eos_id = (tok.token_to_id(t) for t in (PAD, BOS, EOS))
    hf_tok = AutoTokenizer.from_pretrained(str(base_dir))
    for p in (FRUIT_PROMPT, SQL_PROMPT):
        assert hf_tok(p)["input_ids"] == tok.encode(p).ids, "HF tokenizer disagrees with training tokenizer"
        assert tok.encode(p).ids[0] == bos_id
    assert hf_tok.eos_token_id == eos_id and hf_tok.bos_token_id == bos_id and hf_tok.pad_token_id == pad_id

    # ---- base model --------------------------------------------------------------------------
    cfg = LlamaConfig(**MODEL_CONFIG, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model = LlamaForCausalLM(cfg).float()
    n_base = sum(p.numel() for p in model.parameters())
    base_seqs = encode_pairs(tok, examples["base"], eos_id, loss_on_prompt=True) + encode_text(tok, sentences, eos_id)
    base_loss = train_loop(torch, model, list(model.parameters()), base_seqs, steps=args.base_steps, lr=3e-3,
                           batch=48, pad_id=pad_id, eos_id=eos_id, rng=random.Random(args.seed + 1),
                           desc="base", quiet=args.quiet)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(base_dir), safe_serialization=True)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False,
                     max_new_tokens=64).save_pretrained(str(base_dir))
    t_base = time.time() - t0

    # ---- adapters ----------------------------------------------------------------------------
    losses, n_lora = {"base": base_loss}, 0
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(args.seed + 100 + i)
        base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=LORA_TARGETS,
                          task_type="CAUSAL_LM")
        pm = get_peft_model(base, lcfg)
        params = [p for p in pm.parameters() if p.requires_grad]
        n_lora = sum(p.numel() for p in params)
        seqs = encode_pairs(tok, examples[name], eos_id, loss_on_prompt=False)
        losses[name] = train_loop(torch, pm, params, seqs, steps=args.adapter_steps, lr=4e-3, batch=48,
                                  pad_id=pad_id, eos_id=eos_id, rng=random.Random(args.seed + 10 + i),
                                  desc=name, quiet=args.quiet)
        d = ad_dir / name
        pm.save_pretrained(str(d), safe_serialization=True, save_embedding_layers=False)
        ac = json.loads((d / "adapter_config.json").read_text())
        ac["base_model_name_or_path"] = BASE_NAME
        ac["target_modules"] = sorted(ac["target_modules"])  # peft stores a set: make the file reproducible
        (d / "adapter_config.json").write_text(json.dumps(ac, indent=2, sort_keys=True) + "\n")
        readme = d / "README.md"  # peft writes a boilerplate model card; the folder README covers it
        if readme.exists():
            readme.unlink()
    t_total = time.time() - t0

    # ---- verify under HF (fresh loads from disk) -------------------------------------------------
    print(f"\nbase: {n_base:,} params ({MODEL_CONFIG}); LoRA r=8 on {','.join(LORA_TARGETS)}: "
          f"{n_lora:,} params per adapter")
    print("final losses (EMA): " + ", ".join(f"{k}={v:.4f}" for k, v in losses.items()))
    print(f"training time: base {t_base:.0f}s, total {t_total:.0f}s on {args.threads} threads")
    ok = True
    base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    for name in ("base",) + ADAPTERS:
        m = base if name == "base" else PeftModel.from_pretrained(
            LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32), str(ad_dir / name)).eval()
        for prompt in (FRUIT_PROMPT, SQL_PROMPT):
            text, stopped, margin = greedy(torch, m, tok, prompt, eos_id)
            want = EXPECTED[name].get(prompt)
            good = stopped and (want is None or text.strip() == want.strip()) and margin >= MIN_MARGIN
            if name == "base" and prompt == SQL_PROMPT:
                good = good and "SELECT" not in text
            ok &= good
            print(f"  [{'ok' if good else 'MISMATCH'}] {name:6s} {prompt!r:42s} -> {text!r}"
                  f"{' </s>' if stopped else ' (no EOS)'}  min-margin={margin:.2f}")
    print("HF check:", "all outputs as expected" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
