"""The database URL naming a Galera cluster's nodes: ``host1:3306,host2:3306,host3`` in its
authority. One host reads exactly as before; a bad node list stops the daemons and ``config
check`` (exit 6, naming file, key and line) without ever showing the password."""

from __future__ import annotations

import os

import pytest
from sqlalchemy.engine import make_url

from enstratus_workers import cli
from enstratus_workers.config import converters, dburl
from enstratus_workers.config.dburl import Node
from tests import servicehome as sh

SECRET = "s3cr:t/pw"       # a password with the characters that could split a URL wrongly
WORKER = "services/worker/classes"


def test_a_cluster_url_names_its_nodes_in_order_with_3306_by_default():
    # Given a URL naming three nodes, one without a port
    parsed = dburl.parse(f"mysql+pymysql://enstratus:{SECRET}@db1:3306,db2:3307,DB3/provisioning?charset=utf8mb4")
    # Then its nodes are the three, in the operator's order, the missing port being 3306
    assert parsed.nodes == (Node("db1", 3306), Node("db2", 3307), Node("db3", 3306))
    assert parsed.clustered
    # And everything else is the one URL's, applying to every node
    assert (parsed.url.username, parsed.url.password, parsed.url.database) == ("enstratus", SECRET, "provisioning")
    assert parsed.url.query == {"charset": "utf8mb4"}
    assert parsed.at(Node("db2", 3307)).render_as_string(hide_password=False) == \
        f"mysql+pymysql://enstratus:{SECRET.replace(':', '%3A').replace('/', '%2F')}@db2:3307/provisioning?charset=utf8mb4"


def test_ipv6_and_ipv4_nodes_are_taken():
    parsed = dburl.parse("mysql+pymysql://u@[::1]:3307,10.0.0.2,[fe80::1]/db")
    assert parsed.nodes == (Node("::1", 3307), Node("10.0.0.2", 3306), Node("fe80::1", 3306))
    assert str(parsed.nodes[0]) == "[::1]:3307"


@pytest.mark.parametrize("url", [
    f"mysql+pymysql://enstratus:{SECRET}@db.example.com:3306/provisioning",
    "mysql+pymysql://root@127.0.0.1/x",
    "mysql+pymysql://u@/db?unix_socket=/run/mysqld/mysqld.sock",
    "sqlite:///services/worker/data/provisioning.db",
    "sqlite:///a,b.db",
    "sqlite://",
])
def test_one_host_reads_exactly_as_sqlalchemy_reads_it(url):
    # Given a URL of one server (or a file), as every install wrote it before clusters
    parsed = dburl.parse(url)
    # Then it is SQLAlchemy's own reading, not clustered
    assert parsed.url == make_url(url)
    assert not parsed.clustered
    # And the converter keeps it as written
    assert converters.db_url(url) == url


