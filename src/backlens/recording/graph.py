"""Where gradients leave a module: nodes built during its call whose edges reach its inputs.

A full backward hook finds these by wrapping the module's inputs and outputs in an identity
Function, which in-place activations break (pytorch#61519). Walking the graph after the call
finds the same edges without touching the tensors the model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge

from ..torch_private import PythonNode, next_sequence_nr, sequence_nr

__all__ = ["Boundary", "sequence_mark", "edge_of", "input_edges", "find_boundary"]


def sequence_mark() -> int:
    """The autograd sequence number now: nodes created later in this thread have larger ones."""
    return next_sequence_nr() - 1


def edge_of(tensor: torch.Tensor) -> GradientEdge:
    """`get_gradient_edge(tensor)`, without its Python overhead when the edge is a C++ node."""
    node = tensor.grad_fn
    if node is None or isinstance(node, PythonNode):  # a leaf, or a node that needs a token
        return get_gradient_edge(tensor)
    return GradientEdge(node, tensor.output_nr)


def input_edges(tensors: Sequence[torch.Tensor]) -> list[tuple[int, GradientEdge]]:
    """(position, gradient edge) of each tensor that requires grad."""
    return [(i, edge_of(t)) for i, t in enumerate(tensors) if t.requires_grad]


@dataclass
class Boundary:
    """Where gradients leave a call, as positions i of its input tensors.

    nodes: (node, [(j, i), ...]) where the node's edge j feeds input i. passthrough: (k, i)
    where output k is input i itself. same_as: {i: first position holding the same tensor}
    for a tensor passed at several positions (its gradient is recorded at the first).
    """

    nodes: list[tuple[Node, list[tuple[int, int]]]]
    passthrough: list[tuple[int, int]]
    same_as: dict[int, int]


def find_boundary(
    outputs: Sequence[tuple[int, torch.Tensor]],
    inputs: Sequence[tuple[int, GradientEdge]],
    mark: int,
) -> Boundary:
    """Walk back from the outputs through nodes created after `mark`; stop at the inputs' edges.

    outputs: (position, tensor) pairs of outputs that require grad. inputs: from `input_edges`,
    taken before the call (an in-place module changes its input's edge). Nodes older than
    `mark` existed before the call, so the walk never leaves the module's own subgraph.
    """
    targets: dict[tuple[int, int], int] = {}
    same_as: dict[int, int] = {}
    for i, edge in inputs:
        first = targets.setdefault((id(edge.node), edge.output_nr), i)
        if first != i:
            same_as[i] = first
    passthrough: list[tuple[int, int]] = []
    stack: list[Node] = []
    for k, tensor in outputs:
        edge = edge_of(tensor)
        hit = targets.get((id(edge.node), edge.output_nr))
        if hit is not None:
            passthrough.append((k, hit))
        elif sequence_nr(edge.node) > mark:
            stack.append(edge.node)
    seen: dict[int, Node] = {}  # holds the nodes, so their ids stay unique during the walk
    nodes: list[tuple[Node, list[tuple[int, int]]]] = []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        pairs: list[tuple[int, int]] = []
        for j, (child, output_nr) in enumerate(node.next_functions):
            if child is None:
                continue
            hit = targets.get((id(child), output_nr))
            if hit is not None:
                pairs.append((j, hit))
            elif sequence_nr(child) > mark and child.next_functions:
                stack.append(child)
        if pairs:
            nodes.append((node, pairs))
    return Boundary(nodes, passthrough, same_as)
