"""The explanatory graph (Zhang, Wu, Zhu, AAAI 2018): patterns per filter, parent links, part localization.

    from csg.graph import explanatory_graph, evaluate_graph
    out = explanatory_graph(model, images, ["layer1", "layer2", "layer3"], negatives=negative_images)
    graph = out["graph"]                      # ExplanatoryGraph: layers bottom to top
    graph.layers[0].mu, .sigma, .parents      # nodes (filter-major), positions in map cells
    graph.layers[0].scores, .positions        # per node and image

``mine_graph`` works on evidence maps alone (no model), ``infer_graph`` applies a mined graph to new
images, ``graph_run`` is ``csg graph RUN``. The definitions and the choices where the reference code is
ambiguous are in docs/graph.md.
"""
from .evaluate import few_shot_localization, location_instability
from .features import default_layers, gaussian_blur, negative_spread, prepare_layers
from .mining import (DEFAULT_RHO, ExplanatoryGraph, GraphLayer, MiningSettings, e_step, graph_arrays, infer_graph,
                     link_parents, mine_graph, mine_layer, parent_priors)
from .run import evaluate_graph, explanatory_graph, graph_run

__all__ = ["explanatory_graph", "evaluate_graph", "graph_run", "mine_graph", "mine_layer", "infer_graph",
           "MiningSettings", "ExplanatoryGraph", "GraphLayer", "DEFAULT_RHO", "e_step", "link_parents",
           "parent_priors", "graph_arrays", "location_instability", "few_shot_localization", "default_layers",
           "negative_spread", "prepare_layers", "gaussian_blur"]
