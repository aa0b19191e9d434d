"""`csg train --help` shows each option's default as TrainConfig defines it (never written by hand)."""
import dataclasses
import re

from csg.cli import build_parser
from csg.cli.train import describe_default
from csg.training.config import TrainConfig


def _help_text() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices["train"].format_help().split())


def test_help_defaults_are_the_config_defaults():
    text = _help_text()
    # the two the hand-written help got wrong
    assert re.search(r"--schedule \{alternate,joint\} .*?\[joint\]", text)
    assert re.search(r"--warmup WARMUP STD-only epochs first \[2\]", text)
    for name, flag, value in [("epochs", "--epochs", "30"), ("lr", "--lr", "0.1"), ("period", "--period", "3"),
                              ("lambda2", "--lambda2", "0.001"), ("icnn_test_mask", "--icnn-test-mask", "true")]:
        assert describe_default(name) == value
        assert re.search(re.escape(flag) + r" \S+ .*?\[" + re.escape(value) + r"\]", text), flag


def test_every_config_option_shows_exactly_one_default():
    text = _help_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for action in sub._actions:
        if action.dest in fields and action.option_strings and action.nargs != 0 and action.dest != "out":
            shown = describe_default(action.dest)
            assert shown is not None, action.dest
            assert action.help.count("[") == 0, f"{action.option_strings[0]} writes a default by hand"
    assert "[alternate]" not in text


def test_other_commands_show_value_defaults_but_none_on_flags():
    # argparse's own formatter printed "--no-progress  no progress bar (default: True)", which reads as if
    # progress bars were off by default
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("localize", "atlas", "graph"):
        text = " ".join(sub[name].format_help().split())
        assert "(default: True)" not in text and "(default: False)" not in text, name
        assert re.search(r"--no-progress no progress bar(?! \(default)", text), name
    assert re.search(r"--max-images N\|all .*?\(default: 1000\)", " ".join(sub["localize"].format_help().split()))
