//! The preemption path: a log sink of preempted VMs into a topic, pushed
//! to the webhook.

use super::api::Admin;
use super::policy::{ensure_policy, Grant, Policy};
use super::spec::{Account, Setup, SetupError, PREEMPTION_FILTER};
use reqwest::Method;
use serde_json::json;

/// Topic, sink (its writer granted on the topic) and, with a webhook, the
/// push subscription.
pub(crate) async fn preemptions(
    api: &Admin,
    s: &Setup,
    pusher: &Account,
    audience: Option<&str>,
) -> Result<(), SetupError> {
    let p = &s.project;
    let topic = format!("projects/{p}/topics/{}", s.topic());
    let topic_url = format!("{}/v1/{topic}", api.endpoints.pubsub);
    if api.get(&topic_url).await?.is_none() {
        api.mutate(
            format!("create topic {}", s.topic()),
            Method::PUT,
            &topic_url,
            Some(&json!({})),
        )
        .await?;
    }
    let sink_name = s.topic();
    let sinks = format!("{}/v2/projects/{p}/sinks", api.endpoints.logging);
    let destination = format!("pubsub.googleapis.com/{topic}");
    let writer = match api.get(&format!("{sinks}/{sink_name}")).await? {
        None => api
            .mutate(
                format!("create log sink {sink_name} (preempted VMs → {})", s.topic()),
                Method::POST,
                &format!("{sinks}?uniqueWriterIdentity=true"),
                Some(&json!({"name": sink_name, "destination": destination, "filter": PREEMPTION_FILTER})),
            )
            .await?,
        Some(now) if now["destination"] != json!(destination) || now["filter"] != json!(PREEMPTION_FILTER) => api
            .mutate(
                format!("update log sink {sink_name}"),
                Method::PUT,
                &format!("{sinks}/{sink_name}?uniqueWriterIdentity=true&updateMask=destination,filter"),
                Some(&json!({"name": sink_name, "destination": destination, "filter": PREEMPTION_FILTER})),
            )
            .await?,
        now => now,
    };
    // On a dry run a new sink has no writer yet: its grant is listed all
    // the same, so the list is what a real run does.
    let writer = match writer.as_ref().and_then(|w| w["writerIdentity"].as_str()) {
        Some(w) => Some(w.to_string()),
        None if api.dry_run => Some("serviceAccount:(the new sink's writer identity)".into()),
        None => None,
    };
    if let Some(w) = writer.as_deref() {
        ensure_policy(
            api,
            &format!("topic {}", s.topic()),
            Policy::get(&topic_url),
            &[Grant::new("roles/pubsub.publisher", w)],
        )
        .await?;
    }
    let Some(audience) = audience else {
        return Ok(());
    };
    let push = json!({
        "pushEndpoint": audience,
        "oidcToken": {"serviceAccountEmail": pusher.email, "audience": audience},
    });
    let sub_url = format!(
        "{}/v1/projects/{p}/subscriptions/{}",
        api.endpoints.pubsub,
        s.push_subscription()
    );
    let Some(now) = api.get(&sub_url).await? else {
        api.mutate(
            format!(
                "create push subscription {} → {audience}",
                s.push_subscription()
            ),
            Method::PUT,
            &sub_url,
            Some(&json!({
                "topic": topic,
                "pushConfig": push,
                "ackDeadlineSeconds": 60,
                // Empty: never expires (an idle one is deleted after 31 days).
                "expirationPolicy": {},
            })),
        )
        .await?;
        return Ok(());
    };
    if now["topic"] != json!(topic) {
        return Err(SetupError::Refused(format!(
            "subscription {} exists on {}, not {topic}: delete it, or it is another deployment's",
            s.push_subscription(),
            now["topic"]
        )));
    }
    if now.pointer("/pushConfig/pushEndpoint") != push.get("pushEndpoint")
        || now.pointer("/pushConfig/oidcToken") != push.get("oidcToken")
    {
        api.mutate(
            format!(
                "point push subscription {} at {audience}",
                s.push_subscription()
            ),
            Method::POST,
            &format!("{sub_url}:modifyPushConfig"),
            Some(&json!({ "pushConfig": push })),
        )
        .await?;
    }
    let expires = now
        .pointer("/expirationPolicy/ttl")
        .is_some_and(|t| !t.is_null());
    if now["ackDeadlineSeconds"].as_u64() != Some(60) || expires {
        api.mutate(
            format!(
                "set push subscription {}: ack deadline 60 s, never expires",
                s.push_subscription()
            ),
            Method::PATCH,
            &sub_url,
            Some(&json!({
                "subscription": {"ackDeadlineSeconds": 60, "expirationPolicy": {}},
                "updateMask": "ackDeadlineSeconds,expirationPolicy",
            })),
        )
        .await?;
    }
    Ok(())
}
