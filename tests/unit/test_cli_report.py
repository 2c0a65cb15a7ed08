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


def test_reproduce_runner_writes_results_and_report(tmp_path):
    @recipe("toy", "A toy recipe", system="moefication", paper_claim="x", citation="none")
    def _toy(ctx):
        (ctx.out_dir / "p.png").write_bytes(b"png")
        return {"measured": {"a": 1.5}, "tables": [{"title": "T", "columns": ["k", "v"], "rows": [["a", 1.5]]}],
                "plots": ["p.png"], "notes": ["n"]}

    try:
        run_recipes(["toy"], tmp_path, progress=False)
    finally:
        RECIPES.pop("toy")
    res = json.loads((tmp_path / "toy" / "results.json").read_text())
    assert res["measured"] == {"a": 1.5} and res["command"].startswith("plmkit reproduce toy --quick")
    md = (tmp_path / "index.md").read_text()
    assert "| a | 1.500 |" in md and "toy/p.png" in md
    assert "<img src='toy/p.png'" in (tmp_path / "index.html").read_text()
    with pytest.raises(KeyError):
        run_recipes(["nope"], tmp_path)


def test_list_shows_all_eighteen(capsys):
    cli.main(["list"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 19
