"""The admin API's audit log over real HTTP: every operator action recorded with its actor,
each tenant's log its own, paged and filtered."""

from __future__ import annotations

from test_admin_api import SPEC, api, every_page, is_problem, register_agent, setup_model, start_waiting_run

__all__ = ["api"]  # the fixture


def test_every_operator_action_is_audited_with_its_actor(api, caplog):
    tenant = api.tenants["t1"]
    admin, operator = tenant.tokens["admin"], tenant.tokens["operator"]
    ids = {t.name: t.token_id for t in tenant.admin.state.list_tokens()}
    setup_model(api, "t1", 1)
    register_agent(api, "t1", "site-1")
    start_waiting_run(api, "t1", "waits", "run-w")
    caplog.set_level("INFO", logger="fedstream_scheduler.audit")
    actions = [
        (admin, "POST", "/federations", {"federation_id": "audited", "spec": SPEC}),
        (admin, "PATCH", "/federations/audited", {"description": "d"}),
        (operator, "POST", "/federations/audited/runs", {"run_id": "run-a"}),
        (operator, "POST", "/runs/run-a/cancel", None),
        (operator, "POST", "/runs/run-w/cancel", None),
        (admin, "DELETE", "/federations/audited", None),
        (operator, "POST", "/agents/site-1/disable", None),
        (operator, "POST", "/agents/site-1/enable", None),
        (operator, "DELETE", "/agents/site-1", None),
        (operator, "POST", "/enrollment-tokens", {"agent_id": "site-2", "ttl_s": 60}),
        (admin, "POST", "/tokens", {"role": "viewer", "name": "ci"}),
        (operator, "POST", "/models/mrun-1/000001/pin", None),
        (operator, "POST", "/models/mrun-1/000001/unpin", None),
    ]
    created = {}
    for token, method, path, body in actions:
        r = api.call(method, path, token, json=body)
        assert r.status_code < 300, (path, r.text)
        if path in ("/tokens", "/enrollment-tokens"):
            created[path] = r.json()["token_id"]
    api.call("DELETE", f"/enrollment-tokens/{created['/enrollment-tokens']}", operator)
    api.call("DELETE", f"/tokens/{created['/tokens']}", admin)
    assert api.call("GET", "/federations/nothing-here", admin).status_code == 404  # reads are not audited

    entries = api.call("GET", "/audit?limit=500", operator).json()["items"]

    by_admin, by_operator = f"token/{ids['admin token']}", f"token/{ids['operator token']}"
    assert [(e["action"], e["target"], e["actor"]) for e in entries if e["actor"] != "system/scheduler"] == [
        ("federation.create", "federation/audited", by_admin),
        ("federation.update", "federation/audited", by_admin),
        ("run.start", "run/run-a", by_operator),
        ("run.cancel", "run/run-a", by_operator),
        ("run.cancel", "run/run-w", by_operator),
        ("federation.delete", "federation/audited", by_admin),
        ("agent.disable", "agent/site-1", by_operator),
        ("agent.enable", "agent/site-1", by_operator),
        ("agent.delete", "agent/site-1", by_operator),
        ("enrollment_token.create", f"enrollment_token/{created['/enrollment-tokens']}", by_operator),
        ("token.create", f"token/{created['/tokens']}", by_admin),
        ("model.pin", "model/mrun-1/000001", by_operator),
        ("model.unpin", "model/mrun-1/000001", by_operator),
        ("enrollment_token.delete", f"enrollment_token/{created['/enrollment-tokens']}", by_operator),
        ("token.delete", f"token/{created['/tokens']}", by_admin),
    ]
    cancel = next(e for e in entries if e["target"] == "run/run-a" and e["action"] == "run.cancel")
    assert (cancel["actor_name"], cancel["role"]) == ("operator token", "operator")
    assert next(e for e in entries if e["action"] == "token.create")["detail"] == {"role": "viewer", "name": "ci"}
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert f"audit: run.cancel run/run-a by {by_operator} (operator token, operator)" in caplog.messages
    assert "cancelled by token/" in api.call("GET", "/runs/run-a", operator).json()["reason"]
    # The other tenant's log has none of it.
    assert api.call("GET", "/audit", api.tenants["t2"].tokens["admin"]).json()["items"] == []


def test_the_audit_log_is_paged_and_filtered(api):
    admin = api.tenants["t1"].tokens["admin"]
    for i in range(5):
        api.call("POST", "/tokens", admin, json={"role": "viewer", "name": f"n{i}"})
    register_agent(api, "t1", "site-9")
    api.call("POST", "/agents/site-9/disable", api.tenants["t1"].tokens["operator"])

    entries, pages = every_page(api, "/audit?limit=2", admin)
    seen = [e["action"] for e in entries]
    creates = api.call("GET", "/audit?action=token.create&limit=3", admin).json()
    operator_id = next(t.token_id for t in api.tenants["t1"].admin.state.list_tokens() if t.name == "operator token")
    by_operator = api.call("GET", f"/audit?actor=token/{operator_id}", admin).json()["items"]

    assert seen == ["token.create"] * 5 + ["agent.disable"] and pages == 3
    assert [e["detail"]["name"] for e in creates["items"]] == ["n0", "n1", "n2"] and creates["next_page_token"]
    assert [(e["action"], e["target"]) for e in by_operator] == [("agent.disable", "agent/site-9")]
    assert is_problem(api.call("GET", "/audit?action=run.explode", admin), 400, "invalid_argument")
    assert is_problem(api.call("GET", "/audit", api.tenants["t1"].tokens["viewer"]), 403, "permission_denied")


def test_a_federation_update_is_audited_with_the_fields_it_changes(api):
    admin = api.tenants["t1"].tokens["admin"]
    assert api.call("POST", "/federations", admin, json={"federation_id": "f", "spec": SPEC}).status_code == 201
    assert api.call("PATCH", "/federations/f", admin, json={"description": "d", "clear_schedule": False}).status_code == 200
    assert api.call("PATCH", "/federations/f", admin, json={"clear_schedule": True}).status_code == 200

    updates = api.call("GET", "/audit?action=federation.update", admin).json()["items"]

    assert [e["detail"]["fields"] for e in updates] == ["description", "clear_schedule"]
