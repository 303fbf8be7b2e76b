import json
import tomllib

import pytest

from genloom.core.config import (
    RunConfig,
    TrainConfig,
    builtin_recipe_files,
    builtin_recipes,
    load_recipe,
    parse_override,
)
from genloom.core.errors import ConfigError


def test_builtin_recipe_loads_and_round_trips_through_json():
    config = load_recipe("shakespeare-char")
    assert config.model.kind == "transformer" and config.data.tokenizer == "char"
    again = RunConfig.from_dict(json.loads(config.to_json()))
    assert again == config


def test_overrides_are_typed():
    config = load_recipe("shakespeare-char", ["model.n_layer=3", "train.lr=3e-4", "train.tensorboard=true",
                                              "data.path=some.txt", "model.mlp=swiglu"])
    assert config.model.n_layer == 3 and isinstance(config.model.n_layer, int)
    assert config.train.lr == 3e-4 and config.train.tensorboard is True
    assert config.data.path == "some.txt" and config.model.mlp == "swiglu"


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown key model\.n_layers.*Did you mean model\.n_layer\?"):
        load_recipe("shakespeare-char", ["model.n_layers=3"])


def test_bad_choice_lists_valid_choices():
    with pytest.raises(ConfigError, match=r"model\.norm: 'batchnorm' is not allowed; valid choices: 'layernorm', 'rmsnorm'"):
        load_recipe("shakespeare-char", ["model.norm=batchnorm"])


def test_bad_types_and_ranges():
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number, got 'fast'"):
        load_recipe("shakespeare-char", ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"model\.n_layer: expected an integer"):
        load_recipe("shakespeare-char", ["model.n_layer=2.5"])
    with pytest.raises(ConfigError, match=r"model\.d_model: 100 is not divisible by model\.n_head=3"):
        load_recipe("shakespeare-char", ["model.d_model=100", "model.n_head=3"])
    with pytest.raises(ConfigError, match=r"train\.batch_size: must be at least 1"):
        TrainConfig(batch_size=0)


def test_unknown_section_recipe_and_override_form():
    with pytest.raises(ConfigError, match=r"unknown section 'modle'.*Did you mean model"):
        parse_override("modle.n_layer=2")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("model.n_layer")
    with pytest.raises(ConfigError, match=r"unknown recipe 'shakespeare-chr'.*Did you mean 'shakespeare-char'"):
        load_recipe("shakespeare-chr")
    with pytest.raises(ConfigError, match="unknown kind 'lstm'"):
        load_recipe("shakespeare-char", ["model.kind=lstm"])


def test_recipe_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[data]\npath = "x.txt"\n[model]\nn_layer = 1\n[train]\nlr = 1e-2\n')
    config = load_recipe(str(path))
    assert config.model.n_layer == 1 and config.train.lr == 1e-2 and config.recipe == str(path)
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.toml"))


def test_every_builtin_recipe_is_valid(tmp_path):
    bases = {}
    for kind, recipe, settings in (("text", "shakespeare-char", ["model.vocab_size=65"]),
                                   ("image", "glyphs-text-to-image", ["model.text_vocab_size=80", "model.text_length=32",
                                                                      "model.image_size=32", "model.channels=3"])):
        bases[kind] = tmp_path / kind
        bases[kind].mkdir()
        (bases[kind] / "config.json").write_text(load_recipe(recipe, settings).to_json())
    for name in builtin_recipes():
        try:
            load_recipe(name)
        except ConfigError as error:            # a fine-tuning recipe: valid on top of a base model
            assert "genloom finetune" in str(error)
            raw = tomllib.loads(builtin_recipe_files()[name].read_text())
            kind = "image" if raw["data"]["kind"] == "captioned_images" else "text"
            config = load_recipe(name, base=bases[kind])
            assert config.finetune is not None and config.finetune.base == str(bases[kind].resolve())


def test_budget_tiers_apply_by_max_time(tmp_path):
    path = tmp_path / "tiered.toml"
    path.write_text('[model]\nn_layer = 2\n[train]\nlr = 1e-3\n'
                    '[[budget]]\nmin_time = 600\nmodel = { n_layer = 6, dropout = 0.2 }\n'
                    '[[budget]]\nmin_time = 3600\nmodel = { n_layer = 8 }\n')
    assert load_recipe(str(path)).model.n_layer == 2
    assert load_recipe(str(path), ["train.max_time=599"]).model.n_layer == 2
    long = load_recipe(str(path), ["train.max_time=900"])
    assert long.model.n_layer == 6 and long.model.dropout == 0.2 and "budget tier" in long.recipe
    assert load_recipe(str(path), ["train.max_time=4000"]).model.n_layer == 8
    # the user's own overrides still win over the tier
    assert load_recipe(str(path), ["train.max_time=900", "model.n_layer=3"]).model.n_layer == 3
    path.write_text('[[budget]]\nmodel = { n_layer = 6 }\n')
    with pytest.raises(ConfigError, match="needs min_time"):
        load_recipe(str(path), ["train.max_time=900"])
