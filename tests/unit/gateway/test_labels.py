"""Label sources of a gateway connection: path syntax, merge precedence, credential table."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from controlplane.labels import (
    CredentialLabels,
    LabelConflict,
    MemoryTokenLabels,
    credential_of,
    merge_labels,
    parse_credential_labels,
    parse_path_labels,
)


def test_path_labels_split_before_decoding() -> None:
    assert parse_path_labels("tenant=acme,region=eu") == {"tenant": "acme", "region": "eu"}
    # an encoded comma or equals sign stays inside the value
    assert parse_path_labels("note=a%2Cb%3Dc,x=%C3%A9") == {"note": "a,b=c", "x": "é"}
    assert parse_path_labels("") == {}


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ("tenant", "must be key=value"),
        ("=acme", "must be key=value"),
        ("k=%FF", "UTF-8"),
        ("k=a%0Ab", "control characters"),
        (",".join(f"k{i}=v" for i in range(33)), "limit is 32"),
        ("k=" + "v" * 257, "value ≤ 256"),
    ],
)
def test_path_labels_follow_the_header_rules(segment: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_path_labels(segment)


def test_merge_repeats_are_fine_and_a_change_is_refused_naming_both_sources() -> None:
    merged = merge_labels({
        "query": {"a": "1"}, "header": {"tenant": "acme"},
        "path": {"tenant": "acme", "region": "eu"}, "credential": {"tenant": "acme"},
    })  # fmt: skip
    assert merged == {"a": "1", "tenant": "acme", "region": "eu"}
    with pytest.raises(LabelConflict) as err:
        merge_labels({"credential": {"tenant": "acme"}, "path": {"tenant": "globex"}})
    assert "'tenant' is 'acme' from the credential but 'globex' from the path" in str(err.value)
    with pytest.raises(LabelConflict, match="from the header but 'b' from the query"):
        merge_labels({"header": {"k": "a"}, "query": {"k": "b"}})
    with pytest.raises(ValueError, match="33 labels, limit is 32"):
        merge_labels({"path": {f"p{i}": "v" for i in range(20)},
                      "header": {f"h{i}": "v" for i in range(13)}})  # fmt: skip


def test_credential_of_strips_bearer() -> None:
    assert credential_of("Bearer  key-1 ") == "key-1"
    assert credential_of("key-1") == "key-1"
    assert credential_of("") is None and credential_of(None) is None


def test_credential_table_by_digest_reloads_and_keeps_last_good(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"tenant-key").hexdigest()
    path = tmp_path / "labels"
    path.write_text(f"# platform tenants\n{digest} tenant=acme,tier=gold\n")
    table = CredentialLabels(path, MemoryTokenLabels(lambda: 0.0))
    assert table.for_credential("tenant-key") == {"tenant": "acme", "tier": "gold"}
    assert table.for_credential("other-key") == {}
    assert table.for_credential(None) == {}
    path.write_text(f"sha256:{digest.upper()} tenant=globex\n")
    os.utime(path, ns=(1, 1))
    assert table.for_credential("tenant-key") == {"tenant": "globex"}
    path.write_text("not a digest\n")
    os.utime(path, ns=(2, 2))
    assert table.for_credential("tenant-key") == {"tenant": "globex"}  # last good kept


def test_credential_file_errors_name_the_line_never_the_key() -> None:
    with pytest.raises(ValueError, match="line 2: must start with the sha256") as err:
        parse_credential_labels("# c\nsecret-api-key tenant=acme\n")
    assert "secret-api-key" not in str(err.value)
    digest = "a" * 64
    with pytest.raises(ValueError, match="line 1: no labels"):
        parse_credential_labels(digest)
    with pytest.raises(ValueError, match="line 2: digest repeated"):
        parse_credential_labels(f"{digest} a=1\n{digest} a=2\n")


def test_settings_refuse_bad_tls_and_credential_files_naming_the_problem(tmp_path: Path) -> None:
    from controlplane.config import Settings, SettingsError

    with pytest.raises(SettingsError, match="both --tls-cert and --tls-key"):
        Settings(tls_cert=tmp_path / "cert.pem").check()
    with pytest.raises(SettingsError, match="does not exist"):
        Settings(tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem").check()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem")
    with pytest.raises(SettingsError, match="not a PEM certificate"):
        Settings(tls_cert=garbage, tls_key=garbage).check()
    labels = tmp_path / "labels"
    labels.write_text("sk-live-secret tenant=acme\n")
    with pytest.raises(SettingsError, match="line 1") as err:
        Settings(credential_labels_file=labels).check()
    assert "sk-live-secret" not in str(err.value)
    with pytest.raises(SettingsError, match=r"credential labels .*missing"):
        Settings(credential_labels_file=tmp_path / "missing").check()


async def test_a_token_carries_its_keys_labels_for_its_window_only(tmp_path: Path) -> None:
    now = [100.0]
    path = tmp_path / "labels"
    path.write_text(f"{hashlib.sha256(b'tenant-key').hexdigest()} tenant=acme\n")
    table = CredentialLabels(path, MemoryTokenLabels(lambda: now[0]))
    assert await table.remember_token("tenant-key", "tok-1", 60.0) is True
    assert await table.remember_token("unmapped-key", "tok-2", 60.0) is False
    assert table.for_credential("tok-1") == {}  # a token is not a key
    assert await table.for_token("tok-1") == {"tenant": "acme"}
    assert await table.for_token("tok-2") == {}
    now[0] = 160.0  # the redemption window is over
    assert await table.for_token("tok-1") == {}
