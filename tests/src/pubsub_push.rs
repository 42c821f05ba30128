//! Pub/Sub pushes as Google sends them, for the webhook's preemption
//! route: an OIDC token signed by the test key of `tests/fixtures/oidc`
//! (its JWKS is `jwks.json` there) and the envelope of a GCE audit-log entry.

use studio_core::clock::{Clock, SystemClock};

/// The JWKS that verifies [`token`].
pub const JWKS: &str = include_str!("../fixtures/oidc/jwks.json");

/// The push subscription's service account the tokens are from.
pub const PUSH_EMAIL: &str = "pubsub-push@project.iam.gserviceaccount.com";
/// That account's unique id (the tokens' `sub`).
pub const PUSH_SUBJECT: &str = "1234567890";

/// The claims of a token as Google's push signs it, from [`PUSH_EMAIL`].
pub fn claims(audience: &str, issuer: &str, exp_in: i64) -> serde_json::Value {
    let now = SystemClock.now().0 / 1000;
    serde_json::json!({
        "iss": issuer,
        "aud": audience,
        "sub": PUSH_SUBJECT,
        "email": PUSH_EMAIL,
        "email_verified": true,
        "iat": now,
        "exp": now + exp_in,
    })
}

/// A token as Google's push signs it: RS256 by a key of the JWKS.
pub fn token(audience: &str, issuer: &str, exp_in: i64) -> String {
    signed(&claims(audience, issuer, exp_in))
}

/// `claims` signed as Google signs a push token (RS256, the JWKS's key).
pub fn signed(claims: &serde_json::Value) -> String {
    signed_by(
        claims,
        "studio-test-1",
        include_bytes!("../fixtures/oidc/test-key.pem"),
    )
}

/// The JWKS after Google rotated a second key in (`studio-test-2`, beside
/// the first).
pub const JWKS_ROTATED: &str = include_str!("../fixtures/oidc/jwks-rotated.json");

/// `claims` signed by the key Google rotated in (in [`JWKS_ROTATED`] only).
pub fn signed_by_the_new_key(claims: &serde_json::Value) -> String {
    signed_by(
        claims,
        "studio-test-2",
        include_bytes!("../fixtures/oidc/test-key-2.pem"),
    )
}

fn signed_by(claims: &serde_json::Value, kid: &str, pem: &[u8]) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A push envelope carrying the GCE audit-log entry of `instance`'s preemption
/// (the shape of EVENTS.md), now, by a VM whose numeric id the tests do not
/// track.
pub fn envelope(message_id: &str, instance: &str) -> Vec<u8> {
    envelope_of(message_id, instance, "1844674407370955", SystemClock.now())
}

/// The same, of the VM with numeric id `instance_id` preempted at `at`.
pub fn envelope_of(
    message_id: &str,
    instance: &str,
    instance_id: &str,
    at: studio_core::clock::Timestamp,
) -> Vec<u8> {
    use base64::Engine;
    // RFC 3339 in UTC (Cloud Logging writes nanoseconds; the parser's
    // unit test reads those).
    let time = at.to_string();
    let entry = serde_json::json!({
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "status": {"message": "Instance was preempted."},
            "serviceName": "compute.googleapis.com",
            "methodName": "compute.instances.preempted",
            "resourceName": format!("projects/P/zones/europe-west1-c/instances/{instance}"),
        },
        "resource": {"type": "gce_instance", "labels": {"instance_id": instance_id, "project_id": "P", "zone": "europe-west1-c"}},
        "timestamp": time,
        "logName": "projects/P/logs/cloudaudit.googleapis.com%2Fsystem_event",
    });
    serde_json::to_vec(&serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(entry.to_string()),
            "messageId": message_id,
            "publishTime": time,
            "attributes": {},
        },
        "subscription": "projects/P/subscriptions/studio-preemptions",
    }))
    .unwrap()
}

/// `body` (a push envelope) with its log entry changed by `f`.
pub fn with_entry(body: &[u8], f: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut env: serde_json::Value = serde_json::from_slice(body).unwrap();
    let mut entry: serde_json::Value = serde_json::from_slice(
        &b64.decode(env["message"]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    f(&mut entry);
    env["message"]["data"] = b64.encode(entry.to_string()).into();
    serde_json::to_vec(&env).unwrap()
}
