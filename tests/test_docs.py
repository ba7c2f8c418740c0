"""README.md and docs/*.md say only what runs: their Python examples, commands, flags, config
keys, links and paths are checked against the package and the repository.

Convention: every ```python block runs, in a fresh namespace from a temporary directory, unless
the line just before its fence is `<!-- not run -->` (for blocks that need data, a run directory
or a server).
"""

import argparse
import dataclasses
import inspect
import pathlib
import re
import shlex
import textwrap
import typing

import pytest

from tfimb import cli, errors
from tfimb import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_500  # bytes: README is one page; the rest lives in docs/.
NOT_RUN = "<!-- not run -->"
FENCE = re.compile(r"^([ \t]*)```([\w-]*)\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)


def _name(path):
    return str(path.relative_to(ROOT))


def _blocks(path):
    """(language, code, line number, marked not-run) of each fenced block."""
    text = path.read_text()
    out = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, match.start()) + 1
        code = textwrap.dedent(match.group(3)) if match.group(1) else match.group(3)
        out.append((match.group(2), code, line, before == NOT_RUN))
    return out


def _prose(path):
    """The text outside fenced blocks."""
    return FENCE.sub("", path.read_text())


PYTHON_BLOCKS = [pytest.param(path, code, id=f"{_name(path)}:{line}")
                 for path in DOCS for lang, code, line, skip in _blocks(path)
                 if lang == "python" and not skip]


def test_there_are_runnable_examples():
    assert any(p.values[0].name == "README.md" for p in PYTHON_BLOCKS)
    assert len(PYTHON_BLOCKS) >= 3


