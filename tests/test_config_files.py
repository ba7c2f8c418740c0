"""Config files as people save them: UTF-8 with or without a BOM and UTF-16 with one are read;
other encodings and a key written twice in one mapping are one line on stderr naming the file
(exit status 2), refused before TensorFlow loads and before anything is written."""

import codecs
import subprocess
import sys

import pytest

from cli_helpers import run_tfimb
from tfimb import cli
from tfimb import config as config_lib
from tfimb.config import files

CONFIG = """\
# A small experiment, with a non-ASCII comment: café, 10 µm.
data: {source: digits}
loss: {name: focal, gamma: 2.0}
train:
  epochs: 1
  batch_size: 16
  lr_values: [0.1, 0.01]
  lr_boundaries: [1]
"""
READ = {"UTF-8 BOM": (codecs.BOM_UTF8, "utf-8"),
        "UTF-16-LE BOM": (codecs.BOM_UTF16_LE, "utf-16-le"),
        "UTF-16-BE BOM": (codecs.BOM_UTF16_BE, "utf-16-be")}
REFUSED = {  # How each is saved -> what the one line says about it.
    "Latin-1": (CONFIG.encode("latin-1"),
                f"not UTF-8 (invalid byte 0xe9 at position {CONFIG.index('é')}, line 1)"),
    "UTF-16-LE without BOM": (CONFIG.encode("utf-16-le"), "NUL byte at position 1"),
    "UTF-16-BE without BOM": (CONFIG.encode("utf-16-be"), "NUL byte at position 0"),
    "UTF-32 BOM": (CONFIG.encode("utf-32"), "UTF-32 (it starts with a UTF-32 byte order mark)"),
    "UTF-32 without BOM": (CONFIG.encode("utf-32-le"), "NUL byte at position 1"),
    "UTF-16 BOM, odd length": (codecs.BOM_UTF16_LE + CONFIG.encode("utf-16-le") + b"\n",
                               "not UTF-16 (truncated data"),
}
EXPECTED = "expected UTF-8 (with or without BOM) or UTF-16 with a BOM. Save it as UTF-8."
DUPLICATES = {  # Config text -> the key named and where.
    "loss: {name: focal}\ntrain: {epochs: 1}\n\nloss: {name: ldam}\n": "`loss` at lines 1 and 4",
    "train:\n  epochs: 1\n  batch_size: 8\n  epochs: 2\n": "`train.epochs` at lines 2 and 4",
    "train: {epochs: 1, epochs: 2}\n": "`train.epochs` at line 1, columns 9 and 20",
    "loss: {name: focal}\nvariants:\n  - name: a\n  - name: b\n    loss:\n      name: focal\n"
    "      gamma: 1.0\n      name: ldam\n": "`variants[1].loss.name` at lines 6 and 8",
    'train:\n  epochs: 1\n  "epochs": 2\n': "`train.epochs` at lines 2 and 3",
}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    """The one-line error path, as users get it (TFIMB_DEBUG would show tracebacks)."""
    monkeypatch.delenv("TFIMB_DEBUG", raising=False)


