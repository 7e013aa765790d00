import copy
import re
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import ValidationError

from diffusionlab.config.params import FAMILY_DEFAULT, Params, RunConfig, load_params, parse_params
from diffusionlab.config.sampling import SampleConfig
from diffusionlab.errors import ConfigError
from diffusionlab.families.params import PARAMS as FAMILY_PARAMS
from diffusionlab.nn.unet import UNetConfig
from diffusionlab.sampling.names import SamplerName
from diffusionlab.validation import flatten, validate

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_load_and_resolve_every_combination(raw):
    params = parse_params(raw)
    for dataset in params.datasets:
        for model in params.models:
            run = params.run(dataset, model)
            assert RunConfig.from_dict(run.to_dict()) == run


SECTIONS = [name for name in Params.model_fields if name not in ("datasets", "models")]


@pytest.mark.parametrize("section", SECTIONS)
def test_params_yaml_writes_every_key_of_a_section_at_its_default(raw, section):
    # params.yaml is the one source: every key is written there, and a key deleted from it falls back to the same value
    default = Params.model_fields[section].default
    assert sorted(set(type(default).model_fields) - set(raw[section])) == []
    written = validate(type(default), raw[section]).model_dump()
    assert {k: v for k, v in default.model_dump().items() if written[k] != v} == {}


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_each_family_s_block_writes_every_key_of_its_family(raw, family):
    optional = {"network", "train_steps", "autoencoder", "text_conditional"}  # a model on pixels, on the dataset's own
    if family == "vlb":
        optional.add("variance")  # one value only
    assert sorted(set(FAMILY_PARAMS[family].model_fields) - set(raw["models"][family]) - optional) == []
    block = raw["models"][family]
    defaults = FAMILY_PARAMS[family]()
    assert block["label_dropout"] == defaults.label_dropout  # a block of your own gets the reference model's rate


@pytest.mark.parametrize("key", ["network", "unet", "unet.dropout", "dit.depth", "random_flip"])
def test_a_dataset_block_without_a_key_is_refused_naming_it(raw, key):
    block = raw["datasets"]["mnist"]
    if "." in key:
        del block[key.split(".")[0]][key.split(".")[1]]
    else:
        del block[key]
    with pytest.raises(ConfigError, match=rf"datasets\.mnist has no {re.escape(key)}: a dataset block has no defaults"):
        parse_params(raw)


