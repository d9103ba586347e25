"""Clean-up after rewriting: drop nodes and initializers nothing uses any more (constants a rewrite orphaned)."""

from __future__ import annotations

import onnx


def remove_dead_code(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(name in live for name in node.output if name):
            kept.append(node)
            live.update(name for name in node.input if name)
    kept.reverse()
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    # An initializer also listed as a graph input (IR < 4) is part of the interface: keep it.
    listed = {i.name for i in graph.input}
    unused = [init for init in graph.initializer if init.name not in live and init.name not in listed]
    for init in unused:
        graph.initializer.remove(init)
    return model
