"""The collector pause around detection (runner/gc_pause.py): nested and overlapping
pauses, a collector turned off by someone else, and a window that may not starve it."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from runner import gc_pause
from runner.gc_pause import gc_paused


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_nested_pauses_resume_the_collector_only_at_the_outermost_end() -> None:
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_resume_when_both_ended() -> None:
    first_in, second_done = threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            first_in.set()
            second_done.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    first_in.wait(5)
    with gc_paused():
        pass
    assert not gc.isenabled()  # the other thread's pause is still open
    second_done.set()
    thread.join(5)
    assert gc.isenabled()


def test_a_collector_someone_turned_off_stays_off() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_a_decorated_function_pauses_and_an_error_still_resumes() -> None:
    @gc_paused()
    def failing() -> None:
        assert not gc.isenabled()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        failing()
    assert gc.isenabled()


def test_a_window_kept_open_by_overlapping_pauses_still_collects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gc_pause, "MAX_WINDOW_S", 0.0)
    collections = gc.get_stats()[2]["collections"]
    # The second pause opens after the window is over: a full collection first.
    with gc_paused(), gc_paused():
        pass
    assert gc.get_stats()[2]["collections"] > collections
