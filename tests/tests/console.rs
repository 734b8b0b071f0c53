//! The operator console's API end to end (the page itself is driven in Chromium by
//! `scripts/browser-test`): only an operator can mint a token; without one, with an
//! altered one, or with one minted by another provider, every call is 401; the same token
//! works on every node of the provider; an operator resends a dead letter from the console
//! and the `reprocessed` event records the console's operator as its actor; a body over
//! the limit is refused.

mod common;

use std::net::SocketAddr;

use common::*;
use sealpost_proto::v1 as pb;
use sealpost_server::local::LocalCluster;

fn ops_addr(c: &LocalCluster, node: u64) -> SocketAddr {
    c.node(node)
        .and_then(|n| n.http_addr)
        .expect("http address")
}

/// GETs `path` from `node`'s console API with `token`.
async fn get(c: &LocalCluster, node: u64, path: &str, token: &str) -> (u16, serde_json::Value) {
    call(ops_addr(c, node), "GET", path, token, None).await
}

/// POSTs `body` (JSON) to `node`'s resend call with `token`.
async fn resend(c: &LocalCluster, node: u64, token: &str, body: &str) -> (u16, serde_json::Value) {
    let path = "/console/api/dead-letters/resend";
    call(ops_addr(c, node), "POST", path, token, Some(body)).await
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    let (code, text) = http(addr, method, path, &[("Authorization", &auth)], body).await;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (code, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_token_opens_the_console_on_every_node_and_resends_a_dead_letter() {
    // A message its receiver never acknowledged: a dead letter.
    let (_dir, c, gp, id, lab) = with_dead_letter("c-1").await;

    // Organisations cannot mint console tokens; operators can, capped at an hour.
    let err = gp
        .admin()
        .console_token(pb::ConsoleTokenRequest { ttl_secs: 60 })
        .await
        .expect_err("an organisation's certificate");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let operator = client(&c, 1).await;
    let minted = operator
        .admin()
        .console_token(pb::ConsoleTokenRequest {
            ttl_secs: 10 * 3600,
        })
        .await
        .expect("an operator mints a token")
        .into_inner();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        minted.expires_ms <= now + 3_600_000 + 1_000,
        "the lifetime is capped: {} vs now {now}",
        minted.expires_ms
    );
    assert_eq!(
        minted.console_url,
        format!("http://{}/console/", ops_addr(&c, 1))
    );
    let token = minted.token;

    // The page itself needs no token; every API call does, and a bad one names why.
    let (code, page) = http(ops_addr(&c, 1), "GET", "/console/", &[], None).await;
    assert_eq!(code, 200);
    assert!(page.contains("sealpost console"), "{page}");
    let (code, body) = http(ops_addr(&c, 1), "GET", "/console/api/whoami", &[], None).await;
    assert_eq!(code, 401, "{body}");
    let last = if token.ends_with('0') { '1' } else { '0' };
    let altered = format!("{}{last}", &token[..token.len() - 1]);
    let (code, body) = get(&c, 1, "/console/api/overview", &altered).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not verify"),
        "{body}"
    );
    // A token of another provider (another KEK) does not verify here.
    let (_dir2, other) = cluster(1).await;
    let foreign = client(&other, 1)
        .await
        .admin()
        .console_token(pb::ConsoleTokenRequest { ttl_secs: 60 })
        .await
        .expect("mint at the other provider")
        .into_inner()
        .token;
    let (code, _) = get(&c, 1, "/console/api/whoami", &foreign).await;
    assert_eq!(code, 401, "another provider's token");

    // The same token on every node.
    for id in c.node_ids() {
        let (code, who) = call(ops_addr(&c, id), "GET", "/console/api/whoami", &token, None).await;
        assert_eq!(code, 200, "node {id}: {who}");
        assert_eq!(who["node"], id);
        assert!(
            who["operator"]
                .as_str()
                .unwrap_or("")
                .starts_with("console:cert:")
        );
    }
    let (code, overview) = get(&c, 2, "/console/api/overview", &token).await;
    assert_eq!(code, 200);
    let members = overview["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["reachable"] == true), "{overview}");

    let (code, dead) = get(&c, 3, "/console/api/dead-letters", &token).await;
    assert_eq!(code, 200, "{dead}");
    assert!(
        dead["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|d| d["message_id"] == id.as_str() && d["reason"] == "unacknowledged"),
        "{dead}"
    );

    // Resent from the console: recorded under the console's operator.
    let body = serde_json::json!({ "message_id": id, "recipient": lab }).to_string();
    let (code, resent) = resend(&c, 3, &token, &body).await;
    assert_eq!(code, 200, "{resent}");
    assert_eq!(
        resent["attempts"].as_array().map(Vec::len),
        Some(1),
        "{resent}"
    );
    let (code, again) = resend(&c, 3, &token, &body).await;
    assert_eq!(code, 409, "a failure is re-driven once: {again}");
    let (code, tracked) = get(&c, 1, &format!("/console/api/messages/{id}"), &token).await;
    assert_eq!(code, 200, "{tracked}");
    let timeline = tracked["timeline"].as_array().expect("timeline");
    let reprocessed = timeline
        .iter()
        .find(|e| e["event"] == "reprocessed")
        .expect("the resend is on the timeline");
    let actor = reprocessed["actor"].as_str().unwrap_or("");
    assert!(
        actor.starts_with("console:cert:") && actor.ends_with("@node-3"),
        "{actor}"
    );
    assert_eq!(timeline[0]["event"], "sent");

    // Audit search finds it, and a body over the limit is refused before any work.
    let (code, found) = get(
        &c,
        2,
        &format!("/console/api/search?recipient={lab}"),
        &token,
    )
    .await;
    assert_eq!(code, 200, "{found}");
    assert!(
        found["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .any(|m| m["message_id"] == id.as_str()),
        "{found}"
    );
    let huge = format!(
        "{{\"message_id\": \"{}\"}}",
        "x".repeat(sealpost_server::console::CONSOLE_BODY_BYTES_MAX)
    );
    let (code, _) = resend(&c, 1, &token, &huge).await;
    assert_eq!(code, 413);
}