BAD_LISTS = {
    "an empty entry": ("db1,,db3", "node 2 of the host list is empty"),
    "a trailing comma": ("db1,db2,", "node 3 of the host list is empty"),
    "port 0": ("db1:0,db2", "node 1 of the host list has a bad port '0'"),
    "port 65536": ("db1,db2:65536", "node 2 of the host list has a bad port '65536'"),
    "a port that is no number": ("db1,db2:33o6", "has a bad port '33o6'"),
    "an empty port": ("db1:,db2", "node 1 of the host list has a bad port ''"),
    "a node twice": ("db1,db2,DB1:3306", "node 3 of the host list (db1:3306) is listed twice"),
    "an underscore": ("db_1,db2", "node 1 of the host list ('db_1') is not a host name or address"),
    "a label starting with a hyphen": ("db1,-db2", "('-db2') is not a host name"),
    "an address out of range": ("10.0.0.1,999.0.0.1", "('999.0.0.1') is not a host name"),
    "blanks": ("db1, db2", "node 2 of the host list has blanks around it"),
    "a bad IPv6": ("[::g]:3306,db2", "is not a bracketed IPv6 address"),
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_a_bad_node_list_is_refused_naming_the_node_never_the_password(case):
    hosts, says = BAD_LISTS[case]
    # Given a cluster URL with one bad entry
    url = f"mysql+pymysql://enstratus:{SECRET}@{hosts}/provisioning"
    # When it is checked as the config readers check it
    with pytest.raises(ValueError) as refused:
        converters.db_url(url)
    # Then the message says which node and why, and holds no secret
    assert says in str(refused.value)
    assert SECRET not in str(refused.value) and "s3cr" not in str(refused.value)


def test_several_nodes_need_mysql_and_a_network_address():
    with pytest.raises(ValueError, match="only a MySQL/MariaDB URL may name several nodes"):
        dburl.parse("postgresql://u@a,b/db")
    with pytest.raises(ValueError, match="cannot use unix_socket"):
        dburl.parse("mysql+pymysql://u@a,b/db?unix_socket=/x")


def test_shown_urls_list_every_node_and_hide_the_password():
    url = f"mysql+pymysql://enstratus:{SECRET}@db1,db2:3307/provisioning?password=x"
    assert converters.redact_url(url) == "mysql+pymysql://enstratus:***@db1:3306,db2:3307/provisioning?password=***"
    assert converters.url_has_password(url)
    assert not converters.url_has_password("mysql+pymysql://enstratus@db1,db2/provisioning")


@pytest.fixture
def home(tmp_path):
    return sh.make_home(tmp_path)


def test_config_check_exits_6_naming_file_key_and_line_for_a_bad_node(home, capsys):
    # Given worker.properties whose analytics URL lists a node twice (mode 0600: it holds a password)
    path = home / WORKER / "worker.properties"
    sh.set_keys(path, {"analytics.url": f"mysql+pymysql://enstratus:{SECRET}@db1:3306,db2,db1/analytics"})
    os.chmod(path, 0o600)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.startswith("analytics.url"))
    # When the operator runs config check
    code = cli.main(["--home", str(home), "config", "check"])
    # Then it exits 6 naming the file, the line and the key, and the node; never the password
    err = capsys.readouterr().err
    assert code == 6, err
    assert f"{path}:{line}, key 'analytics.url': node 3 of the host list (db1:3306) is listed twice" in err
    assert "s3cr" not in err


def test_a_good_cluster_url_passes_config_check_and_shows_every_node(home, capsys):
    # Given the provisioning URL and the relational persistence URL naming a 3-node cluster
    url = f"mysql+pymysql://enstratus:{SECRET}@db1:3306,db2:3306,db3/provisioning"
    sh.set_keys(home / WORKER / "worker.properties", {"provisioning.url": url})
    sh.set_keys(home / WORKER / "dasein-persistence.properties", {"dsn.relational.url": url})
    for name in ("worker.properties", "dasein-persistence.properties"):
        os.chmod(home / WORKER / name, 0o600)
    # When the operator runs config check --json
    code = cli.main(["--home", str(home), "config", "check", "--json"])
    out = capsys.readouterr().out
    # Then it passes, and shows the URLs with their nodes and without the password
    assert code == 0, out
    assert "mysql+pymysql://enstratus:***@db1:3306,db2:3306,db3:3306/provisioning" in out
    assert "s3cr" not in out


def test_a_cluster_url_with_a_password_in_a_readable_file_is_refused(home, capsys):
    # Given a cluster URL with a password in a file others may read
    path = home / WORKER / "worker.properties"
    sh.set_keys(path, {"provisioning.url": f"mysql+pymysql://enstratus:{SECRET}@db1,db2/provisioning"})
    os.chmod(path, 0o644)
    # Then the file is refused, as for a one-host URL
    code = cli.main(["--home", str(home), "config", "check"])
    err = capsys.readouterr().err
    assert code == 6 and "provisioning.url" in err and "s3cr" not in err, err
