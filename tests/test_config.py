from pathlib import Path

import pytest
import yaml

from anomstream.models.dmad import DMADConfig
from anomstream.models.registry import MODELS
from anomstream.pipeline.cli import main
from anomstream.pipeline.config import load_config, load_score_config, parse_config
from anomstream.pipeline.errors import ConfigError

REPO_CONFIGS = ["configs/ped2_dmad_cpu.yaml", "configs/ped2_dmad.yaml"]


@pytest.mark.parametrize("path", REPO_CONFIGS)
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert isinstance(config.model.params, DMADConfig)
    assert config.train.epochs >= 10


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("configs").glob("*.yaml")))
def test_every_shipped_config_names_its_model_and_known_keys(path):
    config = load_config(path)
    assert isinstance(config.model.params, MODELS[config.model.name][1])
    assert config.train.output_dir.startswith("runs/")


def test_cpu_config_is_smaller_than_paper_config():
    cpu, paper = load_config(REPO_CONFIGS[0]).model.params, load_config(REPO_CONFIGS[1]).model.params
    # the CPU config keeps the paper's widths and memory but a quarter of the pixels, grey, fewer epochs
    assert cpu.image_size * 2 == paper.image_size and cpu.channels == 1 and paper.channels == 3
    assert cpu.widths == paper.widths == (32, 64, 128, 256) and cpu.memory_size == paper.memory_size == 200
    assert load_config(REPO_CONFIGS[0]).train.epochs < load_config(REPO_CONFIGS[1]).train.epochs


@pytest.mark.parametrize("data, message", [
    ({"model": {"name": "dmad", "widht": 3}}, "cfg.yaml: model.widht: unknown key"),
    ({"model": {"name": "dmad", "image_size": "big"}}, "cfg.yaml: model.image_size: Input should be a valid integer"),
    ({"model": {"name": "nope"}}, "cfg.yaml: model.name: unknown model 'nope'"),
    ({"model": {"name": "dmad"}, "train": {"data": "x", "epohcs": 3}}, "cfg.yaml: train.epohcs: unknown key"),
    ({"model": {"name": "dmad"}, "score": {"batch_size": 0}}, "cfg.yaml: score.batch_size: Input should be greater"),
    ({"model": {"name": "dmad"}, "train": {"data": "x", "precision": "fp16"}},
     "cfg.yaml: train.precision: Input should be 'fp32' or 'bf16'"),
    ({"modle": {}}, "cfg.yaml: model: Field required"),
    ({"model": {"name": "dmad"}, "score": 5}, "cfg.yaml: score: should be a mapping of keys, got int 5"),
    ({"model": "dmad"}, "cfg.yaml: model: should be a mapping of keys, got str 'dmad'"),
    ({"model": {"name": "dmad", "score": "best"}}, "cfg.yaml: model.score: Input should be 'paper' or 'official'"),
])
def test_bad_keys_are_one_line_errors_naming_the_key(data, message):
    with pytest.raises(ConfigError) as error:
        parse_config(data, "cfg.yaml")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_cli_exits_2_on_bad_config(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "dmad", "widths": [1, 2]}, "train": {"data": "x"}}))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: model.widths") and "\n" not in err


def test_score_config_may_hold_only_its_score_section_and_errors_list_each_complaint(tmp_path):
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump({"score": {"replicas": 3, "flush_s": 0}}))
    section, model = load_score_config(path)
    assert (section.replicas, section.flush_s, section.batch_size, model) == (3, 0.0, 16, None)
    section, model = load_score_config(REPO_CONFIGS[0])  # a whole config: its model too
    assert model == "dmad"
    path.write_text(yaml.safe_dump({"score": {"replica": 3, "batch_size": 0}}))
    with pytest.raises(ConfigError) as error:
        load_score_config(path)
    assert str(error.value) == (f"{path}: score.batch_size: Input should be greater than or equal to 1; "
                                f"score.replica: unknown key")
    path.write_text(yaml.safe_dump({"scor": {"replicas": 1}}))
    with pytest.raises(ConfigError) as error:
        load_score_config(path)
    assert str(error.value) == (f"{path}: scor: unknown key (a score config holds a score section; a whole config: "
                                f"model, train, score)")
    path.write_text(yaml.safe_dump({"train": {"epochs": 0}, "score": {"replicas": 1}}))
    with pytest.raises(ConfigError) as error:  # train needs a model: the whole file is checked
        load_score_config(path)
    assert str(error.value) == (f"{path}: model: Field required; train.data: Field required; "
                                f"train.epochs: Input should be greater than or equal to 1")
