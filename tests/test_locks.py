"""Project locks: semantics, and atomicity under threads and processes on both backends."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from runner.store import LockOwner, LockResult, Store

REPO = "github.com/acme/infra"
# Generous upper bounds so a broken test fails instead of hanging; nothing asserts on time.
_WAIT_S = 120


def owner(pr: int, user: str = "alice") -> LockOwner:
    return LockOwner(pr_number=pr, pr_url=f"https://github.com/acme/infra/pull/{pr}", user=user)


def test_acquire_then_second_owner_sees_holder_and_since(store: Store) -> None:
    first = store.locks.acquire(REPO, "envs/prod", "default", owner(1))
    second = store.locks.acquire(REPO, "envs/prod", "default", owner(2, user="bob"))

    assert first.acquired
    assert not second.acquired
    assert second.lock == first.lock
    assert second.lock.owner_pr == 1
    assert second.lock.owner_user == "alice"
    assert second.lock.owner_pr_url == "https://github.com/acme/infra/pull/1"
    assert second.lock.since.tzinfo is not None


def test_same_pr_reacquires_idempotently(store: Store) -> None:
    first = store.locks.acquire(REPO, "app", "default", owner(7))
    again = store.locks.acquire(REPO, "app", "default", owner(7, user="someone-else"))

    assert again.acquired
    assert again.lock == first.lock  # unchanged, including `since`
    assert store.locks.list(REPO) == [first.lock]


def test_lock_key_includes_dir_and_workspace(store: Store) -> None:
    assert store.locks.acquire(REPO, "app", "default", owner(1)).acquired
    assert store.locks.acquire(REPO, "app", "staging", owner(2)).acquired
    assert store.locks.acquire(REPO, "other", "default", owner(3)).acquired
    assert store.locks.acquire("github.com/acme/other", "app", "default", owner(4)).acquired
    assert [lock.owner_pr for lock in store.locks.list(REPO)] == [1, 2, 3]
    assert len(store.locks.list()) == 4


def test_release_frees_the_lock_for_another_pr(store: Store) -> None:
    store.locks.acquire(REPO, "app", "default", owner(1))

    assert not store.locks.release(REPO, "app", "default", owner_pr=2)  # not the holder
    assert store.locks.get(REPO, "app", "default") is not None
    assert store.locks.release(REPO, "app", "default", owner_pr=1)
    assert not store.locks.release(REPO, "app", "default")  # already free
    assert store.locks.get(REPO, "app", "default") is None

    taken = store.locks.acquire(REPO, "app", "default", owner(2))
    assert taken.acquired and taken.lock.owner_pr == 2


def test_release_without_owner_is_a_forced_unlock(store: Store) -> None:
    store.locks.acquire(REPO, "app", "default", owner(1))
    assert store.locks.release(REPO, "app", "default")
    assert store.locks.list() == []


def test_release_all_frees_only_that_prs_locks_in_that_repo(store: Store) -> None:
    store.locks.acquire(REPO, "a", "default", owner(1))
    store.locks.acquire(REPO, "b", "default", owner(1))
    store.locks.acquire(REPO, "c", "default", owner(2))
    store.locks.acquire("github.com/acme/other", "a", "default", owner(1))

    freed = store.locks.release_all(REPO, 1)

    assert [(lock.dir, lock.owner_pr) for lock in freed] == [("a", 1), ("b", 1)]
    assert [lock.dir for lock in store.locks.list(REPO)] == ["c"]
    assert len(store.locks.list("github.com/acme/other")) == 1
    assert store.locks.release_all(REPO, 1) == []


def test_lock_records_the_run(store: Store) -> None:
    run_id = store.runs.start(
        repo=REPO, project="app", dir="app", workspace="default", command="plan", trigger="comment"
    )
    result = store.locks.acquire(
        REPO, "app", "default", LockOwner(pr_number=3, user="carol", run_id=run_id)
    )
    assert result.lock.run_id == run_id
    assert store.locks.get(REPO, "app", "default") == result.lock


def test_owner_without_pr_is_the_same_owner_only_for_the_same_run(store: Store) -> None:
    run_a = store.runs.start(
        repo=REPO, project="app", dir="app", workspace="default", command="drift", trigger="cli"
    )
    run_b = store.runs.start(
        repo=REPO, project="app", dir="app", workspace="default", command="drift", trigger="cli"
    )
    assert store.locks.acquire(REPO, "app", "default", LockOwner(None, run_id=run_a)).acquired
    assert store.locks.acquire(REPO, "app", "default", LockOwner(None, run_id=run_a)).acquired
    assert not store.locks.acquire(REPO, "app", "default", LockOwner(None, run_id=run_b)).acquired
    assert not store.locks.acquire(REPO, "app", "default", LockOwner(None)).acquired


def test_acquire_with_unknown_run_raises_instead_of_spinning(store: Store) -> None:
    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        store.locks.acquire(REPO, "app", "default", LockOwner(1, run_id=999_999))
    assert store.locks.list() == []


def _race_in_threads(store: Store, key: tuple[str, str, str], owners: list[LockOwner]) -> list:
    barrier = threading.Barrier(len(owners))

    def attempt(who: LockOwner) -> LockResult:
        barrier.wait(timeout=_WAIT_S)
        return store.locks.acquire(*key, who)

    with ThreadPoolExecutor(max_workers=len(owners)) as pool:
        return list(pool.map(attempt, owners))


@pytest.mark.parametrize("round_", range(5))
def test_sixteen_threads_racing_give_exactly_one_owner(store: Store, round_: int) -> None:
    key = (REPO, f"envs/{round_}", "default")
    results = _race_in_threads(store, key, [owner(pr) for pr in range(1, 17)])

    winners = [result for result in results if result.acquired]
    assert len(winners) == 1
    holder = store.locks.get(*key)
    assert holder == winners[0].lock
    # Every loser was told who the winner is.
    assert all(result.lock == holder for result in results)


def test_same_pr_from_many_threads_all_acquire(store: Store) -> None:
    key = (REPO, "app", "default")
    results = _race_in_threads(store, key, [owner(5)] * 16)

    assert all(result.acquired for result in results)
    assert len({result.lock for result in results}) == 1
    assert len(store.locks.list()) == 1


def _acquire_in_process(
    url: str, pr: int, keys: list[tuple[str, str, str]], barrier: Any, results: Any
) -> None:
    """Child process: race for every key as PR `pr`, report the keys it won."""
    store = Store.open(url, upgrade=False)
    won: list[tuple[str, str, str]] = []
    holders: dict[tuple[str, str, str], int | None] = {}
    try:
        barrier.wait(timeout=_WAIT_S)
        for key in keys:
            result = store.locks.acquire(*key, owner(pr))
            holders[key] = result.lock.owner_pr
            if result.acquired:
                won.append(key)
        results.put((pr, won, holders, None))
    except BaseException as error:  # reported to the parent, which fails the test
        results.put((pr, won, holders, repr(error)))
    finally:
        store.close()


def test_processes_racing_give_exactly_one_owner_per_key(migrated_url: str) -> None:
    processes_n = 4
    keys = [(REPO, f"stacks/{index:02d}", "default") for index in range(40)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes_n)
    results = context.Queue()
    processes = [
        context.Process(
            target=_acquire_in_process,
            # Every process walks the keys in a different order, so they collide mid-way too.
            args=(migrated_url, pr, keys[pr:] + keys[:pr], barrier, results),
        )
        for pr in range(1, processes_n + 1)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=_WAIT_S) for _ in processes]
    for process in processes:
        process.join(timeout=_WAIT_S)

    assert [error for *_, error in reports if error] == []
    wins = Counter(key for _, won, _, _ in reports for key in won)
    assert set(wins) == set(keys)
    assert all(count == 1 for count in wins.values()), wins
    with Store.open(migrated_url, upgrade=False) as store:
        holders = {
            (lock.repo, lock.dir, lock.workspace): lock.owner_pr for lock in store.locks.list()
        }
    for pr, won, seen, _ in reports:
        assert all(holders[key] == pr for key in won)
        # Losers were told the real holder.
        assert all(seen[key] == holders[key] for key in keys)
