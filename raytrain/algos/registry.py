"""Tables of functions by name, filled by decorators: the config names an entry, the trainer looks it up."""

from __future__ import annotations

from collections.abc import Callable


def registrar(table: dict[str, Callable]) -> Callable[[str], Callable[[Callable], Callable]]:
    """`register = registrar(TABLE)`; then `@register("name")` puts the decorated function in `TABLE`."""

    def register(name: str):
        def add(fn):
            table[name] = fn
            return fn
        return add

    return register