@pytest.mark.parametrize("path,code", PYTHON_BLOCKS)
def test_python_example_runs(path, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    exec(compile(code, str(path), "exec"), namespace)
    if "history" in namespace:  # A training example: it trained, and its metrics are sane.
        for name, values in namespace["history"].history.items():
            assert len(values) >= 1, name
            if "accuracy" in name or name == "auc":
                assert all(0.0 <= v <= 1.0 for v in values), (name, values)


def test_readme_example_uses_the_class_balanced_focal_loss_and_group_metrics():
    code = next(c for lang, c, _, skip in _blocks(ROOT / "README.md")
                if lang == "python" and not skip)
    assert code.lstrip().startswith("import tfimb")
    for needle in ("tfimb.class_counts(", "tfimb.ClassBalancedFocal(",
                   "tfimb.metrics.group_accuracies(", ".fit("):
        assert needle in code, needle


def test_multi_label_example_is_documented_and_run():
    """docs/losses.md's multi-label example is among the blocks that run (its AUC is checked
    in range there, with the other training examples' metrics)."""
    blocks = [c for lang, c, _, skip in _blocks(ROOT / "docs" / "losses.md")
              if lang == "python" and not skip and "multi_label=True" in c]
    assert len(blocks) == 1
    assert "keras.metrics.AUC(multi_label=True" in blocks[0]


# ---------------------------------------------------------------------------------------------
# Commands: `tfimb <subcommand> ... --flag ... --set section.key=value`.

def _subparsers(parser):
    """{name: parser} of a parser's subcommands (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _options(parser):
    return {option for action in parser._actions for option in action.option_strings}


SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "(", ")"}


def _command_lines(path):
    """Every `tfimb ...` command written in a shell block or an inline code span, as tokens
    after `tfimb` (up to a shell separator or comment)."""
    texts = []
    for lang, code, _, _ in _blocks(path):
        if lang in ("bash", "sh", "shell", "console", ""):
            texts += code.replace("\\\n", " ").splitlines()
    texts += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", _prose(path))]
    lines = []
    for text in texts:
        if not re.search(r"\btfimb\b(?![./])", text):
            continue
        text = text.replace("[", " ").replace("]", " ").replace("...", " ")
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # Unbalanced quotes: split on white space.
            tokens = text.split()
        while "tfimb" in tokens:
            start = tokens.index("tfimb") + 1
            end = next((i for i in range(start, len(tokens)) if tokens[i] in SEPARATORS),
                       len(tokens))
            lines.append((text, tokens[start:end]))
            tokens = tokens[end:]
    return lines


def _resolve_command(tokens):
    """(subcommand name, its argparse parser, remaining tokens) or an assertion error."""
    parser = cli.build_parser()
    if not tokens or tokens[0].startswith("-"):
        return "tfimb", parser, tokens
    commands = _subparsers(parser)
    assert tokens[0] in commands, f"no subcommand `tfimb {tokens[0]}`"
    name, sub, rest = tokens[0], commands[tokens[0]], tokens[1:]
    nested = _subparsers(sub)
    if nested and rest and not rest[0].startswith("-"):  # `tfimb flow` alone names the group.
        assert rest[0] in nested, f"no subcommand `tfimb {name} {rest[0]}`"
        name, sub, rest = f"{name} {rest[0]}", nested[rest[0]], rest[1:]
    return name, sub, rest


COMMAND_LINES = [pytest.param(path, text, tokens,
                              id=f"{_name(path)}: tfimb {' '.join(tokens)}"[:120])
                 for path in DOCS for text, tokens in _command_lines(path)]


def test_every_subcommand_is_documented():
    documented = set()
    for _, _, tokens in (p.values for p in COMMAND_LINES):
        try:
            documented.add(_resolve_command(tokens)[0])
        except AssertionError:  # Reported by test_command_line_matches_the_parser.
            pass
    for name in ("train", "tune", "flow train", "flow evaluate", "flow sample",
                 "flow interpolate", "flow two-moons", "export", "report", "losses", "info",
                 "data-service"):
        assert name in documented, name


@pytest.mark.parametrize("path,text,tokens", COMMAND_LINES)
def test_command_line_matches_the_parser(path, text, tokens):
    name, parser, rest = _resolve_command(tokens)
    options = _options(parser)
    for token in rest:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in options, f"`tfimb {name}` has no {flag} ({path.name}: {text})"
    overrides = [rest[i + 1] for i, token in enumerate(rest[:-1]) if token == "--set"]
    for override in overrides:
        _check_override_key(override)
    config = rest[0] if rest and not rest[0].startswith("-") else None
    if overrides and config and name in ("train", "tune", "flow train"):
        _check_overrides_resolve(name, config, overrides)


# ---------------------------------------------------------------------------------------------
# Config keys of `--set section.key=value`.

def _fields(cls):
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_of(annotation):
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):  # Optional[Section]
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _loss_options():
    from tfimb import losses

    names = {f.name for f in dataclasses.fields(config_lib.LossConfig)} - {"options"}
    for loss in losses.LOSSES.values():
        names |= set(inspect.signature(loss).parameters)
    return names - {"counts", "reduction", "dtype"}


def _key_exists(parts, cls):
    """Whether the dotted key `parts` names a field of dataclass `cls` (loss options included)."""
    fields = _fields(cls)
    if parts[0] not in fields:
        return False
    if len(parts) == 1:
        return True
    if cls is config_lib.ExperimentConfig and parts[0] == "loss":
        return len(parts) == 2 and parts[1] in _loss_options()
    section = _dataclass_of(fields[parts[0]])
    return section is not None and _key_exists(parts[1:], section)


def _check_override_key(override):
    assert "=" in override, f"--set {override}: expected key=value"
    key = override.split("=", 1)[0]
    if key in ("key", "KEY"):  # The placeholder of a usage line.
        return
    parts = key.split(".")
    roots = [config_lib.ExperimentConfig, config_lib.FlowConfig]
    ok = any(_key_exists(parts, cls) for cls in roots)
    if parts[0] == "search":
        ok = ok or _key_exists(parts[1:], config_lib.SearchConfig)
    assert ok, f"--set {override}: no config key {key!r}"


def _check_overrides_resolve(name, config, overrides):
    """A command line with a real config file resolves with its overrides (values included)."""
    import yaml

    try:
        path = cli.resolve_config_path(config)
    except errors.UsageError:
        return  # A placeholder such as CONFIG.
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("variants", None)
    if name == "train":
        config_lib.resolve(raw, overrides)
    elif name == "tune":
        config_lib.resolve_search(raw, overrides)
    else:
        config_lib.resolve_flow(raw, overrides)


SET_OVERRIDES = sorted({(path, m) for path in DOCS
                        for m in re.findall(r"--set[ =]+[\"']?([\w.]+=[^\s`\"']*)",
                                            path.read_text())})


@pytest.mark.parametrize("path,override", SET_OVERRIDES,
                         ids=[f"{_name(p)}: {o}" for p, o in SET_OVERRIDES])
def test_set_override_names_a_config_key(path, override):
    _check_override_key(override)


# ---------------------------------------------------------------------------------------------
# Links, paths, size and leaks.

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path):
    """GitHub's heading anchors of a Markdown file (duplicates get -1, -2, ...)."""
    anchors = set()
    for heading in re.findall(r"^#+ +(.+?) *$", _prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_relative_links_point_to_files(path):
    for target in LINK.findall(_prose(path)):
        if re.match(r"[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        file = (path.parent / name).resolve() if name else path
        assert file.exists(), f"{_name(path)} links to missing {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{_name(path)} links to missing anchor {target}"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_repository_paths_exist(path):
    text = path.read_text()
    for found in re.findall(r"(?<![\w/.])((?:configs|benchmarks|tests|tfimb)/[\w./-]*\w"
                            r"\.(?:yaml|py|sh|md))", text):
        assert (ROOT / found).is_file(), f"{_name(path)} names missing {found}"
    for found in re.findall(r"(?<![\w/.])(configs/[\w./-]+)/(?=[\s`),])", text):
        assert (ROOT / found).is_dir(), f"{_name(path)} names missing {found}/"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_environment_variables_given_to_scripts_are_read_by_them(path):
    """`VAR=PATH benchmarks/script.sh` only where the script reads VAR."""
    for variable, script in re.findall(r"\b([A-Z][A-Z0-9_]*)=\S+\s+(?:python3?\s+)?"
                                       r"((?:benchmarks|tests)/[\w/.-]+\.(?:sh|py))",
                                       path.read_text()):
        assert variable in (ROOT / script).read_text(), f"{script} does not read {variable}"


def test_docs_pages_link_back_to_the_readme():
    for path in DOCS[1:]:
        head = path.read_text().split("\n\n", 2)
        assert head[0].startswith("# "), path.name
        assert "](../README.md)" in head[1], f"{path.name}: purpose line with a README link"


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    for path in DOCS[1:]:
        assert f"](docs/{path.name})" in readme, path.name


def test_readme_is_one_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail to docs/"


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_no_development_sandbox_paths(path):
    text = path.read_text()
    assert "../shared" not in text
    assert "/shared/" not in text


def _cpu_table_rows(path):
    """The rows of the measured imbalanced CIFAR-10 CPU table in a Markdown file."""
    return [line for line in path.read_text().splitlines()
            if re.match(r"\| [^|]+ \| [\d.]+ / [\d.]+ / [\d.]+ \| [^|]+ \|$", line)]


def test_full_protocol_rows_are_the_kept_runs():
    """Each measured row of the imbalanced CIFAR-10 table at the published protocol (four
    columns: the run's commit, CPU and hours last) is a finished run kept in
    benchmarks/results/cifar10_imbalanced/, to the digit, and README quotes it."""
    import json

    rows = [line for line in (ROOT / "docs" / "reproducing.md").read_text().splitlines()
            if re.match(r"\| [^|]+ \| [\d.]+ / [\d.]+ / [\d.]+ \| [^|]+ \| [^|]+ \|$", line)]
    kept = {}
    for results in (ROOT / "benchmarks" / "results" / "cifar10_imbalanced").glob(
            "*/results.json"):
        accuracy = json.loads(results.read_text())["accuracy"]
        kept[results.parent.name] = " / ".join(f"{100 * accuracy[g]:.2f}"
                                               for g in ("majority", "minority", "all"))
    assert sorted(line.split("|")[2].strip() for line in rows) == sorted(kept.values())
    readme = (ROOT / "README.md").read_text()
    assert all(figure in readme for figure in kept.values())


def test_cpu_table_is_the_kept_runs_and_the_same_everywhere():
    """The measured column is the kept run directories' results.json, to the digit; README,
    docs/training.md and docs/reproducing.md carry the same rows."""
    import json

    readme = _cpu_table_rows(ROOT / "README.md")
    measured = sorted(line.split("|")[2].strip() for line in readme)
    kept = []
    for results in (ROOT / "benchmarks" / "results" / "cifar10_imbalanced_cpu").glob(
            "*/results.json"):
        accuracy = json.loads(results.read_text())["accuracy"]
        kept.append(" / ".join(f"{100 * accuracy[g]:.2f}"
                               for g in ("majority", "minority", "all")))
    assert measured == sorted(kept)
    for page in ("training.md", "reproducing.md"):
        assert _cpu_table_rows(ROOT / "docs" / page) == readme, page


def test_search_table_is_the_kept_search():
    import csv

    rows = [tuple(cell.strip().replace("class-balanced ", "") for cell in line.split("|")[2:-1])
            for line in (ROOT / "docs" / "search.md").read_text().splitlines()
            if re.match(r"\| \d+ \| class-balanced ", line)]
    assert len(rows) == 6
    with open(ROOT / "benchmarks" / "results" / "search_cpu" / "trials.csv") as f:
        kept = [(t["loss"].split("_")[-1], t["beta"], t["gamma"],
                 *(f"{100 * float(t[f'val_{g}_accuracy']):.2f}"
                   for g in ("all", "majority", "minority")))
                for t in csv.DictReader(f)]
    assert sorted(rows) == sorted(kept)


def _lt_rows(path):
    """{config: (final, best (epoch))} of the measured CIFAR-10-LT table in a Markdown file."""
    rows = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\| `(\w+_r\d+(?:_seed\d+)?)` \| [\d.]+ \| ([\d.]+) \| ([\d.]+ \(\d+\)) \|",
                     line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_cifar10_lt_table_is_the_kept_runs():
    """Every finished CIFAR-10-LT row is in README and docs/reproducing.md with its final and
    best-epoch accuracy, to the digit, and no row is shown measured without its results.json."""
    import json

    kept = {}
    for results in (ROOT / "benchmarks" / "results" / "cifar10_lt").glob("*/results.json"):
        r = json.loads(results.read_text())
        best = r["best_evaluated_epoch"]
        kept[results.parent.name] = (f"{100 * r['accuracy']['all']:.2f}",
                                     f"{100 * best['accuracy']['all']:.2f} ({best['epoch']})")
    for page in (ROOT / "README.md", ROOT / "docs" / "reproducing.md"):
        assert _lt_rows(page) == kept, page
