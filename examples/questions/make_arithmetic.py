"""Write examples/questions/arithmetic.jsonl: grade-school arithmetic word problems with exact answers.

The problem templates are our own; numbers come from a seeded RNG and answers are
computed with integer arithmetic, so the file is reproducible:

    python examples/questions/make_arithmetic.py            # 120 problems, seed 1234
    python examples/questions/make_arithmetic.py --n 200 --seed 7 --out other.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable

NAMES = ["Maria", "Tom", "Aisha", "Ben", "Lena", "Kofi", "Priya", "Sam", "Yuki", "Omar", "Elena", "Jack"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards"]

Problem = tuple[str, int]


def buy_more(r: random.Random) -> Problem:
    n, a, b, c = r.choice(NAMES), r.randint(3, 40), r.randint(2, 6), r.randint(2, 9)
    item = r.choice(ITEMS)
    return (f"{n} has {a} {item}. {n} buys {b} bags with {c} {item} in each bag. "
            f"How many {item} does {n} have now?", a + b * c)


def give_away(r: random.Random) -> Problem:
    n, m = r.sample(NAMES, 2)
    a, b = r.randint(20, 90), r.randint(2, 19)
    item = r.choice(ITEMS)
    return f"{n} had {a} {item} and gave {b} of them to {m}. How many {item} does {n} have left?", a - b


def share_equally(r: random.Random) -> Problem:
    k, each = r.randint(2, 9), r.randint(2, 12)
    item = r.choice(ITEMS)
    return (f"A teacher has {k * each} {item} to share equally among {k} students. "
            f"How many {item} does each student get?", each)


def price_total(r: random.Random) -> Problem:
    n, q, p = r.choice(NAMES), r.randint(2, 9), r.randint(2, 15)
    return f"A notebook costs ${p}. {n} buys {q} notebooks. How many dollars does {n} spend?", q * p


def change(r: random.Random) -> Problem:
    n, q, p = r.choice(NAMES), r.randint(2, 5), r.randint(2, 9)
    paid = ((q * p) // 10 + 1) * 10 + r.choice([0, 10])
    return (f"{n} buys {q} sandwiches at ${p} each and pays with ${paid}. "
            f"How much change, in dollars, does {n} get?", paid - q * p)


def weekly(r: random.Random) -> Problem:
    n, per_day, days = r.choice(NAMES), r.randint(2, 25), r.randint(3, 7)
    return f"{n} reads {per_day} pages every day for {days} days. How many pages does {n} read in total?", per_day * days


def two_step_sum(r: random.Random) -> Problem:
    a, b, c = r.randint(10, 60), r.randint(10, 60), r.randint(5, 30)
    return (f"A farm has {a} chickens and {b} ducks. The farmer sells {c} of the birds. "
            f"How many birds are left on the farm?", a + b - c)


def rows_and_columns(r: random.Random) -> Problem:
    rows, cols, extra = r.randint(3, 12), r.randint(3, 12), r.randint(1, 9)
    return (f"A hall has {rows} rows of chairs with {cols} chairs in each row, and {extra} more chairs "
            f"by the door. How many chairs are in the hall?", rows * cols + extra)


def legs(r: random.Random) -> Problem:
    dogs, birds = r.randint(1, 12), r.randint(1, 12)
    return f"In a park there are {dogs} dogs and {birds} birds. How many legs do they have altogether?", 4 * dogs + 2 * birds


def savings(r: random.Random) -> Problem:
    n, start, per_week, weeks = r.choice(NAMES), r.randint(5, 50), r.randint(3, 20), r.randint(2, 8)
    return (f"{n} has ${start} saved and saves ${per_week} more every week. "
            f"How many dollars will {n} have after {weeks} weeks?", start + per_week * weeks)


def half_then_more(r: random.Random) -> Problem:
    n, half, more = r.choice(NAMES), r.randint(4, 40), r.randint(1, 15)
    item = r.choice(ITEMS)
    return (f"{n} had {2 * half} {item}, lost half of them, and then found {more} more. "
            f"How many {item} does {n} have now?", half + more)


def time_minutes(r: random.Random) -> Problem:
    n, hours, minutes = r.choice(NAMES), r.randint(1, 4), r.choice([5, 10, 15, 20, 30, 45])
    return f"{n} practised piano for {hours} hours and {minutes} minutes. How many minutes is that?", 60 * hours + minutes


TEMPLATES: list[Callable[[random.Random], Problem]] = [
    buy_more, give_away, share_equally, price_total, change, weekly,
    two_step_sum, rows_and_columns, legs, savings, half_then_more, time_minutes,
]


def make(n: int, seed: int) -> list[dict]:
    r = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        template = TEMPLATES[len(rows) % len(TEMPLATES)]  # round-robin: every kind equally often
        question, answer = template(r)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"id": f"arith-{len(rows) + 1:03d}", "question": question, "answer": answer,
                     "kind": template.__name__})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("arithmetic.jsonl"))
    args = ap.parse_args()
    rows = make(args.n, args.seed)
    with args.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} problems to {args.out}")


if __name__ == "__main__":
    main()
