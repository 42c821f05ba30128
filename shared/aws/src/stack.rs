//! A deployed stack (`infra/template.yaml`), read back: `studio init` writes
//! the CLI's settings from its outputs, and `studio doctor` checks that a
//! configured deployment can run jobs, one line per check.
//!
//! Only the CLI uses this (feature `stack`), so the functions never build the
//! CloudFormation SDK.

use crate::config::ClientConfig;
use crate::error::AwsError;
use aws_credential_types::provider::ProvideCredentials;
use std::collections::BTreeMap;

/// The stack's outputs that make the CLI's settings: output name → key of
/// `[aws]` in `$STUDIO_HOME/config.toml` (see [`crate::config::CLIENT_KEYS`]).
pub const CLIENT_OUTPUTS: &[(&str, &str)] = &[
    ("Region", "region"),
    ("JobsTable", "jobs_table"),
    ("PoolsTable", "pools_table"),
    ("SubmitQueue", "submit_queue"),
    ("ArtifactBucket", "artifact_bucket"),
];

/// A stack as CloudFormation describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub name: String,
    pub status: String,
    pub outputs: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
    /// The account it lives in (from its stack id).
    pub account: Option<String>,
}

impl Stack {
    /// # Errors
    /// The call failed (no such stack, no credentials, no permission).
    pub async fn describe(sdk: &aws_config::SdkConfig, name: &str) -> Result<Stack, AwsError> {
        let out = aws_sdk_cloudformation::Client::new(sdk)
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DescribeStacks", e))?;
        let s = out
            .stacks()
            .first()
            .ok_or_else(|| AwsError::Shape(format!("stack {name} does not exist")))?;
        Ok(Stack {
            name: s.stack_name().unwrap_or(name).to_string(),
            status: s
                .stack_status()
                .map(|st| st.as_str().to_string())
                .unwrap_or_default(),
            outputs: s
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
                .collect(),
            parameters: s
                .parameters()
                .iter()
                .filter_map(|p| {
                    Some((
                        p.parameter_key()?.to_string(),
                        p.parameter_value().unwrap_or_default().to_string(),
                    ))
                })
                .collect(),
            // arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/ID
            account: s
                .stack_id()
                .and_then(|id| id.split(':').nth(4))
                .filter(|a| !a.is_empty())
                .map(String::from),
        })
    }

    /// Its resources' physical ids by logical id (a role's name, a
    /// function's name).
    ///
    /// # Errors
    /// The call failed.
    pub async fn resources(
        sdk: &aws_config::SdkConfig,
        name: &str,
    ) -> Result<BTreeMap<String, String>, AwsError> {
        let out = aws_sdk_cloudformation::Client::new(sdk)
            .describe_stack_resources()
            .stack_name(name)
            .send()
            .await
            .map_err(|e| AwsError::sdk("DescribeStackResources", e))?;
        Ok(out
            .stack_resources()
            .iter()
            .filter_map(|r| {
                Some((
                    r.logical_resource_id()?.to_string(),
                    r.physical_resource_id()?.to_string(),
                ))
            })
            .collect())
    }

