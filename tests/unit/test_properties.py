"""The .properties reader follows java.util.Properties.load, rule by rule."""

from __future__ import annotations

import pytest

from enstratus_workers.config.properties import Entry, escape, parse_properties, read_properties
from enstratus_workers.errors import ConfigError


def values(text: str) -> dict[str, str]:
    return {k: e.value for k, e in parse_properties(text).items()}


# --- separators --------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["key=value", "key = value", "key:value", "key : value",
                                  "key value", "key\tvalue", "key\fvalue", "   key   =   value",
                                  "key   value", "key \t: value"])
def test_each_separator_form_gives_the_same_entry(line):
    assert values(line) == {"key": "value"}


def test_only_the_first_separator_separates_and_a_second_is_part_of_the_value():
    assert values("a=b=c") == {"a": "b=c"}
    assert values("a:b:c") == {"a": "b:c"}
    assert values("a = = b") == {"a": "= b"}
    # blank then one '=' or ':' still counts as the separator; a second one is value
    assert values("a  :  :x") == {"a": ":x"}


def test_a_key_alone_has_an_empty_value_and_an_empty_key_is_allowed():
    assert values("lonely") == {"lonely": ""}
    assert values("lonely   ") == {"lonely": ""}
    assert values("=v") == {"": "v"}


def test_trailing_whitespace_of_a_value_is_kept_as_java_keeps_it():
    assert values("a = b  ") == {"a": "b  "}


def test_escaped_separators_and_blanks_belong_to_the_key():
    assert values(r"a\=b=c") == {"a=b": "c"}
    assert values(r"a\:b:c") == {"a:b": "c"}
    assert values(r"a\ b c") == {"a b": "c"}


# --- comments and blank lines ------------------------------------------------------------------

def test_hash_and_bang_start_comments_only_as_the_first_non_blank_character():
    text = "# comment\n! also\n   # indented comment\na = b # not a comment\n"
    assert values(text) == {"a": "b # not a comment"}


def test_a_comment_ending_in_a_backslash_does_not_continue():
    assert values("# comment \\\na = 1\n") == {"a": "1"}


def test_blank_and_whitespace_only_lines_are_skipped():
    assert values("\n \t\f\n\r\na=1\n\n") == {"a": "1"}


# --- continuation lines ------------------------------------------------------------------------

def test_an_odd_number_of_trailing_backslashes_joins_the_next_line_without_its_leading_blanks():
    assert values("fruits = apple, \\\n         banana, \\\n\t pear\n") == {"fruits": "apple, banana, pear"}


def test_an_even_number_of_trailing_backslashes_is_an_escaped_backslash_not_a_continuation():
    assert values("a = x\\\\\nb = y") == {"a": "x\\", "b": "y"}
    assert values("a = x\\\\\\\n  y") == {"a": "x\\y"}


def test_a_continued_line_that_starts_with_a_hash_is_value_not_comment():
    assert values("a = 1\\\n#2\n") == {"a": "1#2"}


def test_continuation_onto_an_empty_line_ends_the_logical_line():
    assert values("a = 1\\\n\nb = 2") == {"a": "1", "b": "2"}
    assert values("a = 1\\\n   \nb = 2") == {"a": "1", "b": "2"}


def test_a_line_of_one_backslash_makes_no_entry_and_the_next_line_stands_alone():
    # Java 9+: the logical line is still empty, so a following # or ! line is a comment
    assert values("\\\n#a = 1\nb = 2\n") == {"b": "2"}
    assert values("  \\\n  !a = 1\n") == {}
    assert values("\\\n\na = 1\n") == {"a": "1"}
    assert parse_properties("\\\n   a = 1\n")["a"].line == 2


def test_a_line_of_one_backslash_ending_the_file_is_an_empty_entry_as_in_java():
    # Java's LineReader meets the end of input with the backslash still counting...
    for text in ("a = 1\n\\", "a = 1\n\\\n", "a = 1\n\\\r"):
        assert values(text) == {"a": "1", "": ""}, repr(text)
    # ... except after \r\n, which it has already stepped over, and before any other line
    assert values("a = 1\n\\\r\n") == {"a": "1"}
    assert values("a = 1\n\\\n ") == {"a": "1"}


def test_a_backslash_at_the_end_of_the_file_is_dropped():
    assert values("a = 1\\") == {"a": "1"}


