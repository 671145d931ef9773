"""RunSpec: JSON round trip, one flag per setting, and every flag reaching its setting."""

import json
import math
import typing

import pytest

import nat
from nat.cli import build_parser
from nat.cli.options import spec_from_args
from nat.spec import OPTIONS, OptionError, RunSpec, SearchConfig, spec_error_names


def test_a_spec_round_trips_through_json():
    spec = RunSpec.from_options(
        space="resnet",
        resolutions=[16, 24],
        max_params=3e5,
        objectives=["params", "macs"],
        heuristic_budgets=[1e5, 2e5],
        seed=4,
        workers=2,
        pretrain_epochs=3,
    )
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.search.seed == again.pretrain.seed == 4  # one seed per run


def test_the_run_hands_its_seed_and_batch_size_to_its_search():
    assert RunSpec().search == SearchConfig()  # one default each: the search's
    spec = RunSpec.from_options(seed=7, batch_size=32)
    assert (spec.search.seed, spec.search.batch_size, spec.pretrain.seed) == (7, 32, 7)
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).search == spec.search
    assert "seed" not in spec.to_dict()["search"]  # written once in run.json, as the run's
    # A part's own copy is accepted when it agrees, and refused when the run would overrule it.
    doc = spec.to_dict()
    doc["search"] |= {"seed": 7, "batch_size": 32}
    assert RunSpec.from_dict(doc) == spec
    doc["pretrain"]["seed"] = 3
    with pytest.raises(OptionError, match=r"pretrain.seed = 3, but seed is the run.s \(7\)"):
        RunSpec.from_dict(doc)
    with pytest.raises(OptionError, match='set the top-level "batch_size"'):
        RunSpec.from_dict({"search": {"batch_size": 16}})


def _other_value(option):
    """A valid value different from the option's default, as the command line would type it."""
    special = {
        "space": "resnet",
        "space_options": '{"stem": "imagenet"}',
        "resolutions": "16,20",
        "width_mults": "0.25,0.5",
        "data": "some/folder",
        "objectives": "params,macs",
        "surrogate": "rbf",
        "augment": "trivial",
        "strategy": "heuristic",
        "time_limit": "30m",
        "ema_decay": "0.99",
        "pretrain_share": "0.2",
        "device": "cpu",
        "address": "auto",
        "workers": "1",
        "adapt_workers": "2",
        "heuristic_budgets": "100k,200k",
        "out": "elsewhere",
        "cache_dir": "cache",
        "checkpoint": "sn.pt",
        "val_fraction": "0.2",
        "test_fraction": "0.2",
        "distill_weight": "0.25",
        "label_smoothing": "0.2",
        "momentum": "0.8",
        "image_size": "32",
        "subset": "100",
        "finetune_distill_weight": "0.25",
        "classes": "3,7",
        "latency_runtime": "torch",
        "latency_table": "table.json",
        "warm_start": "runs/previous",
        "max_latency": "5ms",
        "max_peak_memory": "256KB",
        "max_model_size": "1.5MB",
        "precision": "int8",
    }
    if option.name in special:
        return special[option.name]
    kind = [a for a in typing.get_args(option.kind) if a is not type(None)] or [option.kind]
    default = option.default
    if kind[0] is int:
        return str((default or 0) + 3)
    if kind[0] is float:
        return str((default or 1.0) * 3 if option.unit == "count" or default else 0.5)
    raise AssertionError(f"no test value for {option.name}")


def _get(doc, path):
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_search_flag_changes_its_setting_and_nothing_else(name):
    option = OPTIONS[name]
    parser = build_parser()
    if option.kind is bool:  # --no-zero-init-residual
        given = [option.flag.replace("--", "--no-" if option.default else "--", 1)]
    else:
        given = [option.flag, _other_value(option)]
    extra = ["--workers", "1"] if name == "adapt_workers" else []
    args = parser.parse_args(["search", *given, *extra])
    spec = spec_from_args(args)
    default, got = RunSpec().to_dict(), spec.to_dict()
    assert _get(got, option.path) != _get(default, option.path), name
    changed = {k for k in OPTIONS if _get(got, OPTIONS[k].path) != _get(default, OPTIONS[k].path)}
    assert changed - {name, "workers", "space_options"} == set()


