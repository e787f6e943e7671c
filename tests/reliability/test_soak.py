"""The kill -9 soak (``scripts/soak.sh``) in the test suite: one iteration of every kind of fault at
the small scale (``soak.SMALL``): the registry killed during a push, a pull and manifest writes; the
client killed during a push, a pull, a create, a removal and a prune; ``hangar registry gc`` killed
while it deletes; ``hangar registry migrate`` killed while it upgrades an old-schema database. After
each, the operation run again, every model whole, every tag its old or its new manifest, and both
fscks clean. ``scripts/soak.sh --iterations N`` runs each kind as many times as asked."""

from __future__ import annotations

import random
from pathlib import Path

from tests.reliability.soak import KINDS, SMALL, Soak, table


def test_every_kill_point_loses_nothing(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    print(f"soak seed {seed}")  # to replay a failure: scripts/soak.sh --small --iterations 1 --seed SEED
    outcomes = Soak(tmp_path, seed, scale=SMALL).soak(1, KINDS)
    print(table(outcomes))
    assert [(o.kind, o.iterations) for o in outcomes] == [(kind, 1) for kind in KINDS]
    assert [f for o in outcomes for f in o.failures] == []
    assert all(o.lost == 0 and o.fsck_faults == 0 for o in outcomes)
    by_kind = {o.kind: o for o in outcomes}
    for kind in ("registry-push", "registry-pull"):  # the registry comes back; the transfer finishes
        assert by_kind[kind].resumed + by_kind[kind].recovered_alone == 1, kind


def test_a_registry_with_several_workers_killed_mid_transfer_loses_nothing(tmp_path: Path) -> None:
    """``--workers 2``: the kill takes every worker of the registry, each mid-request; the transfer
    still finishes (resumed or by the client's own retries) and fsck is clean."""
    seed = random.randrange(2**32)
    print(f"soak seed {seed}")  # scripts/soak.sh --small --workers 2 --kinds registry-push,registry-pull --seed SEED
    soak = Soak(tmp_path, seed, scale=SMALL, workers=2)
    assert soak.registry.extra_args[-2:] == ["--workers", "2"]
    outcomes = soak.soak(1, ("registry-push", "registry-pull"))
    print(table(outcomes))
    assert [f for o in outcomes for f in o.failures] == []
    assert all(o.lost == 0 and o.fsck_faults == 0 for o in outcomes)
    assert all(o.resumed + o.recovered_alone == 1 for o in outcomes)
