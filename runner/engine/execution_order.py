"""The order projects are applied in: `execution_order_group`, then `depends_on`."""

from __future__ import annotations

from collections.abc import Sequence
from graphlib import TopologicalSorter

from runner.config.model import ProjectConfig


def apply_order(projects: Sequence[ProjectConfig]) -> list[ProjectConfig]:
    """Lower groups first; inside the whole set, a project comes after what it depends on.

    Dependencies outside `projects` are ignored (they are not being applied now).
    Ties keep the configuration order, so the order is stable and predictable.
    """
    by_name = {project.name: project for project in projects}
    position = {project.name: index for index, project in enumerate(projects)}
    graph = TopologicalSorter[str]()
    for project in projects:
        graph.add(project.name, *(dep for dep in project.depends_on if dep in by_name))
    graph.prepare()
    ordered: list[str] = []
    while graph.is_active():
        ready = sorted(
            graph.get_ready(),
            key=lambda name: (by_name[name].execution_order_group, position[name]),
        )
        ordered.extend(ready)
        graph.done(*ready)
    return sorted(
        (by_name[name] for name in ordered),
        key=lambda project: (project.execution_order_group, ordered.index(project.name)),
    )
