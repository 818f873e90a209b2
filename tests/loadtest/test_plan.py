from __future__ import annotations

from gorgon_loadtest.plan import plan_levels
from gorgon_loadtest.record import Mode


def test_sweep_interleaves_modes_at_each_concurrency() -> None:
    levels = plan_levels(concurrencies=[1, 4], rate=None, modes=list(Mode))
    assert [level.label for level in levels] == [
        "standard-c1",
        "speculative-c1",
        "standard-c4",
        "speculative-c4",
    ]


def test_baseline_runs_in_standard_mode_after_the_server_under_test() -> None:
    levels = plan_levels(
        concurrencies=[2], rate=None, modes=list(Mode), baseline="llama.cpp", server="gorgon"
    )
    assert [level.label for level in levels] == [
        "gorgon/standard-c2",
        "gorgon/speculative-c2",
        "llama.cpp/standard-c2",
    ]
    assert [level.variant for level in levels] == [
        "gorgon standard",
        "gorgon speculative",
        "llama.cpp standard",
    ]


def test_open_loop_has_one_level_per_mode_at_the_rate() -> None:
    (level,) = plan_levels(concurrencies=[1, 2], rate=3.0, modes=[Mode.SPECULATIVE])
    assert (level.rate, level.concurrency, level.label) == (3.0, None, "speculative-r3")
