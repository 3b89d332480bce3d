"""The typed config layer: YAML + key=value, strict validation, one-line errors."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from kdlab.config import TrainConfig, apply_overrides, from_dict, load_config, to_dict
from kdlab.errors import ConfigError


def test_defaults_round_trip():
    cfg = TrainConfig()
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_overrides_set_nested_keys_and_section_names():
    cfg = load_config(TrainConfig, overrides=["model=resnet8", "dataset=cifar10", "epochs=3", "optim.lr=0.05",
                                              "method=kd", "method.T=2", "model.small_input=true"])
    assert cfg.model.name == "resnet8" and cfg.model.kwargs == {"small_input": True}
    assert cfg.dataset.name == "cifar10" and cfg.epochs == 3 and cfg.optim.lr == 0.05
    assert cfg.method.name == "kd" and cfg.method.params == {"T": 2}


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model: resnet56\nepochs: 5\noptim:\n  lr: 0.2\n  milestones: [3, 4]\n")
    cfg = load_config(TrainConfig, path, ["epochs=7"])
    assert cfg.model.name == "resnet56" and cfg.epochs == 7 and cfg.optim.milestones == [3.0, 4.0]


@pytest.mark.parametrize("override, key", [
    ("epochs=abc", "epochs"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.name=lamb", "optim.name"),
    ("bogus=1", "bogus"),
    ("dataset.bogus=1", "dataset.bogus"),
    ("channels_last=3", "channels_last"),
])
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, overrides=[override])
    message = str(err.value)
    assert f"'{key}'" in message and "\n" not in message


def test_int_accepted_for_float_but_not_bool_for_int():
    assert load_config(TrainConfig, overrides=["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError):
        load_config(TrainConfig, overrides=["epochs=true"])


def test_optional_and_literal_and_tuple():
    @dataclass
    class C:
        a: Optional[int] = None
        b: Literal["x", "y"] = "x"
        c: tuple[float, float] = (1.0, 2.0)
        d: list[str] = field(default_factory=list)

    c = from_dict(C, apply_overrides({}, ["a=null", "b=y", "c=[3, 4]", "d=one"]))
    assert c == C(a=None, b="y", c=(3.0, 4.0), d=["one"])


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["noequals"])