    /// The parameters of `set` that differ from the stack's, as
    /// `(key, old, new)`.
    pub fn differing<'a>(
        &self,
        set: &'a BTreeMap<String, String>,
    ) -> Vec<(&'a str, Option<&str>, &'a str)> {
        set.iter()
            .filter(|(k, v)| self.parameters.get(*k) != Some(*v))
            .map(|(k, v)| {
                (
                    k.as_str(),
                    self.parameters.get(k).map(String::as_str),
                    v.as_str(),
                )
            })
            .collect()
    }

    /// Updates the stack's parameters `set`, the template and every other
    /// parameter as they are, and waits for the update to complete (at most
    /// `deadline`). `Ok(false)`: nothing differed, no update was made.
    ///
    /// # Errors
    /// The update was refused or rolled back (the stack's reason said).
    pub async fn update_parameters(
        &self,
        sdk: &aws_config::SdkConfig,
        set: &BTreeMap<String, String>,
        deadline: std::time::Duration,
    ) -> Result<bool, AwsError> {
        use aws_sdk_cloudformation::types::{Capability, Parameter};
        if self.differing(set).is_empty() {
            return Ok(false);
        }
        let cfn = aws_sdk_cloudformation::Client::new(sdk);
        let mut update = cfn
            .update_stack()
            .stack_name(&self.name)
            .use_previous_template(true)
            .capabilities(Capability::CapabilityNamedIam);
        // The others as they are (UsePreviousValue: a NoEcho value reads
        // "****" in DescribeStacks, so the values read cannot be sent back).
        for key in self.parameters.keys().filter(|k| !set.contains_key(*k)) {
            update = update.parameters(
                Parameter::builder()
                    .parameter_key(key)
                    .use_previous_value(true)
                    .build(),
            );
        }
        for (k, v) in set {
            update = update.parameters(
                Parameter::builder()
                    .parameter_key(k)
                    .parameter_value(v)
                    .build(),
            );
        }
        update
            .send()
            .await
            .map_err(|e| AwsError::sdk("UpdateStack", e))?;
        let start = std::time::Instant::now();
        loop {
            let now = Stack::describe(sdk, &self.name).await?;
            match now.status.as_str() {
                "UPDATE_COMPLETE" => return Ok(true),
                s if s.ends_with("_COMPLETE") || s.ends_with("_FAILED") => {
                    return Err(AwsError::Shape(format!(
                        "stack {} did not take the parameters: {s} (aws cloudformation describe-stack-events --stack-name {} says why)",
                        self.name, self.name
                    )))
                }
                _ if start.elapsed() > deadline => {
                    return Err(AwsError::Shape(format!(
                        "stack {} is still {} after {deadline:?}",
                        self.name, now.status
                    )))
                }
                _ => tokio::time::sleep(std::time::Duration::from_secs(3)).await,
            }
        }
    }

    /// A stack whose last operation completed and left it usable.
    pub fn usable(&self) -> bool {
        matches!(
            self.status.as_str(),
            "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "UPDATE_ROLLBACK_COMPLETE" | "IMPORT_COMPLETE"
        )
    }

    /// The CLI's settings, `[aws]` key → value, from the outputs.
    ///
    /// # Errors
    /// The stack is not usable, or lacks an output (names every one missing).
    pub fn client_settings(&self) -> Result<Vec<(&'static str, String)>, String> {
        if !self.usable() {
            return Err(format!(
                "stack {} is {}: deploy it (scripts/deploy {}) and wait until it is complete",
                self.name, self.status, self.name
            ));
        }
        let missing: Vec<&str> = CLIENT_OUTPUTS
            .iter()
            .filter(|(o, _)| !self.outputs.contains_key(*o))
            .map(|(o, _)| *o)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "stack {} has no output {}: is it a Studio stack (infra/template.yaml)?",
                self.name,
                missing.join(", ")
            ));
        }
        Ok(CLIENT_OUTPUTS
            .iter()
            .map(|(o, k)| (*k, self.outputs[*o].clone()))
            .collect())
    }
}

/// One line of `studio doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: &'static str,
    /// `Ok(what was found)` or `Err(what is wrong, and what to do)`.
    pub result: Result<String, String>,
    /// Not checked at all (`result` says why); not a failure.
    pub skipped: bool,
    /// Worth knowing, not a failure of the deployment (`result` is `Err`
    /// with what it stops and what to do): `doctor` still exits 0.
    pub warning: bool,
}

impl Check {
    fn skipped(self) -> Check {
        Check {
            skipped: true,
            ..self
        }
    }
}

fn check(what: &'static str, result: Result<String, String>) -> Check {
    Check {
        what,
        result,
        skipped: false,
        warning: false,
    }
}

/// The account's EC2 vCPU quotas that decide whether a job's machine can
/// start (Service Quotas, service `ec2`): a new account's G and VT quotas
/// are 0, and a Spot quota of 0 fails every launch of a pool with only a
/// failed scaling activity to say so.
const QUOTAS: &[(&str, &str, bool)] = &[
    // (quota code, what it covers, needed by CPU jobs)
    ("L-34B43A08", "standard spot", true),
    ("L-1216C47A", "standard on-demand", true),
    ("L-3819A6DF", "G and VT spot", false),
    ("L-DB2E81BA", "G and VT on-demand", false),
];

