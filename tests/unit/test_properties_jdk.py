"""The .properties reader against the real thing: java.util.Properties.load of the installed JDK.

``jdk/PropertiesDump.java`` loads each file it is given and prints its entries as JSON; both
readers get the same files, the tricky hand-picked ones and a Hypothesis batch, and must agree.
The JDK runs once per batch (a single-file source launch costs about two seconds), never per file.
Without ``java`` the tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import unavailable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enstratus_workers.config import ConfigError
from enstratus_workers.config.properties import parse_properties

DUMP = Path(__file__).with_name("jdk") / "PropertiesDump.java"
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

TRICKY = {
    # a line holding only a backslash: nothing to continue, the next line stands alone
    "lone backslash then entry": "\\\na=1\n",
    "lone backslash then hash comment": "\\\n#a=1\nb=2\n",
    "lone backslash then bang comment": "\\\n!a=1\n",
    "indented lone backslash then comment": "  \t\\\n   #a=1\n",
    "lone backslash then blank line": "\\\n\na=1\n",
    "two lone backslashes then comment": "\\\n\\\n#a=1\n",
    "lone backslash then indented entry": "\\\n   a = 1\n",
    "lone backslash then blanks only": "a=1\n\\\n \t \n",
    # ... and at the end of the file, where Java makes an entry "" = "" (but not after \r\n)
    "backslash at end of file": "a=1\n\\",
    "backslash and newline at end of file": "a=1\n\\\n",
    "backslash and lone cr at end of file": "a=1\r\\\r",
    "backslash and crlf at end of file": "a=1\r\n\\\r\n",
    "value backslash at end of file": "a=1\\",
    "value backslash and newline at end of file": "a=1\\\n",
    # continuations into what would otherwise be comments or blanks
    "continuation into hash line": "a=1\\\n#2\n",
    "continuation into bang line": "a=1\\\n  !2\n",
    "continuation into blank line": "a=1\\\n\nb=2\n",
    "continuation into blanks-only line": "a=1\\\n  \t\nb=2\n",
    "leading blanks after continuation": "a = x, \\\n  \t\f y\n",
    "continuation splits the key": "lo\\\n   ng = v\n",
    "comment ending in backslash": "# c \\\na=1\n",
    # backslash runs at the end of a line
    "escaped backslash at line end": "a=x\\\\\nb=y\n",
    "three backslashes at line end": "a=x\\\\\\\n  y\n",
    "four backslashes then lone backslash line": "a=\\\\\\\\\n\\\n#x\n",
    # escaped separators and blanks in keys
    "escaped colon and equals in key": "a\\:b\\=c = v\n",
    "escaped spaces in key": "my\\ key\\ \\  = v\n",
    "escaped hash starts a key": "\\#not-a-comment = v\n\\!neither = w\n",
    "separator after blanks": "k   =   v\nj : w\nl\tx\nm  = = n\n",
    "key alone": "lonely\nlonely2   \n=empty-key\n",
    # escapes
    "unicode escapes": "k\\u00e9y = caf\\u00e9 \\u20ac \\uD83D\\uDE00\n",
    "unpaired surrogate": "k = \\uD800\n",
    "malformed unicode escape": "k = \\u12\n",
    "control escapes": "k = a\\tb\\nc\\rd\\fe\\qf\\\\g\n",
    "raw non-ascii": "ключ = значение €\n",
    # line endings and blank lines
    "crlf": "a=1\r\nb=2\\\r\n  3\r\n",
    "lone cr": "a=1\rb=2\\\r  3\r",
    "lf then cr": "a=1\\\n\rb=2\n",
    "blank lines with blanks": " \t\f\n\r\n  \na=1\n \n",
    "unicode line separators are not breaks": "a = x\u2028y\x0bz\n",
    "empty file": "",
    "repeated key keeps the last": "a=1\na=2\n",
}


@pytest.fixture(scope="module")
def java():
    path = shutil.which("java")
    if path is None:
        unavailable("no `java` on PATH: the JDK is what the .properties reader is compared with")
    return path


def jdk_load(java: str, texts: list[str], scratch: Path) -> list[dict]:
    """What ``java.util.Properties`` reads from each text, in one JDK run: ``{"entries": {...}}``
    or ``{"error": message}``."""
    files = []
    for n, text in enumerate(texts):
        path = scratch / f"{n}.properties"
        path.write_bytes(text.encode("utf-8"))
        files.append(str(path))
    done = subprocess.run([java, str(DUMP), *files], check=False, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    results = [json.loads(line) for line in done.stdout.decode("ascii").splitlines()]
    assert len(results) == len(texts)
    return results


def disagreement(text: str, jdk: dict) -> str | None:
    """How this reader's reading of ``text`` differs from the JDK's, or ``None`` if it agrees.

    One difference is on purpose: this reader refuses an unpaired UTF-16 surrogate (``\\uD800``
    alone), which a Java string holds but no Python text can be written out as.
    """
    try:
        ours = {key: entry.value for key, entry in parse_properties(text).items()}
    except ConfigError as exc:
        if "error" in jdk:
            return None
        if "surrogate" in str(exc) and any(LONE_SURROGATE.search(k + v) for k, v in jdk["entries"].items()):
            return None
        return f"{text!r}: we refuse it ({exc}), the JDK reads {jdk['entries']!r}"
    if "error" in jdk:
        return f"{text!r}: we read {ours!r}, the JDK refuses it ({jdk['error']})"
    if ours != jdk["entries"]:
        return f"{text!r}: we read {ours!r}, the JDK reads {jdk['entries']!r}"
    return None


def test_the_tricky_inputs_read_as_the_jdk_reads_them(java, tmp_path):
    # Given the hand-picked inputs, When the JDK and this reader each load them
    names, texts = list(TRICKY), list(TRICKY.values())
    results = jdk_load(java, texts, tmp_path)
    # Then every one reads the same
    problems = [f"{name}: {why}" for name, text, jdk in zip(names, texts, results)
                if (why := disagreement(text, jdk))]
    assert problems == []


def test_the_jdk_and_this_reader_agree_on_a_lone_backslash_line(java, tmp_path):
    # Given the case that made `config check` report "unknown key ''"
    text = "\\\n#commented.out = 1\nworker.types = default\n"
    # When both read it
    (jdk,) = jdk_load(java, [text], tmp_path)
    # Then neither makes an entry of the backslash line, and the comment stays a comment
    assert jdk == {"entries": {"worker.types": "default"}}
    assert {k: e.value for k, e in parse_properties(text).items()} == jdk["entries"]
    assert parse_properties(text)["worker.types"].line == 3


# Files are drawn line by line, so that the corners of the grammar (a line of one backslash, a
# continuation into a comment or a blank line, the last line of the file) come up often. No lone
# surrogate escape: where Java would keep one, the check for it could not see past a later entry
# that replaces it ("unpaired surrogate" in TRICKY covers that difference).
PIECES = st.sampled_from(["\\", "\\\\", " ", "\t", "\f", "#", "!", "=", ":", "\\ ", "\\:", "\\=", "\\#",
                          "\\u0041", "\\u00e9", "\\uD83D\\uDE00", "\\u12", "\\n", "\\t",
                          "k", "key", "v", "é", "€", "\u2028", "\x0b"])
BLANKS = st.text(alphabet=" \t\f", max_size=2)
BODY = st.one_of(
    st.just("\\"),                                                     # a line of one backslash
    st.tuples(st.sampled_from("#!"), st.lists(PIECES, max_size=4).map("".join)).map("".join),
    st.lists(st.one_of(PIECES, st.text(max_size=3)), max_size=6).map("".join),
)
LINE = st.tuples(BLANKS, BODY, st.sampled_from(["", "", "\\", "\\\\"])).map("".join)
TERMINATOR = st.sampled_from(["\n", "\n", "\r\n", "\r"])


def _join(lines: list[tuple[str, str]], last_terminated: bool) -> str:
    text = "".join(line + end for line, end in lines)
    return text[:len(text) - len(lines[-1][1])] if lines and not last_terminated else text


PROPERTIES_TEXT = st.builds(_join, st.lists(st.tuples(LINE, TERMINATOR), max_size=8), st.booleans())
BATCH = 400


def test_a_hypothesis_batch_reads_as_the_jdk_reads_it(java, tmp_path):
    # Given a batch of generated files (Hypothesis draws them; the JDK then loads all in one run)
    texts: list[str] = []

    @settings(max_examples=BATCH, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(text=PROPERTIES_TEXT)
    def collect(text):
        texts.append(text)

    collect()
    assert len(texts) >= BATCH // 2  # Hypothesis may drop duplicates, never most of the batch
    # When the JDK and this reader each load them
    results = jdk_load(java, texts, tmp_path)
    # Then every one reads the same
    problems = [why for text, jdk in zip(texts, results) if (why := disagreement(text, jdk))]
    assert problems == [], f"{len(problems)} of {len(texts)} disagree:\n" + "\n".join(problems[:20])
