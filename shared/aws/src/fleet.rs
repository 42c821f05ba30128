//! [`Fleet`] on EC2 Auto Scaling: per pool one launch template and one Auto
//! Scaling group, both named `<prefix>-<pool key>`.
//!
//! `ec2` pools are on-demand groups of the planned type. `ec2spot` pools use a
//! mixed-instances policy over the planned types (all spot,
//! `price-capacity-optimized`, `SpotMaxPrice` from the bid). Launch templates
//! require IMDSv2 and carry the rendered worker bootstrap (no credentials:
//! the instance profile grants access).
//!
//! **Busy machines are never taken by the group.** A group may terminate an
//! instance on its own: scale-in, AZ rebalancing, capacity rebalancing. So:
//! capacity rebalancing is off (the worker itself reacts to a rebalance
//! recommendation by taking no new work, and the group replaces a reclaimed
//! spot machine when it goes); the `AZRebalance` process is suspended at
//! creation; and a worker protects its instance from scale-in while it runs a
//! job ([`Fleet::protect`], `SetInstanceProtection`) and lifts it after.
//!
//! **Root volume**: the device name and minimum size come from the image
//! (`DescribeImages`: `RootDeviceName`, the root snapshot's size), since they
//! differ by image (`/dev/xvda` on Amazon Linux, `/dev/sda1` on Ubuntu and
//! most Deep Learning AMIs); an `--hdd` below the image's size is raised to it.
//! Without `--hdd` the root volume is at least [`DEFAULT_ROOT_GIB`] (60 GiB
//! with GPUs): an image's 8 GiB fills with one CUDA wheel and uv's cache.
//! Deleting a group force-deletes it and its launch template; nothing else
//! (alarms, security groups) is created, so nothing else can leak.

use crate::error::AwsError;
use crate::sdk::LazyClient;
use async_trait::async_trait;
use aws_sdk_autoscaling::types::{
    AutoScalingGroup, InstancesDistribution, LaunchTemplate, LaunchTemplateOverrides,
    LaunchTemplateSpecification, MixedInstancesPolicy, Tag as AsgTag,
};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataOptionsRequest, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType, Tag, VolumeType,
};
use base64::Engine;
use std::time::Duration;
use studio_core::catalog::Arch;
use studio_core::clock::Timestamp;
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::pool::{LaunchTrouble, PoolSpec};
use studio_core::ports::{Fleet, GroupStatus, Instance, InstanceState, PortError};
use studio_core::resources::{Market, WorkerPolicy};

const PORT: &str = "autoscaling";

/// The instance tag a worker refreshes while it lives (milliseconds since
/// the epoch).
pub const SEEN_TAG: &str = "studio:worker-seen";

/// The root volume without `--hdd`, GiB: room for a job's environment
/// (uv's cache and the environment itself; PyTorch with CUDA is several GiB).
pub const DEFAULT_ROOT_GIB: u64 = 30;
/// The same with GPUs (CUDA libraries, larger models).
pub const DEFAULT_ROOT_GIB_GPU: u64 = 60;

/// The bootstrap every worker runs, with `@NAME@` placeholders.
pub const BOOTSTRAP: &str = include_str!("../../../infra/worker-bootstrap.sh");

/// What keeps jobs from the metadata service, run at every boot (the
/// bootstrap installs it as a unit of its own).
pub use studio_core::worker::users::METADATA_BLOCK;

/// What the fleet needs to know about the account.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub prefix: String,
    pub region: String,
    /// The worker image.
    pub image_id: String,
    /// The image of arm64 pools.
    pub arm64_image_id: Option<String>,
    /// The image of GPU pools: drivers baked in, not installed at every boot.
    pub gpu_image_id: Option<String>,
    pub instance_profile: Option<String>,
    /// Subnets to launch in; when empty, `availability_zones` is used.
    pub subnets: Vec<String>,
    pub availability_zones: Vec<String>,
    /// Cap of an auto-sized group.
    pub max_size: u32,
    /// The worker's environment file (see `AwsConfig::worker_env`), rendered into the bootstrap.
    pub worker_env: String,
    /// SHA-256 of the `studio` binaries in `s3://<bucket>/releases/`, per
    /// machine architecture (the bootstrap picks by `uname -m`); `None`: the
    /// image carries `/usr/local/bin/studio`.
    pub studio_sha256_x86_64: Option<String>,
    pub studio_sha256_arm64: Option<String>,
    /// The same for uv (`releases/uv-<sha256>`), installed beside `studio`.
    pub uv_sha256_x86_64: Option<String>,
    pub uv_sha256_arm64: Option<String>,
    pub bucket: String,
    /// Where the bootstrap reads the bucket's objects
    /// ([`FleetConfig::s3_base_for`]; a test's S3 server in tests).
    pub s3_base: String,
}

