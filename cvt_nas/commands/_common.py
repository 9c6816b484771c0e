"""Argument helpers shared by subcommands: the one-line argument parser, argparse types that
refuse bad flag values before anything runs, and ``--set`` parsing.

Every check here names the flag and the rule, so `cvt-nas` answers a bad flag with one line and
exit code 2 (`OneLineParser`), never with a default silently used in its place (``--trials 0``
running 10 trials) or a traceback from deep inside a backend.
"""

from __future__ import annotations

import argparse
import math
import unicodedata
from collections.abc import Callable
from typing import Any, NoReturn

import yaml

from cvt_nas.common.names import check_name


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``), so an error
    stays one line even when it quotes user input."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c)[0] == "C" else c for c in text)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit code 2), pointing at
    ``--help`` instead of printing the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    return _number(int, low, f"an integer >= {low}", lambda v: v >= low)


def float_above(low: float) -> Callable[[str], float]:
    """An argparse type: a finite number > ``low``."""
    return _number(float, low, f"a number > {low:g}", lambda v: v > low)


def float_at_least(low: float) -> Callable[[str], float]:
    """An argparse type: a finite number >= ``low``."""
    return _number(float, low, f"a number >= {low:g}", lambda v: v >= low)


def _number(kind: Callable[[str], Any], low: float, rule: str, ok: Callable[[Any], bool]
            ) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
positive_float = float_above(0)
non_negative_float = float_at_least(0)


def device_arg(text: str) -> str:
    """A device name as `TrainConfig` accepts it (whether it exists is checked before the first
    trial, by `cvt_nas.training.trainer.resolve_device`)."""
    from cvt_nas.training.config import get_recipe

    try:
        get_recipe("reduced", device=text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}") from None
    return text


def name_arg(text: str) -> str:
    """A study or run name (`cvt_nas.common.names.check_name`): it becomes a directory."""
    try:
        return check_name(text, "name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("name: ")) from None


def objectives_arg(text: str) -> str:
    """A comma list of objectives, checked as the search space's ``objectives`` are; kept as
    text (an empty list is an error, never the defaults)."""
    from cvt_nas.space import parse_objectives

    try:
        parse_objectives(text, "objectives")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("objectives: ")) from None
    return text


def set_arg(text: str) -> str:
    """One ``FIELD=VALUE`` item of ``--set``, checked for its form and its YAML value; kept as
    text for `parse_set`."""
    try:
        parse_set([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--set ")) from None
    return text


def train_set_arg(text: str) -> str:
    """A ``--set`` item that must be a valid `TrainConfig` field on its own (ablations apply
    these to every run, so a typo is refused before any study is opened)."""
    from cvt_nas.training.config import TrainConfig

    text = set_arg(text)
    try:
        TrainConfig().replace(**parse_set([text]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return text


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["depth=[1,2,3]", "act=gelu"]`` -> ``{"depth": [1, 2, 3], "act": "gelu"}`` (YAML values).

    Raises:
        ValueError: an item without ``=``, an empty or spaced key, or a value that is not YAML;
            one line naming the item.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise ValueError(f"--set {item!r}: expected field=value, e.g. --set kv_stride=1")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({problem}); write "
                             "lists as [1,2,3] and quote text with ':' or '#'") from None
    return out


def gpus_arg(text: str) -> Any:
    """``--gpus`` (`cvt_nas.common.gpus.parse_choice`)."""
    from cvt_nas.common.gpus import parse_choice

    try:
        return parse_choice(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--gpus {text.strip()!r}: ")
                                         ) from None


GPUS_HELP = ("GPUs the local workers spread over, worker i on the i-th (round-robin): all, none, "
             "a count (2) or GPU names (0,2; one GPU: 2,); default: all visible when the "
             "device is auto or cuda")
