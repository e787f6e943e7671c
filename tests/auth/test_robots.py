"""Robot tokens: Docker-style Basic credentials at the token endpoint, used by skopeo."""

import json
import subprocess
from pathlib import Path

from tests.helpers import digest_of, random_bytes, write_oci_layout
from tests.people import audit_rows
from tests.registry.test_interop import skopeo


def test_skopeo_copies_a_private_model_out_with_a_robot_token(people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = people("alice")
    alice.account.set_default_visibility(alice.name, "private")
    host = alice.registry.host

    # CI pushes a model as an OCI artifact with a push robot (skopeo cannot copy Docker v2
    # manifests whose layers are Ollama's, from any registry; it reads them with inspect --raw).
    pusher = alice.account.create_robot(alice.name, "release", "push", 3600)
    push_creds = f"{pusher['username']}:{pusher['token']}"
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, "v1", b"{}", [("application/vnd.ollama.image.model", random_bytes(200_000))])
    source = f"docker://{host}/{alice.name}/private:v1"
    skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", push_creds, "--preserve-digests", f"oci:{layout}:v1", source
    )
    assert audit_rows(alice.registry, actor=f"robot:{pusher['username']}", action="push", outcome="ok")

    # Without credentials skopeo cannot see it.
    refused = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", source], capture_output=True, text=True
    )
    assert (
        refused.returncode != 0
        and f"reading manifest v1 in {host}/{alice.name}/private: unauthorized" in refused.stderr
    )

    # A pull robot copies it out, byte for byte.
    robot = alice.account.create_robot(alice.name, "ci", "pull", 3600)
    assert robot["username"] == f"{alice.name}+ci" and robot["token"].startswith("hgr_")
    creds = f"{robot['username']}:{robot['token']}"
    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", creds, "--preserve-digests", source, f"oci:{out}:v1")
    assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == digest
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert (out / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()

    # It reads Ollama-format private models too.
    name = alice.model(f"{alice.name}/ollama-model")
    alice.push(name)
    raw = skopeo(
        "inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{host}/{alice.name}/ollama-model:latest"
    )
    assert digest_of(raw.stdout.encode()) == digest_of(alice.store.get(name).manifest.raw)

    # A pull robot cannot push; a push robot cannot push outside its namespace.
    denied = subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:v1", f"{source}-again"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert denied.returncode != 0
    assert f"denied: access denied: robot:{robot['username']} may not push {alice.name}/private" in denied.stderr
    elsewhere = subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", push_creds, f"oci:{layout}:v1", f"docker://{host}/other/x:v1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert elsewhere.returncode != 0
    assert f"denied: access denied: robot:{pusher['username']} may not push other/x" in elsewhere.stderr

    # Deleted tokens stop working.
    alice.account.delete_robot(alice.name, "ci")
    gone = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, source], capture_output=True, text=True
    )
    assert gone.returncode != 0
    assert f"invalid or expired robot credentials, or a disabled account, for '{robot['username']}'" in gone.stderr
    assert any(
        "robot" in r.detail.get("reason", "") for r in audit_rows(alice.registry, action="auth", outcome="denied")
    )


def test_only_owners_manage_robots(people) -> None:  # type: ignore[no-untyped-def]
    from client import errors

    alice, bob = people("alice"), people("bob")
    try:
        bob.account.create_robot(alice.name, "sneaky", "push", 60)
    except errors.Denied as e:
        assert "owners" in str(e)
    else:
        raise AssertionError("bob created a robot in alice's namespace")
    assert audit_rows(alice.registry, actor=bob.name, action="settings", outcome="denied")
