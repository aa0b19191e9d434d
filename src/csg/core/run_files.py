"""The names of the files in a run directory: the one place they are spelled.

Layout::

    RUN/config.json              resolved configuration, with package versions
    RUN/checkpoint.safetensors   weights, gate, optimiser and RNG state (no pickle)
    RUN/log.jsonl                one JSON object per epoch
    RUN/metrics.json             accuracy, MIS, L1-density, ... (merged by each command)
    RUN/gate.npy                 C x K class-filter matrix (gated runs, ICNN, PICNN)
    RUN/features.npz             pooled, labels, predictions, logits of the test split
    RUN/mi_matrix.npy            K x C mutual information
    RUN/analysis.json / .npz     the analyses (csg analyze)
    RUN/localization.json / .npz csg localize
    RUN/adversarial.json / .npz  csg attack
    RUN/graph.json / .npz        csg graph
    RUN/atlas/index.html         csg atlas
    RUN/figures/*.png            every figure, readable on its own
    RUN/tensorboard/             TensorBoard event files (csg train --tensorboard)
    RUN/report/index.html        csg report
    RUN/.lock                    held by the process writing the run
"""
CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
LOG = "log.jsonl"
METRICS = "metrics.json"
GATE = "gate.npy"
FEATURES = "features.npz"
MI_MATRIX = "mi_matrix.npy"
ANALYSIS = "analysis.json"
ANALYSIS_ARRAYS = "analysis.npz"
LOCALIZATION = "localization.json"
LOCALIZATION_ARRAYS = "localization.npz"
ADVERSARIAL = "adversarial.json"
ADVERSARIAL_ARRAYS = "adversarial.npz"
GRAPH = "graph.json"
GRAPH_ARRAYS = "graph.npz"
ATLAS_DIR = "atlas"
TENSORBOARD_DIR = "tensorboard"
FIGURES = "figures"
REPORT_DIR = "report"
LOCK = ".lock"