/// The vCPU quotas of [`QUOTAS`]: a zero that CPU jobs need fails; a zero
/// only GPU jobs need is a warning (most accounts start there); a quota
/// that cannot be read is skipped, saying why.
pub async fn quotas(sdk: &aws_config::SdkConfig) -> Vec<Check> {
    let sq = aws_sdk_servicequotas::Client::new(sdk);
    let mut read = Vec::new();
    for (code, what, cpu) in QUOTAS {
        match sq
            .get_service_quota()
            .service_code("ec2")
            .quota_code(*code)
            .send()
            .await
        {
            Ok(o) => {
                let v = o.quota().and_then(|q| q.value()).unwrap_or(0.0);
                read.push((*code, *what, *cpu, v));
            }
            Err(e) => {
                return vec![check(
                    "vcpu quotas",
                    Err(format!(
                        "not readable ({}): check them in the Service Quotas console",
                        sdk_err(e)
                    )),
                )
                .skipped()]
            }
        }
    }
    let raise = |code: &str| {
        format!("aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} --desired-value 16")
    };
    let zero = |cpu: bool| -> Vec<String> {
        read.iter()
            .filter(|(_, _, c, v)| *c == cpu && *v < 1.0)
            .map(|(code, what, _, _)| format!("{what} is 0 vCPUs ({})", raise(code)))
            .collect()
    };
    let all: Vec<String> = read
        .iter()
        .map(|(_, what, _, v)| format!("{what} {v:.0}"))
        .collect();
    let cpu = zero(true);
    let gpu = zero(false);
    let mut out = vec![check(
        "vcpu quotas",
        if cpu.is_empty() {
            Ok(format!("vCPUs: {}", all.join(", ")))
        } else {
            Err(format!("{}: CPU jobs cannot start", cpu.join("; ")))
        },
    )];
    if !gpu.is_empty() {
        out.push(Check {
            warning: true,
            ..check(
                "gpu quotas",
                Err(format!(
                    "{}: GPU jobs cannot start until raised",
                    gpu.join("; ")
                )),
            )
        });
    }
    out
}

fn sdk_err(e: impl std::error::Error + Send + Sync + 'static) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()
}

