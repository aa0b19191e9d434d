"""Configuration precedence: defaults < preset < TOML file < command-line flags."""
import pytest

from csg.core.errors import CsgError
from csg.training.config import PRESETS, TrainConfig, resolve_config


def test_each_source_overrides_the_one_before(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nepochs = 7\nlr = 0.05\n")
    assert TrainConfig().epochs == 30                                         # the default
    assert resolve_config({}, preset="paper-cifar").epochs == 200               # a preset beats the default
    cfg = resolve_config({}, preset="paper-cifar", toml_path=str(toml))
    assert cfg.epochs == 7 and cfg.lr == 0.05 and cfg.batch_size == PRESETS["paper-cifar"]["batch_size"]
    cfg = resolve_config({"epochs": 3, "lr": None}, preset="paper-cifar", toml_path=str(toml))
    assert cfg.epochs == 3 and cfg.lr == 0.05                                  # a flag beats the file; None = not given


def test_method_dependent_defaults_resolve_once():
    assert resolve_config({"method": "picnn"}).gate_lr == 1e-3
    assert resolve_config({"method": "csg"}).gate_lr == 0.05
    assert resolve_config({"method": "csg-plus"}).lambda1 == 0.0
    assert resolve_config({"method": "csg-plus", "lambda1": 2.0}).lambda1 == 2.0


def test_unknown_toml_keys_and_types(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("epoch = 3\n")
    with pytest.raises(CsgError, match="unknown key 'epoch'"):
        resolve_config({}, toml_path=str(toml))
    toml.write_text("hflip = 1\n")
    with pytest.raises(CsgError, match="hflip = 1 is not true or false"):
        resolve_config({}, toml_path=str(toml))


def test_model_keys_of_a_users_network(tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text('model = "pkg.nets:make"\nfeature_layer = "features.3"\n[model_kwargs]\nwidth = 8\n')
    cfg = resolve_config({}, toml_path=str(toml))
    assert cfg.model_builder == "pkg.nets:make" and cfg.model_kwargs == {"width": 8} and cfg.head is None
    toml.write_text('model = "pkg.nets:make"\nfeature_layer = "x"\nmodel_kwargs = 3\n')
    with pytest.raises(CsgError, match="model_kwargs = 3 is not a table of keyword arguments"):
        resolve_config({}, toml_path=str(toml))
    with pytest.raises(CsgError, match="model_kwargs = .* is not a table"):
        resolve_config({"model_builder": "pkg.nets:make", "feature_layer": "x", "model_kwargs": [1]})
    with pytest.raises(CsgError, match="needs --feature-layer"):
        resolve_config({"model_builder": "pkg.nets:make"})
    with pytest.raises(CsgError, match="--head names a part of your own network and needs --model"):
        resolve_config({"head": "fc"})
    # an --arch run's config.json records its feature layer: reading it back is no error
    assert TrainConfig.from_dict({"arch": "resnet20", "feature_layer": "layer3"}).feature_layer == "layer3"