def _tfimb(capsys, *argv):
    """`tfimb ARGV` in this process: (exit status, non-empty stderr lines)."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("saved", sorted(READ))
def test_utf8_bom_and_utf16_with_bom_read_as_plain_utf8(tmp_path, saved):
    plain, other = tmp_path / "plain.yaml", tmp_path / "other.yaml"
    bom, encoding = READ[saved]
    plain.write_bytes(CONFIG.encode("utf-8"))
    other.write_bytes(bom + CONFIG.encode(encoding))
    raw = files.read(plain)
    assert raw["loss"] == {"name": "focal", "gamma": 2.0} and raw["train"]["epochs"] == 1
    assert files.read(other) == raw
    assert config_lib.load(other, ["train.epochs=2"]) == config_lib.load(plain, ["train.epochs=2"])
    other.write_bytes(bom + CONFIG.replace("\n", "\r\n").encode(encoding))  # Windows line ends.
    assert files.read(other) == raw


@pytest.mark.parametrize("saved", sorted(REFUSED))
def test_other_encodings_are_one_line_naming_the_file(tmp_path, capsys, saved):
    data, problem = REFUSED[saved]
    (tmp_path / "x.yaml").write_bytes(data)
    with pytest.raises(config_lib.ConfigError, match="cannot read the config"):
        config_lib.load(tmp_path / "x.yaml")
    for command in (["train"], ["tune"], ["flow", "train"]):
        code, lines = _tfimb(capsys, *command, tmp_path / "x.yaml", "--workdir", tmp_path / "w")
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"tfimb: {tmp_path / 'x.yaml'}: cannot read the config: ")
        assert problem in lines[0] and lines[0].endswith(EXPECTED), lines[0]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("text", list(DUPLICATES), ids=["top", "nested", "flow", "list",
                                                        "quoted"])
def test_a_key_twice_in_a_mapping_is_refused_with_both_lines(tmp_path, capsys, text):
    (tmp_path / "x.yaml").write_text(text, encoding="utf-8")
    code, lines = _tfimb(capsys, "train", tmp_path / "x.yaml", "--workdir", tmp_path / "w")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"tfimb: {tmp_path / 'x.yaml'}: duplicate key {DUPLICATES[text]}; a key "
                        "may appear once per mapping (the last would silently win).")
    with pytest.raises(config_lib.ConfigError, match="duplicate key"):
        config_lib.load(tmp_path / "x.yaml")
    assert not (tmp_path / "w").exists()


def test_what_the_safe_loader_reads_stays_as_it_was(tmp_path, capsys):
    """Merge keys may override what they merge; an alias is not a duplicate; keys that differ
    only in case differ; a refused tag is still the safe loader's refusal."""
    (tmp_path / "x.yaml").write_text(
        "base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\ny: *b\nz: *b\nA: 0\n")
    assert files.read(tmp_path / "x.yaml") == {"base": {"a": 1, "b": 2}, "x": {"a": 3, "b": 2},
                                               "y": {"a": 1, "b": 2}, "z": {"a": 1, "b": 2},
                                               "A": 0}
    (tmp_path / "empty.yaml").write_bytes(codecs.BOM_UTF8)
    assert files.read(tmp_path / "empty.yaml") is None
    (tmp_path / "tag.yaml").write_text("train: !!python/object:os.system {}\n")
    code, lines = _tfimb(capsys, "train", tmp_path / "tag.yaml", "--workdir", tmp_path / "w")
    assert code == 2 and len(lines) == 1 and "not a YAML config the safe loader reads" in lines[0]


def test_a_key_twice_in_a_set_value_is_refused(tmp_path, capsys):
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.parse_override("loss={name: focal, name: ldam}")
    assert str(error.value) == ("Invalid value for `--set loss`. Expected a YAML value with each "
                                "key once per mapping (the last would silently win). Received: "
                                "'{name: focal, name: ldam}', with `name` twice.")
    code, lines = _tfimb(capsys, "train", "default", "--workdir", tmp_path / "w", "--set",
                         "train={epochs: 1, batch_size: 8, epochs: 2}")
    assert code == 2 and len(lines) == 1 and "`--set train`" in lines[0], lines
    assert "with `epochs` twice" in lines[0]
    assert config_lib.parse_override("loss={name: focal, gamma: 2}") == {
        "loss": {"name": "focal", "gamma": 2}}
    assert not (tmp_path / "w").exists()


def test_the_command_refuses_before_tensorflow_loads_and_writes_nothing(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(CONFIG.encode("latin-1"))
    (tmp_path / "twice.yaml").write_text("loss: {name: focal}\ntrain: {epochs: 1}\n"
                                         "loss: {name: ldam}\n")
    for name, fragment in (("latin1.yaml", "not UTF-8"), ("twice.yaml", "lines 1 and 3")):
        result = run_tfimb("train", name, "--workdir", "w", cwd=tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith(f"tfimb: {name}: ") and fragment in lines[0], lines[0]
        assert "Traceback" not in result.stderr
    script = ("import sys\nfrom tfimb import cli\n"
              "codes = [cli.main(['train', n, '--workdir', 'w']) for n in sys.argv[1:]]\n"
              "print(codes, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script, "latin1.yaml", "twice.yaml"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.strip() == "[2, 2] False False", result.stdout + result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.yaml", "twice.yaml"]
