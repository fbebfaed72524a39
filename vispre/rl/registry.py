"""Agent registry: ``@register_agent("iql", IQLConfig)`` on an agent class; ``AGENTS["iql"]`` to build it.

A new agent is one file: its config dataclass (a subclass of ``vispre.rl.agent.AgentConfig``) and its
class, registered together, as OGBench's ``impls/agents/*.py`` keep each agent with its own config. The
recipe's ``agent:`` section is typed by the registered config of ``agent.name``.
"""

from __future__ import annotations

AGENTS: dict[str, type] = {}


def register_agent(name: str, config: type):
    def add(cls):
        if name in AGENTS and AGENTS[name] is not cls:
            raise ValueError(f"agent {name!r} is registered twice")
        cls.agent_name, cls.config = name, config
        AGENTS[name] = cls
        return cls

    return add
