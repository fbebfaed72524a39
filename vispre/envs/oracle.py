"""Exact shortest paths in a MiniGrid layout: breadth-first search over agent states.

A state is (x, y, heading, carrying_key, door_open) (see ``vispre.envs.minigrid``). The model
below is MiniGrid's own step function restricted to the actions a task uses:

    left / right     heading -/+ 1 (mod 4)
    forward          enter the cell in front unless it is a wall, lava, the key (still lying
                     there) or the door (still closed); entering the goal ends the episode
    pickup           facing the key, not carrying it -> carrying
    toggle           facing the closed door while carrying the key -> open (never closes it)

The distance of a state to a set of target cells is the number of actions until the agent
stands on one of them, by a backward BFS from the targets over the whole state graph; the
optimal actions are those whose next state is one step closer. The goal cell is terminal (no
action leaves it), so paths to other cells never cross it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .minigrid import DIRECTIONS, FORWARD, LEFT, PICKUP, RIGHT, TOGGLE, Layout, State

UNREACHABLE = -1


class Oracle:
    def __init__(self, layout: Layout, actions: tuple[int, ...]):
        self.layout = layout
        self.actions = actions
        self.states = self._all_states()
        self.index = {s: i for i, s in enumerate(self.states)}
        # next state per (state, action), and the reverse edges for the backward BFS
        self.next = {s: {a: self.step(s, a) for a in actions} for s in self.states}
        self.previous: dict[State, list[State]] = {s: [] for s in self.states}
        for s, moves in self.next.items():
            for t in set(moves.values()) - {s}:
                self.previous[t].append(s)
        self._distances: dict[tuple, dict[State, int]] = {}

    # -- the model ----------------------------------------------------------------------------------
    def _all_states(self) -> list[State]:
        lay = self.layout
        keys = (0, 1) if lay.key is not None else (0,)
        doors = (0, 1) if lay.door is not None else (0,)
        states = []
        for (x, y) in lay.cells():
            for k in keys:
                for o in doors:
                    if (o and not k) or ((x, y) == lay.key and not k) or ((x, y) == lay.door and not o):
                        continue  # the door opens only with the key; key and closed door cells are solid
                    states.extend((x, y, d, k, o) for d in range(4))
        return states

    def passable(self, cell: tuple[int, int], carrying: int, door_open: int) -> bool:
        lay = self.layout
        if cell in lay.blocked:
            return False
        if cell == lay.key and not carrying:
            return False
        return not (cell == lay.door and not door_open)

    def step(self, state: State, action: int) -> State:
        x, y, d, k, o = state
        if (x, y) == self.layout.goal:
            return state  # terminal
        dx, dy = DIRECTIONS[d]
        front = (x + dx, y + dy)
        if action == LEFT:
            return (x, y, (d - 1) % 4, k, o)
        if action == RIGHT:
            return (x, y, (d + 1) % 4, k, o)
        if action == FORWARD:
            return (*front, d, k, o) if self.passable(front, k, o) else state
        if action == PICKUP:
            return (x, y, d, 1, o) if front == self.layout.key and not k else state
        if action == TOGGLE:
            return (x, y, d, k, 1) if front == self.layout.door and k and not o else state
        raise ValueError(f"action {action} is not modelled by the oracle")

    # -- distances ----------------------------------------------------------------------------------
    def distances(self, targets) -> dict[State, int]:
        """Steps from every state until the agent stands on a cell of ``targets`` (absent: unreachable)."""
        targets = tuple(sorted({tuple(t) for t in targets}))
        if targets not in self._distances:
            dist = {s: 0 for s in self.states if (s[0], s[1]) in targets}
            queue = deque(dist)
            while queue:
                s = queue.popleft()
                for p in self.previous[s]:
                    if p not in dist and (p[0], p[1]) not in targets:
                        dist[p] = dist[s] + 1
                        queue.append(p)
            self._distances[targets] = dist
        return self._distances[targets]

    def distance(self, state: State, targets=None) -> int:
        """Shortest-path length to ``targets`` cells (default: the goal); UNREACHABLE when none."""
        return self.distances(targets or [self.layout.goal]).get(tuple(state), UNREACHABLE)

    def optimal_actions(self, state: State, targets=None) -> list[int]:
        """The actions that bring ``state`` one step closer to ``targets`` (empty when there or unreachable)."""
        dist = self.distances(targets or [self.layout.goal])
        here = dist.get(tuple(state))
        if not here:
            return []
        return [a for a, t in self.next[tuple(state)].items() if dist.get(t) == here - 1]

    def action(self, state: State, targets=None, rng: np.random.Generator | None = None) -> int | None:
        """One optimal action: random among ties with ``rng``, else the first in the task's order."""
        best = self.optimal_actions(state, targets)
        if not best:
            return None
        return best[int(rng.integers(len(best)))] if rng is not None else best[0]

    def state_distances(self, source: State) -> dict[State, int]:
        """Steps from ``source`` to every reachable state (forward BFS): the exact frame-to-frame distance."""
        source = tuple(source)
        dist = {source: 0}
        queue = deque([source])
        while queue:
            s = queue.popleft()
            for t in self.next[s].values():
                if t not in dist:
                    dist[t] = dist[s] + 1
                    queue.append(t)
        return dist