impl FleetConfig {
    /// The bucket's address the bootstrap signs its GETs for: the
    /// virtual-hosted form S3 recommends, or the path form for a name with
    /// dots (its TLS certificate covers one label only).
    pub fn s3_base_for(bucket: &str, region: &str) -> String {
        if bucket.contains('.') {
            format!("https://s3.{region}.amazonaws.com/{bucket}")
        } else {
            format!("https://{bucket}.s3.{region}.amazonaws.com")
        }
    }
}

pub struct AsgFleet {
    ec2: LazyClient<aws_sdk_ec2::Client>,
    asg: LazyClient<aws_sdk_autoscaling::Client>,
    cfg: FleetConfig,
}

fn sdk<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> PortError {
    move |e| PortError::backend(PORT, AwsError::sdk(op, e))
}

impl AsgFleet {
    pub fn new(
        ec2: impl Into<LazyClient<aws_sdk_ec2::Client>>,
        asg: impl Into<LazyClient<aws_sdk_autoscaling::Client>>,
        cfg: FleetConfig,
    ) -> Self {
        AsgFleet {
            ec2: ec2.into(),
            asg: asg.into(),
            cfg,
        }
    }

    /// The group's (and its launch template's) name.
    pub fn group_name(&self, key: &PoolKey) -> String {
        format!("{}-{key}", self.cfg.prefix)
    }

    /// The user-data of a pool's workers.
    pub fn user_data(&self, key: &PoolKey) -> String {
        let sha = |v: &Option<String>| v.clone().unwrap_or_default();
        [
            ("@POOL@", key.as_str().to_string()),
            ("@WORKER_ENV@", self.cfg.worker_env.clone()),
            ("@BUCKET@", self.cfg.bucket.clone()),
            ("@S3_BASE@", self.cfg.s3_base.clone()),
            ("@REGION@", self.cfg.region.clone()),
            (
                "@STUDIO_SHA256_X86_64@",
                sha(&self.cfg.studio_sha256_x86_64),
            ),
            ("@STUDIO_SHA256_ARM64@", sha(&self.cfg.studio_sha256_arm64)),
            ("@UV_SHA256_X86_64@", sha(&self.cfg.uv_sha256_x86_64)),
            ("@UV_SHA256_ARM64@", sha(&self.cfg.uv_sha256_arm64)),
            ("@METADATA_BLOCK@", METADATA_BLOCK.trim_end().to_string()),
            (
                "@METADATA_BLOCK_UNIT@",
                studio_core::worker::users::metadata_block_unit(),
            ),
            (
                "@JOB_UIDS@",
                studio_core::worker::users::MACHINE_JOB_UIDS.to_string(),
            ),
        ]
        .iter()
        .fold(BOOTSTRAP.to_string(), |text, (placeholder, value)| {
            text.replace(placeholder, value)
        })
    }

