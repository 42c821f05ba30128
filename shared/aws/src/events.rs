//! EventBridge events about EC2 instances, turned into the domain's
//! [`InstanceEvent`] at the edge. Decisions key on `detail.instance-id`,
//! never on the ARN in `resources` (its shape varies).

use serde::Deserialize;
use studio_core::handlers::{InstanceEvent, InstanceEventKind};
use studio_core::ids::InstanceId;
use thiserror::Error;

/// The EventBridge envelope, as an SQS target delivers it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Envelope {
    pub id: String,
    pub detail_type: String,
    pub source: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Ec2Detail {
    instance_id: String,
    #[serde(default)]
    state: Option<String>,
}

pub const SPOT_WARNING: &str = "EC2 Spot Instance Interruption Warning";
pub const REBALANCE: &str = "EC2 Instance Rebalance Recommendation";
pub const STATE_CHANGE: &str = "EC2 Instance State-change Notification";

/// Why an event body was not understood. Never retryable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("not an EventBridge event: {0}")]
    Malformed(String),
    #[error("unexpected event '{detail_type}' from {origin}")]
    Unexpected { detail_type: String, origin: String },
    #[error("event {id}: {why}")]
    Detail { id: String, why: String },
}

/// An AWS Health event about EC2 (the rule forwards `scheduledChange` only).
pub const HEALTH: &str = "AWS Health Event";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthDetail {
    service: String,
    event_type_category: String,
    #[serde(default)]
    event_type_code: String,
    #[serde(default)]
    affected_entities: Vec<HealthEntity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthEntity {
    entity_value: String,
}

/// The instance events a body carries: none for events that need no action
/// (an instance starting), one per affected instance for an AWS Health
/// scheduled change (retirement, stop or reboot maintenance days ahead:
/// advice, recorded on the job like a rebalance recommendation; the state
/// change when it happens is what requeues).
///
/// # Errors
/// [`EventError`] for a body that is not one of the events Studio subscribes to.
pub fn parse_instance_event(body: &str) -> Result<Vec<InstanceEvent>, EventError> {
    let env: Envelope =
        serde_json::from_str(body).map_err(|e| EventError::Malformed(e.to_string()))?;
    let detail_error = |why: String| EventError::Detail {
        id: env.id.clone(),
        why,
    };
    let instance = |id: String| InstanceId::new(id).map_err(|e| detail_error(e.to_string()));
    if env.source == "aws.health" && env.detail_type == HEALTH {
        let detail: HealthDetail =
            serde_json::from_value(env.detail.clone()).map_err(|e| detail_error(e.to_string()))?;
        if detail.service != "EC2" || detail.event_type_category != "scheduledChange" {
            return Err(detail_error(format!(
                "a Health event of {} ({}) is not an EC2 scheduled change",
                detail.service, detail.event_type_category
            )));
        }
        if detail.affected_entities.is_empty() {
            return Err(detail_error(format!(
                "{} names no affected instance",
                detail.event_type_code
            )));
        }
        // One event per instance, each with its own id, so a redelivery of
        // the Health event records each instance's advice once.
        return detail
            .affected_entities
            .into_iter()
            .map(|e| {
                Ok(InstanceEvent {
                    event_id: format!("{}/{}", env.id, e.entity_value),
                    instance: instance(e.entity_value)?,
                    kind: InstanceEventKind::Rebalance,
                    machine_uid: None,
                    at: None,
                })
            })
            .collect();
    }
    if env.source != "aws.ec2"
        || ![SPOT_WARNING, REBALANCE, STATE_CHANGE].contains(&env.detail_type.as_str())
    {
        return Err(EventError::Unexpected {
            detail_type: env.detail_type,
            origin: env.source,
        });
    }
    let detail: Ec2Detail =
        serde_json::from_value(env.detail.clone()).map_err(|e| detail_error(e.to_string()))?;
    let kind = match env.detail_type.as_str() {
        SPOT_WARNING => InstanceEventKind::SpotWarning,
        REBALANCE => InstanceEventKind::Rebalance,
        _ => match detail.state.as_deref() {
            Some(s @ ("stopping" | "stopped" | "shutting-down" | "terminated")) => {
                InstanceEventKind::Gone { state: s.into() }
            }
            Some("pending" | "running") => return Ok(Vec::new()),
            other => return Err(detail_error(format!("unknown instance state {other:?}"))),
        },
    };
    Ok(vec![InstanceEvent {
        event_id: env.id.clone(),
        instance: instance(detail.instance_id)?,
        kind,
        // EC2 never gives an instance id twice: the id is the machine.
        machine_uid: None,
        at: None,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPOT: &str = r#"{"version":"0","id":"1e5527d7-bb36-4607-3370-4164db56a40e","detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2","account":"123456789012","time":"2022-08-11T14:00:00Z","region":"us-east-2","resources":["arn:aws:ec2:us-east-2:instance/i-0123456789"],"detail":{"instance-id":"i-0123456789","instance-action":"terminate"}}"#;

    fn with(detail_type: &str, detail: &str) -> String {
        format!(
            r#"{{"version":"0","id":"e1","detail-type":"{detail_type}","source":"aws.ec2","account":"1","time":"t","region":"r","resources":[],"detail":{detail}}}"#
        )
    }

    #[test]
    fn the_three_ec2_events_become_instance_events() {
        let e = parse_instance_event(SPOT).unwrap().remove(0);
        assert_eq!(e.instance.as_str(), "i-0123456789");
        assert_eq!(e.event_id, "1e5527d7-bb36-4607-3370-4164db56a40e");
        assert_eq!(e.kind, InstanceEventKind::SpotWarning);
        let r = parse_instance_event(&with(REBALANCE, r#"{"instance-id":"i-1"}"#))
            .unwrap()
            .remove(0);
        assert_eq!(r.kind, InstanceEventKind::Rebalance);
        let g = parse_instance_event(&with(
            STATE_CHANGE,
            r#"{"instance-id":"i-1","state":"terminated"}"#,
        ))
        .unwrap()
        .remove(0);
        assert_eq!(
            g.kind,
            InstanceEventKind::Gone {
                state: "terminated".into()
            }
        );
        assert_eq!(
            parse_instance_event(&with(
                STATE_CHANGE,
                r#"{"instance-id":"i-1","state":"running"}"#
            )),
            Ok(vec![])
        );
    }

    /// The shape of EVENTS.md (and AWS Health's "EC2 scheduled change" example).
    fn health(detail: &str) -> String {
        format!(
            r#"{{"version":"0","id":"h1","detail-type":"AWS Health Event","source":"aws.health","account":"1","time":"t","region":"us-east-1","resources":["i-1","i-2"],"detail":{detail}}}"#
        )
    }

    #[test]
    fn a_health_scheduled_change_is_advice_for_each_affected_instance() {
        let events = parse_instance_event(&health(
            r#"{"eventArn":"arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/x","service":"EC2","eventTypeCode":"AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED","eventTypeCategory":"scheduledChange","startTime":"Sat, 05 Jun 2016 15:10:09 GMT","affectedEntities":[{"entityValue":"i-1"},{"entityValue":"i-2"}]}"#,
        ))
        .unwrap();
        let got: Vec<_> = events
            .iter()
            .map(|e| (e.event_id.as_str(), e.instance.as_str(), &e.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("h1/i-1", "i-1", &InstanceEventKind::Rebalance),
                ("h1/i-2", "i-2", &InstanceEventKind::Rebalance)
            ]
        );
        assert!(matches!(
            parse_instance_event(&health(
                r#"{"service":"EC2","eventTypeCategory":"issue","affectedEntities":[{"entityValue":"i-1"}]}"#
            )),
            Err(EventError::Detail { .. })
        ));
        assert!(matches!(
            parse_instance_event(&health(
                r#"{"service":"EC2","eventTypeCategory":"scheduledChange","affectedEntities":[]}"#
            )),
            Err(EventError::Detail { .. })
        ));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert!(matches!(
            parse_instance_event("nope"),
            Err(EventError::Malformed(_))
        ));
        assert!(matches!(
            parse_instance_event(&with("Scheduled Event", "{}")),
            Err(EventError::Unexpected { .. })
        ));
        assert!(matches!(
            parse_instance_event(&with(SPOT_WARNING, "{}")),
            Err(EventError::Detail { .. })
        ));
        assert!(matches!(
            parse_instance_event(&with(
                STATE_CHANGE,
                r#"{"instance-id":"i-1","state":"melting"}"#
            )),
            Err(EventError::Detail { .. })
        ));
        assert!(matches!(
            parse_instance_event(&with(SPOT_WARNING, r#"{"instance-id":"i/../x"}"#)),
            Err(EventError::Detail { .. })
        ));
    }
}
