"""The kill -9 soak (``scripts/soak.sh``) in the test suite, with one iteration of the registry's
faults: killed during a push and during a pull, restarted, the operation run again, the model whole
and both fscks clean. ``scripts/soak.sh --iterations N`` runs every kind, as many times as asked."""

from __future__ import annotations

import random
from pathlib import Path

from tests.reliability.soak import Soak, table


def test_registry_killed_during_a_push_and_a_pull_loses_nothing(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    print(f"soak seed {seed}")  # to replay a failure: scripts/soak.sh --seed SEED
    outcomes = Soak(tmp_path, seed).soak(1, ("registry-push", "registry-pull"))
    print(table(outcomes))
    assert [o.iterations for o in outcomes] == [1, 1]
    assert all(o.lost == 0 for o in outcomes), [f for o in outcomes for f in o.failures]
    assert all(o.resumed + o.recovered_alone == 1 for o in outcomes)
