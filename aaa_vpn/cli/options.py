"""Click options made from declared settings (:mod:`aaa_vpn.service.settings`).

A setting's declaration gives its option everything: the flag, the help text,
the type (a range from its bounds, a choice from its words, a file name for a
path, ``--x/--no-x`` for a boolean), the metavar and the default ``--help``
shows. The parameter is named after the setting's field, so a command gets its
values by field name and the settings file's keys can serve as click's
``default_map``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from aaa_vpn.cli.common import F
from aaa_vpn.service.settings import Bounds, Choices, Declared


def _click_type(item: Declared) -> Any:
    check = item.setting.check
    if isinstance(check, Choices):
        return click.Choice(check.values)
    if item.kind in (int, float):
        if not isinstance(check, Bounds):
            return item.kind
        if item.kind is float:
            return click.FloatRange(check.low, check.high, min_open=check.low_open, max_open=check.high_open)
        low, high = (None if bound is None else int(bound) for bound in (check.low, check.high))
        return click.IntRange(low, high, min_open=check.low_open, max_open=check.high_open)
    if item.kind is Path:
        return click.Path(dir_okay=False, path_type=Path)
    return None


def setting_option(item: Declared, *, default: Any = None) -> Callable[[F], F]:
    """The click option of one declared setting; ``default`` replaces the
    declared default (e.g. an agent's name defaults to its role)."""
    how = item.setting
    assert how.flag is not None, item.name
    flag = f"{how.flag}/--no-{how.flag.removeprefix('--')}" if item.kind is bool else how.flag
    if default is None:
        default = how.cli_default if how.cli_default is not None else item.default
    return click.option(
        flag,
        item.name,
        type=_click_type(item),
        multiple=how.multiple,
        metavar=how.metavar,
        default=() if how.multiple else default,
        show_default=how.shown_default or not how.multiple,
        help=how.help or None,
    )


def setting_options(items: Iterable[Declared], defaults: Mapping[str, Any] | None = None) -> list[Callable[[F], F]]:
    """The click options of the declared settings that have a flag, in order."""
    defaults = defaults or {}
    return [setting_option(item, default=defaults.get(item.name)) for item in items if item.setting.flag is not None]


def given_options(ctx: click.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``values`` the operator gave (not their defaults): they
    win over a settings file, which wins over the defaults."""
    return {
        name: value
        for name, value in values.items()
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
