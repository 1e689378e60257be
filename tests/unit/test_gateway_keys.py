"""API keys and quotas without a server: hashing, the key file, the presented key,
the key store's reload, the token bucket and the quota checks (clocks injected)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import pytest

from service.cli import parse
from service.commands.create_key import CreateKeyConfig, add_key
from service.config import Settings
from service.gateway.errors import ConcurrencyLimited, RateLimited
from service.gateway.keys import (
    ANONYMOUS,
    Client,
    KeyFileError,
    KeyStore,
    Quota,
    auth_headers,
    hash_key,
    new_key,
    parse_key_file,
    presented_key,
)
from service.gateway.metrics import GatewayMetrics
from service.gateway.quotas import Quotas, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(name: str, key: str, role: str = "client", **extra: object) -> str:
    fields = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"  - {{name: {name}, role: {role}, sha256: {hash_key(key)}{fields}}}\n"


def write_keys(path: Path, *entries: str) -> Path:
    path.write_text("keys:\n" + "".join(entries) if entries else "keys: []\n")
    return path


# ------------------------------------------------------------------------------ keys
def test_new_keys_are_random_and_hashed_with_sha256() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert re.fullmatch(r"sg_[A-Za-z0-9_-]{43}", key), key  # 32 bytes = 256 bits
    key = "sg_example"
    assert hash_key(key) == hashlib.sha256(b"sg_example").hexdigest()
    assert hash_key(key) != hash_key(key + "x")


def test_key_file_parses_roles_and_quota_overrides() -> None:
    text = "keys:\n" + entry("alice", "a") + entry("lab", "b", "research", rate=50, burst=5)
    parsed = parse_key_file(text)
    settings = Settings(quota_client_rate=2.0, quota_client_burst=7, quota_client_concurrency=3)
    alice, lab = parsed.keys
    assert alice.quota(settings) == Quota(rate=2.0, burst=7, concurrency=3)
    assert lab.role == "research"
    research = Settings().quota_research_concurrency
    assert lab.quota(settings) == Quota(rate=50.0, burst=5, concurrency=research)
    assert parse_key_file('{"keys": []}').keys == []  # JSON is YAML too


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a mapping"),  # an empty file is not "no keys": say `keys: []`
        ("keys: [", "not YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("keys:\n" + entry("Alice", "a"), "keys.0.name"),
        ("keys:\n" + entry("anonymous", "a"), "reserved"),
        ("keys:\n" + entry("a", "a", "admin"), "keys.0.role"),
        ("keys:\n  - {name: a, sha256: abc}\n", "keys.0.sha256"),
        ("keys:\n" + entry("a", "a", rate=0), "keys.0.rate"),
        ("keys:\n" + entry("a", "a", burst=0), "keys.0.burst"),
        ("keys:\n" + entry("a", "a", secret="x"), "keys.0.secret"),
        ("keys:\n" + entry("a", "k") + entry("b", "k"), "listed twice"),
        ("keys:\n" + entry("a", "k") + entry("a", "j", "research"), "disagree"),
        ("keys:\n" + entry("a", "k") + entry("a", "j", rate=3), "disagree"),
    ],
)
def test_bad_key_files_are_refused_with_where(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=re.escape(message)) as info:
        parse_key_file(text, where="keys.yaml")
    assert str(info.value).startswith("keys.yaml: ")
    assert not re.search(r"[0-9a-f]{64}", str(info.value)), "no hashes in messages"


def test_two_keys_may_share_a_name_while_one_is_rotated() -> None:
    parsed = parse_key_file("keys:\n" + entry("a", "old") + entry("a", "new"))
    assert [k.name for k in parsed.keys] == ["a", "a"]


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer sg_abc"}, "sg_abc"),
        ({"authorization": "bearer   sg_abc  "}, "sg_abc"),
        ({"x-api-key": "sg_abc"}, "sg_abc"),
        ({"authorization": "Bearer sg_abc", "x-api-key": "sg_abc"}, "sg_abc"),
        ({}, None),
        ({"authorization": "Basic c2c6YWJj"}, None),
        ({"authorization": "Bearer"}, None),
        ({"x-api-key": ""}, None),
        ({"authorization": "Bearer sg_abc", "x-api-key": "sg_other"}, "sg_abc"),
        ({"authorization": "Basic c2c6YWJj", "x-api-key": "sg_abc"}, None),  # no fallback
        ({"x-api-key": "k" * 257}, None),
    ],
)
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key


def test_clients_send_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHUFFLEGUARD_API_KEY", raising=False)
    assert auth_headers() == {}
    monkeypatch.setenv("SHUFFLEGUARD_API_KEY", "sg_env")
    assert auth_headers() == {"Authorization": "Bearer sg_env"}
    assert auth_headers("sg_given") == {"Authorization": "Bearer sg_given"}


# ------------------------------------------------------------------------- key store
def test_store_authenticates_by_hash_and_knows_no_one_else(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "k.yaml", entry("alice", "ka"), entry("lab", "kb", "research"))
    store = KeyStore(Settings(api_keys_file=path))
    assert store.enabled and store.names == ["alice", "lab"]
    alice = store.authenticate({"authorization": "Bearer ka"})
    assert alice is not None and (alice.name, alice.role) == ("alice", "client")
    assert not alice.may_research
    lab = store.authenticate({"x-api-key": "kb"})
    assert lab is not None and lab.may_research
    assert lab.quota is not None and lab.quota.rate == Settings().quota_research_rate
    for headers in ({}, {"x-api-key": "kc"}, {"x-api-key": hash_key("ka")}):
        assert store.authenticate(headers) is None


def test_no_key_file_or_no_keys_is_the_open_api(tmp_path: Path) -> None:
    assert KeyStore(Settings()).authenticate({}) is ANONYMOUS
    empty = KeyStore(Settings(api_keys_file=write_keys(tmp_path / "k.yaml")))
    assert not empty.enabled
    assert empty.authenticate({"x-api-key": "anything"}) is ANONYMOUS
    assert ANONYMOUS.may_research and ANONYMOUS.quota is None
    with pytest.raises(KeyFileError, match="cannot read"):
        KeyStore(Settings(api_keys_file=tmp_path / "missing.yaml"))


def test_store_reloads_a_changed_file_and_keeps_keys_over_a_bad_one(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "k.yaml", entry("alice", "ka"))
    clock = Clock()
    store = KeyStore(Settings(api_keys_file=path, api_keys_reload_s=5), clock=clock)
    write_keys(path, entry("alice", "ka"), entry("bob", "kb"))
    assert store.authenticate({"x-api-key": "kb"}) is None  # not looked at yet
    clock.now += 5
    bob = store.authenticate({"x-api-key": "kb"})
    assert bob is not None and bob.name == "bob"
    # an unparsable file, a file with no keys and a missing file all keep the keys in use
    for broken in ("keys: [", "keys: []\n", None):
        if broken is None:
            path.unlink()
        else:
            path.write_text(broken)
        clock.now += 5
        assert store.authenticate({"x-api-key": "kb"}) == bob, broken
    write_keys(path, entry("bob", "kb2"))  # rotation done: the old key stops working
    clock.now += 5
    assert store.authenticate({"x-api-key": "kb"}) is None
    assert store.authenticate({"x-api-key": "kb2"}) is not None


def test_store_notices_a_swapped_symlink_as_kubernetes_updates_secrets(tmp_path: Path) -> None:
    first = write_keys(tmp_path / "v1.yaml", entry("alice", "ka"))
    second = write_keys(tmp_path / "v2.yaml", entry("alice", "kz"))
    os.utime(second, ns=(first.stat().st_mtime_ns, first.stat().st_mtime_ns))
    link = tmp_path / "keys.yaml"
    link.symlink_to(first)
    clock = Clock()
    store = KeyStore(Settings(api_keys_file=link, api_keys_reload_s=1), clock=clock)
    tmp = tmp_path / "keys.tmp"
    tmp.symlink_to(second)
    tmp.replace(link)  # same mtime and size, another inode
    clock.now += 1
    assert store.authenticate({"x-api-key": "kz"}) is not None
    assert store.authenticate({"x-api-key": "ka"}) is None


# ---------------------------------------------------------------------- token bucket
def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token per 0.5 s
    assert bucket.take(0.25) == pytest.approx(0.25)  # refusals take nothing
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0  # refills up to the burst, no further
    assert bucket.tokens == pytest.approx(2.0)


def test_retry_after_is_the_whole_seconds_until_a_token() -> None:
    bucket = TokenBucket(rate=0.25, burst=1, now=0.0)  # a token per 4 s
    assert bucket.take(0.0) == 0.0
    assert bucket.retry_after(0.0) == 4
    assert bucket.retry_after(0.5) == 4  # 3.5 s left: rounded up
    assert bucket.retry_after(3.0) == 1
    # waiting what Retry-After said is always enough, never a second more than needed
    for start in (0.0, 0.3, 1.7, 2.2):
        b = TokenBucket(rate=0.3, burst=1, now=start)
        assert b.take(start) == 0.0
        wait = b.retry_after(start)
        assert b.take(start + wait - 1) > 0 or wait == 1
        assert b.take(start + wait) == 0.0


def test_token_bucket_refuses_nonsense() -> None:
    for rate, burst in ((0.0, 1), (1.0, 0)):
        with pytest.raises(ValueError, match="bad bucket"):
            TokenBucket(rate, burst, now=0.0)


# ---------------------------------------------------------------------------- quotas
def test_quota_rate_limit_counts_per_name_and_reason() -> None:
    clock = Clock()
    metrics = GatewayMetrics()
    quotas = Quotas(metrics, clock=clock)
    alice = Client("alice", "client", Quota(rate=1.0, burst=2, concurrency=10))
    bob = Client("bob", "client", Quota(rate=1.0, burst=2, concurrency=10))
    quotas.check(alice)
    quotas.check(alice)
    with pytest.raises(RateLimited) as info:
        quotas.check(alice)
    assert info.value.retry_after == 1 and info.value.status_code == 429
    quotas.check(bob)  # another key has its own bucket
    clock.now += 1.0
    quotas.check(alice)
    value = metrics.registry.get_sample_value(
        "shuffleguard_quota_rejections_total", {"client": "alice", "reason": "rate"}
    )
    assert value == 1.0


def test_concurrency_cap_and_no_token_spent_on_it() -> None:
    async def scenario() -> None:
        quotas = Quotas(clock=Clock())
        alice = Client("alice", "client", Quota(rate=1.0, burst=2, concurrency=1))
        async with quotas.admit(alice):
            with pytest.raises(ConcurrencyLimited) as info:
                async with quotas.admit(alice):
                    pass
            assert info.value.retry_after is None  # the app's retry_after_s
        assert quotas.running["alice"] == 0
        async with quotas.admit(alice):  # the refused one took no token: 2nd of the burst
            pass
        with pytest.raises(RateLimited):
            async with quotas.admit(alice):
                pass
        async with quotas.admit(ANONYMOUS), quotas.admit(ANONYMOUS):  # unlimited
            pass

    asyncio.run(scenario())


def test_a_reloaded_quota_keeps_the_tokens_left() -> None:
    clock = Clock()
    quotas = Quotas(clock=clock)
    old = Quota(rate=1.0, burst=5, concurrency=1)
    for _ in range(4):
        quotas.check(Client("a", "client", old))
    new = Quota(rate=1.0, burst=3, concurrency=1)
    assert quotas.bucket("a", new).tokens == pytest.approx(1.0)  # not a fresh burst


# -------------------------------------------------------------------- create-key
def test_create_key_appends_a_valid_entry(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    config = parse(["create-key", "--file", str(path), "--name", "alice"])
    assert isinstance(config, CreateKeyConfig)
    key = new_key()
    add_key(config, key)
    assert path.stat().st_mode & 0o777 == 0o600
    second = new_key()
    add_key(CreateKeyConfig(file=path, name="lab", role="research", rate=50.0), second)
    store = KeyStore(Settings(api_keys_file=path))
    assert store.authenticate({"x-api-key": key}) == Client(
        "alice", "client", store.entries[0][1].quota
    )
    lab = store.authenticate({"x-api-key": second})
    assert lab is not None and lab.role == "research" and lab.quota is not None
    assert lab.quota.rate == 50.0
    assert key not in path.read_text() and second not in path.read_text()
    with pytest.raises(KeyFileError, match="disagree"):  # rotation keeps role and quota
        add_key(CreateKeyConfig(file=path, name="lab", role="client"), new_key())
    assert len(parse_key_file(path.read_text()).keys) == 2  # the file is untouched


def test_create_key_prints_the_key_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    path = tmp_path / "keys.yaml"
    assert main(["create-key", "--file", str(path), "--name", "ci"]) == 0
    out, err = capsys.readouterr()
    (key,) = out.split()
    assert hash_key(key) in path.read_text()
    assert key not in err and "shown only now" in err


def test_serve_refuses_an_unusable_key_file_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    bad = tmp_path / "keys.yaml"
    bad.write_text("keys:\n  - {name: a, sha256: nothex}\n")
    for path in (tmp_path / "missing.yaml", bad):
        argv = ["serve", "--api-keys-file", str(path), "--backend-url", "http://127.0.0.1:9"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert str(path) in err and ("cannot read" in err or "keys.0.sha256" in err)
