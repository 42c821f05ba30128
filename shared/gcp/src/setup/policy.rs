//! IAM policies, merged: the set-up adds the grants it needs to a policy it
//! read and never removes anyone else's, so a second run (or a project
//! with grants of its own) changes nothing it did not make.

use super::api::{Admin, ApiError};
use reqwest::Method;
use serde_json::{json, Value};

/// One grant: a role to a member, with an IAM condition or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: String,
    pub member: String,
    /// `(title, expression)`.
    pub condition: Option<(String, String)>,
}

impl Grant {
    pub fn new(role: &str, member: &str) -> Grant {
        Grant {
            role: role.into(),
            member: member.into(),
            condition: None,
        }
    }

    pub fn when(mut self, title: &str, expression: &str) -> Grant {
        self.condition = Some((title.into(), expression.into()));
        self
    }
}

/// Adds the missing `grants` to `policy` (as `getIamPolicy` answered it,
/// its `etag` kept for the write); the grants added, each said in a line.
/// A conditional grant goes to the binding of the same role and the same
/// condition (title and expression); a policy with a condition is version 3,
/// as IAM requires.
pub fn add(policy: &mut Value, grants: &[Grant]) -> Vec<String> {
    if !policy.is_object() {
        *policy = json!({});
    }
    let mut said = Vec::new();
    for g in grants {
        let bindings = policy
            .as_object_mut()
            .unwrap()
            .entry("bindings")
            .or_insert_with(|| json!([]));
        if !bindings.is_array() {
            *bindings = json!([]);
        }
        let list = bindings.as_array_mut().unwrap();
        let same = |b: &Value| {
            b.get("role").and_then(Value::as_str) == Some(g.role.as_str())
                && condition_of(b) == g.condition
        };
        match list.iter_mut().find(|b| same(b)) {
            Some(b) => {
                let members = b
                    .as_object_mut()
                    .unwrap()
                    .entry("members")
                    .or_insert_with(|| json!([]));
                if members
                    .as_array()
                    .is_some_and(|m| m.iter().any(|x| x.as_str() == Some(g.member.as_str())))
                {
                    continue;
                }
                if let Some(m) = members.as_array_mut() {
                    m.push(json!(g.member));
                }
            }
            None => {
                let mut b = json!({"role": g.role, "members": [g.member]});
                if let Some((title, expression)) = &g.condition {
                    b["condition"] = json!({"title": title, "expression": expression});
                }
                list.push(b);
            }
        }
        let who = g
            .member
            .strip_prefix("serviceAccount:")
            .unwrap_or(&g.member);
        said.push(match &g.condition {
            Some((title, _)) => format!("{} to {who} (condition: {title})", g.role),
            None => format!("{} to {who}", g.role),
        });
    }
    if grants.iter().any(|g| g.condition.is_some()) && !said.is_empty() {
        policy["version"] = json!(3);
    }
    said
}

fn condition_of(binding: &Value) -> Option<(String, String)> {
    let c = binding.get("condition")?;
    Some((
        c.get("title")?.as_str()?.to_string(),
        c.get("expression")?.as_str()?.to_string(),
    ))
}

/// Where a resource's IAM policy is read and written.
pub(crate) struct Policy {
    read: (Method, String, Option<Value>),
    write: (Method, String),
    /// `setIamPolicy` takes `{"policy": …}`; Storage's PUT the policy.
    wrapped: bool,
}

impl Policy {
    /// `POST …:getIamPolicy` / `POST …:setIamPolicy` (Resource Manager, IAM).
    pub(crate) fn post(resource: &str) -> Policy {
        Policy {
            read: (
                Method::POST,
                format!("{resource}:getIamPolicy"),
                Some(json!({"options": {"requestedPolicyVersion": 3}})),
            ),
            write: (Method::POST, format!("{resource}:setIamPolicy")),
            wrapped: true,
        }
    }

    /// IAM service accounts: `POST …:getIamPolicy` with an empty body and
    /// the version as a query parameter (Google: "The request body must be
    /// empty").
    pub(crate) fn post_query(resource: &str) -> Policy {
        Policy {
            read: (
                Method::POST,
                format!("{resource}:getIamPolicy?options.requestedPolicyVersion=3"),
                None,
            ),
            write: (Method::POST, format!("{resource}:setIamPolicy")),
            wrapped: true,
        }
    }

    /// Pub/Sub: `GET …:getIamPolicy`.
    pub(crate) fn get(resource: &str) -> Policy {
        Policy {
            read: (
                Method::GET,
                format!("{resource}:getIamPolicy?options.requestedPolicyVersion=3"),
                None,
            ),
            write: (Method::POST, format!("{resource}:setIamPolicy")),
            wrapped: true,
        }
    }

