"""Benchmarks of access control, each against a baseline measured in the same run.

    .venv/bin/python bench/policy.py               # the issue's sizes
    .venv/bin/python bench/policy.py --quick       # a tenth of them, for a smoke run

A scratch SQLite database (migrated as in production) is filled with `--principals` principals
holding 1-3 of 50 roles, `--rules` rules over `--models` models (exact names, prefix globs and
`*`; one in ten a deny; conditions on some), and a keyring.

Figures (each a function; `main` prints them and a final `RESULT key=value ...` line):
1. decide: `PolicyCache.decide` (what a serving worker calls: counter check, compiled index,
   cached scope, conditions) on a pool of requests already seen once: median and p99 per
   decision, in microseconds (goal: median <= 20 us). The baseline is `decide_naive`, the same
   rules scanned one by one for every request: `naive_ratio` = naive median / cached median.
   The first, uncached decision of each request is printed too (not judged).
2. verify: `Verifier.verify` of tokens seen before (digest lookup) vs their first verification
   (parse, EdDSA signature, claims, principal): `verify_cached_ratio` = uncached median /
   cached median.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from secure_maas.actions import Action
from secure_maas.auth import tokens
from secure_maas.auth.verify import Verifier
from secure_maas.config import Settings
from secure_maas.db import create_engine, migrate
from secure_maas.db.session import session_factory, session_scope
from secure_maas.keys import Keyring
from secure_maas.policy import (
    Caller,
    ModelFacts,
    PolicyCache,
    Quota,
    RequestFacts,
    Rule,
    Window,
    grants,
)
from secure_maas.policy.models import PrincipalRow, Role
from secure_maas.timeutil import utcnow

ROLES = [f"role{i:02d}" for i in range(50)]
ACTIONS = list(Action)


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_rules(rng: random.Random, count: int, principals: int, models: int) -> list[Rule]:
    rules: dict[str, Rule] = {}
    while len(rules) < count:
        pick = rng.random()
        if pick < 0.6:
            subject = f"user:user{rng.randrange(principals):04d}"
        elif pick < 0.98:
            subject = f"role:{rng.choice(ROLES)}"
        else:
            subject = "*"
        shape = rng.random()
        if shape < 0.7:
            model = f"model{rng.randrange(models):04d}"
        elif shape < 0.95:
            model = f"model{rng.randrange(models // 10):03d}*"
        else:
            model = "*"
        effect = "deny" if rng.random() < 0.1 else "allow"
        conditions: dict[str, Any] = {}
        if effect == "allow" and rng.random() < 0.5:
            conditions = {
                "max_rows": rng.choice([None, 100, 1000]),
                "max_epsilon": rng.choice([None, 1.0, 3.0, 8.0]),
                "quotas": rng.choice([(), (Quota(Window.MINUTE, 600),)]),
            }
        actions = tuple(rng.sample(ACTIONS, rng.randint(1, 3)))
        rule = Rule(effect, subject, actions, model, **conditions)  # type: ignore[arg-type]
        rules.setdefault(rule.key, rule)
    return list(rules.values())


def populate(session: Session, rng: random.Random, args: argparse.Namespace) -> list[Caller]:
    roles = {name: Role(name=name) for name in ROLES}
    session.add_all(roles.values())
    callers = []
    now = utcnow()
    for i in range(args.principals):
        held = sorted(rng.sample(ROLES, rng.randint(1, 3)))
        name = f"user{i:04d}"
        session.add(
            PrincipalRow(
                name=name,
                created_by="bench",
                created_at=now,
                updated_at=now,
                roles=[roles[r] for r in held],
            )
        )
        callers.append(Caller(name, tuple(held)))
    session.flush()
    grants.grant_many(
        session, make_rules(rng, args.rules, args.principals, args.models), actor="bench"
    )
    return callers


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        call()
        samples.append((clock() - start) / 1000)
    return samples


def bench_decide(
    policy: PolicyCache, callers: list[Caller], rng: random.Random, args: argparse.Namespace
) -> dict[str, float]:
    now = utcnow()
    pool = [
        (
            rng.choice(callers),
            rng.choice(ACTIONS),
            ModelFacts(
                f"model{rng.randrange(args.models):04d}", 1, (), rng.choice([0.5, 2.0, 9.0])
            ),
            RequestFacts(rng.choice([1, 50, 500]), now),
        )
        for _ in range(args.requests)
    ]
    compiled = policy.current()
    first = [timed(lambda ask=ask: policy.decide(*ask), 1)[0] for ask in pool]
    order = [rng.choice(pool) for _ in range(args.decisions)]
    samples: list[float] = []
    clock = time.perf_counter_ns
    for ask in order:
        start = clock()
        policy.decide(*ask)
        samples.append((clock() - start) / 1000)
    naive = [timed(lambda ask=ask: compiled.decide_naive(*ask), 1)[0] for ask in pool[: args.naive]]
    agree = all(compiled.decide(*ask) == compiled.decide_naive(*ask) for ask in pool[: args.naive])
    allowed = sum(policy.decide(*ask).allowed for ask in pool)
    print(
        f"decide: {len(compiled)} rules, {len(pool)} distinct requests ({allowed} allowed); "
        f"cached median {statistics.median(samples):.2f} us, p99 {percentile(samples, 0.99):.2f}"
        f" us; first decision median {statistics.median(first):.1f} us; naive scan median "
        f"{statistics.median(naive):.0f} us (agrees: {agree})"
    )
    return {
        "median": statistics.median(samples),
        "p99": percentile(samples, 0.99),
        "naive_ratio": statistics.median(naive) / statistics.median(samples),
    }


def bench_verify(verifier: Verifier, issued: list[str], rounds: int) -> dict[str, float]:
    now = utcnow()
    uncached = [timed(lambda t=t: verifier.verify(t, now=now), 1)[0] for t in issued]
    cached = []
    for _ in range(rounds):
        cached += [timed(lambda t=t: verifier.verify(t, now=now), 1)[0] for t in issued]
    ratio = statistics.median(uncached) / statistics.median(cached)
    print(
        f"verify: {len(issued)} tokens; uncached median {statistics.median(uncached):.1f} us, "
        f"cached median {statistics.median(cached):.2f} us (p99 {percentile(cached, 0.99):.2f})"
    )
    return {"ratio": ratio}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--principals", type=int, default=1000)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=5000, help="distinct requests")
    parser.add_argument("--decisions", type=int, default=200_000, help="cached decisions timed")
    parser.add_argument("--naive", type=int, default=300, help="requests scanned naively")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.quick:
        for name in ("principals", "rules", "models", "requests", "decisions", "naive", "tokens"):
            setattr(args, name, max(10, getattr(args, name) // 10))
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        settings = Settings(
            database_url=f"sqlite:///{root / 'bench.db'}",
            keys_dir=root / "keys",
            store_dir=root / "store",
        )
        engine = create_engine(settings.database_url)
        migrate.upgrade(engine)
        keyring, _ = Keyring.init(settings.keys_dir)
        started = time.perf_counter()
        with session_scope(session_factory(engine)) as session:
            callers = populate(session, rng, args)
            issued = [
                tokens.issue(
                    session,
                    keyring,
                    settings,
                    subject=caller.subject,
                    ttl=timedelta(hours=1),
                    actor="bench",
                ).token
                for caller in callers[: args.tokens]
            ]
        print(
            f"setup: {args.principals} principals, {args.rules} rules, {args.models} models, "
            f"{len(issued)} tokens in {time.perf_counter() - started:.1f} s"
        )
        decide = bench_decide(PolicyCache(engine), callers, rng, args)
        verify = bench_verify(Verifier(engine, settings), issued, rounds=5)
        engine.dispose()
    print(
        f"RESULT decide_cached_median_us={decide['median']:.2f} "
        f"decide_p99_us={decide['p99']:.2f} naive_ratio={decide['naive_ratio']:.0f} "
        f"verify_cached_ratio={verify['ratio']:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