def test_a_continuation_may_split_the_key_and_the_separator():
    assert values("lo\\\n  ng = v") == {"long": "v"}


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_all_three_java_line_terminators_end_lines_and_continue_them(newline):
    text = newline.join(["a = 1", "b = 2\\", "  3", "c = 4"])
    assert values(text) == {"a": "1", "b": "23", "c": "4"}


def test_other_unicode_line_breaks_are_not_line_terminators():
    # str.splitlines would split at U+2028 and \v; Java does not
    assert values("a = x\u2028y\x0bz") == {"a": "x\u2028y\x0bz"}


def test_line_numbers_are_those_of_the_first_line_of_each_logical_line():
    entries = parse_properties("# c\n\na = 1\\\n  2\\\n  3\nb = 4\n")
    assert entries == {"a": Entry("123", 3), "b": Entry("4", 6)}


# --- escapes -----------------------------------------------------------------------------------

def test_character_escapes_are_resolved():
    assert values(r"a = t\tn\nr\rf\f") == {"a": "t\tn\nr\rf\f"}


def test_a_backslash_before_any_other_character_stands_for_that_character():
    assert values(r"a = \q\#\!\=\:\\\ ") == {"a": "q#!=:\\ "}


def test_unicode_escapes_in_keys_and_values():
    assert values(r"caf\u00e9 = \u00FCber \u20ac") == {"café": "über €"}


def test_a_surrogate_pair_escape_is_one_astral_character():
    assert values(r"a = \uD83D\uDE00") == {"a": "\U0001F600"}


@pytest.mark.parametrize("text,where", [(r"a = \u12", "value"), (r"a = \u12G4", "value"),
                                        ("a = \\u", "value"), (r"k\uZZZZ = v", "key")])
def test_a_malformed_unicode_escape_is_an_error_naming_file_and_line(text, where):
    with pytest.raises(ConfigError) as caught:
        parse_properties("# first\n" + text, file="x.properties")
    err = caught.value
    assert (err.file, err.line) == ("x.properties", 2)
    assert "x.properties:2" in str(err) and where in str(err)
    if where == "value":
        assert err.key == "a"


def test_an_unpaired_surrogate_escape_is_an_error():
    with pytest.raises(ConfigError, match="surrogate"):
        parse_properties(r"a = \uD800x", file="x.properties")


def test_errors_can_be_collected_while_the_other_lines_are_still_read():
    errors = []
    entries = parse_properties("a = \\u1\nb = 2\nc\\u = 3\n", file="f", errors=errors)
    assert entries == {"b": Entry("2", 2)}
    assert [e.line for e in errors] == [1, 3]


def test_the_message_of_a_malformed_escape_never_shows_the_value():
    with pytest.raises(ConfigError) as caught:
        parse_properties("password = hunter2\\u12", file="f")
    assert "hunter2" not in str(caught.value)


# --- duplicates, files and encodings -----------------------------------------------------------

def test_a_repeated_key_keeps_the_last_value_and_its_line():
    assert parse_properties("a = 1\nb = 2\na = 3\n") == {"a": Entry("3", 3), "b": Entry("2", 2)}


def test_files_are_read_as_utf8(tmp_path):
    path = tmp_path / "x.properties"
    path.write_bytes("name = Zoë ✓\n".encode("utf-8"))
    assert read_properties(path) == {"name": Entry("Zoë ✓", 1)}


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_key(tmp_path):
    path = tmp_path / "x.properties"
    path.write_bytes(b"\xef\xbb\xbfa = 1\n")
    assert read_properties(path) == {"a": Entry("1", 1)}


def test_files_that_are_not_valid_utf8_are_read_as_latin1(tmp_path):
    path = tmp_path / "x.properties"
    path.write_bytes("name = Zoë\n".encode("latin-1"))
    assert read_properties(path) == {"name": Entry("Zoë", 1)}


def test_a_missing_file_reads_as_none(tmp_path):
    assert read_properties(tmp_path / "absent.properties") is None


# --- escape, the inverse -----------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("plain", "value"), ("with space", " leading and trailing "), ("#hash", "!bang"),
    ("a=b:c", "x=y:z"), ("tab\tkey", "line\nbreak\r\f"), ("back\\slash", "\\"),
    ("ünï", "€ \U0001F600"), ("", ""), ("\x00ctrl", "\x7f"),
])
def test_escaped_keys_and_values_read_back_unchanged(key, value):
    line = f"{escape(key, key=True)}={escape(value)}"
    assert parse_properties(line) == {key: Entry(value, 1)}


def test_escape_writes_only_printable_ascii():
    assert escape("é\U0001F600") == "\\u00E9\\uD83D\\uDE00"
