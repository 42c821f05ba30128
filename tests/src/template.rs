//! `infra/template.yaml` read as data: its resources with CloudFormation's
//! intrinsic functions resolved for one stack (the subset the template
//! uses: `Ref`, `Fn::Sub`, `Fn::GetAtt`, `Fn::Join`, `Fn::If` with
//! `Fn::Equals`/`Fn::Not`/`Fn::Or`), and IAM policies evaluated against
//! requests.
//!
//! Two evaluations of IAM policies. [`allows`] is a quick reading for the
//! static checks of `tests/tests/template.rs`: an `Allow` statement's
//! `Action` pattern (case-insensitive, `*` and `?` wildcards) and ARN pattern
//! (case-sensitive); `Condition` blocks are not evaluated (tag conditions
//! need the resource's tags); a test says so where it matters.
//! [`evaluate_iam`] asks a real IAM policy evaluator
//! (`@cloud-copilot/iam-simulate`, through `tests/iam/evaluate.mjs`), which
//! evaluates conditions on the request context it is given and names those
//! it could not decide; `cli/tests/deploy.rs` decides with it.

use serde_json::Value;
use std::collections::HashMap;

/// The template, as JSON.
pub struct Template {
    pub doc: Value,
}

/// The stack a template is resolved for.
#[derive(Debug, Clone)]
pub struct StackContext {
    pub name: String,
    pub region: String,
    pub account: String,
    /// Parameter values given; the others take their `Default`.
    pub parameters: HashMap<String, String>,
}

impl StackContext {
    pub fn new(name: &str) -> StackContext {
        StackContext {
            name: name.into(),
            region: "us-east-1".into(),
            account: crate::fidelity::ACCOUNT.into(),
            parameters: HashMap::new(),
        }
    }

    pub fn with(mut self, k: &str, v: &str) -> StackContext {
        self.parameters.insert(k.into(), v.into());
        self
    }
}

impl Template {
    /// `infra/template.yaml` of this checkout.
    pub fn load() -> Template {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
        let text = std::fs::read_to_string(&path).expect("infra/template.yaml");
        Template {
            doc: serde_yaml::from_str(&text).expect("the template is YAML (long-form intrinsics)"),
        }
    }

