"""Properties of the config readers over arbitrary input: they fail only with ConfigError, never leak.

An operator's editor, a bad merge or a truncated copy can put anything into a config file; the
daemon must then stop with a message naming the file, never with a traceback.
"""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from enstratus_workers.config import ConfigError, load_settings
from enstratus_workers.config.cfgfile import parse_cfg
from enstratus_workers.config.mq_file import KEYS as MQ_KEYS
from enstratus_workers.config.properties import escape, parse_properties, read_properties
from enstratus_workers.config.problems import flatten
from enstratus_workers.layout import Layout

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text rich in the characters the grammars care about, mixed with anything at all.
SYNTAX = st.sampled_from(list("\\=:#! \t\f\r\nu0123456789abcdefABCDEF[]'\",.") +
                         ["\\u", "\\\n", "\r\n", " = ", "password = ", "ENCRYPTION_KEY = ",
                          "worker.types = ", "worker.a.min = ", "dsn.persistentCache.", "sqlite:///",
                          "mysql+pymysql://u:p@h/d", "[sec]", '"""', "'''"])
GRAMMAR_TEXT = st.lists(st.one_of(SYNTAX, st.text(max_size=8)), max_size=40).map("".join)
ANY_TEXT = st.one_of(st.text(), GRAMMAR_TEXT)
FILES = ["mq.cfg", "worker.properties", "dasein-persistence.properties", "enstratus-km-client.cfg",
         "enstratus-provisioning.cfg"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=ANY_TEXT)
def test_any_text_parses_or_fails_with_a_config_error_naming_the_line(text):
    try:
        entries = parse_properties(text, file="f.properties")
    except ConfigError as exc:
        assert exc.file == "f.properties" and exc.line >= 1
    else:
        assert all(isinstance(k, str) and isinstance(e.value, str) and e.line >= 1 for k, e in entries.items())


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_read_or_fail_with_a_config_error(scratch, data):
    path = scratch / "x.properties"
    path.write_bytes(data)
    try:
        read_properties(path)
    except ConfigError as exc:
        assert exc.file == path


@FUZZ
@given(text=ANY_TEXT)
def test_any_text_in_a_cfg_file_validates_or_fails_with_config_errors(text):
    try:
        parse_cfg(text, MQ_KEYS, file="mq.cfg")
    except ConfigError as exc:
        assert all(e.file == "mq.cfg" for e in flatten(exc))


@FUZZ
@given(texts=st.fixed_dictionaries({name: st.one_of(st.none(), ANY_TEXT) for name in FILES}),
       private=st.booleans())
def test_load_settings_gives_settings_or_config_errors_for_any_files(scratch, texts, private):
    layout = Layout(scratch / "home")
    layout.classes_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = layout.classes_dir / name
        if text is None:
            path.unlink(missing_ok=True)
            continue
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        os.chmod(path, 0o600 if private else 0o644)
    try:
        settings_ = load_settings(layout)
    except ConfigError as exc:
        assert all(e.file is not None and e.file.parent == layout.classes_dir for e in flatten(exc))
    else:
        assert len(settings_.provisioning.encryption_key.reveal()) == 32


SECRET = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", min_size=16, max_size=24)


@FUZZ
@given(secret=SECRET, before=GRAMMAR_TEXT, after=GRAMMAR_TEXT, form=st.sampled_from([
    ("mq.cfg", "password = {}"), ("mq.cfg", "password = '{}"), ("mq.cfg", "password = {}, x"),
    ("worker.properties", "provisioning.url = mysql+pymysql://u:{}@h:bad/d"),
    ("worker.properties", "analytics.url = mysql://u:{}@h/d"),
    ("dasein-persistence.properties", "dsn.relational.url = ftp://u:{}@h/d"),
    ("enstratus-provisioning.cfg", "ENCRYPTION_KEY = {}"),
]), mode=st.sampled_from([0o600, 0o644]))
def test_a_secret_never_appears_in_any_error_message(scratch, secret, before, after, form, mode):
    assume(secret not in before + after)
    layout = Layout(scratch / "leak")
    layout.classes_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (layout.classes_dir / name).unlink(missing_ok=True)
    name, line = form
    path = layout.classes_dir / name
    path.write_text(f"{before}\n{line.format(secret)}\n{after}", encoding="utf-8", errors="surrogatepass")
    os.chmod(path, mode)
    try:
        load_settings(layout)
    except ConfigError as exc:
        assert secret not in str(exc) and secret not in repr(exc)
        assert all(secret not in str(e) for e in flatten(exc))


KEYS_AND_VALUES = st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=6)


@FUZZ
@given(table=KEYS_AND_VALUES, separator=st.sampled_from(["=", ":", " = ", "\t:\t", " "]),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), data=st.data())
def test_escaped_keys_and_values_parse_back_to_themselves(table, separator, newline, data):
    lines = []
    for key, value in table.items():
        # an empty key before a lone blank would leave the value's first word as the key
        between = "=" if not key and separator == " " else separator
        line = escape(key, key=True) + between + escape(value)
        lines.append(_continue_somewhere(line, newline, data))
    parsed = parse_properties(newline.join(lines))
    assert {k: e.value for k, e in parsed.items()} == table


def _continue_somewhere(line: str, newline: str, data) -> str:
    """Break ``line`` with a continuation where that is allowed: not inside an escape pair, and not
    before a blank (the leading blanks of a continuation line are dropped)."""
    cuts = [i for i in range(1, len(line))
            if (len(line[:i]) - len(line[:i].rstrip("\\"))) % 2 == 0 and line[i] not in " \t\f"]
    if not cuts or not data.draw(st.booleans(), label="continue"):
        return line
    i = data.draw(st.sampled_from(cuts), label="cut")
    indent = data.draw(st.sampled_from(["", "  ", "\t"]), label="indent")
    return line[:i] + "\\" + newline + indent + line[i:]


@settings(max_examples=50, deadline=None)
@given(key=st.binary(min_size=32, max_size=32))
def test_any_32_byte_key_in_base64_is_accepted(scratch, key):
    layout = Layout(scratch / "key")
    layout.classes_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (layout.classes_dir / name).unlink(missing_ok=True)
    path = layout.classes_dir / "enstratus-provisioning.cfg"
    path.write_text(f"ENCRYPTION_KEY = {base64.b64encode(key).decode()}\n")
    os.chmod(path, 0o600)
    assert load_settings(layout).provisioning.encryption_key.reveal() == key
