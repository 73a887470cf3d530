"""The layer graph of a functional model: a topological order of its call nodes and
its single-tensor boundaries (dominators of the output).

In a DAG where every node lies on a path from the input to the output (true for a
Keras functional model), a node dominates the output iff no edge jumps over it in a
topological order: an edge a -> b with pos(a) < pos(v) < pos(b) is a path around v,
and without such an edge every path has to step onto v.
"""
from __future__ import annotations


def topological_nodes(model) -> list:
    """The model's own call nodes (its input first), in a topological order.

    Only the model's graph counts: calls of its layers in other models (the
    feature cache's suffix) are not in `model._nodes_by_depth`.
    """
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):  # Deeper nodes come first.
        nodes.extend(model._nodes_by_depth[depth])
    return nodes


def ordered_layers(model) -> list:
    """The operations of `model`, one per node, in the order of `topological_nodes`."""
    return [node.operation for node in topological_nodes(model)]


def boundaries(nodes) -> list[bool]:
    """For each node of `nodes` (a topological order), whether its output is a single
    tensor that every path from the input to the output passes through."""
    position = {id(node): i for i, node in enumerate(nodes)}
    crossing = [0] * (len(nodes) + 1)
    for i, node in enumerate(nodes):
        for parent in node.parent_nodes:
            start = position[id(parent)]
            if start + 1 < i:  # The edge jumps over positions start+1 .. i-1.
                crossing[start + 1] += 1
                crossing[i] -= 1
    result, covered = [], 0
    for i, node in enumerate(nodes):
        covered += crossing[i]
        result.append(covered == 0 and len(node.outputs) == 1)
    return result


def last_boundary_before(nodes, position: int) -> int:
    """Position of the last boundary strictly before `position` (0: the input)."""
    is_boundary = boundaries(nodes)
    return max(i for i in range(position) if is_boundary[i])