/// Every check of a configured deployment. Stops after a failed check that
/// the next ones need (credentials, the stack).
///
/// `catalog_regions`: the regions the functions' planner has an EC2 catalogue for.
pub async fn doctor(
    sdk: &aws_config::SdkConfig,
    cfg: &ClientConfig,
    stack_name: &str,
    catalog_regions: &[String],
) -> Vec<Check> {
    let mut out = Vec::new();
    // Credentials: that the chain finds some, then that AWS takes them
    // (DescribeStacks below is the first signed call).
    let creds = match sdk.credentials_provider() {
        None => Err("no credentials provider configured".to_string()),
        Some(p) => p
            .provide_credentials()
            .await
            .map(|c| format!("found (access key {}…)", c.access_key_id().chars().take(4).collect::<String>()))
            .map_err(|e| format!("none found ({}): set AWS_PROFILE, run `aws sso login`, or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", sdk_err(e))),
    };
    let ok = creds.is_ok();
    out.push(check("credentials", creds));
    if !ok {
        return out;
    }
    let stack = match Stack::describe(sdk, stack_name).await {
        Ok(s) if s.usable() => {
            out.push(check("stack", Ok(format!("{} is {}", s.name, s.status))));
            s
        }
        Ok(s) => {
            out.push(check(
                "stack",
                Err(format!(
                    "{} is {}: deploy it again (scripts/deploy {})",
                    s.name, s.status, s.name
                )),
            ));
            return out;
        }
        Err(e) => {
            out.push(check(
                "stack",
                Err(format!(
                    "{stack_name} cannot be read ({e}): deploy it (scripts/deploy {stack_name}) or fix the region"
                )),
            ));
            return out;
        }
    };
    // The CLI's settings are the stack's (no hand-copied name gone stale).
    let configured = [
        ("region", cfg.region.as_str()),
        ("jobs_table", cfg.jobs_table.as_str()),
        ("pools_table", cfg.pools_table.as_str()),
        ("submit_queue", cfg.submit_queue.as_str()),
        ("artifact_bucket", cfg.bucket.as_str()),
    ];
    let stale: Vec<String> = match stack.client_settings() {
        Ok(want) => want
            .iter()
            .filter_map(|(k, v)| {
                let have = configured.iter().find(|(c, _)| c == k)?.1;
                (have != v).then(|| format!("{k} is '{have}', the stack says '{v}'"))
            })
            .collect(),
        Err(e) => vec![e],
    };
    out.push(check(
        "settings",
        if stale.is_empty() {
            Ok("match the stack's outputs".into())
        } else {
            Err(format!(
                "{}: run `studio init --stack {}`",
                stale.join("; "),
                stack.name
            ))
        },
    ));
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    for (what, table) in [
        ("jobs table", &cfg.jobs_table),
        ("pools table", &cfg.pools_table),
    ] {
        let r = match ddb.describe_table().table_name(table).send().await {
            Ok(t) => {
                let status = t
                    .table()
                    .and_then(|t| t.table_status())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                if status == "ACTIVE" {
                    Ok(format!("{table} is ACTIVE"))
                } else {
                    Err(format!("{table} is {status}, not ACTIVE"))
                }
            }
            Err(e) => Err(format!("{table}: {}", sdk_err(e))),
        };
        out.push(check(what, r));
    }
    let r = aws_sdk_sqs::Client::new(sdk)
        .get_queue_url()
        .queue_name(&cfg.submit_queue)
        .send()
        .await
        .map(|u| u.queue_url().unwrap_or_default().to_string())
        .map_err(|e| format!("{}: {}", cfg.submit_queue, sdk_err(e)));
    out.push(check("submit queue", r));
    let s3 = crate::s3::client(sdk);
    let r = s3
        .head_bucket()
        .bucket(&cfg.bucket)
        .send()
        .await
        .map(|_| format!("{} is reachable", cfg.bucket))
        .map_err(|e| format!("{}: {}", cfg.bucket, sdk_err(e)));
    out.push(check("artifact bucket", r));
    out.extend(images(sdk, cfg, &stack).await);
    let list = |k: &str| -> Vec<String> {
        // AWS gives a list parameter as "a,b"; moto as "['a', 'b']".
        stack
            .parameters
            .get(k)
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim_matches(|c: char| "[]' ".contains(c)).to_string())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    out.push(placement(sdk, &list("Subnets"), &list("AvailabilityZones")).await);
    out.extend(quotas(sdk).await);
    // The worker binaries the bootstrap downloads, by checksum.
    let mut binaries = Vec::new();
    for (arch, param) in [
        ("x86_64", "BinarySha256X86"),
        ("arm64", "BinarySha256Arm64"),
    ] {
        let sha = stack.parameters.get(param).cloned().unwrap_or_default();
        if sha.is_empty() {
            continue;
        }
        let key = format!("releases/studio-{sha}");
        binaries.push(
            s3.head_object()
                .bucket(&cfg.bucket)
                .key(&key)
                .send()
                .await
                .map(|_| format!("{arch} s3://{}/{key}", cfg.bucket))
                .map_err(|e| {
                    format!(
                        "{arch}: s3://{}/{key} is missing ({}): run scripts/deploy {} again",
                        cfg.bucket,
                        sdk_err(e),
                        stack.name
                    )
                }),
        );
    }
    let r = if binaries.is_empty() {
        Ok("no checksum in the stack: the worker image must carry /usr/local/bin/studio".into())
    } else if let Some(Err(e)) = binaries.iter().find(|b| b.is_err()) {
        Err(e.clone())
    } else {
        Ok(binaries
            .into_iter()
            .filter_map(Result::ok)
            .collect::<Vec<_>>()
            .join(", "))
    };
    out.push(check("worker binary", r));
    out.push(check(
        "catalogue",
        if catalog_regions.contains(&cfg.region) {
            Ok(format!("an EC2 catalogue for {}", cfg.region))
        } else {
            Err(format!(
                "the functions plan with the EC2 catalogue they carry, of {} only; a stack in {} would price and pick machines of another region: deploy in {}",
                catalog_regions.join(", "),
                cfg.region,
                catalog_regions.join(" or ")
            ))
        },
    ));
    out
}