    pub fn text() -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml"),
        )
        .unwrap()
    }

    pub fn resource(&self, logical: &str) -> &Value {
        let r = &self.doc["Resources"][logical];
        assert!(!r.is_null(), "the template has no resource {logical}");
        r
    }

    /// Logical ids of the resources of `ty`, in the template's order.
    pub fn of_type(&self, ty: &str) -> Vec<String> {
        self.doc["Resources"]
            .as_object()
            .expect("Resources")
            .iter()
            .filter(|(_, r)| r["Type"] == ty)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The resource's `Properties`, resolved.
    pub fn properties(&self, logical: &str, cx: &StackContext) -> Value {
        self.resolve(&self.resource(logical)["Properties"], cx)
    }

    /// `Outputs`, resolved.
    pub fn outputs(&self, cx: &StackContext) -> HashMap<String, String> {
        self.doc["Outputs"]
            .as_object()
            .expect("Outputs")
            .iter()
            .map(|(k, o)| (k.clone(), text(&self.resolve(&o["Value"], cx))))
            .collect()
    }

    fn parameter(&self, name: &str, cx: &StackContext) -> Option<Value> {
        let p = &self.doc["Parameters"][name];
        if p.is_null() {
            return None;
        }
        let v = cx
            .parameters
            .get(name)
            .cloned()
            .or_else(|| p["Default"].as_str().map(String::from))
            .or_else(|| p["Default"].as_i64().map(|n| n.to_string()))
            .unwrap_or_default();
        Some(if p["Type"] == "CommaDelimitedList" {
            Value::Array(
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.trim().into()))
                    .collect(),
            )
        } else {
            Value::String(v)
        })
    }

    /// What `Ref` of a resource gives, by type.
    fn physical(&self, logical: &str, cx: &StackContext) -> String {
        let r = self.resource(logical);
        let p = &r["Properties"];
        let named = |key: &str| text(&self.resolve(&p[key], cx));
        match r["Type"].as_str().unwrap_or_default() {
            "AWS::SQS::Queue" => format!(
                "https://sqs.{}.amazonaws.com/{}/{}",
                cx.region,
                cx.account,
                named("QueueName")
            ),
            "AWS::DynamoDB::Table" => named("TableName"),
            "AWS::S3::Bucket" => named("BucketName"),
            "AWS::Lambda::Function" => named("FunctionName"),
            "AWS::Events::Rule" => named("Name"),
            "AWS::Logs::LogGroup" => named("LogGroupName"),
            // Unnamed: CloudFormation makes `<stack>-<logical>-<random>`.
            _ => format!("{}-{logical}", cx.name),
        }
    }

    fn attribute(&self, logical: &str, attr: &str, cx: &StackContext) -> String {
        let r = self.resource(logical);
        let (region, account) = (&cx.region, &cx.account);
        let name = self.physical(logical, cx);
        match (r["Type"].as_str().unwrap_or_default(), attr) {
            ("AWS::SQS::Queue", "Arn") => format!(
                "arn:aws:sqs:{region}:{account}:{}",
                name.rsplit('/').next().unwrap()
            ),
            ("AWS::SQS::Queue", "QueueName") => name.rsplit('/').next().unwrap().into(),
            ("AWS::DynamoDB::Table", "Arn") => {
                format!("arn:aws:dynamodb:{region}:{account}:table/{name}")
            }
            ("AWS::S3::Bucket", "Arn") => format!("arn:aws:s3:::{name}"),
            ("AWS::Lambda::Function", "Arn") => {
                format!("arn:aws:lambda:{region}:{account}:function:{name}")
            }
            ("AWS::Events::Rule", "Arn") => {
                format!("arn:aws:events:{region}:{account}:rule/{name}")
            }
            ("AWS::IAM::Role", "Arn") => format!("arn:aws:iam::{account}:role/{name}"),
            ("AWS::IAM::InstanceProfile", "Arn") => {
                format!("arn:aws:iam::{account}:instance-profile/{name}")
            }
            ("AWS::Lambda::Url", "FunctionUrl") => {
                format!("https://{logical}.lambda-url.{region}.on.aws/")
            }
            ("AWS::Logs::LogGroup", "Arn") => {
                format!("arn:aws:logs:{region}:{account}:log-group:{name}:*")
            }
            (ty, a) => panic!("Fn::GetAtt {logical}.{a} of {ty}: not modelled by this test"),
        }
    }

    /// The ARN a role's session calls AWS as:
    /// `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`.
    pub fn assumed_role(&self, logical: &str, cx: &StackContext, session: &str) -> String {
        let arn = self.attribute(logical, "Arn", cx);
        let name = arn.rsplit('/').next().unwrap_or_default();
        format!("arn:aws:sts::{}:assumed-role/{name}/{session}", cx.account)
    }

    fn condition(&self, name: &str, cx: &StackContext) -> bool {
        let c = &self.doc["Conditions"][name];
        assert!(!c.is_null(), "no condition {name}");
        self.truth(c, cx)
    }

    fn truth(&self, v: &Value, cx: &StackContext) -> bool {
        let o = v.as_object().expect("a condition is an object");
        let (k, arg) = o.iter().next().expect("one function");
        match k.as_str() {
            "Fn::Equals" => self.resolve(&arg[0], cx) == self.resolve(&arg[1], cx),
            "Fn::Not" => !self.truth(&arg[0], cx),
            "Fn::And" => arg.as_array().unwrap().iter().all(|a| self.truth(a, cx)),
            "Fn::Or" => arg.as_array().unwrap().iter().any(|a| self.truth(a, cx)),
            "Condition" => self.condition(arg.as_str().unwrap(), cx),
            other => panic!("condition function {other}: not modelled by this test"),
        }
    }

    fn sub(&self, s: &str, vars: &serde_json::Map<String, Value>, cx: &StackContext) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').expect("closing }") + i;
            let name = &rest[i + 2..end];
            let value = if let Some(v) = vars.get(name) {
                text(&self.resolve(v, cx))
            } else if let Some((r, a)) = name.split_once('.') {
                self.attribute(r, a, cx)
            } else {
                text(&self.reference(name, cx))
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn reference(&self, name: &str, cx: &StackContext) -> Value {
        match name {
            "AWS::StackName" => Value::String(cx.name.clone()),
            "AWS::Region" => Value::String(cx.region.clone()),
            "AWS::AccountId" => Value::String(cx.account.clone()),
            "AWS::Partition" => Value::String("aws".into()),
            "AWS::URLSuffix" => Value::String("amazonaws.com".into()),
            "AWS::NoValue" => Value::Null,
            _ => self
                .parameter(name, cx)
                .unwrap_or_else(|| Value::String(self.physical(name, cx))),
        }
    }

    /// `v` with every intrinsic function resolved; `AWS::NoValue` removes
    /// the key or element that holds it.
    pub fn resolve(&self, v: &Value, cx: &StackContext) -> Value {
        match v {
            Value::Object(o) if o.len() == 1 => {
                let (k, arg) = o.iter().next().unwrap();
                match k.as_str() {
                    "Ref" => self.reference(arg.as_str().unwrap(), cx),
                    "Fn::Sub" => match arg {
                        Value::String(s) => Value::String(self.sub(s, &Default::default(), cx)),
                        Value::Array(a) => Value::String(self.sub(
                            a[0].as_str().unwrap(),
                            a[1].as_object().unwrap(),
                            cx,
                        )),
                        _ => panic!("Fn::Sub {arg}"),
                    },
                    "Fn::GetAtt" => {
                        let (r, a) = match arg {
                            Value::Array(a) => (
                                a[0].as_str().unwrap().to_string(),
                                a[1].as_str().unwrap().to_string(),
                            ),
                            Value::String(s) => {
                                let (r, a) = s.split_once('.').unwrap();
                                (r.into(), a.into())
                            }
                            _ => panic!("Fn::GetAtt {arg}"),
                        };
                        Value::String(self.attribute(&r, &a, cx))
                    }
                    "Fn::Join" => {
                        let sep = arg[0].as_str().unwrap();
                        let parts = match self.resolve(&arg[1], cx) {
                            Value::Array(a) => a.iter().map(text).collect::<Vec<_>>(),
                            other => panic!("Fn::Join of {other}"),
                        };
                        Value::String(parts.join(sep))
                    }
                    "Fn::If" => {
                        let branch = if self.condition(arg[0].as_str().unwrap(), cx) {
                            &arg[1]
                        } else {
                            &arg[2]
                        };
                        self.resolve(branch, cx)
                    }
                    k if k.starts_with("Fn::") => panic!("{k}: not modelled by this test"),
                    _ => Value::Object(self.resolve_map(o, cx)),
                }
            }
            Value::Object(o) => Value::Object(self.resolve_map(o, cx)),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.resolve(x, cx))
                    .filter(|x| !x.is_null())
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn resolve_map(
        &self,
        o: &serde_json::Map<String, Value>,
        cx: &StackContext,
    ) -> serde_json::Map<String, Value> {
        o.iter()
            .map(|(k, x)| (k.clone(), self.resolve(x, cx)))
            .filter(|(_, x)| !x.is_null())
            .collect()
    }
}

/// A scalar as text (numbers and booleans as CloudFormation passes them).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A string or a list of strings, as a list.
pub fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(text).collect(),
        Value::Null => Vec::new(),
        other => vec![text(other)],
    }
}