def test_unknown_key_is_rejected_with_the_nearest_valid_key(raw):
    raw["train"]["lrr"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown key train\.lrr in params.yaml; did you mean train\.lr\?"):
        parse_params(raw)


def test_unknown_key_in_the_wrong_section_points_to_the_right_one(raw):
    raw["sample"]["lr"] = 0.1
    with pytest.raises(ConfigError, match=r"did you mean (train|classifier)\.lr\?"):
        parse_params(raw)


def test_unknown_dataset_block_is_rejected(raw):
    raw["datasets"]["minst"] = raw["datasets"]["mnist"]
    with pytest.raises(ConfigError, match=r"datasets\.minst.*did you mean datasets\.mnist\?"):
        parse_params(raw)


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("train", "lr", "fast", r"train\.lr must be a number, got 'fast'"),
        ("train", "lr", -1.0, r"train\.lr must be > 0"),
        ("train", "seed", 1.5, r"train\.seed must be an integer"),
        ("train", "device", "tpu", r"train\.device must be one of 'auto', 'cpu', 'cuda', got 'tpu'"),
        ("sample", "clip_denoised", "yes", r"sample\.clip_denoised must be true or false"),
        ("sample", "num_samples", 0, r"sample\.num_samples must be >= 1, got 0"),
        ("pipeline", "datasets", ["imagenet"], r"pipeline\.datasets\[0\] must be one of"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(raw, section, key, value, message):
    raw[section][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_yaml_exponent_without_a_dot_is_read_as_a_number(raw):
    raw["train"]["lr"] = "1e-4"  # how YAML 1.1 (and so `dvc exp run -S train.lr=1e-4`) delivers it
    assert parse_params(raw).train.lr == 1e-4


def test_image_size_must_survive_the_unet_downsampling(raw):
    raw["datasets"]["digits"]["image_size"] = 18
    with pytest.raises(ConfigError, match=r"datasets\.digits: image_size 18 is not divisible by 4"):
        parse_params(raw)


def test_attention_resolution_must_exist_in_the_unet(raw):
    raw["datasets"]["digits"]["unet"]["attention_resolutions"] = [5]
    with pytest.raises(ConfigError, match=r"attention_resolutions has 5"):
        parse_params(raw)


def test_sampling_steps_above_the_model_steps_are_rejected(raw):
    raw["sample"].update(sampler="ddim", steps=2000)
    with pytest.raises(ConfigError, match=r"sample\.steps is 2000 but models\.ddpm\.timesteps is 1000"):
        parse_params(raw)


def test_ancestral_sampler_with_fewer_steps_is_respaced_not_rejected(raw):
    raw["sample"].update(sampler="ddpm", steps=50, sweep_steps=[10, 100])
    assert parse_params(raw).sample.steps == 50

def test_a_model_block_s_train_steps_overrides_the_dataset_s_for_that_model_only(raw):
    raw["models"]["flow_dit"]["train_steps"] = 600
    params = parse_params(raw)
    assert params.run("digits", "flow_dit").data.train_steps == 600
    assert params.run("digits", "flow").data.train_steps == raw["datasets"]["digits"]["train_steps"] != 600
    raw["models"]["flow_dit"]["train_steps"] = 0
    with pytest.raises(ConfigError, match=r"models\.flow_dit\.train_steps must be >= 1"):
        parse_params(raw)


def test_one_key_selects_a_datasets_budget_merged_key_by_key_over_its_block_and_the_run_records_it(raw):
    written = parse_params(raw)
    assert written.datasets["mnist"].budget == "default"
    assert written.datasets["mnist"].unet.base_channels == raw["datasets"]["mnist"]["unet"]["base_channels"]
    raw["datasets"]["mnist"]["budget"] = "cpu"
    cpu, block = parse_params(raw), raw["datasets"]["mnist"]["budgets"]["cpu"]
    data = cpu.run("mnist", "ddpm").data
    assert data.budget == "cpu" and data.train_steps == block["train_steps"] != written.datasets["mnist"].train_steps
    assert data.unet.base_channels == block["unet"]["base_channels"]
    assert data.unet.channel_mult == written.datasets["mnist"].unet.channel_mult  # not in the budget: the block's
    assert cpu.datasets["cifar10"] == written.datasets["cifar10"] and cpu.datasets["digits"] == written.datasets["digits"]
    run = cpu.run("mnist", "ddpm")
    assert RunConfig.from_dict(run.to_dict()) == run  # a checkpoint's resolved config reads back as it was


def test_a_budget_that_is_not_defined_is_refused_naming_the_ones_that_are(raw):
    raw["datasets"]["mnist"]["budget"] = "gpu"
    with pytest.raises(ConfigError, match=r"datasets\.mnist\.budget is 'gpu', but datasets\.mnist has no "
                                          r"budgets\.gpu block; its budgets: default, cpu"):
        parse_params(raw)


@pytest.mark.parametrize("change, message", [
    ({"unet": {"base_channels": 0}}, r"datasets\.cifar10\.budgets\.cpu \(over datasets\.cifar10\): "
                                     r"unet\.base_channels must be >= 8"),
    ({"image_size": 16}, r"datasets\.cifar10\.budgets\.cpu\.image_size: a budget sizes the models and their "
                         r"training, not the data"),
    ({"train_step": 5}, r"datasets\.cifar10\.budgets\.cpu \(over datasets\.cifar10\): unknown key train_step"),
])
def test_a_budget_block_is_checked_whether_or_not_it_is_selected(raw, change, message):
    raw["datasets"]["cifar10"]["budgets"]["cpu"].update(change)
    assert raw["datasets"]["cifar10"]["budget"] == "default"
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_pipeline_must_name_defined_blocks(raw):
    raw["pipeline"]["models"] = ["ddpm", "ddpm_cosine"]
    with pytest.raises(ConfigError, match=r"no models\.ddpm_cosine block"):
        parse_params(raw)
    extra = copy.deepcopy(raw)
    extra["models"]["ddpm_cosine"] = {"family": "ddpm", "schedule": "cosine", "timesteps": 1000}
    assert parse_params(extra).pipeline.models == ("ddpm", "ddpm_cosine")


def test_missing_params_file_says_where_to_run(tmp_cwd):
    with pytest.raises(ConfigError, match="params.yaml not found"):
        load_params()


def test_flatten_names_nested_keys():
    assert flatten({"train": {"lr": 1, "unet": {"ch": 2}}}) == {"train.lr": 1, "train.unet.ch": 2}


def test_linear_schedule_needs_enough_steps_for_its_scaled_betas(raw):
    raw["models"]["ddpm"]["timesteps"] = 20
    with pytest.raises(ConfigError, match=r"models\.ddpm: the linear schedule needs timesteps >= 21"):
        parse_params(raw)


@pytest.mark.parametrize(
    "model,message",
    [
        ({"family": "ddpm", "variance": "learned_range"}, r"variance 'learned_range' does not apply to family 'ddpm'"),
        ({"family": "vlb", "variance": "fixed_small"}, r"variance 'fixed_small' does not apply to family 'vlb'"),
        ({"family": "vdm", "loss": "hybrid"}, r"loss 'hybrid' does not apply to family 'vdm'"),
        ({"family": "vlb", "loss": "hybrid", "importance_sampling": True}, r"importance_sampling .* loss 'vlb'"),
        ({"family": "vdm", "gamma_min": 5.0, "gamma_max": -13.0}, r"gamma_min \(5.0\) must be below gamma_max"),
        ({"family": "ddpm", "weighting": "sigmoid"}, r"models\.ddpm: weighting 'sigmoid' applies to family 'vdm' only"),
        ({"family": "vlb", "prediction": "v"}, r"prediction 'v' applies to family 'vdm' only"),
        ({"family": "vdm", "weighting": "v"}, r"weighting 'v' trains on a weighted loss.*set gamma: fixed"),
        ({"family": "vdm", "gamma": "scalar", "noise_sampling": "adaptive"},
         r"noise_sampling 'adaptive' draws the log-SNR itself: set gamma: fixed .*not gamma: scalar"),
        ({"family": "vdm", "weighting": "edm2"}, r"weighting"),
    ],
)
def test_settings_that_do_not_fit_the_model_family_are_rejected(raw, model, message):
    raw["models"]["ddpm"] = model
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_each_family_holds_its_own_defaults(raw):
    raw["models"] = {"a": {"family": "ddpm"}, "b": {"family": "vlb"}, "c": {"family": "vdm", "timesteps": 5000}}
    raw["pipeline"]["models"] = ["a", "b", "c"]
    models = parse_params(raw).models  # vdm: any number of sampling steps
    assert (models["a"].variance, models["a"].loss) == ("fixed_small", "simple")
    assert (models["b"].variance, models["b"].loss) == ("learned_range", "hybrid")
    assert not hasattr(models["c"], "variance") and not hasattr(models["c"], "loss")
    assert [m.discrete for m in models.values()] == [True, True, False]


def test_sweep_steps_are_checked_against_every_discrete_model(raw):
    raw["sample"]["sweep_steps"] = [10, 2000]
    with pytest.raises(ConfigError, match=r"sample.sweep_steps holds \[2000\] but models.ddpm.timesteps is 1000"):
        parse_params(raw)
    raw["sample"]["sweep_steps"] = [10, 10]
    with pytest.raises(ConfigError, match="lists a step count twice"):
        parse_params(raw)


def test_the_karras_grid_is_refused_for_the_evenly_spaced_samplers_and_for_a_flow(raw):
    raw["sample"]["grid"] = "karras"
    with pytest.raises(ConfigError, match="sample.grid: karras applies to euler, heun and the DPM-Solvers, but "
                                          "sample.sampler is 'ddpm'"):
        parse_params(raw)
    raw["sample"]["sampler"] = "dpmpp_2m"
    raw["pipeline"]["models"] = ["ddpm", "flow"]
    raw["sample"]["sampler_for"] = {"flow": "euler"}
    with pytest.raises(ConfigError, match="cannot place models.flow's levels"):
        parse_params(raw)
    raw["pipeline"]["models"] = ["ddpm"]
    assert parse_params(raw).sample.grid == "karras"


def test_feature_backends_must_be_known_unique_and_present(raw):
    for features, message in ((["clasifier"], "must be one of 'classifier', 'resnet', 'inception'"),
                              ([], "evaluate.features is empty"),
                              (["inception", "inception"], "lists a backend twice")):
        bad = copy.deepcopy(raw)
        bad["evaluate"]["features"] = features
        with pytest.raises(ConfigError, match=message):
            parse_params(bad)
    raw["evaluate"].update(fid=False, isc=False, kid=False, prc=False)
    with pytest.raises(ConfigError, match="enable at least one metric"):
        parse_params(raw)


def test_explicit_step_lists_are_checked_against_the_sampler_and_every_model(raw):
    raw["pipeline"]["models"] = ["ddpm", "vlb"]
    raw["sample"].update(sampler="ddpm", step_list=[999, 500, 0])
    assert parse_params(raw).sample.step_list == (999, 500, 0)
    for changes, message in [({"step_list": [999, 1000]}, r"holds \[1000\] but models\.ddpm has steps 0\.\.999"),
                             ({"step_list": [5, 5]}, "distinct steps"),
                             ({"sampler": "dpmpp_2m"}, "DPM-Solver\\+\\+ chooses its own")]:
        bad = copy.deepcopy(raw)
        bad["sample"].update(changes)
        with pytest.raises(ConfigError, match=message):
            parse_params(bad)
    raw["pipeline"]["models"] = ["ddpm", "vdm"]
    with pytest.raises(ConfigError, match=r"models\.vdm is a continuous-time model"):
        parse_params(raw)


@pytest.mark.parametrize("model,message", [
    ({"family": "ddpm", "gamma": "fixed"}, r"models\.ddpm: gamma 'fixed' applies to family 'vdm' only; .*'ddpm' block"),
    ({"family": "vdm", "importance_sampling": True}, r"models\.ddpm: importance_sampling True applies to family 'vlb'"),
    ({"family": "vdm", "schedule": "cosine"}, r"models\.ddpm: schedule 'cosine' does not apply to family 'vdm'"),
    ({"family": "dit"}, r"models\.ddpm\.family must be one of 'ddpm', 'vlb', 'vdm'(, '\w+')*, got 'dit'"),
    ({"schedule": "cosine"}, r"missing key models\.ddpm\.family in params.yaml \(one of 'ddpm', 'vlb', 'vdm'"),
    ({"family": "ddpm", "timesteps": 1000.0}, r"models\.ddpm\.timesteps must be an integer"),
    ({"family": "ddpm", "class_conditional": "yes"}, r"models\.ddpm\.class_conditional must be true or false"),
    ({"family": "vdm", "gamma_max": float("inf")}, r"models\.ddpm\.gamma_max must be a finite number"),
])
def test_a_model_block_is_checked_against_the_family_it_names(raw, model, message):
    raw["models"]["ddpm"] = model
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_a_family_number_may_be_written_as_yaml_1_1_reads_it(raw):
    raw["models"]["vlb"]["vlb_weight"] = "1e-3"
    assert parse_params(raw).models["vlb"].vlb_weight == 1e-3


@pytest.mark.parametrize("family", ["ddpm", "vlb", "vdm"])
def test_every_sampler_can_draw_from_the_diffusion_families(raw, family):
    raw["models"] = {"m": {"family": family}}
    raw["pipeline"]["models"] = ["m"]
    for sampler in get_args(SamplerName):
        raw["sample"]["sampler"] = sampler
        params = parse_params(raw)
        assert params.sample.sampler in type(params.models["m"]).SAMPLERS


def test_a_family_that_cannot_use_sample_sampler_draws_with_its_own_default(raw, monkeypatch):
    vdm = type(parse_params(raw).models["vdm"])
    monkeypatch.setattr(vdm, "SAMPLERS", ("heun", "euler"))
    raw["sample"].update(sampler="ddim", sweep_steps=[], step_list=[])
    params = parse_params(raw)
    assert params.sampler_of("vdm") == ("heun", FAMILY_DEFAULT)
    assert params.run("digits", "vdm").sample.sampler == "heun"
    assert params.sampler_of("ddpm") == ("ddim", "sample.sampler") == (params.run("digits", "ddpm").sample.sampler,
                                                                       "sample.sampler")
    raw["sample"]["sampler_for"] = {"vdm": "euler"}
    assert parse_params(raw).sampler_of("vdm") == ("euler", "sample.sampler_for.vdm")
    raw["sample"]["sampler_for"] = {"vdm": "ddim"}
    with pytest.raises(ConfigError, match=r"sample\.sampler_for\.vdm 'ddim' cannot draw from models\.vdm \(family "
                                          r"'vdm'\); its samplers: heun, euler"):
        parse_params(raw)


@pytest.mark.parametrize("model", sorted(yaml.safe_load(PARAMS.read_text())["models"]))
def test_every_model_block_of_params_yaml_passes_the_params_check_listed_alone(model):
    raw = yaml.safe_load(PARAMS.read_text())
    raw["pipeline"].update(models=[model], datasets=sorted(raw["datasets"]))
    params = parse_params(raw)
    for dataset in raw["datasets"]:
        run = params.run(dataset, model)
        assert run.sample.sampler in type(run.model).SAMPLERS


@pytest.mark.parametrize("changes,message", [
    ({"shift": 0}, r"sample\.shift must be > 0, got 0"),
    ({"shift": "fast"}, r"sample\.shift must be a number"),
    ({"sampler": "euler", "step_list": [999, 0]}, r"sample\.step_list applies to the ddpm and ddim samplers; euler"),
    ({"sampler": "heun", "step_list": [999, 0]}, r"sample\.step_list applies to the ddpm and ddim samplers; heun"),
    ({"sweep_steps": [0]}, r"sample\.sweep_steps\[0\] must be >= 1, got 0"),
    ({"guidance_sweep": [1.0, 1]}, r"sample\.guidance_sweep lists a scale twice"),
])
def test_sample_settings_name_the_key(raw, changes, message):
    raw["sample"].update(changes)
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


def test_evaluate_has_the_ode_likelihood_settings(raw):
    evaluate = parse_params(raw).evaluate
    assert (evaluate.ode_images, evaluate.ode_steps, evaluate.ode_probes) == (100, 96, 1)
    raw["evaluate"]["ode_steps"] = 1
    with pytest.raises(ConfigError, match=r"evaluate\.ode_steps must be >= 2, got 1"):
        parse_params(raw)


def test_a_config_is_frozen_and_keyword_construction_keeps_tuples(raw):
    params = parse_params(raw)
    with pytest.raises(ValidationError, match="frozen"):
        params.train.lr = 0.1
    with pytest.raises(ValidationError, match="frozen"):
        params.models["ddpm"].timesteps = 10
    assert UNetConfig(base_channels=8, channel_mult=[1, 2]).channel_mult == (1, 2)
    assert SampleConfig(sampler="ddim", steps=20).steps == 20


def test_a_string_learning_rate_in_a_file_loads_as_a_number(raw, tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  lr: 4.0e-4\n", "  lr: 1e-4\n")
    assert "lr: 1e-4" in text and yaml.safe_load(text)["train"]["lr"] == "1e-4"
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.lr == 1e-4


OLD_MODEL = {"schedule": "linear", "timesteps": 1000, "variance": None, "loss": None, "vlb_weight": 0.001,
             "importance_sampling": False, "gamma": "network", "gamma_min": -13.3, "gamma_max": 5.0,
             "weighting": "elbo", "sigmoid_bias": 2.0, "noise_sampling": "schedule", "prediction": "eps",
             "class_conditional": True, "label_dropout": 0.3}
"""A checkpoint's model before the families had params of their own: every field of every family."""


@pytest.mark.parametrize("model,old", [
    ("ddpm", {"family": "ddpm", "variance": "fixed_small"}),
    ("vdm", {"family": "vdm", "weighting": "sigmoid", "noise_sampling": "adaptive", "gamma": "fixed"}),
])
def test_a_checkpoint_config_of_the_previous_version_still_loads(raw, model, old):
    run = parse_params(raw).run("digits", model)
    stored = run.to_dict()
    for key in ("shift",):
        del stored["sample"][key]
    for key in ("ode_images", "ode_steps", "ode_probes"):
        del stored["evaluate"][key]
    stored["model"] = {**OLD_MODEL, **old}
    assert RunConfig.from_dict(stored) == run
    stored["model"]["weighting" if model == "ddpm" else "loss"] = "sigmoid" if model == "ddpm" else "vlb"
    with pytest.raises(ConfigError, match=r"model: (weighting|loss) .* (family|families)"):
        RunConfig.from_dict(stored)


def test_the_paper_protocol_sets_its_preset_and_one_draw_needs_it(raw):
    raw["evaluate"].update(protocol="paper", features=["classifier"], kid=True)
    raw["sample"].update(num_samples=50000, sweep_steps=[10])
    params = parse_params(raw)
    e, s = params.evaluate, params.sample
    assert (e.features, e.kid, e.prc, e.isc_splits, e.reference_images) == (("inception",), False, False, 10, 0)
    assert (s.num_samples, s.draws, s.sweep_steps, s.guidance_sweep) == (50000, 1, (), ())
    raw["evaluate"]["protocol"] = "draws"
    raw["sample"]["draws"] = 1
    with pytest.raises(ConfigError, match="sample.draws is 1.*evaluate.protocol: paper"):
        parse_params(raw)


RECIPES = [
    ({"family": "ddpm"}, "eps, linear schedule, L_simple, fixed_small variance"),
    ({"family": "ddpm", "loss": "min_snr", "min_snr_gamma": 3},
     "eps, linear schedule, min-SNR-3 weighted L_simple, fixed_small variance"),
    ({"family": "vlb", "loss": "vlb", "importance_sampling": True, "class_conditional": True, "label_dropout": 0.2},
     "eps, linear schedule, learned variance, L_vlb, t importance-sampled; label dropout 0.2"),
    ({"family": "vdm", "prediction": "v", "gamma": "fixed", "weighting": "edm"},
     "v, fixed gamma, EDM weighting, t ~ U(0, 1)"),
    ({"family": "edm", "sigma_data": 0.5, "autoencoder": {}},
     "EDM preconditioning (sigma_data 0.5), ln sigma ~ N(-1.2, 1.2^2), EDM weighting; on latents"),
    ({"family": "flow", "time_sampling": "uniform"}, "velocity, rectified flow, t ~ U(0, 1)"),
]


@pytest.mark.parametrize("block, recipe", RECIPES)
def test_every_family_says_what_its_models_are_trained_with(block, recipe):
    assert {b["family"] for b, _ in RECIPES} == set(FAMILY_PARAMS), "a recipe for every family"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["models"]["probe"] = block
    assert parse_params(raw).models["probe"].recipe == recipe


def test_a_held_out_combination_is_checked_against_the_words_and_every_dataset_s_classes(raw):
    raw["pipeline"]["models"] = ["flow_text"]
    raw["text_encoder"]["held_out"] = ["thick 7"]
    assert parse_params(raw).text_encoder.held_out == ("thick 7",)
    raw["text_encoder"]["held_out"] = ["thick seven"]
    with pytest.raises(ConfigError, match="text_encoder.held_out 'thick seven' is not '<word> <class>'"):
        parse_params(raw)
    raw["pipeline"]["datasets"] = ["cifar10"]
    raw["text_encoder"]["held_out"] = ["bright cat"]
    assert parse_params(raw).text_encoder.held_out == ("bright cat",)
