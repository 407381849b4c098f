"""``dburl.check`` reads a database URL as SQLAlchemy's ``make_url`` does, without SQLAlchemy.

The settings check every database URL when they are read, in every process; ``check`` is that
reading for processes that must not load SQLAlchemy for it (an idle worker process). It copies
``make_url``'s steps, so these tests hold the two to the same fields and the same refusals: a
SQLAlchemy upgrade that reads URLs otherwise fails here, not in an operator's config.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from enstratus_workers.config import converters, dburl

URLS = [
    "sqlite:///services/worker/data/provisioning.db", "sqlite:////abs/path.db", "sqlite://", "sqlite:///:memory:",
    "mysql+pymysql://root@127.0.0.1:3306/provisioning", "mysql+pymysql://u:p@h/d?charset=utf8mb4",
    "mysql+pymysql://u:s3cr:t/pw@h:3307/d", "mysql+pymysql://u:p%40ss@h/d%2Fx", "mysql+pymysql://u@[::1]:3306/d",
    "mysql+pymysql://u@h:/d", "mysql+pymysql://u@h:+3306/d", "mysql+pymysql://u@h:33o6/d", "mysql+pymysql://u@h:٣٣٠٦/d",
    "mysql+pymysql://u@h/d?a=1&a=2&b=&c", "mysql+pymysql://u@h/d?password=x&unix_socket=/s", "mysql://h/d",
    "postgresql+psycopg://u@h/d", "mysql+pymysql://@h/d", "mysql+pymysql://u:@h/d", "mysql+pymysql:///d",
    "mysql+pymysql://u@h/d\nmore", "mysql+pymysql://u@h/d?q=1\nmore", "no-scheme", "://h/d", "sqlite:/x.db", "",
    "mysql+pymysql://u@h:3306,h2/d", "my sql://h/d", "mysql+pymysql://ü@hö:3306/dä",
]


def _sqlalchemy_fields(text: str):
    try:
        url = make_url(text)
    except Exception as exc:   # what make_url raises is what dburl._sqlalchemy turns into ValueError
        return type(exc).__name__
    return (url.drivername, url.username, url.password, url.host, url.port, url.database, dict(url.query))


def _check_fields(text: str):
    try:
        url = dburl._fields(text)
    except ValueError:
        return "refused"
    return (url.drivername, url.username, url.password, url.host, url.port, url.database, dict(url.query))


def _same(text: str) -> None:
    ours, theirs = _check_fields(text), _sqlalchemy_fields(text)
    if isinstance(theirs, str):
        assert ours == "refused", (text, ours, theirs)
    else:
        assert ours == theirs, text


@pytest.mark.parametrize("text", URLS)
def test_the_fields_and_the_refusals_are_make_urls(text):
    _same(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["mysql+pymysql://", "sqlite://", "://", "u", ":", "@", "/", "?", "&", "=",
                                           "[", "]", "::1", "%40", "%", "h", "3306", ",", "+", " ", "\n", "#"]),
                          st.text(max_size=3)), max_size=14).map("".join))
def test_any_text_reads_as_make_url_reads_it(text):
    _same(text)


def test_check_and_parse_agree_on_a_cluster_url_and_on_what_they_refuse():
    url = "mysql+pymysql://enstratus:pw@db1:3306,db2:3307,db3/provisioning?charset=utf8mb4"
    parts, parsed = dburl.check(url), dburl.parse(url)
    assert (parts.username, parts.password, parts.host, parts.port, parts.database, dict(parts.query)) == \
        (parsed.url.username, parsed.url.password, parsed.url.host, parsed.url.port, parsed.url.database,
         dict(parsed.url.query))
    for bad in ("sqlite://a,b/x.db", "mysql+pymysql://u@h1,h2/d?unix_socket=/s", "mysql+pymysql://u@h1,h1:3306/d",
                "nonsense"):
        with pytest.raises(ValueError) as by_check:
            dburl.check(bad)
        with pytest.raises(ValueError) as by_parse:
            dburl.parse(bad)
        assert str(by_check.value) == str(by_parse.value)


def test_the_converters_still_refuse_what_they_refused():
    assert converters.db_url(" mysql+pymysql://u:p@h:3306/d ") == "mysql+pymysql://u:p@h:3306/d"
    for bad, message in (("mysql://h/d", "unsupported database URL scheme 'mysql'"),
                         ("mysql+pymysql://u@h/", "MySQL URL names no database"),
                         ("mysql+pymysql://u@h:70000/d", "port 70000 in the database URL is out of range"),
                         ("mysql+pymysql://u@h:x/d", "is not a database URL")):
        with pytest.raises(ValueError, match=message):
            converters.db_url(bad)
    assert converters.url_has_password("mysql+pymysql://u@h/d?passwd=x")
    assert not converters.url_has_password("mysql+pymysql://u@h/d")
