"""Dependency cycles: found whatever their shape and size, each named by a shortest cycle through the unit."""

from __future__ import annotations

from reconciler.cycles import SHOWN_CYCLE_UNITS, dependency_cycles


def test_units_on_cycles_and_only_those() -> None:
    found = dependency_cycles({
        "a": ["b"], "b": ["a"],                    # a pair
        "c": ["a"],                                # waits on a cycle, is not on one
        "d": ["e"], "e": ["f", "x"], "f": ["d"],   # a triangle; x does not exist
        "g": [], "h": ["g"],
    })  # fmt: skip
    assert found == {
        "a": "dependency cycle a → b → a",
        "b": "dependency cycle b → a → b",
        "d": "dependency cycle d → e → f → d",
        "e": "dependency cycle e → f → d → e",
        "f": "dependency cycle f → d → e → f",
    }


def test_the_shortest_cycle_through_a_unit_is_the_one_named() -> None:
    found = dependency_cycles({"a": ["b", "c"], "b": ["c"], "c": ["a"]})
    assert found["a"] == "dependency cycle a → c → a"
    assert found["b"] == "dependency cycle b → c → a → b"


def test_a_long_chain_closed_into_a_cycle_is_named_by_its_size() -> None:
    n = 5000  # far deeper than Python's recursion limit
    chain = {f"u{i}": [f"u{(i + 1) % n}"] for i in range(n)}
    found = dependency_cycles(chain)
    assert len(found) == n and n > SHOWN_CYCLE_UNITS
    assert found["u0"] == f"dependency cycle among {n} units (u0, u1, u10, …)"


def test_no_cycle_in_a_deep_chain_or_a_wide_fan() -> None:
    chain = {f"u{i}": [f"u{i + 1}"] for i in range(5000)}
    fan = {f"w{i}": ["db"] for i in range(1000)}
    assert dependency_cycles({**chain, **fan, "db": []}) == {}
