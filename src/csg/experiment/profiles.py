"""The sizes of the protocol (``csg experiment --profile``): ``quick`` fits the README's 2-core machine,
``paper`` is the published sizes for a GPU.

A profile is data: per part (``fashion-mnist``: Table 1, the analyses and the attacks; ``clutter``:
localization) the ``csg`` flags of each stage.
Every README table names the profile and part it comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..core.errors import CsgError

METHODS = ("std", "csg", "icnn", "picnn", "csg-plus")
PARTS = ("fashion-mnist", "clutter")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    #: csg train flags of the Fashion-MNIST part (Table 1)
    fashion_mnist: tuple[str, ...] = ()
    #: csg train flags of the clutter part (localization, Table 2) and csg localize flags
    clutter: tuple[str, ...] = ()
    localize: tuple[str, ...] = ()
    #: csg attack flags (Tables 3 and 4) and the seeds whose Fashion-MNIST runs are attacked
    attack: tuple[str, ...] = ()
    attack_seeds: tuple[int, ...] = (0,)
    #: csg analyze on every finished run, csg report on each
    analyze: tuple[str, ...] = ("--classes", "0,1")
    extra: dict = field(default_factory=dict)


PROFILES = {
    "quick": Profile(
        name="quick",
        description="the README's 2-core CPU budget: ResNet-20, 20,000 Fashion-MNIST images for 12 epochs; "
                    "clutter canvases long enough for CSG's gate to converge; detectors at 100 and 500 images "
                    "per class; black-box attacks at their published settings on 100 images",
        fashion_mnist=("--data", "fashion-mnist", "--arch", "resnet20", "--epochs", "12", "--subset", "20000",
                       "--eval-every", "4"),
        clutter=("--data", "fashion-mnist-clutter", "--arch", "resnet20", "--epochs", "10", "--subset", "6000",
                 "--batch-size", "64", "--test-subset", "2000", "--eval-every", "0"),
        localize=("--max-images", "1000", "--methods", "gradmap,activmap,cam"),
        attack=("--attacks", "fgsm,pgd,cw", "--train-sizes", "100,500", "--test-size", "100", "--repeats", "5",
                "--blackbox", "one-pixel,local-search", "--blackbox-samples", "100"),
    ),
    "paper": Profile(
        name="paper",
        description="the published sizes, for a GPU: 200 epochs on all 60,000 Fashion-MNIST images (the "
                    "paper's CIFAR-10 schedule length), the clutter set at full size, detectors at 500, 1000 "
                    "and 2000 images per class, black-box attacks on 500 images",
        fashion_mnist=("--data", "fashion-mnist", "--arch", "resnet20", "--epochs", "200", "--batch-size", "256",
                       "--lr-schedule", "multistep", "--eval-every", "10"),
        clutter=("--data", "fashion-mnist-clutter", "--arch", "resnet20", "--epochs", "60", "--batch-size", "128",
                 "--eval-every", "10"),
        localize=("--max-images", "all", "--methods", "gradmap,activmap,cam"),
        attack=("--attacks", "fgsm,pgd,cw", "--train-sizes", "500,1000,2000", "--test-size", "100", "--repeats",
                "5", "--blackbox", "one-pixel,local-search", "--blackbox-samples", "500"),
    ),
    "smoke": Profile(
        name="smoke",
        description="a few images and epochs, to check the whole pipeline in a minute (the tests use it)",
        methods=("std", "csg"), seeds=(0, 1),
        fashion_mnist=("--data", "fashion-mnist", "--arch", "resnet20", "--epochs", "2", "--warmup", "1",
                       "--subset", "60", "--test-subset", "40", "--batch-size", "30", "--eval-every", "0"),
        clutter=("--data", "fashion-mnist-clutter", "--arch", "resnet20", "--epochs", "2", "--warmup", "1",
                 "--subset", "40", "--test-subset", "20", "--batch-size", "20", "--eval-every", "0"),
        localize=("--max-images", "12", "--methods", "activmap,cam", "--allow-unconverged"),
        attack=("--attacks", "fgsm", "--train-sizes", "2", "--test-size", "2", "--repeats", "1", "--blackbox",
                "none", "--trees", "5"),
    ),
}


def get_profile(name: str, *, methods: str | None = None, seeds: str | None = None) -> Profile:
    """The named profile, with ``methods`` / ``seeds`` (comma lists) replacing its own when given."""
    if name not in PROFILES:
        raise CsgError(f"unknown --profile {name!r}; choose one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if methods:
        from ..methods import available_methods

        chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
        unknown = [m for m in chosen if m not in available_methods()]
        if unknown or not chosen:
            raise CsgError(f"--methods {methods!r}: unknown {', '.join(unknown) or 'empty list'}; choose from "
                           f"{', '.join(available_methods())}")
        profile = replace(profile, methods=chosen)
    if seeds:
        try:
            values = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise CsgError(f"--seeds takes comma-separated whole numbers, e.g. 0,1,2; got {seeds!r}") from None
        if not values or min(values) < 0:
            raise CsgError(f"--seeds needs whole numbers >= 0, got {seeds!r}")
        profile = replace(profile, seeds=values, attack_seeds=tuple(s for s in profile.attack_seeds if s in values)
                          or values[:1])
    return profile
