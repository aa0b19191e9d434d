"""Adversarial samples (METHOD.md section 6): white-box attacks, the detector, black-box attacks."""
from .attacks import ATTACKS, FGSM, PGD, Attack, CarliniWagnerL2, build_attack, is_adversarial, perturbation_norms
from .blackbox import BlackBoxResult, local_search_attack, local_search_rounds, one_pixel_attack, one_pixel_generations
from .collect import PairCollector
from .detector import BlockFeatures, detection_experiment, detector_error, detector_predictions, find_blocks
from .experiment import SCHEMA, AdversarialResult, compute_adversarial
from .run import attack_run, write_result
from .stats import wilson_interval
from .targets import random_targets

__all__ = [
    "Attack", "FGSM", "PGD", "CarliniWagnerL2", "ATTACKS", "build_attack", "is_adversarial", "perturbation_norms",
    "random_targets", "BlockFeatures", "find_blocks", "detector_error", "detector_predictions",
    "detection_experiment", "PairCollector", "one_pixel_attack", "local_search_attack", "one_pixel_generations",
    "local_search_rounds", "BlackBoxResult", "wilson_interval", "compute_adversarial", "AdversarialResult",
    "SCHEMA", "attack_run", "write_result",
]
