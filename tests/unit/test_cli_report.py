import json

import pytest

from plmkit import cli
from plmkit.reproduce import RECIPES, recipe, run_recipes
from plmkit.testing import TINY_CONFIGS, tiny_model


@pytest.mark.parametrize("family", list(TINY_CONFIGS))
def test_arch_command_on_a_local_folder(family, tmp_path, capsys):
    tiny_model(family).save_pretrained(tmp_path)
    cli.main(["arch", str(tmp_path), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["stacks"][0]["d_ff"] == 48
    assert info["head"] == {"bert": "cls", "electra": "generator_lm_head"}.get(family, "lm_head")
    cli.main(["arch", str(tmp_path)])
    assert "ffn.neurons" in capsys.readouterr().out


def test_unsupported_family_is_a_clear_cli_error(tmp_path, capsys):
    from transformers import AutoConfig

    AutoConfig.for_model("opt", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=24,
                         vocab_size=50, word_embed_proj_dim=16).save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["arch", str(tmp_path)])
    assert e.value.code == 2 and "--arch-override" in capsys.readouterr().err


def test_missing_asset_names_its_install_command(monkeypatch, capsys):
    from plmkit.assets import registry

    monkeypatch.setitem(registry.ASSETS, "wordnet", registry.ASSETS["wordnet"].__class__(
        **{**registry.ASSETS["wordnet"].__dict__, "locate": lambda: None}))
    from plmkit.data import wordnet

    wordnet.wordnet_graph.cache_clear()
    with pytest.raises(FileNotFoundError, match="apt-get install -y wordnet-base"):
        wordnet.wordnet_graph()
    cli.main(["assets"])
    assert "install: apt-get install -y wordnet-base" in capsys.readouterr().out


def test_reproduce_runner_writes_results_and_report(tmp_path, capsys, monkeypatch):
    from dataclasses import dataclass

    from plmkit.errors import ConfigError, PlmkitError
    from plmkit.reproduce import Budgets, load_recipes, registry

    committed = []  # a commit made while the recipe runs must not be recorded as the one that ran
    monkeypatch.setattr(registry, "_git_commit", lambda: "later" if committed else "started")

    @dataclass(frozen=True)
    class ToySettings:
        n: int

    @recipe("toy", "A toy recipe", system="moefication", paper_claim="x", citation="none",
            budgets=Budgets(quick=ToySettings(2), full=ToySettings(20)))
    def _toy(ctx):
        (ctx.out_dir / "p.png").write_bytes(b"png")
        committed.append(1)
        return {"measured": {"a": 1.5, "n": ctx.settings.n},
                "tables": [{"title": "T", "columns": ["k", "v"], "rows": [["a", 1.5]]}],
                "headline": {"metric": "a", "ours": 1.5, "paper": 2.0}, "plots": ["p.png"], "notes": ["n"]}

    @recipe("toy-broken", "A failing recipe", system="moefication", paper_claim="x", citation="none")
    def _broken(ctx):
        raise RuntimeError("boom")

    try:
        assert "toy" in load_recipes()
        run_recipes(["toy"], tmp_path, progress=False, record_dir=tmp_path / "rec")
        assert "toy: " in capsys.readouterr().out  # the time, printed as the recipe finishes
        with pytest.raises(ConfigError, match="unknown recipe 'nope'; available: .*toy"):
            run_recipes(["nope"], tmp_path)
        with pytest.raises(PlmkitError, match="toy-broken failed"):
            run_recipes(["toy-broken"], tmp_path / "b", progress=False, record_dir=None)
    finally:
        RECIPES.pop("toy")
        RECIPES.pop("toy-broken")
    res = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert res["measured"] == {"a": 1.5, "n": 2} and res["command"].startswith("plmkit reproduce toy --quick")
    assert res["budget"] == "quick" and res["settings"] == {"n": 2} and res["date"]
    assert res["environment"]["cpu_info"]["cores"] and res["environment"]["fast_dtype"] in ("float32", "bfloat16")
    assert res["environment"]["git_commit"] == "started" and len(res["environment"]["loadavg_end"]) == 3
    assert not (tmp_path / "rec").exists()  # quick runs (and non-built-in recipes) are never recorded
    md = (tmp_path / "index.md").read_text()
    assert "| a | 1.500 |" in md and "toy/p.png" in md and "no full run recorded" in md
    assert "<img src='toy/p.png'" in (tmp_path / "index.html").read_text()
    broken = json.loads((tmp_path / "b" / "toy-broken" / "results.json").read_text())
    assert broken["status"] == "failed" and "boom" in broken["error"]
    assert "RuntimeError: boom" in (tmp_path / "b" / "toy-broken" / "error.txt").read_text()


def test_a_stopped_recipe_resumes_its_finished_steps(tmp_path):
    from plmkit.reproduce import run_recipe

    ran = []

    def toy(ctx):
        for name in ("one", "two"):
            def step(name=name):
                ran.append(name)
                if name == "two" and len(ran) == 2:
                    raise RuntimeError("stopped")  # the first run stops in its second step
                return {"score": len(name)}
            ctx.resumable(name, step, model="m")
        return {"measured": {"steps": len(ran)}}

    @recipe("toy-steps", "Resumable toy", system="moefication", paper_claim="x", citation="none")
    def _toy(ctx):
        return toy(ctx)

    try:
        assert run_recipe(RECIPES["toy-steps"], tmp_path, progress=False)["status"] == "failed"
        res = run_recipe(RECIPES["toy-steps"], tmp_path, progress=False)
        assert ran == ["one", "two", "two"]  # "one" was taken from the stopped run's store
        fresh = run_recipe(RECIPES["toy-steps"], tmp_path, progress=False, resume=False)
    finally:
        RECIPES.pop("toy-steps")
    assert ran[3:] == ["one", "two"] and "resumed_steps" not in fresh  # --no-resume: every step again
    assert res["status"] == "ok" and res["resumed_steps"]["steps"] == ["one"]
    assert "1 step(s) were taken from an earlier, stopped run" in res["notes"][-1]
    assert (tmp_path / "toy-steps" / "steps" / "one.json").is_file()


def test_builtin_recipes_are_discovered_with_typed_budgets():
    from plmkit.reproduce import load_recipes

    recipes = load_recipes()
    assert {"eren", "kepler", "moefication", "readin", "sparsity", "subchar"} <= set(recipes)
    for r in recipes.values():
        assert r.budgets is not None and type(r.budgets.quick) is type(r.budgets.full), r.name


def test_recorded_full_runs_round_trip(tmp_path):
    from plmkit.report.records import load_recorded, record_full_run

    record_full_run({"name": "x", "quick": False, "system": "eren", "command": "plmkit reproduce x"}, tmp_path)
    assert load_recorded(tmp_path)["x"]["command"] == "plmkit reproduce x"
    with pytest.raises(ValueError):
        record_full_run({"name": "y", "quick": True}, tmp_path)
    assert load_recorded(None) == {}


def test_list_shows_all_eighteen(capsys):
    cli.main(["list"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 19


def test_reproduce_set_changes_the_named_recipes_settings_and_is_not_recorded(tmp_path, capsys, monkeypatch):
    from dataclasses import dataclass

    from plmkit.reproduce import Budgets

    @dataclass(frozen=True)
    class Inner:
        steps: int = 3

    @dataclass(frozen=True)
    class ToySettings:
        n: int
        flag: bool = False
        inner: Inner = Inner()

    def toy(ctx):
        return {"measured": {"n": ctx.settings.n, "steps": ctx.settings.inner.steps, "flag": int(ctx.settings.flag)}}

    toy.__module__ = "plmkit.reproduce.toy_set"  # as a built-in recipe, whose full runs are recorded
    recipe("toy-set", "Toy", system="moefication", paper_claim="x", citation="none",
           budgets=Budgets(quick=ToySettings(1), full=ToySettings(10)))(toy)
    monkeypatch.setenv("PLMKIT_RESULTS_DIR", str(tmp_path / "rec"))
    try:
        cli.main(["reproduce", "toy-set", "--out", str(tmp_path / "a"), "--no-progress",
                  "--set", "n=7", "--set", "inner.steps=5", "--set", "flag=true"])
        res = json.loads((tmp_path / "a" / "toy-set" / "results.json").read_text())
        assert res["measured"] == {"n": 7, "steps": 5, "flag": 1} and res["settings"]["inner"] == {"steps": 5}
        assert res["overrides"] == ["n=7", "inner.steps=5", "flag=true"] and "--set inner.steps=5" in res["command"]
        assert not (tmp_path / "rec").exists()  # not the recipe's budget: not recorded
        cli.main(["reproduce", "toy-set", "--out", str(tmp_path / "b"), "--no-progress"])
        assert json.loads((tmp_path / "rec" / "toy-set.json").read_text())["measured"]["n"] == 10
        capsys.readouterr()
        for argv, message in ((["--set", "m=1"], "unknown setting 'm'; known: n, flag, inner"),
                              (["--set", "flag=maybe"], "'flag': expected true or false"),
                              (["--set", "n"], "write KEY=VALUE"),
                              (["--set", "n.x=1"], "'n.x': n is 10, not a group of settings"),
                              (["sparsity", "--set", "n=1"], "name that recipe alone")):
            with pytest.raises(SystemExit) as e:
                cli.main(["reproduce", "toy-set", *argv, "--out", str(tmp_path / "c")])
            err = capsys.readouterr().err
            assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "c").exists()  # refused before anything ran
    finally:
        RECIPES.pop("toy-set")


def test_settings_overrides_take_each_fields_type():
    from plmkit.config import override_settings
    from plmkit.errors import ConfigError
    from plmkit.reproduce.moefication import FULL

    s = override_settings(FULL, ["fractions=0.125, 0.5", "moe_train.steps=100", "lm_relu=yes", "n_test=none"])
    assert s.fractions == (0.125, 0.5) and s.moe_train.steps == 100 and s.lm_relu is True and s.n_test is None
    assert FULL.moe_train.steps == 500 and FULL.lm_relu is False  # the budget itself is unchanged
    assert override_settings(FULL, ["moe_train=none"]).moe_train is None
    with pytest.raises(ConfigError, match="'seeds': expected int, got 'a'"):
        override_settings(FULL, ["seeds=0,a"])
    with pytest.raises(ConfigError, match="'grid': a tuple of tuples cannot be set"):
        override_settings(FULL, ["grid=kmeans,mlp"])