    async fn ensure_template(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError> {
        let name = self.group_name(key);
        let first = spec.machine_types.first().ok_or_else(|| {
            PortError::backend(
                PORT,
                AwsError::Shape(format!("pool {key} has no machine type")),
            )
        })?;
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let image = match (spec.arch, &self.cfg.gpu_image_id, spec.resources.gpus) {
            // Submit refuses arm64 jobs without an arm64 image; this guards
            // a pool revived after the image was removed.
            (Arch::Arm64, _, _) => self.cfg.arm64_image_id.as_ref().ok_or_else(|| {
                PortError::backend(
                    PORT,
                    AwsError::Shape(format!(
                        "pool {key} is arm64 and this deployment has no arm64 worker image (STUDIO_WORKER_AMI_ARM64)"
                    )),
                )
            })?,
            (_, Some(gpu), n) if n > 0 => gpu,
            _ => &self.cfg.image_id,
        };
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(image)
            .instance_type(first.as_str().into())
            .user_data(base64::engine::general_purpose::STANDARD.encode(self.user_data(key)))
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .build(),
            )
            .tag_specifications(
                LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(tag("studio:pool", key.as_str()))
                    .tags(tag("studio:managed-by", "studio"))
                    .build(),
            );
        if let Some(p) = &self.cfg.instance_profile {
            data = data.iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(p)
                    .build(),
            );
        }
        {
            let asked = spec
                .resources
                .hdd_gib
                .unwrap_or(if spec.resources.gpus > 0 {
                    DEFAULT_ROOT_GIB_GPU
                } else {
                    DEFAULT_ROOT_GIB
                });
            let (device, image_gib) = self.root_device(image).await?;
            let gib = asked.max(image_gib.unwrap_or(0));
            if gib > asked && spec.resources.hdd_gib.is_some() {
                tracing::warn!(pool = %key, asked, image_gib = gib, "--hdd is below the image's root volume; raised to the image's size");
            }
            data = data.block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name(device)
                    .ebs(
                        LaunchTemplateEbsBlockDeviceRequest::builder()
                            .volume_size(gib.min(i32::MAX as u64) as i32)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        let r = self
            .ec2
            .create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(data.build())
            // The template itself carries the pool tag: the functions' IAM
            // policy allows creating, using and deleting only tagged ones.
            .tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(ResourceType::LaunchTemplate)
                    .tags(tag("studio:pool", key.as_str()))
                    .tags(tag("studio:managed-by", "studio"))
                    .build(),
            )
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidLaunchTemplateName.AlreadyExistsException") => {
                Ok(())
            }
            Err(e) => Err(sdk("CreateLaunchTemplate")(e)),
        }
    }
}

impl AsgFleet {
    /// The image's root device name and, when it has one, its root
    /// snapshot's size in GiB.
    async fn root_device(&self, image: &str) -> Result<(String, Option<u64>), PortError> {
        let out = self
            .ec2
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(sdk("DescribeImages"))?;
        let img = out.images().first().ok_or_else(|| {
            PortError::backend(
                PORT,
                AwsError::Shape(format!("image {image} not found (DescribeImages)")),
            )
        })?;
        let device = img.root_device_name().unwrap_or("/dev/xvda").to_string();
        let size = img
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some(device.as_str()))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_size())
            .map(|g| g.max(0) as u64);
        Ok((device, size))
    }
}

impl AsgFleet {
    /// The group, unless it does not exist or is being deleted (a
    /// force-deleted group stays "Delete in progress" for minutes).
    async fn describe(&self, key: &PoolKey) -> Result<Option<AutoScalingGroup>, PortError> {
        let out = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(self.group_name(key))
            .send()
            .await
            .map_err(sdk("DescribeAutoScalingGroups"))?;
        Ok(out
            .auto_scaling_groups
            .unwrap_or_default()
            .into_iter()
            .find(|g| g.status().is_none_or(|s| !s.contains("Delete"))))
    }
}

fn not_found(e: &impl ProvideErrorMetadata) -> bool {
    e.message().is_some_and(|m| m.contains("not found"))
}

/// An error on a named group: [`PortError::NotFound`] when it does not exist.
fn group_err<'a, E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    name: &'a str,
) -> impl FnOnce(E) -> PortError + 'a {
    move |e| {
        if not_found(&e) {
            PortError::NotFound(format!("group {name}"))
        } else {
            sdk(op)(e)
        }
    }
}

fn max_price(m: Option<u64>) -> Option<String> {
    m.map(|micro| format!("{:.6}", micro as f64 / 1e6))
}

