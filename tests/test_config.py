"""The training parameters' one declaration (grocery/config.py) and what is built from it."""

from grocery.config import ARCH_NAMES, OFF_SWITCH, SERVICE_PARAMS, TRAIN_PARAMS, TrainConfig

# What a training job's params may set: changing it changes the API, so it is spelled out here.
OFFERED = {
    "arch",
    "weights",
    "label_level",
    "epochs",
    "batch_size",
    "learning_rate",
    "label_smoothing",
    "mix",
    "freeze",
    "seed",
    "train_limit",
    "val_limit",
    "data_dir",
    "input_size",
    "min_input_size",
    "time_budget",
    "white_balance",
}


def test_the_declared_architectures_are_the_built_ones():
    from grocery.networks import ARCHS

    assert set(ARCH_NAMES) == set(ARCHS) and TrainConfig(data_dir="d").arch == ARCH_NAMES[0]


def test_the_request_schema_and_the_client_offer_the_service_params():
    from cli.client import build_parser
    from service.specs import TrainParams

    assert {p.name for p in SERVICE_PARAMS} == OFFERED == set(TrainParams.model_fields)

    def value(p) -> str:  # one the client accepts: it offers the declared choices
        return str(p.choices[0]) if p.choices else "1" if p.kind in (int, float) else "x"

    flags = [arg for p in SERVICE_PARAMS for arg in (p.flag, value(p))]
    args = build_parser().parse_args(["jobs", "submit", "train", *flags])
    assert {name for name in OFFERED if getattr(args, name) is not None} == OFFERED


def test_grocery_train_has_the_declared_flags():
    from grocery.cli import build_parser

    train = build_parser({})._subparsers._group_actions[0].choices["train"]
    flags = {option: action.dest for action in train._actions for option in action.option_strings}
    for p in TRAIN_PARAMS.values():
        declared = {True: [p.flag], False: [], OFF_SWITCH: ["--no" + p.flag[1:]]}[p.cli]
        if p.kind is bool and p.cli is True:
            declared.append("--no" + p.flag[1:])
        assert [f for f in flags if flags[f] == p.name] == declared, p.name
