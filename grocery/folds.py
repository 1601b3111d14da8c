"""Stratified k-fold splits: an accuracy estimate over every labelled photo, not the 296 of val.

Torch-free and deterministic: the same labels, ``folds`` and ``seed`` give the same folds on
any machine, so every recipe of a benchmark is scored on the same held-out photos.
"""

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence


def stratified_folds(
    strata: Sequence[Hashable], folds: int, seed: int = 0, groups: Sequence[Hashable] | None = None
) -> list[int]:
    """The fold (0..folds-1) of each sample, each stratum spread evenly over the folds.

    ``strata``: each sample's class (the finest label, so that coarse classes are spread too).
    ``groups``: samples of one group (near-duplicate photos of one scene) share a fold, so no
    fold is scored on photos whose twins it trained on; each sample is its own group by default.
    Each class's groups are shuffled with ``seed``, then dealt, largest first, each to the fold
    holding the fewest of that class so far (ties: the smallest fold, then the lowest number).
    Ungrouped, that keeps every class's counts and the fold sizes within one of each other.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, not {folds}")
    if len(strata) < folds:
        raise ValueError(f"{len(strata)} samples cannot fill {folds} folds")
    groups = range(len(strata)) if groups is None else groups
    members: dict[Hashable, dict[Hashable, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (stratum, group) in enumerate(zip(strata, groups, strict=True)):
        members[stratum][group].append(i)
    rng = random.Random(seed)
    fold_of = [-1] * len(strata)
    fold_sizes = [0] * folds
    # Classes in sorted order, not order of appearance: the deal does not hinge on which photo comes first.
    for stratum in sorted(members, key=repr):
        in_stratum = [0] * folds
        class_groups = [members[stratum][g] for g in sorted(members[stratum], key=repr)]
        rng.shuffle(class_groups)
        for indices in sorted(class_groups, key=len, reverse=True):  # stable: equal sizes keep the shuffle
            fold = min(range(folds), key=lambda f: (in_stratum[f], fold_sizes[f], f))
            for i in indices:
                fold_of[i] = fold
            in_stratum[fold] += len(indices)
            fold_sizes[fold] += len(indices)
    return fold_of


def split_fold(items: Sequence, fold_of: Sequence[int], fold: int) -> tuple[list, list]:
    """(training items, held-out items) for one fold, each in the original order."""
    if not 0 <= fold <= max(fold_of):
        raise ValueError(f"fold {fold} is outside 0..{max(fold_of)}")
    train = [item for item, f in zip(items, fold_of, strict=True) if f != fold]
    held_out = [item for item, f in zip(items, fold_of, strict=True) if f == fold]
    return train, held_out


def near_duplicate_groups(features, strata: Sequence[Hashable], threshold: float) -> list[int]:
    """Group ids joining photos of one class whose features' cosine similarity reaches ``threshold``.

    ``features``: an (N, D) tensor, e.g. an ImageNet backbone's pooled features. Groups are the
    connected components of those links: shots of one pile from another angle end up together.
    """
    import torch  # here, not at the top: the folds themselves are torch-free

    features = torch.nn.functional.normalize(features.float(), dim=1)
    parent = list(range(len(strata)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_stratum: dict[Hashable, list[int]] = defaultdict(list)
    for i, stratum in enumerate(strata):
        by_stratum[stratum].append(i)
    for indices in by_stratum.values():
        similar = (features[indices] @ features[indices].T >= threshold).nonzero().tolist()
        for a, b in similar:
            parent[root(indices[a])] = root(indices[b])
    return [root(i) for i in range(len(strata))]


def scene_clusters(features, strata: Sequence[Hashable], clusters: int, seed: int = 0, groups=None) -> list[int]:
    """Cluster ids cutting each class into ``clusters`` look-alike scenes (k-means on cosine features).

    Held out whole, a scene is a session of a class the training folds never saw: the same pile
    under the same light from other angles lands in one cluster, and what differs between clusters
    is what differs between shooting sessions (background, light, packaging). ``groups`` (e.g.
    near_duplicate_groups) are kept whole: a group joins the cluster most of its photos fell in.
    Deterministic for the same features and seed (k-means++ seeding from a seeded generator).
    """
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    cluster_of = [0] * len(strata)
    by_stratum: dict[Hashable, list[int]] = defaultdict(list)
    for i, stratum in enumerate(strata):
        by_stratum[stratum].append(i)
    for number, stratum in enumerate(sorted(by_stratum, key=repr)):
        indices = by_stratum[stratum]
        labels = _kmeans(features[indices], min(clusters, len(indices)), generator)
        for i, label in zip(indices, labels, strict=True):
            cluster_of[i] = number * clusters + label
    if groups is not None:
        members: dict[Hashable, list[int]] = defaultdict(list)
        for i, group in enumerate(groups):
            members[group].append(i)
        for indices in members.values():
            votes = [cluster_of[i] for i in indices]
            winner = max(sorted(set(votes)), key=votes.count)
            for i in indices:
                cluster_of[i] = winner
    return cluster_of


def _kmeans(points, k: int, generator, iterations: int = 50) -> list[int]:
    """Cluster labels (0..k-1) of unit vectors by spherical k-means, k-means++ seeded."""
    import torch

    centres = [points[int(torch.randint(len(points), (1,), generator=generator))]]
    for _ in range(1, k):
        distance = (1 - points @ torch.stack(centres).T).min(dim=1).values.clamp(min=0)
        weights = distance / distance.sum() if distance.sum() > 0 else torch.full_like(distance, 1 / len(points))
        centres.append(points[int(torch.multinomial(weights, 1, generator=generator))])
    centres = torch.stack(centres)
    labels = (points @ centres.T).argmax(dim=1)
    for _ in range(iterations):
        moved = torch.stack([points[labels == c].mean(0) if (labels == c).any() else centres[c] for c in range(k)])
        centres = torch.nn.functional.normalize(moved, dim=1)
        new_labels = (points @ centres.T).argmax(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels.tolist()
