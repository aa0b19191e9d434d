"""Adversarial samples (METHOD.md section 6): white-box attacks, the detector, black-box attacks."""
from .attacks import ATTACKS, FGSM, PGD, Attack, CarliniWagnerL2, build_attack, is_adversarial, perturbation_norms
from .blackbox import BlackBoxResult, local_search_attack, one_pixel_attack
from .detector import BlockFeatures, detection_experiment, detector_error, find_blocks
from .run import attack_run
from .targets import random_targets

__all__ = [
    "Attack", "FGSM", "PGD", "CarliniWagnerL2", "ATTACKS", "build_attack", "is_adversarial", "perturbation_norms",
    "random_targets", "BlockFeatures", "find_blocks", "detector_error", "detection_experiment",
    "one_pixel_attack", "local_search_attack", "BlackBoxResult", "attack_run",
]
