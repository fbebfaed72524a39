"""``train.limit`` / ``test.limit``: a class-stratified random subset, never the first N samples.

Shards and folders are often sorted by class, so the first N samples can be a single class (a quick
probe once printed 50% train / 100% val from one class and wrote it into a model card). Here each
class keeps its share of the N (largest remainders, at least one sample per class while N allows),
the members drawn at random with the recipe's seed. A multi-label sample is counted in the stratum
of its rarest label, so rare labels are kept first. The draw is recorded in the protocol.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch


def stratum_of(labels: list, task: str) -> list[int]:
    """One class per sample: the label itself, or a multi-label sample's rarest label (-1 for none)."""
    if task == "single":
        return [int(v) for v in labels]
    sets = [[int(v)] if isinstance(v, int) else [int(x) for x in v] for v in labels]
    counts = Counter(c for s in sets for c in s)
    return [min(s, key=lambda c: (counts[c], c)) if s else -1 for s in sets]


def stratified_subset(labels: list, limit: int, seed: int, task: str = "single") -> list[int]:
    """Indices (sorted) of ``limit`` samples drawn per class in proportion to the class sizes."""
    strata = stratum_of(labels, task)
    if limit >= len(strata):
        return list(range(len(strata)))
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(strata):
        members[c].append(i)
    classes = sorted(members)
    share = {c: limit * len(members[c]) / len(strata) for c in classes}
    quota = {c: min(len(members[c]), int(share[c])) for c in classes}
    if limit >= len(classes):  # every class at least once
        for c in classes:
            quota[c] = max(quota[c], 1)
    left = limit - sum(quota.values())
    by_remainder = sorted(classes, key=lambda c: (-(share[c] - int(share[c])), c))
    while left > 0:
        for c in by_remainder:
            if left > 0 and quota[c] < len(members[c]):
                quota[c] += 1
                left -= 1
    while left < 0:  # the at-least-one rule overshot: take from the largest quotas
        c = max(classes, key=lambda c: (quota[c], -c))
        quota[c] -= 1
        left += 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        order = torch.randperm(len(members[c]), generator=generator)[:quota[c]]
        chosen += [members[c][i] for i in order.tolist()]
    return sorted(chosen)


def describe_subset(labels: list, chosen: list[int], limit: int, seed: int, task: str) -> dict:
    strata = stratum_of(labels, task)
    return {"limit": limit, "of": len(labels), "drawn": f"class-stratified random (seed {seed})",
            "classes_in_data": len(set(strata)), "classes_in_subset": len({strata[i] for i in chosen})}
