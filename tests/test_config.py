"""Config layering and validation: presets, --set overrides, params.yaml, and errors naming the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    Config,
    ConfigError,
    SACConfig,
    list_presets,
    load_config,
    load_params,
    load_preset,
    overrides_to_dict,
    parse_override,
)


def error_for(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=list(overrides))
    return str(err.value)


def test_defaults_validate() -> None:
    cfg = Config()
    assert cfg.policy.kind == "flow_t" and cfg.sac.gamma == 0.99


def test_unknown_keys_name_the_dotted_key_and_the_allowed_ones() -> None:
    msg = error_for("sac.batchsize=3")
    assert "'sac.batchsize'" in msg and "batch_size" in msg
    assert "'pretrain.dataset.fromat'" in error_for("pretrain.dataset.fromat=d4rl")
    assert "'optim'" in error_for("optim.lr=1")


@pytest.mark.parametrize(("override", "key", "expected"), [
    ("sac.gamma=abc", "sac.gamma", "number"),
    ("sac.batch_size=1.5", "sac.batch_size", "integer"),
    ("policy.hidden=true", "policy.hidden", "integer"),  # a bool is not an int
    ("sac.learn_alpha=1", "sac.learn_alpha", "true or false"),
    ("finetune.env_id=3", "finetune.env_id", "string"),
    ("collect.noise_levels=0.1", "collect.noise_levels", "list"),
    ("collect.noise_levels=[0.1, x]", "collect.noise_levels[1]", "number"),
    ("policy=3", "policy", "mapping"),
])
def test_wrong_types(override: str, key: str, expected: str) -> None:
    msg = error_for(override)
    assert f"'{key}'" in msg and expected in msg


@pytest.mark.parametrize(("override", "key"), [
    ("policy.steps=0", "policy.steps"),
    ("policy.steps=33", "policy.steps"),
    ("sac.actor_lr=-0.001", "sac.actor_lr"),
    ("sac.critic_lr=0", "sac.critic_lr"),
    ("sac.gamma=1.5", "sac.gamma"),
    ("sac.tau=0", "sac.tau"),
    ("finetune.offline_ratio=1.5", "finetune.offline_ratio"),
    ("finetune.total_steps=-1", "finetune.total_steps"),
    ("sac.grad_clip=0", "sac.grad_clip"),
    ("sac.adam_beta1=1", "sac.adam_beta1"),
])
def test_out_of_range(override: str, key: str) -> None:
    msg = error_for(override)
    assert f"'{key}'" in msg and "out of range" in msg


def test_cross_field_checks() -> None:
    msg = error_for("sac.batch_size=64", "finetune.buffer_size=32")
    assert "'sac.batch_size'" in msg and "'finetune.buffer_size'" in msg
    assert "'policy.n_heads'" in error_for("policy.kind=flow_t", "policy.d_model=10", "policy.n_heads=4")
    assert "'sac.actor_noise_std'" in error_for("policy.noise=learned", "sac.actor_noise_std=0.05")
    with pytest.raises(ConfigError, match="'sac.gamma'"):
        Config(sac=SACConfig(gamma=2.0))  # direct construction validates too


def test_literal_errors_list_the_choices() -> None:
    msg = error_for("policy.kind=flow_x")
    assert "'policy.kind'" in msg and "'flow_g'" in msg and "'gaussian'" in msg
    assert "'critic.kind'" in error_for("critic.kind=twin")
    assert "'policy.noise'" in error_for("policy.noise=none")
    assert "'finetune.buffer_mode'" in error_for("finetune.buffer_mode=fifo")


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("name", list_presets())
def test_no_preset_learns_alpha_for_a_flow_with_a_fixed_sigma(name: str) -> None:
    # a fixed sigma pins the flow's path entropy, so a learned alpha chases an unreachable target and runs away
    # (measured: PickPlaceCan 0.05 -> 4.65, Hopper from scratch 0.2 -> 18.7; docs/results.md)
    # The public O2O code's temperature loss (sac.alpha_loss: paper_code, the <task>_paper_* presets) has the
    # entropy's sign flipped: with its target 0 it drives alpha down, not up, so it cannot run away this way
    cfg = load_config(name)
    runaway = (cfg.policy.kind != "gaussian" and cfg.policy.noise == "fixed" and cfg.sac.learn_alpha
               and cfg.sac.alpha_loss == "standard")
    assert not runaway, f"preset {name!r}: learn_alpha with a fixed-sigma {cfg.policy.kind} policy"


def test_presets_exist_and_unknown_preset_is_named() -> None:
    assert {"default", "smoke"} <= set(list_presets())
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*smoke"):
        load_config("nope")


def test_preset_then_overrides_take_precedence() -> None:
    smoke = load_preset("smoke")
    cfg = load_config("smoke", ["sac.batch_size=16", "policy.kind=flow_g"])
    assert cfg.sac.batch_size == 16 and cfg.policy.kind == "flow_g"
    assert cfg.finetune.total_steps == smoke["finetune"]["total_steps"]  # untouched keys keep the preset's value
    nested = load_config("smoke", {"sac": {"batch_size": 8}})
    assert nested.sac.batch_size == 8 and nested.sac.bc_weight == smoke["sac"]["bc_weight"]


def test_set_parsing() -> None:
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=[0.1, 0.2]") == ("a.b", [0.1, 0.2])
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b=") == ("a.b", None)
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    assert parse_override("a.b={k: 1}") == ("a.b", {"k": 1})
    assert overrides_to_dict(["a.b=1", "a.c.d=x", "e=true"]) == {"a": {"b": 1, "c": {"d": "x"}}, "e": True}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("a.b")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("=3")
    with pytest.raises(ConfigError, match="conflicts"):
        overrides_to_dict(["sac=1", "sac.gamma=0.9"])

    cfg = load_config(overrides=["collect.noise_levels=[0.0, 0.2]", "sac.grad_clip=null", "policy.steps=8",
                                 "sac.target_entropy=-3", "finetune.env_options={horizon: 50}"])
    assert cfg.collect.noise_levels == [0.0, 0.2] and cfg.sac.grad_clip is None and cfg.policy.steps == 8
    assert cfg.sac.target_entropy == -3.0 and isinstance(cfg.sac.target_entropy, float)
    assert cfg.finetune.env_options == {"horizon": 50}


def test_exponent_notation_numbers_are_accepted() -> None:
    cfg = load_config(overrides=["sac.actor_lr=3e-4", "finetune.buffer_size=1e6"])
    assert cfg.sac.actor_lr == 3e-4 and cfg.finetune.buffer_size == 1_000_000


def test_params_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"preset": "smoke", "seed": 3, "sac": {"batch_size": 16}, "finetune": {},
                                    "pretrain": {"dataset": {"format": "d4rl", "source": "x.hdf5"}}}))
    cfg = load_params(path)
    assert cfg.name == "smoke" and cfg.seed == 3 and cfg.sac.batch_size == 16
    assert cfg.pretrain.dataset.format == "d4rl" and cfg.pretrain.dataset.source == "x.hdf5"
    assert cfg.policy.d_model == load_preset("smoke")["policy"]["d_model"]
    assert load_params(path, extra=["seed=4"]).seed == 4

    path.write_text(yaml.safe_dump({"preset": "smoke", "sac": {"gama": 0.9}}))
    with pytest.raises(ConfigError, match=rf"{path}.*'sac.gama'"):
        load_params(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_params(path)
    with pytest.raises(ConfigError, match="no params file"):
        load_params(tmp_path / "missing.yaml")


def test_an_empty_mapping_clears_a_mapping_field_and_leaves_a_section(tmp_path: Path) -> None:
    assert load_config("smoke").finetune.env_options == {"horizon": 80}
    assert load_config("smoke", ["finetune.env_options={}"]).finetune.env_options == {}
    merged = load_config("smoke", ["finetune.env_options.terminate_on_success=false"]).finetune.env_options
    assert merged == {"horizon": 80, "terminate_on_success": False}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"preset": "smoke", "finetune": {}, "sac": {}}))
    cfg = load_params(path)
    assert cfg.finetune.env_options == {"horizon": 80} and cfg.finetune.total_steps == 160
    assert load_params(path, ["finetune.env_options={}"]).finetune.env_options == {}


def test_env_options_left_for_another_env_name_the_key_and_how_to_clear_it(tmp_path: Path) -> None:
    from pipeline.workflow.finetune import finetune

    cfg = load_config("smoke", ["finetune.env_id=Pendulum-v1", "finetune.from_pretrained=false",
                                "trainer.progress=false"])
    with pytest.raises(ConfigError, match=r"'finetune.env_options' = \{'horizon': 80\}.*finetune.env_options=\{\}"):
        finetune(cfg, tmp_path)


def test_every_option_of_every_kind_and_format_is_a_config_key() -> None:
    """The policy kinds' and dataset formats' tables (pipeline.policies.kinds, pipeline.data.formats) are what the
    config offers: a kind's option or a reader's option that no config key sets could not be chosen."""
    from dataclasses import fields

    from pipeline.config import DatasetConfig, PolicyConfig
    from pipeline.data import FORMATS
    from pipeline.policies import POLICY_KINDS, policy_options

    policy_keys, dataset_keys = {f.name for f in fields(PolicyConfig)}, {f.name for f in fields(DatasetConfig)}
    for kind in POLICY_KINDS:
        assert set(policy_options(kind)) <= policy_keys, kind
    for fmt in FORMATS.values():
        assert set(fmt.options) <= dataset_keys, fmt.name
    assert load_config(overrides=["pretrain.dataset.format=d4rl", "pretrain.dataset.env_name=hopper-medium-v2",
                                  "pretrain.dataset.filter_key=train"]).pretrain.dataset.reader_options() == \
        {"env_name": "hopper-medium-v2"}  # options of another format stay with it


def test_repository_params_yaml_loads() -> None:
    path = Path(__file__).resolve().parent.parent / "params.yaml"
    if not path.is_file():
        pytest.skip("no params.yaml in this checkout")
    assert isinstance(load_params(path), Config)


def test_policy_kwargs_follow_the_kind() -> None:
    cfg = load_config(overrides=["policy.kind=flow_g", "policy.noise=learned"])
    kwargs = cfg.policy.policy_kwargs()
    assert "noise_std" not in kwargs and kwargs["noise"] == "learned" and "d_model" not in kwargs
    gauss = load_config(overrides=["policy.kind=gaussian"]).policy.policy_kwargs()
    assert set(gauss) == {"hidden", "layers", "batch_renorm", "tanh_jacobian", "log_std_min", "log_std_max"}
    exact = load_config(overrides=["policy.kind=flow_t", "policy.tanh_jacobian=exact"]).policy.policy_kwargs()
    assert exact["tanh_jacobian"] == "exact"
    with pytest.raises(ConfigError, match="tanh_jacobian"):
        load_config(overrides=["policy.tanh_jacobian=unfloored"])
    per_step = load_config(overrides=["policy.kind=flow_g", "policy.batch_renorm=crossq_per_step"])
    assert per_step.policy.policy_kwargs()["batch_renorm"] == "crossq_per_step"
    with pytest.raises(ConfigError, match="'policy.batch_renorm' = 'crossq_per_step' needs a flow policy"):
        load_config(overrides=["policy.kind=gaussian", "policy.batch_renorm=crossq_per_step"])
