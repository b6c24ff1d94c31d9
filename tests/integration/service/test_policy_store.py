"""The embedded policy store through the API: bounded versions, nothing half-written
(issue #18; the restart itself: tests/integration/test_policy_restart.py)."""

from __future__ import annotations

from tests.integration.service.conftest import ControlPlaneUnderTest

MAX_VERSION = 2**53 - 1


async def test_versions_above_2_53_minus_1_are_refused_and_omitting_one_stops_there(
    cp: ControlPlaneUnderTest,
) -> None:
    doc = {"id": "tone", "set": {"system_prompt": "x"}}
    over = await cp.call("POST", "/v1/policies", body={**doc, "version": MAX_VERSION + 1},
                         expect=422)  # fmt: skip
    assert over["error"]["code"] == "invalid_policy"
    (violation,) = over["error"]["details"]["violations"]
    assert (violation["field"], violation["rule"], violation["limit"]) == (
        "version", "max", MAX_VERSION,
    )  # fmt: skip
    await cp.call("GET", "/v1/policies/tone", expect=404)
    top = await cp.publish({**doc, "version": MAX_VERSION})
    assert top["version"] == MAX_VERSION
    # "omit version" would continue at 2^53: refused the same way, nothing stored
    for method, path, body in (
        ("POST", "/v1/policies", {**doc, "set": {"system_prompt": "y"}}),
        ("POST", "/v1/policies/tone/rollback", {"to": MAX_VERSION}),
        ("DELETE", "/v1/policies/tone", None),
    ):
        refused = await cp.call(method, path, body=body, expect=422)
        assert refused["error"]["code"] == "invalid_policy", (method, path)
        assert refused["error"]["details"]["violations"][0]["limit"] == MAX_VERSION
        assert "no versions left" in refused["error"]["message"]
    versions = await cp.call("GET", "/v1/policies/tone/versions", expect=200)
    assert [v["version"] for v in versions["items"]] == [MAX_VERSION]
    assert sorted(p.name for p in (cp.data_dir / "policies" / "tone").iterdir()) == [
        f"{MAX_VERSION}.json"
    ]


async def test_a_publish_the_store_cannot_write_is_503_and_changes_nothing(
    cp: ControlPlaneUnderTest,
) -> None:
    blocker = cp.data_dir / "policies"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the store's directory should be")
    refused = await cp.call("POST", "/v1/policies", body={"id": "tone", "set": {"prompt": "x"}},
                            expect=503)  # fmt: skip
    assert refused["error"]["code"] == "policy_store_unavailable"
    await cp.call("GET", "/v1/policies/tone", expect=404)
    assert (await cp.call("GET", "/v1/policies", expect=200))["items"] == []
    blocker.unlink()
    published = await cp.publish({"id": "tone", "set": {"prompt": "x"}})
    assert published["version"] == 1  # the refused publish took no number
    assert (blocker / "tone" / "1.json").is_file()
