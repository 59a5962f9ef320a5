"""Dependency cycles among specs: units that could never start, each waiting for the other.

Pure functions over unit names. Tarjan's strongly connected components, kept
iterative so that a chain of thousands of units needs no deep recursion; a
shortest cycle through each unit on one names it in its error.
"""

from __future__ import annotations

import collections
from typing import Iterator, Mapping, Sequence


SHOWN_CYCLE_UNITS = 20  # a tangle of more units is named by its size, not by a cycle through each


def dependency_cycles(depends_on: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Each unit on a cycle -> the cycle, as its error says it: "dependency cycle a → b → a".

    `depends_on` maps every unit to the units it depends on; names it does not
    hold as keys (units that do not exist) lead nowhere.
    """
    edges = {name: [dep for dep in deps if dep in depends_on] for name, deps in depends_on.items() if deps}
    cycles = {}
    for component in _strongly_connected(edges):
        if len(component) == 1:
            continue  # a unit depending on itself is already an error of its own file
        if len(component) > SHOWN_CYCLE_UNITS:
            some = ", ".join(sorted(component)[:3])
            cycles.update(dict.fromkeys(component, f"dependency cycle among {len(component)} units ({some}, …)"))
            continue
        members = set(component)
        for name in component:
            cycles[name] = "dependency cycle " + " → ".join(_shortest_cycle(name, edges, members))
    return cycles


def _strongly_connected(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    work: list[tuple[str, Iterator[str]]] = []  # the depth-first path, each node with its deps still to see

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        work.append((node, iter(edges.get(node, ()))))

    for root in edges:
        if root in index:
            continue
        visit(root)
        while work:
            node, deps = work[-1]
            for dep in deps:
                if dep not in index:
                    visit(dep)
                    break
                if dep in on_stack:
                    low[node] = min(low[node], index[dep])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def _shortest_cycle(start: str, edges: Mapping[str, Sequence[str]], members: set[str]) -> tuple[str, ...]:
    """Breadth first from `start` along dependencies inside its component, back to `start`."""
    parents: dict[str, str] = {}
    queue = collections.deque([start])
    while queue:
        node = queue.popleft()
        for dep in edges.get(node, ()):
            if dep == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return (*reversed(path), start)
            if dep in members and dep not in parents:
                parents[dep] = node
                queue.append(dep)
    raise AssertionError(f"{start} is in a strongly connected component, so a cycle leads back to it")