/// The worker images (what a pool launches) exist and are available.
#[cfg(feature = "fleet")]
async fn images(sdk: &aws_config::SdkConfig, cfg: &ClientConfig, stack: &Stack) -> Vec<Check> {
    let mut out = Vec::new();
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    for (what, param) in [
        ("worker image", "WorkerAmi"),
        ("arm64 image", "WorkerAmiArm64"),
        ("GPU image", "WorkerGpuAmi"),
    ] {
        let ami = stack.parameters.get(param).cloned().unwrap_or_default();
        if ami.is_empty() {
            if param == "WorkerAmi" {
                out.push(check(what, Err("the stack has no WorkerAmi".into())));
            }
            continue;
        }
        let r = match ec2.describe_images().image_ids(&ami).send().await {
            Ok(o) => match o.images().first() {
                Some(i) => {
                    let state = i
                        .state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default();
                    let arch = i
                        .architecture()
                        .map(|a| a.as_str().to_string())
                        .unwrap_or_default();
                    if state == "available" {
                        Ok(format!("{ami} ({arch}) is available"))
                    } else {
                        Err(format!("{ami} is {state}: pools cannot launch"))
                    }
                }
                None => Err(format!("{ami} does not exist in {}", cfg.region)),
            },
            Err(e) => Err(format!(
                "{ami} does not exist in {} or cannot be read: {}",
                cfg.region,
                sdk_err(e)
            )),
        };
        out.push(check(what, r));
    }
    out
}

/// Where groups launch can take them: the subnets given exist; or, with
/// zones only, each has a default subnet (groups given zones launch in the
/// default VPC's default subnets: an account without a default VPC, a zone
/// added after the VPC was made, or a Local Zone has none, and
/// `CreateAutoScalingGroup` fails).
#[cfg(feature = "fleet")]
pub async fn placement(sdk: &aws_config::SdkConfig, subnets: &[String], zones: &[String]) -> Check {
    use aws_sdk_ec2::types::Filter;
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    if !subnets.is_empty() {
        let r = match ec2
            .describe_subnets()
            .set_subnet_ids(Some(subnets.to_vec()))
            .send()
            .await
        {
            Ok(o) => {
                let found: Vec<&str> = o.subnets().iter().filter_map(|s| s.subnet_id()).collect();
                let missing: Vec<&String> = subnets
                    .iter()
                    .filter(|s| !found.contains(&s.as_str()))
                    .collect();
                if missing.is_empty() {
                    Ok(format!("subnets {}", subnets.join(", ")))
                } else {
                    Err(format!("no such subnet: {missing:?}: deploy again with --subnets of this region's VPC"))
                }
            }
            Err(e) => Err(format!("subnets {}: {}", subnets.join(", "), sdk_err(e))),
        };
        return check("placement", r);
    }
    let defaults = ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .send()
        .await;
    let r = match defaults {
        Err(e) => Err(format!("default subnets: {}", sdk_err(e))),
        Ok(o) => {
            let covered: Vec<&str> = o
                .subnets()
                .iter()
                .filter_map(|s| s.availability_zone())
                .collect();
            let bare: Vec<&String> = zones
                .iter()
                .filter(|z| !covered.contains(&z.as_str()))
                .collect();
            if zones.is_empty() {
                Err("the stack names neither Subnets nor AvailabilityZones".to_string())
            } else if covered.is_empty() {
                Err("this region has no default VPC (or it has no default subnet): deploy again with --subnets of your VPC".to_string())
            } else if !bare.is_empty() {
                Err(format!(
                    "{} {} no default subnet, so groups cannot launch there: deploy again with --zones of {} (or --subnets), or create one with `aws ec2 create-default-subnet --availability-zone ZONE`",
                    bare.iter().map(|z| z.as_str()).collect::<Vec<_>>().join(", "),
                    if bare.len() == 1 { "has" } else { "have" },
                    {
                        let mut c = covered.clone();
                        c.sort();
                        c.dedup();
                        c.join(",")
                    }
                ))
            } else {
                Ok(format!(
                    "zones {} (the default VPC's default subnets)",
                    zones.join(", ")
                ))
            }
        }
    };
    check("placement", r)
}

/// Without the EC2 SDK placement cannot be looked at; say so.
#[cfg(not(feature = "fleet"))]
pub async fn placement(_: &aws_config::SdkConfig, _: &[String], _: &[String]) -> Check {
    check("placement", Err("not checked: this studio is built without the EC2 SDK (cargo install --path cli --features ec2)".into())).skipped()
}

/// Without the EC2 SDK the images cannot be looked at; say so.
#[cfg(not(feature = "fleet"))]
async fn images(_: &aws_config::SdkConfig, _: &ClientConfig, stack: &Stack) -> Vec<Check> {
    let ami = stack
        .parameters
        .get("WorkerAmi")
        .cloned()
        .unwrap_or_default();
    vec![check(
        "worker image",
        Err(format!(
            "{ami} not checked: this studio is built without the EC2 SDK (cargo install --path cli --features ec2)"
        )),
    )
    .skipped()]
}