#[async_trait]
impl Fleet for AsgFleet {
    async fn ensure_group(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError> {
        self.ensure_template(key, spec).await?;
        let name = self.group_name(key);
        let lt = LaunchTemplateSpecification::builder()
            .launch_template_name(&name)
            .version("$Latest")
            .build();
        let max = match spec.policy {
            WorkerPolicy::Fixed(n) => n.max(1),
            WorkerPolicy::Auto => self.cfg.max_size.max(1),
        };
        let mut req = self
            .asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .min_size(0)
            .max_size(max as i32)
            .desired_capacity(0)
            .tags(
                AsgTag::builder()
                    .key("studio:pool")
                    .value(key.as_str())
                    .propagate_at_launch(true)
                    .resource_id(&name)
                    .resource_type("auto-scaling-group")
                    .build(),
            );
        req = if self.cfg.subnets.is_empty() {
            req.set_availability_zones(Some(self.cfg.availability_zones.clone()))
        } else {
            req.vpc_zone_identifier(self.cfg.subnets.join(","))
        };
        req = match spec.market {
            Market::Spot => {
                let overrides = spec
                    .machine_types
                    .iter()
                    .map(|t| LaunchTemplateOverrides::builder().instance_type(t).build())
                    .collect();
                req.mixed_instances_policy(
                    MixedInstancesPolicy::builder()
                        .launch_template(
                            LaunchTemplate::builder()
                                .launch_template_specification(lt)
                                .set_overrides(Some(overrides))
                                .build(),
                        )
                        .instances_distribution(
                            InstancesDistribution::builder()
                                .on_demand_base_capacity(0)
                                .on_demand_percentage_above_base_capacity(0)
                                .spot_allocation_strategy("price-capacity-optimized")
                                .set_spot_max_price(max_price(spec.max_price_micro_usd_per_hour))
                                .build(),
                        )
                        .build(),
                )
                // Off: capacity rebalancing terminates busy instances.
                .capacity_rebalance(false)
            }
            _ => req.launch_template(lt),
        };
        match req.send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_already_exists_fault()) => {}
            Err(e) => return Err(sdk("CreateAutoScalingGroup")(e)),
        }
        // AZ rebalancing terminates instances to even out zones, busy ones
        // included; suspending it is idempotent.
        self.asg
            .suspend_processes()
            .auto_scaling_group_name(&name)
            .scaling_processes("AZRebalance")
            .send()
            .await
            .map_err(sdk("SuspendProcesses"))?;
        Ok(())
    }

    async fn group(&self, key: &PoolKey) -> Result<Option<GroupStatus>, PortError> {
        Ok(self.describe(key).await?.map(|g| GroupStatus {
            desired: g.desired_capacity().unwrap_or(0).max(0) as u32,
            max: Some(g.max_size().unwrap_or(0).max(0) as u32),
        }))
    }

    async fn set_target(
        &self,
        key: &PoolKey,
        target: u32,
        max: Option<u32>,
    ) -> Result<(), PortError> {
        let name = self.group_name(key);
        if let Some(max) = max {
            // Maximum and desired capacity in one call, so neither is ever
            // refused for being on the wrong side of the other.
            self.asg
                .update_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .max_size(max as i32)
                .desired_capacity(target as i32)
                .send()
                .await
                .map_err(group_err("UpdateAutoScalingGroup", &name))?;
        } else {
            self.asg
                .set_desired_capacity()
                .auto_scaling_group_name(&name)
                .desired_capacity(target as i32)
                .honor_cooldown(false)
                .send()
                .await
                .map_err(group_err("SetDesiredCapacity", &name))?;
        }
        Ok(())
    }

    /// A tag on the worker's own instance (`ec2:CreateTags`, allowed on
    /// instances tagged with a Studio pool): no table, and the sweep reads it
    /// with the launch time in one `DescribeInstances`.
    async fn worker_seen(
        &self,
        _key: &PoolKey,
        id: &InstanceId,
        at: Timestamp,
    ) -> Result<(), PortError> {
        self.ec2
            .create_tags()
            .resources(id.as_str())
            .tags(Tag::builder().key(SEEN_TAG).value(at.0.to_string()).build())
            .send()
            .await
            .map_err(sdk("CreateTags"))?;
        Ok(())
    }

    async fn silent(
        &self,
        key: &PoolKey,
        bound: Duration,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, PortError> {
        // The group's own members (tags could match another deployment's
        // group of the same pool key), then their launch times and tags.
        let members: Vec<String> = match self.describe(key).await? {
            Some(g) => g
                .instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect(),
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        if members.is_empty() {
            return Ok(out);
        }
        let mut pages = self
            .ec2
            .describe_instances()
            .set_instance_ids(Some(members))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(sdk("DescribeInstances"))?;
            let running = page
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state()
                        .and_then(|st| st.name())
                        .is_some_and(|n| n.as_str() == "running")
                });
            for i in running {
                let launched = i
                    .launch_time()
                    .and_then(|t| t.to_millis().ok())
                    .unwrap_or(0);
                let seen = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(SEEN_TAG))
                    .and_then(|t| t.value())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                if now.since(Timestamp(launched.max(seen))) > bound {
                    if let Some(id) = i.instance_id() {
                        out.push(InstanceId::new(id).map_err(|e| PortError::backend(PORT, e))?);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn protect(&self, key: &PoolKey, id: &InstanceId, busy: bool) -> Result<(), PortError> {
        self.asg
            .set_instance_protection()
            .auto_scaling_group_name(self.group_name(key))
            .instance_ids(id.as_str())
            .protected_from_scale_in(busy)
            .send()
            .await
            .map_err(sdk("SetInstanceProtection"))?;
        Ok(())
    }

    async fn instances(&self, key: &PoolKey) -> Result<Vec<Instance>, PortError> {
        let mut list = Vec::new();
        if let Some(g) = self.describe(key).await? {
            for i in g.instances() {
                let state = i
                    .lifecycle_state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                let state = if state.starts_with("Pending") {
                    InstanceState::Pending
                } else if state.starts_with("Terminat") {
                    continue;
                } else {
                    InstanceState::Running
                };
                list.push(Instance {
                    id: InstanceId::new(i.instance_id().unwrap_or_default())
                        .map_err(|e| PortError::backend(PORT, e))?,
                    pool: key.clone(),
                    state,
                    launched_at: Timestamp(0),
                });
            }
        }
        Ok(list)
    }

    async fn terminate(
        &self,
        _key: &PoolKey,
        id: &InstanceId,
        decrement: bool,
    ) -> Result<(), PortError> {
        self.asg
            .terminate_instance_in_auto_scaling_group()
            .instance_id(id.as_str())
            .should_decrement_desired_capacity(decrement)
            .send()
            .await
            .map_err(sdk("TerminateInstanceInAutoScalingGroup"))?;
        Ok(())
    }

    async fn delete_group(&self, key: &PoolKey) -> Result<(), PortError> {
        let name = self.group_name(key);
        match self
            .asg
            .delete_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .force_delete(true)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.message().is_some_and(|m| m.contains("not found")) => {}
            Err(e) => return Err(sdk("DeleteAutoScalingGroup")(e)),
        }
        match self
            .ec2
            .delete_launch_template()
            .launch_template_name(&name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code().is_some_and(|c| c.contains("NotFound")) => Ok(()),
            Err(e) => Err(sdk("DeleteLaunchTemplate")(e)),
        }
    }

    /// The console of a machine about to be retired for running no worker:
    /// the last failure line its bootstrap wrote. `Latest` (the live
    /// buffer, Nitro instances) first, else the output posted after its
    /// last state change; a console that cannot be read says nothing.
    async fn silent_why(
        &self,
        _key: &PoolKey,
        id: &InstanceId,
    ) -> Result<Option<String>, PortError> {
        let mut out = self
            .ec2
            .get_console_output()
            .instance_id(id.as_str())
            .latest(true)
            .send()
            .await;
        if out.is_err() {
            out = self
                .ec2
                .get_console_output()
                .instance_id(id.as_str())
                .send()
                .await;
        }
        let text = match out {
            Ok(o) => o
                .output()
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(instance = %id, error = %AwsError::sdk("GetConsoleOutput", e), "console unreadable");
                return Ok(None);
            }
        };
        Ok(LaunchTrouble::bootstrap_said(&text))
    }

    /// The group's newest scaling activity (the API returns the most recent
    /// first), when it failed or was cancelled: a Spot vCPU quota of 0,
    /// `InsufficientInstanceCapacity`, a `SpotMaxPrice` under the market or
    /// a type the region lacks show only there, never as an API error.
    async fn launch_trouble(&self, key: &PoolKey) -> Result<Option<String>, PortError> {
        use aws_sdk_autoscaling::types::ScalingActivityStatusCode as Code;
        let name = self.group_name(key);
        let out = self
            .asg
            .describe_scaling_activities()
            .auto_scaling_group_name(&name)
            .max_records(1)
            .send()
            .await
            .map_err(group_err("DescribeScalingActivities", &name))?;
        Ok(out.activities().first().and_then(|a| {
            matches!(a.status_code(), Some(Code::Failed | Code::Cancelled)).then(|| {
                let why = a
                    .status_message()
                    .filter(|m| !m.trim().is_empty())
                    .or(a.description())
                    .unwrap_or("a launch failed, and the cloud said no more");
                why.trim().to_string()
            })
        }))
    }
}
