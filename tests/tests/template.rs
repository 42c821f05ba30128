//! `infra/template.yaml` against the code: what the functions read at start
//! is set on them, the queues, mappings, rules and schedules the handlers
//! expect exist with the right trigger, and the policies are least
//! privilege. (The calls the code really makes are checked against these
//! policies in `cli/tests/deploy.rs`, on a stack deployed into moto.)

use serde_json::Value;
use studio_tests::template::{allows, role_statements, strings, text, StackContext, Template};

const STACK: &str = "st";

/// Every optional parameter set, so every conditional setting shows.
fn full() -> StackContext {
    StackContext::new(STACK)
        .with("WorkerAmi", "ami-0123456789abcdef0")
        .with("WorkerGpuAmi", "ami-0fedcba9876543210")
        .with("WorkerAmiArm64", "ami-0aaaaaaaaaaaaaaaa")
        .with("AvailabilityZones", "us-east-1a,us-east-1b")
        .with("BinarySha256X86", &"a".repeat(64))
        .with("BinarySha256Arm64", &"b".repeat(64))
        .with("UvSha256X86", &"c".repeat(64))
        .with("UvSha256Arm64", &"d".repeat(64))
}

/// The four functions: (logical id, role, handler crate).
const FUNCTIONS: &[(&str, &str, &str)] = &[
    ("SubmitFunction", "SubmitRole", "submit"),
    ("ScaleFunction", "ScaleRole", "scale-on-queue-depth"),
    (
        "InterruptionFunction",
        "InterruptionRole",
        "handle-spot-interruption",
    ),
    ("CleanupFunction", "CleanupRole", "cleanup-empty-group"),
    ("WebhookFunction", "WebhookRole", "webhook"),
];

fn env_of(t: &Template, f: &str, cx: &StackContext) -> std::collections::HashMap<String, String> {
    t.properties(f, cx)["Environment"]["Variables"]
        .as_object()
        .unwrap_or_else(|| panic!("{f} has no environment"))
        .iter()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect()
}

