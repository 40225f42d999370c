import pytest

from streamer.errors import UsageError
from streamer.serve.address import DEFAULT_HOST, ServeAddress, check_serve, parse_serve


@pytest.mark.parametrize("text, host, port", [
    ("8080", DEFAULT_HOST, 8080), ("0", DEFAULT_HOST, 0), ("127.0.0.1:9000", "127.0.0.1", 9000),
    ("0.0.0.0:80", "0.0.0.0", 80), ("[::1]:8080", "::1", 8080), ("localhost:1", "localhost", 1),
])
def test_parse(text, host, port):
    assert parse_serve(text) == ServeAddress(host, port)


@pytest.mark.parametrize("text", ["", "http", "1:2:3", "host:", "70000", ":80", "host:-1", "[::1]"])
def test_parse_refuses_what_is_not_host_port(text):
    with pytest.raises(UsageError, match="--serve"):
        parse_serve(text)


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("localhost", True), ("LocalHost", True),
    ("0.0.0.0", False), ("192.168.1.4", False), ("::", False), ("camera.example", False),
])
def test_loopback(host, loopback):
    assert ServeAddress(host, 1).loopback is loopback


def test_non_loopback_needs_a_token():
    with pytest.raises(UsageError, match="needs --serve-token"):
        check_serve("0.0.0.0:8080", None)
    assert check_serve("0.0.0.0:8080", "s3cret-token").host == "0.0.0.0"
    assert check_serve("8080", None) == ServeAddress(DEFAULT_HOST, 8080)


def test_token_rules():
    with pytest.raises(UsageError, match="is for --serve"):
        check_serve(None, "s3cret-token")
    with pytest.raises(UsageError, match="at least"):
        check_serve("8080", "short")
    assert check_serve(None, None) is None


def test_url_brackets_ipv6():
    assert ServeAddress("::1", 8).url() == "http://[::1]:8/"
    assert ServeAddress("127.0.0.1", 0).url(4242) == "http://127.0.0.1:4242/"
