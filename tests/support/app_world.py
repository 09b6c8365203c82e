"""The `app_world` fixture: the pull-request world with the runner as a GitHub App.

Test modules that use it name this module in `pytest_plugins`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pr_world import PullRequestWorld, make_app_world


@pytest.fixture
def app_world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    with make_app_world(tmp_path) as built:
        yield built
