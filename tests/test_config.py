import re

import pytest

from deepmetric.training.config import (
    ConfigError,
    ExperimentConfig,
    from_dict,
    load_config,
    save_config,
    to_dict,
)


def test_defaults_validate():
    config = load_config()
    assert isinstance(config, ExperimentConfig)
    assert config.sampler.batch_size == config.sampler.classes_per_batch * config.sampler.samples_per_class


def test_yaml_round_trip(tmp_path):
    config = load_config(None, ["loss.name=contrastive", "loss.neg_margin=0.7", "model.embedding_size=64"])
    path = tmp_path / "c.yaml"
    save_config(config, path)
    again = load_config(path)
    assert to_dict(again) == to_dict(config)
    assert again.loss.params == {"neg_margin": 0.7}


def test_overrides_are_typed():
    config = load_config(
        None, ["train.iterations=7", "optimizer.lr=3e-4", "model.normalize=false", "miner=null"]
    )
    assert config.train.iterations == 7
    assert config.optimizer.lr == pytest.approx(3e-4)
    assert config.model.normalize is False
    assert config.miner is None


def test_loss_given_as_string_then_param_override():
    config = load_config(None, ["loss=contrastive", "loss.neg_margin=0.5"])
    assert config.loss.name == "contrastive" and config.loss.params == {"neg_margin": 0.5}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.embeding_size=3"], "model.embeding_size"),
        (["trian.iterations=3"], "trian"),
        (["train.iterations=many"], "train.iterations"),
        (["train.iterations=1.5"], "train.iterations"),
        (["model.normalize=3"], "model.normalize"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["loss.name=tripletx"], "loss.name"),
        (["loss.marginn=0.1"], "loss.marginn"),
        (["loss.num_classes=3"], "loss.num_classes"),
        (["miner.name=nope"], "miner.name"),
        (["data.name=imagenet22k"], "data.name"),
        (["model.backbone=resnet9000"], "model.backbone"),
        (["eval.distance=manhattan"], "eval.distance"),
        (["train.best_metric=recall@100"], "train.best_metric"),
        (["schedule.name=exp"], "schedule.name"),
        (["noequals"], "noequals"),
    ],
)
def test_bad_values_name_the_key(overrides, named):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_suggests_close_key():
    with pytest.raises(ConfigError, match=re.escape("did you mean 'model.embedding_size'")):
        load_config(None, ["model.embeding_size=3"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("nothere.yaml")):
        load_config(tmp_path / "nothere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=re.escape("bad.yaml")):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_from_dict_refuses_non_mapping_section():
    with pytest.raises(ConfigError, match="model"):
        from_dict({"model": 3})


def test_unknown_metric_is_refused():
    with pytest.raises(ConfigError, match=re.escape("eval.metrics")):
        load_config(None, ["eval.metrics=[recall@1, recal@2]"])
