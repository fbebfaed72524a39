"""Method registry: ``@register("dino")`` on a class, ``METHODS["dino"]`` to build it."""

METHODS: dict[str, type] = {}


def register(name: str):
    def add(cls):
        METHODS[name] = cls
        cls.method_name = name
        return cls

    return add