#[test]
fn the_template_passes_cfn_lint() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    let lint = std::env::var("CFN_LINT").unwrap_or_else(|_| "cfn-lint".into());
    let out = std::process::Command::new(lint)
        .arg("--")
        .arg(&path)
        .output()
        .expect("cfn-lint must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each function reads `AwsConfig::from_lookup(std::env::var)` at start and
/// fails naming a missing variable: every one it knows is set (Lambda sets
/// `AWS_REGION` itself and refuses it in a template), and the result names
/// what the stack's outputs name.
#[test]
fn every_function_gets_every_setting_it_reads_at_start() {
    let t = Template::load();
    for cx in [
        full(),
        StackContext::new(STACK)
            .with("WorkerAmi", "ami-1")
            .with("AvailabilityZones", "us-east-1a"),
    ] {
        let outputs = t.outputs(&cx);
        for (f, _, _) in FUNCTIONS {
            let env = env_of(&t, f, &cx);
            assert!(
                !env.contains_key("AWS_REGION"),
                "{f}: AWS_REGION is reserved"
            );
            let cfg = studio_aws::config::AwsConfig::from_lookup(|k| {
                if k == "AWS_REGION" {
                    Some(cx.region.clone())
                } else {
                    env.get(k).cloned()
                }
            })
            .unwrap_or_else(|e| panic!("{f} would not start: {e}"));
            assert_eq!(cfg.jobs_table, outputs["JobsTable"]);
            assert_eq!(cfg.pools_table, outputs["PoolsTable"]);
            assert_eq!(cfg.submit_queue, outputs["SubmitQueue"]);
            assert_eq!(
                cfg.interruption_queue.as_deref(),
                Some(outputs["InterruptionQueue"].as_str())
            );
            assert_eq!(cfg.bucket, outputs["ArtifactBucket"]);
            assert_eq!(cfg.prefix, outputs["Prefix"]);
            assert_eq!(
                cfg.worker_instance_profile.as_deref(),
                Some(outputs["WorkerInstanceProfile"].as_str())
            );
            // An optional setting left empty is absent, not "" (which the
            // code would take as a value).
            for (k, v) in &env {
                assert!(
                    !v.is_empty() || k == "STUDIO_SUBNETS" || k == "STUDIO_AVAILABILITY_ZONES",
                    "{f}: {k} is set empty"
                );
            }
        }
    }
    // With every optional parameter given, every variable the code knows is set.
    let env = env_of(&t, "SubmitFunction", &full());
    for (k, _) in studio_aws::config::VARIABLES {
        if *k != "AWS_REGION" && *k != "STUDIO_SUBNETS" {
            assert!(env.contains_key(*k), "the functions are not given {k}");
        }
    }
    let cfg = studio_aws::config::AwsConfig::from_lookup(|k| {
        (k == "AWS_REGION")
            .then(|| "us-east-1".to_string())
            .or_else(|| env.get(k).cloned())
    })
    .unwrap();
    assert_eq!(cfg.studio_sha256_x86_64, Some("a".repeat(64)));
    assert_eq!(cfg.uv_sha256_arm64, Some("d".repeat(64)));
    assert_eq!(cfg.worker_gpu_ami.as_deref(), Some("ami-0fedcba9876543210"));
    assert_eq!(cfg.availability_zones, ["us-east-1a", "us-east-1b"]);
}

/// The SQS triggers: the right queue to the right function, partial batch
/// responses on (the handlers report per message), a visibility timeout of
/// at least six times the function's (AWS's advice for event source
/// mappings), and a dead-letter queue named as the code derives it.
#[test]
fn each_queue_triggers_its_function_and_dead_letters_poison() {
    let t = Template::load();
    let cx = full();
    let mappings = t.of_type("AWS::Lambda::EventSourceMapping");
    let mut wired = Vec::new();
    for m in &mappings {
        let p = t.properties(m, &cx);
        let queue_arn = text(&p["EventSourceArn"]);
        let function = text(&p["FunctionName"]);
        assert!(
            strings(&p["FunctionResponseTypes"]).contains(&"ReportBatchItemFailures".to_string()),
            "{m}: without ReportBatchItemFailures one bad message retries the whole batch"
        );
        let batch = p["BatchSize"]
            .as_u64()
            .or_else(|| text(&p["BatchSize"]).parse().ok())
            .unwrap_or(10);
        assert!((1..=10).contains(&batch), "{m}: batch size {batch}");
        let queue = t
            .of_type("AWS::SQS::Queue")
            .into_iter()
            .find(|q| {
                text(&t.resolve(&serde_json::json!({"Fn::GetAtt": [q, "Arn"]}), &cx)) == queue_arn
            })
            .unwrap_or_else(|| panic!("{m}: no queue {queue_arn}"));
        let f = FUNCTIONS
            .iter()
            .find(|(l, _, _)| {
                text(&t.properties(l, &cx)["FunctionName"]) == function
                    || function
                        .ends_with(&format!(":{}", text(&t.properties(l, &cx)["FunctionName"])))
            })
            .unwrap_or_else(|| panic!("{m}: no function {function}"));
        let timeout = t.properties(f.0, &cx)["Timeout"].as_u64().unwrap();
        let q = t.properties(&queue, &cx);
        let visibility = q["VisibilityTimeout"].as_u64().unwrap_or(30);
        assert!(
            visibility >= 6 * timeout,
            "{queue}: visibility {visibility} s < 6 × {timeout} s of {}",
            f.0
        );
        let dlq_arn = serde_json::from_value::<Value>(q["RedrivePolicy"].clone()).unwrap()
            ["deadLetterTargetArn"]
            .clone();
        let name = text(&q["QueueName"]);
        assert_eq!(
            text(&dlq_arn),
            format!("arn:aws:sqs:us-east-1:{}:{name}-dlq", cx.account),
            "{queue}'s DLQ"
        );
        wired.push((name, f.2));
    }
    wired.sort();
    assert_eq!(
        wired,
        [
            (format!("{STACK}-interruptions"), "handle-spot-interruption"),
            (format!("{STACK}-submit"), "submit"),
        ]
    );
}

/// The EventBridge rules: the EC2 events the interruption handler parses go
/// to its queue (and only those states that mean a machine is going), the
/// queue's policy lets exactly those rules send, and the two schedules
/// invoke the scale and cleanup functions, which allow them to.
#[test]
fn the_rules_and_schedules_reach_their_handlers() {
    use studio_aws::events::{HEALTH, REBALANCE, SPOT_WARNING, STATE_CHANGE};
    let t = Template::load();
    let cx = full();
    let interruption_arn = format!("arn:aws:sqs:us-east-1:{}:{STACK}-interruptions", cx.account);
    let mut detail_types = Vec::new();
    let mut rule_arns = Vec::new();
    let mut schedules = Vec::new();
    for r in t.of_type("AWS::Events::Rule") {
        let p = t.properties(&r, &cx);
        let targets: Vec<String> = p["Targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| text(&x["Arn"]))
            .collect();
        if let Some(rate) = p["ScheduleExpression"].as_str() {
            schedules.push((rate.to_string(), targets.clone()));
            continue;
        }
        assert_eq!(
            targets,
            std::slice::from_ref(&interruption_arn),
            "{r} delivers elsewhere"
        );
        let pattern = &p["EventPattern"];
        for d in strings(&pattern["detail-type"]) {
            if d == STATE_CHANGE {
                let mut states = strings(&pattern["detail"]["state"]);
                states.sort();
                assert_eq!(
                    states,
                    ["shutting-down", "stopped", "stopping", "terminated"]
                );
            }
            if d == HEALTH {
                assert_eq!(strings(&pattern["source"]), ["aws.health"]);
                assert_eq!(strings(&pattern["detail"]["service"]), ["EC2"]);
                assert_eq!(
                    strings(&pattern["detail"]["eventTypeCategory"]),
                    ["scheduledChange"]
                );
            }
            detail_types.push(d);
        }
        rule_arns.push(text(
            &t.resolve(&serde_json::json!({"Fn::GetAtt": [r, "Arn"]}), &cx),
        ));
    }
    detail_types.sort();
    let mut want = vec![HEALTH, REBALANCE, SPOT_WARNING, STATE_CHANGE];
    want.sort();
    assert_eq!(detail_types, want);
    // The queue policy: EventBridge may send, only from these rules.
    let policy = t.properties("InterruptionQueuePolicy", &cx);
    let st = &policy["PolicyDocument"]["Statement"][0];
    assert_eq!(text(&st["Principal"]["Service"]), "events.amazonaws.com");
    assert_eq!(strings(&st["Action"]), ["sqs:SendMessage"]);
    assert_eq!(
        strings(&st["Resource"]),
        std::slice::from_ref(&interruption_arn)
    );
    let mut allowed = strings(&st["Condition"]["ArnEquals"]["aws:SourceArn"]);
    allowed.sort();
    rule_arns.sort();
    assert_eq!(allowed, rule_arns);
    // Schedules.
    schedules.sort();
    let function_arn =
        |l: &str| text(&t.resolve(&serde_json::json!({"Fn::GetAtt": [l, "Arn"]}), &cx));
    assert_eq!(
        schedules,
        [
            (
                "rate(1 minute)".to_string(),
                vec![function_arn("ScaleFunction")]
            ),
            (
                "rate(5 minutes)".to_string(),
                vec![function_arn("CleanupFunction")]
            ),
        ]
    );
    let permissions: Vec<Value> = t
        .of_type("AWS::Lambda::Permission")
        .iter()
        .map(|p| t.properties(p, &cx))
        .collect();
    let mut permitted: Vec<(String, String)> = permissions
        .iter()
        .filter(|p| p["Action"] == "lambda:InvokeFunction" && text(&p["Principal"]) != "*")
        .map(|p| {
            assert_eq!(text(&p["Principal"]), "events.amazonaws.com");
            (text(&p["FunctionName"]), text(&p["SourceArn"]))
        })
        .collect();
    permitted.sort();
    assert_eq!(permitted.len(), 2, "{permitted:?}");
    // The webhook's URL: public, because every request is HMAC-signed. Since
    // October 2025 a new URL with AuthType NONE answers 403 unless the
    // resource policy allows both lambda:InvokeFunctionUrl and
    // lambda:InvokeFunction (docs.aws.amazon.com/lambda/latest/dg/urls-auth.html);
    // each public permission is limited to calls through the URL.
    let url = t.properties("WebhookUrl", &cx);
    assert_eq!(text(&url["AuthType"]), "NONE");
    let mut public: Vec<(String, String)> = permissions
        .iter()
        .filter(|p| text(&p["Principal"]) == "*")
        .map(|p| {
            let through_url = if p["Action"] == "lambda:InvokeFunctionUrl" {
                text(&p["FunctionUrlAuthType"])
            } else {
                text(&p["InvokedViaFunctionUrl"])
            };
            (text(&p["Action"]), through_url)
        })
        .collect();
    public.sort();
    assert_eq!(
        public,
        [
            ("lambda:InvokeFunction".to_string(), "true".to_string()),
            ("lambda:InvokeFunctionUrl".to_string(), "NONE".to_string()),
        ],
        "{permissions:?}"
    );
}

/// What cfn-lint does not check and moto ignores, checked here from the
/// template itself: `Rules` use only rule functions (AWS lists them:
/// docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/rules-section-structure.html;
/// `Fn::Join` there is refused by CloudFormation), and a template naming an
/// IAM resource is deployed with `CAPABILITY_NAMED_IAM` (else
/// `InsufficientCapabilities`: docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_CreateStack.html).
#[test]
fn rules_use_rule_functions_and_named_iam_is_acknowledged() {
    const RULE_FUNCTIONS: &[&str] = &[
        "Fn::And",
        "Fn::Contains",
        "Fn::EachMemberEquals",
        "Fn::EachMemberIn",
        "Fn::Equals",
        "Fn::If",
        "Fn::Not",
        "Fn::Or",
        "Fn::RefAll",
        "Fn::ValueOf",
        "Fn::ValueOfAll",
    ];
    fn functions(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k.starts_with("Fn::") {
                        out.push(k.clone());
                    }
                    functions(v, out);
                }
            }
            Value::Array(s) => s.iter().for_each(|v| functions(v, out)),
            _ => {}
        }
    }
    let raw: Value = serde_yaml::from_str(&Template::text()).unwrap();
    let mut used = Vec::new();
    functions(&raw["Rules"], &mut used);
    assert!(!used.is_empty());
    let bad: Vec<&String> = used
        .iter()
        .filter(|f| !RULE_FUNCTIONS.contains(&f.as_str()))
        .collect();
    assert!(bad.is_empty(), "not rule functions, in Rules: {bad:?}");

    let t = Template::load();
    let named: Vec<String> = ["AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"]
        .iter()
        .flat_map(|ty| t.of_type(ty))
        .filter(|r| {
            let p = &t.resource(r)["Properties"];
            ["RoleName", "UserName", "GroupName"]
                .iter()
                .any(|k| !p[*k].is_null())
        })
        .collect();
    let deploy = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/deploy"),
    )
    .unwrap();
    if !named.is_empty() {
        assert!(
            deploy.contains("CAPABILITY_NAMED_IAM"),
            "{named:?} are named IAM resources: scripts/deploy must pass CAPABILITY_NAMED_IAM"
        );
    }
}