def test_defaults_are_the_specs_own():
    help_text = build_parser()._subparsers._group_actions[0].choices["search"].format_help()
    for name in ("iterations", "doe_size", "pretrain_epochs", "bn_batches"):
        assert f"(default {OPTIONS[name].default})" in " ".join(help_text.split())


def test_unknown_keywords_name_the_nearest_option():
    with pytest.raises(OptionError, match="did you mean 'iterations'"):
        nat.search(itrations=3)


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"doe_size": 0}, "--doe-size"),
        ({"iterations": -1}, "--iterations"),
        ({"candidates": 0}, "--candidates"),
        ({"val_fraction": 1.5}, "--val-fraction"),
        ({"resolutions": []}, "--resolutions"),
        ({"width_mults": [math.nan]}, "--width-mults"),
        ({"space_options": {"kernel_sizes": "357"}}, "--space-options"),
        ({"space_options": {"foo": 1}}, "--space-options"),
        ({"adapt_workers": 2}, "--adapt-workers"),
        ({"workers": 0}, "--workers"),
        ({"address": "nowhere"}, "--address"),
        ({"data": "no/such/folder"}, "--data"),
        ({"pretrain_lr": 0}, "--pretrain-lr"),
        ({"classes": ["3"]}, "--classes"),
    ],
)
def test_errors_name_the_users_flag(options, flag):
    with pytest.raises(OptionError) as err:
        RunSpec.from_options(**options).validate()
    assert str(err.value).startswith(flag + ":")
    assert "\n" not in str(err.value)


def test_space_option_errors_list_the_valid_keys():
    with pytest.raises(OptionError, match="valid keys.*kernel_sizes"):
        RunSpec.from_options(space_options={"foo": 1}).validate()


@pytest.mark.parametrize(
    ("option", "flag"),
    [("doe_size", "--doe-size"), (("data", "source"), "--data"), ("--out", "--out")],
)
def test_a_field_is_renamed_to_its_flag_and_a_flag_kept(option, flag):
    def fail():
        raise OptionError(option, "bad")

    with pytest.raises(OptionError, match=f"^{flag}: bad$"):
        spec_error_names(fail)


def test_errors_raised_where_the_flag_is_known_name_it():
    from nat.folder import preflight

    with pytest.raises(OptionError, match="^--out: resuming needs the run folder$"):
        preflight(RunSpec(), resume=True)
    with pytest.raises(OptionError, match="^--max-params: budget of 1,000 params is below"):
        preflight(RunSpec.from_options(max_params=1000))


class _Stopped(Exception):
    """Ends a run where a test has seen what it wanted."""


@pytest.mark.parametrize("entry", ["search", "resume", "cli"])
def test_every_entry_checks_the_spec_once_then_runs_it_under_the_lock(entry, tmp_path, monkeypatch):
    import nat.folder
    import nat.run
    from nat.cli import main

    out = tmp_path / "r"
    if entry == "resume":  # a stopped run: its settings, no timing yet
        out.mkdir()
        (out / "run.json").write_text(json.dumps(RunSpec.from_options(out=str(out)).to_dict()))
    checked, ran = [], []
    preflight = nat.folder.preflight

    def counted(spec, resume=False, overwrite=False):
        checked.append(resume)
        return preflight(spec, resume, overwrite)

    def data(spec):  # the run's first stage: what follows is not this test's business
        ran.append((spec.out == str(out.resolve()), (out / ".lock").exists()))
        raise _Stopped

    monkeypatch.setattr(nat.folder, "preflight", counted)
    monkeypatch.setattr(nat.run, "preflight", counted, raising=False)  # wherever imported
    monkeypatch.setattr(nat.run, "load_data", data)
    with pytest.raises(_Stopped):
        if entry == "search":
            nat.search(data="digits", max_params=3e5, out=str(out))
        elif entry == "resume":
            nat.resume(out)
        else:
            main(["search", "--data", "digits", "--max-params", "300k", "--out", str(out)])
    assert checked == [entry == "resume"]
    assert ran == [(True, True)]  # the checked spec, in the folder held