    /// Cloud Storage: `GET/PUT b/BUCKET/iam`.
    pub(crate) fn storage(bucket: &str) -> Policy {
        Policy {
            read: (
                Method::GET,
                format!("{bucket}/iam?optionsRequestedPolicyVersion=3"),
                None,
            ),
            write: (Method::PUT, format!("{bucket}/iam")),
            wrapped: false,
        }
    }
}

/// Adds `grants` to a policy: read, merged, written with the read's etag;
/// a write that lost a race with another writer (409) reads again. A
/// resource that does not exist (yet: a dry run) has the empty policy.
pub(crate) async fn ensure_policy(
    api: &Admin,
    what: &str,
    at: Policy,
    grants: &[Grant],
) -> Result<(), ApiError> {
    for _ in 0..5 {
        let (m, url, body) = &at.read;
        // Not there: on a dry run, not made yet (the empty policy); else made
        // a moment ago and not visible yet (IAM is eventually consistent),
        // read again within Google's bound.
        let mut policy = api
            .retrying(
                "IAM propagation",
                || api.call(m.clone(), url, body.as_ref()),
                |r| !api.dry_run && matches!(r, Ok(None)),
            )
            .await?
            .or_else(|| api.dry_run.then(|| json!({})))
            .ok_or_else(|| ApiError {
                what: format!("the IAM policy of {what}"),
                status: 404,
                message: "not found".into(),
            })?;
        let added = add(&mut policy, grants);
        if added.is_empty() {
            return Ok(());
        }
        let body = if at.wrapped {
            json!({ "policy": policy })
        } else {
            policy
        };
        match api
            .mutate(
                format!("grant on {what}:\n        {}", added.join("\n        ")),
                at.write.0.clone(),
                &at.write.1,
                Some(&body),
            )
            .await
        {
            Err(e) if e.status == 409 || e.status == 412 => continue,
            other => return other.map(|_| ()),
        }
    }
    Err(ApiError {
        what: format!("the IAM policy of {what}"),
        status: 409,
        message: "changed by someone else five times while being written; run again".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_added_once_and_others_are_kept() {
        let mut p = json!({
            "etag": "BwX1",
            "bindings": [
                {"role": "roles/owner", "members": ["user:a@example.com"]},
                {"role": "roles/pubsub.subscriber", "members": ["user:b@example.com"]}
            ]
        });
        let grants = [
            Grant::new(
                "roles/pubsub.subscriber",
                "serviceAccount:w@p.iam.gserviceaccount.com",
            ),
            Grant::new(
                "roles/logging.logWriter",
                "serviceAccount:w@p.iam.gserviceaccount.com",
            ),
        ];
        let said = add(&mut p, &grants);
        assert_eq!(said.len(), 2, "{said:?}");
        assert_eq!(p["etag"], "BwX1");
        assert_eq!(
            p["bindings"][1]["members"],
            json!([
                "user:b@example.com",
                "serviceAccount:w@p.iam.gserviceaccount.com"
            ])
        );
        assert_eq!(p["bindings"][0]["members"], json!(["user:a@example.com"]));
        assert_eq!(p["bindings"].as_array().unwrap().len(), 3);
        // Again: nothing to add.
        let before = p.clone();
        assert!(add(&mut p, &grants).is_empty());
        assert_eq!(p, before);
    }

    #[test]
    fn a_conditional_grant_is_its_own_binding_and_makes_version_3() {
        let mut p = json!({"bindings": [
            {"role": "roles/compute.instanceAdmin.v1", "members": ["user:a@example.com"]}
        ]});
        let g = Grant::new("roles/compute.instanceAdmin.v1", "serviceAccount:w@p")
            .when("studio s machines", "resource.name.startsWith('x')");
        assert_eq!(add(&mut p, std::slice::from_ref(&g)).len(), 1);
        assert_eq!(p["version"], 3);
        let b = &p["bindings"].as_array().unwrap()[1];
        assert_eq!(b["condition"]["title"], "studio s machines");
        assert_eq!(b["members"], json!(["serviceAccount:w@p"]));
        // The unconditional binding of the same role did not gain the member.
        assert_eq!(p["bindings"][0]["members"], json!(["user:a@example.com"]));
        assert!(add(&mut p, &[g]).is_empty());
        // An empty policy (a new resource's) takes grants too.
        let mut empty = json!({"etag": "ACAB"});
        assert_eq!(add(&mut empty, &[Grant::new("r", "m")]).len(), 1);
        assert_eq!(empty["bindings"], json!([{"role": "r", "members": ["m"]}]));
    }
}