/// A role that sends to a queue finds its URL by name first (the SQS
/// adapter calls `GetQueueUrl`): the webhook's POST failed on real AWS for
/// want of it, which moto does not check.
#[test]
fn every_role_that_sends_to_a_queue_may_find_it() {
    let t = Template::load();
    let cx = full();
    for role in t.of_type("AWS::IAM::Role") {
        let st = role_statements(&t.properties(&role, &cx));
        for s in &st {
            if !strings(&s["Action"]).iter().any(|a| a == "sqs:SendMessage") {
                continue;
            }
            for q in strings(&s["Resource"]) {
                assert!(
                    allows(&st, "sqs:GetQueueUrl", Some(&q)),
                    "{role} may send to {q} but not find its URL (sqs:GetQueueUrl)"
                );
            }
        }
    }
}

/// The tables the store queries, as the code creates them in tests.
#[test]
fn the_tables_have_the_keys_indexes_and_ttl_the_store_uses() {
    let t = Template::load();
    let cx = full();
    let jobs = t.properties("JobsTable", &cx);
    assert_eq!(text(&jobs["BillingMode"]), "PAY_PER_REQUEST");
    assert_eq!(text(&jobs["KeySchema"][0]["AttributeName"]), "id");
    let mut indexes: Vec<(String, Vec<String>)> = jobs["GlobalSecondaryIndexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                text(&i["IndexName"]),
                i["KeySchema"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| text(&k["AttributeName"]))
                    .collect(),
            )
        })
        .collect();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            (
                "by-created".to_string(),
                vec!["listing".to_string(), "created_key".to_string()]
            ),
            ("by-instance".to_string(), vec!["instance".to_string()]),
            (
                "by-pool-state".to_string(),
                vec!["pool".to_string(), "state".to_string()]
            ),
        ]
    );
    assert_eq!(
        text(&jobs["TimeToLiveSpecification"]["AttributeName"]),
        "expires_at"
    );
    assert_eq!(
        jobs["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );
    let pools = t.properties("PoolsTable", &cx);
    assert_eq!(text(&pools["KeySchema"][0]["AttributeName"]), "key");
}

/// Actions IAM cannot scope to a resource (the service's authorization
/// reference lists no resource type for them).
const NO_RESOURCE_LEVEL: &[&str] = &[
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:DescribeSpotPriceHistory",
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeScalingActivities",
];

/// Least privilege as policy: no wildcard actions, `Resource: "*"` only for
/// actions that cannot be scoped, EC2 and Auto Scaling mutations only on
/// resources carrying (or created with) the project's tag, `iam:PassRole`
/// only of the workers' role to EC2, and the workers' role exactly the
/// README's table.
#[test]
fn every_policy_is_least_privilege() {
    let t = Template::load();
    let cx = full();
    let roles = t.of_type("AWS::IAM::Role");
    assert_eq!(roles.len(), 7, "{roles:?}");
    let worker_role_arn = text(&t.resolve(
        &serde_json::json!({"Fn::GetAtt": ["WorkerRole", "Arn"]}),
        &cx,
    ));
    for role in &roles {
        for st in role_statements(&t.properties(role, &cx)) {
            let actions = strings(&st["Action"]);
            let resources = strings(&st["Resource"]);
            assert_eq!(st["Effect"], "Allow", "{role}: {st}");
            for a in &actions {
                assert!(!a.contains('*'), "{role}: wildcard action {a}");
                if resources.iter().any(|r| r == "*") {
                    assert!(
                        NO_RESOURCE_LEVEL.contains(&a.as_str()),
                        "{role}: {a} on Resource \"*\" can be scoped"
                    );
                }
                let mutation = (a.starts_with("ec2:") || a.starts_with("autoscaling:"))
                    && !a.contains(":Describe");
                if mutation {
                    let cond = st["Condition"].to_string();
                    assert!(
                        cond.contains("studio:pool")
                            || cond.contains("ec2:CreateAction")
                            || cond.contains("ec2:LaunchTemplate"),
                        "{role}: {a} is not conditioned on the studio:pool tag: {st}"
                    );
                }
                if a == "iam:PassRole" {
                    assert_eq!(
                        resources,
                        std::slice::from_ref(&worker_role_arn),
                        "{role} passes another role"
                    );
                    assert_eq!(
                        text(&st["Condition"]["StringEquals"]["iam:PassedToService"]),
                        "ec2.amazonaws.com"
                    );
                }
            }
        }
    }
    // The functions never touch jobs' files (only the workers do): scale
    // keeps the spot prices under catalog/, and submit reads them.
    let bucket = text(&t.resolve(
        &serde_json::json!({"Fn::GetAtt": ["ArtifactBucket", "Arn"]}),
        &cx,
    ));
    for (_, role, _) in FUNCTIONS {
        let st = role_statements(&t.properties(role, &cx));
        for prefix in ["workspaces", "logs", "checkpoints", "files", "releases"] {
            let key = format!("{bucket}/{prefix}/x");
            assert!(
                !allows(&st, "s3:GetObject", Some(&key)),
                "{role} reads {key}"
            );
            assert!(
                !allows(&st, "s3:PutObject", Some(&key)),
                "{role} writes {key}"
            );
        }
        let snapshot = format!("{bucket}/catalog/spot-prices-us-east-1.json");
        assert_eq!(
            allows(&st, "s3:GetObject", Some(&snapshot)),
            matches!(*role, "SubmitRole" | "ScaleRole"),
            "{role} and the spot prices"
        );
        assert_eq!(
            allows(&st, "s3:PutObject", Some(&snapshot)),
            *role == "ScaleRole",
            "{role} keeps the spot prices"
        );
        assert!(!allows(
            &st,
            "iam:PassRole",
            Some("arn:aws:iam::123456789012:role/other")
        ));
    }
    // The GCE workers' role: the job records only (their queues, groups
    // and files are on GCP), assumable only with the workers' Google
    // identity for this role's audience.
    let gce = t.properties("GceWorkerRole", &cx);
    let gce_st = role_statements(&gce);
    let (jobs_arn, pools_arn) = (
        format!(
            "arn:aws:dynamodb:us-east-1:{}:table/{STACK}-jobs",
            cx.account
        ),
        format!(
            "arn:aws:dynamodb:us-east-1:{}:table/{STACK}-pools",
            cx.account
        ),
    );
    assert!(allows(&gce_st, "dynamodb:PutItem", Some(&jobs_arn)));
    assert!(allows(&gce_st, "dynamodb:GetItem", Some(&pools_arn)));
    assert!(!allows(&gce_st, "dynamodb:PutItem", Some(&pools_arn)));
    for a in [
        "sqs:ReceiveMessage",
        "s3:GetObject",
        "ec2:CreateTags",
        "dynamodb:Scan",
    ] {
        assert!(!allows(&gce_st, a, None), "the GCE worker may {a}");
    }
    let trust = &gce["AssumeRolePolicyDocument"]["Statement"][0];
    assert_eq!(text(&trust["Action"]), "sts:AssumeRoleWithWebIdentity");
    let cond = trust["Condition"]["StringEquals"].to_string();
    assert_eq!(
        text(&trust["Principal"]["Federated"]),
        "accounts.google.com"
    );
    for key in [
        "accounts.google.com:aud",
        "accounts.google.com:sub",
        "accounts.google.com:oaud",
    ] {
        assert!(
            cond.contains(key),
            "the trust does not check {key}: {trust}"
        );
    }
    // The workers' role: the README's table.
    let worker = role_statements(&t.properties("WorkerRole", &cx));
    let bucket = t.outputs(&cx)["ArtifactBucket"].clone();
    let jobs = format!(
        "arn:aws:dynamodb:us-east-1:{}:table/{STACK}-jobs",
        cx.account
    );
    let pools = format!(
        "arn:aws:dynamodb:us-east-1:{}:table/{STACK}-pools",
        cx.account
    );
    let work = format!(
        "arn:aws:sqs:us-east-1:{}:{STACK}-work-ec2-2c-4g-abc-g1",
        cx.account
    );
    let group = format!("arn:aws:autoscaling:us-east-1:{}:autoScalingGroup:*:autoScalingGroupName/{STACK}-ec2-2c-4g-abc-g1", cx.account);
    for (a, r) in [
        ("sqs:ReceiveMessage", work.as_str()),
        ("sqs:DeleteMessage", &work),
        ("sqs:SendMessage", &work),
        ("sqs:ChangeMessageVisibility", &work),
        ("sqs:GetQueueAttributes", &work),
        ("sqs:GetQueueUrl", &work),
        ("dynamodb:GetItem", &jobs),
        ("dynamodb:PutItem", &jobs),
        ("dynamodb:GetItem", &pools),
        ("autoscaling:SetInstanceProtection", &group),
        ("autoscaling:TerminateInstanceInAutoScalingGroup", &group),
    ] {
        assert!(allows(&worker, a, Some(r)), "the worker may not {a} on {r}");
    }
    for (a, r) in [
        ("s3:GetObject", "workspaces/x.tar.gz"),
        ("s3:GetObject", "checkpoints/j/1.tar.gz"),
        ("s3:GetObject", "releases/studio-abc"),
        ("s3:PutObject", "logs/j/0001"),
        ("s3:PutObject", "checkpoints/j/1.tar.gz"),
        ("s3:GetObject", "files/j/0123abcd"),
        ("s3:PutObject", "files/j/0123abcd"),
        ("s3:ListMultipartUploadParts", "files/j/0123abcd"),
    ] {
        let arn = format!("arn:aws:s3:::{bucket}/{r}");
        assert!(
            allows(&worker, a, Some(&arn)),
            "the worker may not {a} on {arn}"
        );
    }
    for (a, r) in [
        ("dynamodb:PutItem", pools.as_str()),
        ("dynamodb:Scan", &jobs),
        (
            "sqs:SendMessage",
            &format!("arn:aws:sqs:us-east-1:{}:{STACK}-submit", cx.account),
        ),
        ("sqs:CreateQueue", &work),
        (
            "s3:PutObject",
            &format!("arn:aws:s3:::{bucket}/releases/studio-abc"),
        ),
        (
            "s3:PutObject",
            &format!("arn:aws:s3:::{bucket}/workspaces/x.tar.gz"),
        ),
        ("autoscaling:SetDesiredCapacity", &group),
        ("autoscaling:DeleteAutoScalingGroup", &group),
    ] {
        assert!(!allows(&worker, a, Some(r)), "the worker may {a} on {r}");
    }
    assert!(allows(
        &worker,
        "s3:ListBucketMultipartUploads",
        Some(&format!("arn:aws:s3:::{bucket}"))
    ));
    assert!(allows(&worker, "ec2:CreateTags", None));
    assert!(!allows(&worker, "ec2:RunInstances", None));
    assert!(!allows(&worker, "iam:PassRole", None));
}
