"""Medusa candidate trees: `medusa_choices` → the buffers one tree-attention forward needs.

A choice is a path of top-k ranks, one per head: `(0, 1)` = head 0's best token followed by head 1's second best.
The tree's root (node 0) is the token the base model already chose; node i > 0 is `choices[i - 1]` after sorting
by (depth, ranks). The candidate tokens of one step are laid out flat as

    [root, head0 top-k (k values), head1 top-k, ...]

and `tree_indices[i]` says which flat entry node i takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Choices = Sequence[tuple[int, ...]]

# The tree Medusa published for Vicuna-7B (63 nodes, 4 heads, top-10), from the Medusa paper's tree search.
MC_SIM_7B_63: tuple[tuple[int, ...], ...] = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0), (0, 5),
    (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,),
    (9,), (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0),
    (0, 1, 1), (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0),
    (1, 4), (7, 0), (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1),
    (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
)  # fmt: skip

# Small trees for CPU, where every extra tree token costs measurable time.
CPU_TREE_12: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 0, 0),
    (0, 0, 0, 1),
)  # fmt: skip
CPU_TREE_6: tuple[tuple[int, ...], ...] = ((0,), (1,), (0, 0), (0, 1), (0, 0, 0), (0, 0, 0, 0))


def chain(depth: int) -> tuple[tuple[int, ...], ...]:
    """The top-1 chain of `depth` drafted tokens: (0,), (0, 0), ..."""
    return tuple((0,) * length for length in range(1, depth + 1))


TREES: dict[str, tuple[tuple[int, ...], ...]] = {
    "mc_sim_7b_63": MC_SIM_7B_63,
    "cpu_12": CPU_TREE_12,
    "cpu_6": CPU_TREE_6,
    "chain_4": chain(4),
    "chain_2": chain(2),
    "plain": (),
}


@dataclass(frozen=True, slots=True)
class TreeBuffers:
    """Everything one tree step needs; T = nodes (root included), P = leaf paths, D = max depth.

    attention_mask: [T, T] bool, node i sees node j when j is i or an ancestor of i.
    tree_indices:   [T] long, flat candidate entry of each node.
    depths:         [T] long, position offset of each node past the row's cache length (root 0).
    retrieve_indices: [P, D + 1] long, node indices along each root→leaf path, -1 padded.
    parents:        [T] long, parent node of each node (the root is its own parent).
    ancestors:      [T, D + 1] long, the node at each depth of node i's root path (i itself at its own depth),
                    -1 past it.
    lookahead:      a spine tree laid out top-1 chain first (nodes 0 .. spine_nodes - 1 at their depths), its
                    other nodes leaves off that chain: only the chain is verified, the leaves draft the next step
                    (decode.lookahead_step).
    """

    name: str
    choices: tuple[tuple[int, ...], ...]
    attention_mask: torch.Tensor
    tree_indices: torch.Tensor
    depths: torch.Tensor
    retrieve_indices: torch.Tensor
    parents: torch.Tensor
    ancestors: torch.Tensor
    topk: int
    lookahead: bool = False

    @property
    def num_nodes(self) -> int:
        return int(self.tree_indices.shape[0])

    @property
    def max_depth(self) -> int:
        return int(self.retrieve_indices.shape[1]) - 1

    @property
    def spine_nodes(self) -> int:
        """The root and the top-1 chain under it, (0,), (0, 0), ...: with `lookahead` they come first."""
        return 1 + sum(1 for path in self.choices if not any(path))

    @property
    def is_chain(self) -> bool:
        """Every node sits at the slot of its depth (plain or a top-1 chain): its path is stored contiguously."""
        return self.max_depth + 1 == self.num_nodes

    def to(self, device: torch.device | str) -> TreeBuffers:
        return TreeBuffers(
            self.name,
            self.choices,
            self.attention_mask.to(device),
            self.tree_indices.to(device),
            self.depths.to(device),
            self.retrieve_indices.to(device),
            self.parents.to(device),
            self.ancestors.to(device),
            self.topk,
            self.lookahead,
        )


def sorted_choices(choices: Choices) -> list[tuple[int, ...]]:
    """Choices by depth, then rank; every proper prefix of a choice must be a choice too."""
    ordered = sorted({tuple(choice) for choice in choices}, key=lambda path: (len(path), path))
    known = set(ordered)
    for path in ordered:
        if not path or min(path) < 0:
            raise ValueError(f"invalid Medusa choice {path}")
        if len(path) > 1 and path[:-1] not in known:
            raise ValueError(f"Medusa choice {path} lacks its parent {path[:-1]}")
    return ordered


def build_tree_buffers(
    choices: Choices, *, name: str = "custom", device: str | torch.device = "cpu", lookahead: bool = False
) -> TreeBuffers:
    """The buffers of a tree; with `lookahead` (spine trees only, see is_spine_tree) the top-1 chain comes first."""
    paths = sorted_choices(choices)
    if lookahead:
        if not is_spine_tree(paths):
            raise ValueError("a lookahead tree may only branch off its top-1 chain: (0, ..., 0, r) nodes")
        paths.sort(key=lambda path: (any(path), len(path), path))
    topk = max((max(path) for path in paths), default=-1) + 1
    node_of = {(): 0} | {path: index + 1 for index, path in enumerate(paths)}
    num_nodes = len(paths) + 1
    attention_mask = torch.eye(num_nodes, dtype=torch.bool)
    tree_indices = torch.zeros(num_nodes, dtype=torch.long)
    depths = torch.zeros(num_nodes, dtype=torch.long)
    parents = torch.zeros(num_nodes, dtype=torch.long)
    max_depth = max((len(path) for path in paths), default=0)
    ancestors = torch.full((num_nodes, max_depth + 1), -1, dtype=torch.long)
    for path, node in node_of.items():
        for depth in range(len(path) + 1):
            attention_mask[node, node_of[path[:depth]]] = True
            ancestors[node, depth] = node_of[path[:depth]]
        if path:
            tree_indices[node] = 1 + (len(path) - 1) * topk + path[-1]
            depths[node] = len(path)
            parents[node] = node_of[path[:-1]]
    leaves = [
        path for path in node_of if not any(other[: len(path)] == path and other != path for other in paths)
    ]
    retrieve = torch.full((len(leaves), max_depth + 1), -1, dtype=torch.long)
    for row, leaf in enumerate(sorted(leaves, key=lambda path: (len(path), path))):
        for depth in range(len(leaf) + 1):
            retrieve[row, depth] = node_of[leaf[:depth]]
    return TreeBuffers(
        name,
        tuple(paths),
        attention_mask,
        tree_indices,
        depths,
        retrieve,
        parents,
        ancestors,
        max(topk, 1),
        lookahead,
    ).to(device)


def spine_choices(choices: Choices) -> list[tuple[int, ...]]:
    """The paths that branch off the top-1 chain only, (0, ..., 0, r): the nodes recurrent heads can fill
    (they draft along their own best path, see drafting.heads._draft_recurrent)."""
    return [tuple(path) for path in choices if all(rank == 0 for rank in path[:-1])]


def is_spine_tree(choices: Choices) -> bool:
    """Every node branches off the top-1 chain (see spine_choices)."""
    return len(spine_choices(choices)) == len(choices)