/// IAM's wildcard match: `*` any run, `?` one character.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The statements of every inline policy of a resolved `AWS::IAM::Role`.
pub fn role_statements(role_properties: &Value) -> Vec<Value> {
    role_properties["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["PolicyDocument"]["Statement"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Whether an `Allow` statement covers `action` on `resource` (`None`: any
/// resource the statement names; see the module's note on conditions).
pub fn allows(statements: &[Value], action: &str, resource: Option<&str>) -> bool {
    statements.iter().any(|st| {
        st["Effect"] == "Allow"
            && strings(&st["Action"])
                .iter()
                .any(|a| glob(&a.to_lowercase(), &action.to_lowercase()))
            && resource.is_none_or(|r| strings(&st["Resource"]).iter().any(|p| glob(p, r)))
    })
}

/// The inline policies of a resolved `AWS::IAM::Role` as the evaluator
/// takes them: `{"name": PolicyName, "policy": PolicyDocument}`.
pub fn role_policies(role_properties: &Value) -> Vec<Value> {
    role_properties["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| serde_json::json!({"name": p["PolicyName"], "policy": p["PolicyDocument"]}))
        .collect()
}

/// What the IAM evaluator decided about one request.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `Allowed`, `ImplicitlyDenied`, `ExplicitlyDenied`, or `Error` (the
    /// evaluator refused the request or a policy).
    pub decision: String,
    pub allowed: bool,
    /// The evaluator's explanation of a denial (empty when allowed).
    pub why: String,
    /// The statements that allowed it, `policy/Sid`.
    pub allowed_by: Vec<String>,
    /// Conditions of the allowing statements it could not decide (their
    /// keys were not in the request context), `policy/Sid: Op key = values`.
    pub unevaluated: Vec<String>,
}

/// Asks the IAM policy evaluator (`node tests/iam/evaluate.mjs`, one
/// process for them all) about `requests`, each a JSON object as that
/// script's header describes (`role`, `principal`, `identityPolicies`,
/// `action`, `resource` or null, `context`); one verdict each, in order.
/// Its packages are installed by `scripts/test` (`npm ci`); without them
/// this panics saying so.
pub fn evaluate_iam(requests: &[Value]) -> Vec<Verdict> {
    use std::io::Write;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("iam");
    assert!(
        dir.join("node_modules/@cloud-copilot/iam-simulate")
            .is_dir(),
        "the IAM evaluator is not installed: run scripts/test, or npm ci --prefix tests/iam"
    );
    let mut child = std::process::Command::new("node")
        .arg(dir.join("evaluate.mjs"))
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (the IAM evaluator runs on it)");
    let input = serde_json::json!({ "requests": requests }).to_string();
    let mut stdin = child.stdin.take().unwrap();
    // Written from a thread: the answer may fill the pipe before the question is read.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("the IAM evaluator");
    writer
        .join()
        .unwrap()
        .expect("the requests to the IAM evaluator");
    assert!(
        out.status.success(),
        "the IAM evaluator failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("the IAM evaluator's JSON");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), requests.len(), "one result per request");
    results
        .iter()
        .map(|r| Verdict {
            decision: text(&r["decision"]),
            allowed: r["allowed"] == true,
            why: text(&r["why"]),
            allowed_by: strings(&r["allowedBy"]),
            unevaluated: strings(&r["unevaluated"]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_is_iams() {
        assert!(glob(
            "arn:aws:sqs:*:1:st-work-*",
            "arn:aws:sqs:us-east-1:1:st-work-a-dlq"
        ));
        assert!(!glob(
            "arn:aws:sqs:*:1:st-work-*",
            "arn:aws:sqs:us-east-1:1:st-submit"
        ));
        assert!(glob("sqs:*", "sqs:SendMessage"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(!glob("table/jobs", "table/jobs/index/x"));
    }
}
