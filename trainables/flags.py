"""Each command's flags, defined once: on the fields of its typed options (a frozen dataclass).

``flag(default, help=..., ...)`` is a dataclass field that also says how the command line gives
it; ``parser_for(cls, prog, description)`` derives the command's ArgParser from the class, so
no flag is in one and not the other. ``like(cls, name, ...)`` is ``cls``'s field of that name
again, with the changes given (a default, a group, a help): the data's, the schedule's, the
fast path's and ASHA's flags, and the report's fusion flags, are defined where they belong and
reused by every command that takes them. ``carried(cls, options)`` builds one command's options
from another's fields of the same names (the pipeline's report stage).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any

from trainables.cli import NORMAL, ArgParser, options_from, output

METADATA_KEY = "flag"
_KEEP = object()  # like(): the default of the field it copies


@dataclass(frozen=True)
class Flag:
    """How a field is given on the command line. ``help`` and ``choices`` may be callables,
    asked when the parser is built (a registry's names, a folder of this machine); ``%(default)s``
    in the help is the default (argparse's formatting)."""

    help: str | Callable[[], str] | None = None
    type: Callable[[str], Any] | None = None  # the converter of the text given
    choices: Sequence | Callable[[], Sequence] | None = None
    group: str | None = None  # the --help section (None: the first, "options")
    names: tuple[str, ...] = ()  # its spellings (default: --FIELD-NAME)
    action: str | None = None  # store_true, ...
    metavar: str | None = None
    required: bool = False
    builtin: bool = False  # one ArgParser adds itself (-q, -v): not added again


def flag(default, **how) -> Field:
    """A field of a command's options with its flag (``how``: Flag's fields)."""
    return field(default=default, metadata={METADATA_KEY: Flag(**how)})


def spec(f: Field) -> Flag:
    """The flag of an options field."""
    how = f.metadata.get(METADATA_KEY)
    if how is None:
        raise TypeError(f"field {f.name!r} has no flag: define it with flag(...) or like(...)")
    return how


def like(cls, name: str, default=_KEEP, **changes) -> Field:
    """``cls``'s field ``name`` again, for another options class: its default unless one is
    given, its flag with ``changes`` (Flag's fields)."""
    source = next((f for f in fields(cls) if f.name == name), None)
    if source is None:
        raise TypeError(f"{cls.__name__} has no field {name!r}")
    return field(default=source.default if default is _KEEP else default,
                 metadata={METADATA_KEY: replace(spec(source), **changes)})


@dataclass(frozen=True)
class Options:
    """What the options of every command hold: the verbosity (``-q``, ``-v``: ArgParser's own,
    for trainables/cli.py ``output``)."""

    verbosity: int = flag(NORMAL, names=("-q", "--quiet", "-v", "--verbose"), builtin=True)


def names(f: Field) -> tuple[str, ...]:
    """How the command line spells the flag of ``f``."""
    return spec(f).names or ("--" + f.name.replace("_", "-"),)


def in_help_order(cls) -> list[Field]:
    """The fields of ``cls``, those a class adds before those it inherits (a command's own
    flags first in its help, those every search shares after them), each class's in the order
    it defines them; a field a class redefines stays where its base put it."""
    mine = {f.name: f for f in fields(cls)}
    order: list[str] = []
    for klass in cls.__mro__:
        if "__dataclass_fields__" not in vars(klass):
            continue
        inherited = {f.name for base in klass.__mro__[1:] if "__dataclass_fields__" in vars(base)
                     for f in fields(base)}
        order += [f.name for f in fields(klass) if f.name not in inherited]
    return [mine[n] for n in order]


def _asked(value):
    return value() if callable(value) else value


def parser_for(cls, prog: str, description: str) -> ArgParser:
    """The command's parser, derived from its options class: each field's flag in its group,
    the groups in the order their first field comes (``in_help_order``)."""
    p = ArgParser(prog=prog, description=description)
    groups = {}
    for f in in_help_order(cls):
        how = spec(f)
        if how.builtin:
            continue
        if how.group is not None and how.group not in groups:
            groups[how.group] = p.add_argument_group(how.group)
        given = {"action": how.action, "type": how.type, "metavar": how.metavar,
                 "choices": _asked(how.choices), "required": how.required or None}
        (groups[how.group] if how.group else p).add_argument(
            *names(f), dest=f.name, default=f.default, help=_asked(how.help),
            **{k: v for k, v in given.items() if v is not None})
    return p


def carried(cls, source, **given):
    """``cls``'s options from ``source`` (another command's options): every field of the same
    name as ``source`` has it, the rest its default, ``given`` over both."""
    have = {f.name for f in fields(source)}
    return cls(**{**{f.name: getattr(source, f.name) for f in fields(cls) if f.name in have},
                  **given})


def run_command(cls, parser: ArgParser, run, argv: list[str] | None) -> int:
    """A command's ``main``: ``argv`` parsed into its options class ``cls``, then
    ``run(options)``, the libraries' output at the options' verbosity; its exit code."""
    options = options_from(cls, parser.parse_args(argv))
    with output(options.verbosity):
        return run(options)
