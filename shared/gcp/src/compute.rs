//! Worker groups on Compute Engine: per pool generation an instance
//! template and a regional managed instance group (MIG), both named
//! `<prefix>-<group key>` and labelled `studio-pool`.
//!
//! - The group spreads over the configured zones of one region with target
//!   shape `ANY` (proactive redistribution off, as that shape requires):
//!   GCE creates each VM in a zone that has the capacity and quota, so a
//!   zone's stockout is ridden out in another. A VM it cannot create
//!   anywhere stays `CREATING` with the reason in its `lastAttempt.errors`
//!   (`ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`): that is the pool's
//!   [`Fleet::launch_trouble`].
//! - VMs are zonal: calls about one VM go to the zone its group put it in
//!   (read from the group's managed instances; a worker's own is its zone).
//! - `gcspot`: `provisioningModel: SPOT` with `instanceTerminationAction:
//!   DELETE`, so a machine Google takes back is deleted and the group, which
//!   keeps its target size, starts a replacement; `gcloud`: standard VMs.
//! - GPUs come with `onHostMaintenance: TERMINATE` (GCE cannot live-migrate
//!   them); the boot disk is `--hdd` or the image's own minimum, whichever
//!   is larger.
//! - Every call whose result the next call needs waits for its operation
//!   (template before group, group delete before template delete, resize
//!   and deleteInstances before the size is read back).
//! - A MIG removes machines only when resized down or told to delete one;
//!   Studio resizes a pool down only at cleanup, when no job is active, and
//!   an idle worker deletes its own machine with `deleteInstances`, which
//!   also lowers the target. So busy machines need no protection, and
//!   [`Fleet::protect`] has nothing to do on GCE.
//! - Liveness: the worker stamps its machine's label `studio-seen` (Unix
//!   seconds); [`Fleet::silent`] reads the labels of the group's running
//!   machines.

use crate::config::{code_of, gcp_err, GcpConfig};
use async_trait::async_trait;
use google_cloud_compute_v1::client::{
    Images, InstanceTemplates, Instances, RegionInstanceGroupManagers,
};
use google_cloud_compute_v1::model::{
    self, AcceleratorConfig, AttachedDisk, AttachedDiskInitializeParams, DistributionPolicy,
    DistributionPolicyZoneConfiguration, InstanceGroupManager, InstanceGroupManagerUpdatePolicy,
    InstanceProperties, InstanceTemplate, InstancesSetLabelsRequest, Metadata, NetworkInterface,
    RegionInstanceGroupManagersDeleteInstancesRequest, Scheduling, ServiceAccount,
};
use google_cloud_gax::error::rpc::Code;
use google_cloud_lro::Poller;
use sha2::Digest;
use std::time::Duration;
use studio_core::clock::Timestamp;
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::pool::PoolSpec;
use studio_core::ports::{Fleet, GroupStatus, Instance, InstanceState, PortError};
use studio_core::resources::Cloud;

const PORT: &str = "compute";
/// The label that names a machine's pool (group key).
pub const POOL_LABEL: &str = "studio-pool";
/// The label a live worker stamps with the Unix seconds it was last seen.
pub const SEEN_LABEL: &str = "studio-seen";
/// Scopes of the workers' service account: Storage read/write (the
/// bucket's IAM narrows it), Pub/Sub, Compute (its own machine's label and
/// deletion; narrowed by IAM conditions on the name prefix), logging.
pub const WORKER_SCOPES: [&str; 4] = [
    "https://www.googleapis.com/auth/devstorage.read_write",
    "https://www.googleapis.com/auth/pubsub",
    "https://www.googleapis.com/auth/compute",
    "https://www.googleapis.com/auth/logging.write",
];

pub struct MigFleet {
    cfg: GcpConfig,
    templates: InstanceTemplates,
    groups: RegionInstanceGroupManagers,
    images: Images,
    instances: Instances,
}

fn err(op: &'static str) -> impl Fn(google_cloud_gax::error::Error) -> PortError {
    move |e| gcp_err(PORT, op, e)
}

/// `projects/P/global/images/family/F` or `projects/P/global/images/NAME`.
fn parse_image(image: &str) -> Result<(String, Result<String, String>), PortError> {
    let bad = || {
        PortError::backend(
            PORT,
            format!("image '{image}': expected projects/P/global/images/NAME or projects/P/global/images/family/FAMILY"),
        )
    };
    let rest = image.strip_prefix("projects/").ok_or_else(bad)?;
    let (project, rest) = rest.split_once("/global/images/").ok_or_else(bad)?;
    Ok(match rest.strip_prefix("family/") {
        Some(f) => (project.to_string(), Err(f.to_string())),
        None => (project.to_string(), Ok(rest.to_string())),
    })
}

impl MigFleet {
    /// Clients for the configured project and zone.
    ///
    /// # Errors
    /// A client that cannot be built (no credentials found).
    pub async fn new(cfg: &GcpConfig) -> Result<MigFleet, PortError> {
        macro_rules! build {
            ($b:expr) => {
                crate::config::client!($b, cfg.compute_endpoint.as_ref(), cfg.anonymous)
                    .build()
                    .await
                    .map_err(|e| PortError::backend(PORT, e))?
            };
        }
        Ok(MigFleet {
            cfg: cfg.clone(),
            templates: build!(InstanceTemplates::builder()),
            groups: build!(RegionInstanceGroupManagers::builder()),
            images: build!(Images::builder()),
            instances: build!(Instances::builder()),
        })
    }

    /// The group's (and its template's) name.
    pub fn name(&self, key: &PoolKey) -> String {
        format!("{}-{key}", self.cfg.prefix)
    }

    fn region(&self) -> &str {
        self.cfg.region()
    }

    /// Deletes the template `name`; gone already is done. A template some
    /// group still uses is kept (GCE refuses; its group's own delete or
    /// switch deletes it later).
    async fn delete_template(&self, name: &str) -> Result<(), PortError> {
        match self
            .templates
            .delete()
            .set_project(&self.cfg.project)
            .set_instance_template(name)
            .poller()
            .until_done()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(Code::NotFound) => Ok(()),
            Err(e) if code_of(&e) == Some(Code::InvalidArgument) => {
                tracing::warn!(template = name, error = %e, "template still in use; kept");
                Ok(())
            }
            Err(e) => Err(gcp_err(PORT, "instanceTemplates.delete", e)),
        }
    }

    /// The zone of `key`'s VM `id`: the one configured zone, else where its
    /// group put it.
    async fn zone_of(&self, key: &PoolKey, id: &InstanceId) -> Result<String, PortError> {
        if let [only] = self.cfg.zones.as_slice() {
            return Ok(only.clone());
        }
        self.managed(key)
            .await?
            .into_iter()
            .find(|m| m.name == id.as_str())
            .and_then(|m| m.zone)
            .ok_or_else(|| PortError::NotFound(format!("instance {id} in {}", self.name(key))))
    }

    async fn image_disk_gb(&self, image: &str) -> Result<i64, PortError> {
        let (project, which) = parse_image(image)?;
        let img = match which {
            Ok(name) => self
                .images
                .get()
                .set_project(project)
                .set_image(name)
                .send()
                .await
                .map_err(err("images.get"))?,
            Err(family) => self
                .images
                .get_from_family()
                .set_project(project)
                .set_family(family)
                .send()
                .await
                .map_err(err("images.getFromFamily"))?,
        };
        Ok(img.disk_size_gb.unwrap_or(10))
    }

    /// The instance template for `spec`, named `name`.
    async fn template(
        &self,
        key: &PoolKey,
        spec: &PoolSpec,
    ) -> Result<InstanceTemplate, PortError> {
        let machine =
            spec.machine_types.first().cloned().ok_or_else(|| {
                PortError::backend(PORT, format!("pool {key} has no machine type"))
            })?;
        let gpus = spec.resources.gpus;
        let image = match (&self.cfg.gpu_image, gpus) {
            (Some(g), n) if n > 0 => g.clone(),
            _ => self.cfg.image.clone(),
        };
        let min_gb = self.image_disk_gb(&image).await?;
        let want_gb = spec.resources.hdd_gib.map_or(0, |g| g as i64);
        let spot = spec.cloud == Cloud::Gcspot;
        let mut scheduling = Scheduling::new()
            .set_automatic_restart(!spot && gpus == 0)
            .set_on_host_maintenance(if spot || gpus > 0 {
                model::scheduling::OnHostMaintenance::Terminate
            } else {
                model::scheduling::OnHostMaintenance::Migrate
            });
        if spot {
            scheduling = scheduling
                .set_provisioning_model(model::scheduling::ProvisioningModel::Spot)
                .set_instance_termination_action(
                    model::scheduling::InstanceTerminationAction::Delete,
                );
        } else {
            scheduling =
                scheduling.set_provisioning_model(model::scheduling::ProvisioningModel::Standard);
        }
        let mut props = InstanceProperties::new()
            .set_machine_type(machine)
            .set_disks([AttachedDisk::new()
                .set_boot(true)
                .set_auto_delete(true)
                .set_initialize_params(
                    AttachedDiskInitializeParams::new()
                        .set_source_image(image)
                        .set_disk_size_gb(want_gb.max(min_gb))
                        .set_disk_type("pd-balanced"),
                )])
            .set_scheduling(scheduling)
            .set_labels([
                (POOL_LABEL.to_string(), key.as_str().to_string()),
                ("studio-deployment".to_string(), self.cfg.prefix.clone()),
            ])
            .set_metadata(
                Metadata::new().set_items([model::metadata::Items::new()
                    .set_key("startup-script")
                    .set_value(crate::startup::script(&self.cfg, key))]),
            )
            .set_service_accounts([ServiceAccount::new()
                .set_email(self.cfg.service_account.clone())
                .set_scopes(WORKER_SCOPES)])
            .set_network_interfaces([{
                // An external address: the worker reaches STS, DynamoDB and
                // storage.googleapis.com directly (without it the subnet
                // needs Cloud NAT and Private Google Access).
                let nic = NetworkInterface::new()
                    .set_network(self.cfg.network.clone())
                    .set_access_configs([model::AccessConfig::new()
                        .set_name("External NAT")
                        .set_type(model::access_config::Type::OneToOneNat)]);
                match &self.cfg.subnetwork {
                    Some(s) => nic.set_subnetwork(s.clone()),
                    None => nic,
                }
            }]);
        if gpus > 0 {
            let gpu_type = spec
                .gpu_type
                .clone()
                .unwrap_or_else(|| studio_core::gce::DEFAULT_GPU.to_string());
            props = props.set_guest_accelerators([AcceleratorConfig::new()
                .set_accelerator_type(gpu_type)
                .set_accelerator_count(gpus as i32)]);
        }
        // Named by its content: a new worker binary, image or setting is a
        // new template, which the group then makes new VMs from.
        let body = serde_json::to_value(&props).map_err(|e| PortError::backend(PORT, e))?;
        let digest = sha2::Sha256::digest(canonical(&body).as_bytes());
        Ok(InstanceTemplate::new()
            .set_name(format!(
                "{}-t-{}",
                self.cfg.prefix,
                &hex::encode(digest)[..16]
            ))
            .set_description(format!("Studio pool {key}"))
            .set_properties(props))
    }

    async fn get_group(&self, key: &PoolKey) -> Result<Option<InstanceGroupManager>, PortError> {
        match self
            .groups
            .get()
            .set_project(&self.cfg.project)
            .set_region(self.region())
            .set_instance_group_manager(self.name(key))
            .send()
            .await
        {
            Ok(g) => Ok(Some(g)),
            Err(e) if code_of(&e) == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(gcp_err(PORT, "regionInstanceGroupManagers.get", e)),
        }
    }

    /// The group's managed instances, VMs and VMs it is still trying to
    /// create.
    async fn managed(&self, key: &PoolKey) -> Result<Vec<Managed>, PortError> {
        // Paged (at most 500 a page): every page, or VMs go unseen.
        let (mut out, mut token) = (Vec::new(), String::new());
        loop {
            let mut call = self
                .groups
                .list_managed_instances()
                .set_project(&self.cfg.project)
                .set_region(self.region())
                .set_instance_group_manager(self.name(key));
            if !token.is_empty() {
                call = call.set_page_token(std::mem::take(&mut token));
            }
            let resp = match call.send().await {
                Ok(r) => r,
                Err(e) if code_of(&e) == Some(Code::NotFound) => return Ok(Vec::new()),
                Err(e) => return Err(gcp_err(PORT, "listManagedInstances", e)),
            };
            out.extend(resp.managed_instances.into_iter().filter_map(Managed::of));
            match resp.next_page_token {
                Some(t) if !t.is_empty() => token = t,
                _ => return Ok(out),
            }
        }
    }
}

/// One managed instance of a group.
#[derive(Debug)]
struct Managed {
    name: String,
    /// Where it is, or is being made; unknown for a VM not made yet whose
    /// entry carries no URL (Google: the name always exists, the URL "can").
    zone: Option<String>,
    status: Option<model::managed_instance::InstanceStatus>,
    /// `CODE: message` of the group's last failed attempt to create it.
    errors: Vec<String>,
}

impl Managed {
    /// By its name; the zone from `.../zones/ZONE/instances/NAME`.
    fn of(m: model::ManagedInstance) -> Option<Managed> {
        let from_url = m
            .instance
            .as_deref()
            .and_then(|u| u.rsplit_once("/instances/"));
        let name = m
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| from_url.map(|(_, n)| n.to_string()))?;
        let zone = from_url
            .and_then(|(rest, _)| rest.rsplit_once("/zones/"))
            .map(|(_, z)| z.to_string());
        let errors = m
            .last_attempt
            .and_then(|a| a.errors)
            .map(|e| e.errors)
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.code.unwrap_or_default(),
                    e.message
                        .unwrap_or_default()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .collect();
        Some(Managed {
            name,
            zone,
            status: m.instance_status,
            errors,
        })
    }
}

fn timestamp_of(rfc3339: Option<&str>) -> Timestamp {
    // Compute writes `2026-11-29T10:12:00.123-08:00`.
    rfc3339
        .and_then(Timestamp::parse_rfc3339)
        .unwrap_or(Timestamp(0))
}

#[async_trait]
impl Fleet for MigFleet {
    async fn ensure_group(&self, key: &PoolKey, spec: &PoolSpec) -> Result<(), PortError> {
        let name = self.name(key);
        let template = self.template(key, spec).await?;
        let tname = template.name.clone().unwrap_or_default();
        match self
            .templates
            .insert()
            .set_project(&self.cfg.project)
            .set_body(template)
            .poller()
            .until_done()
            .await
        {
            Ok(_) => {}
            Err(e) if code_of(&e) == Some(Code::AlreadyExists) => {}
            Err(e) => return Err(gcp_err(PORT, "instanceTemplates.insert", e)),
        }
        let turl = format!(
            "projects/{}/global/instanceTemplates/{tname}",
            self.cfg.project
        );
        if let Some(g) = self.get_group(key).await? {
            // A live pool from an earlier template: new VMs from this one
            // (the running ones finish as they are), then the old one goes.
            let old = g
                .instance_template
                .as_deref()
                .map(last_segment)
                .unwrap_or_default();
            if old != tname {
                self.groups
                    .set_instance_template()
                    .set_project(&self.cfg.project)
                    .set_region(self.region())
                    .set_instance_group_manager(&name)
                    .set_body(
                        model::RegionInstanceGroupManagersSetTemplateRequest::new()
                            .set_instance_template(&turl),
                    )
                    .poller()
                    .until_done()
                    .await
                    .map_err(err("regionInstanceGroupManagers.setInstanceTemplate"))?;
                self.delete_template(old).await?;
            }
            return Ok(());
        }
        let group = InstanceGroupManager::new()
            .set_name(&name)
            .set_base_instance_name(
                name.chars()
                    .take(58)
                    .collect::<String>()
                    .trim_end_matches('-'),
            )
            .set_instance_template(turl)
            .set_target_size(0)
            .set_description(format!("Studio pool {key}"))
            // Any zone with capacity: the shape for batch work, which
            // requires proactive redistribution off
            // (https://cloud.google.com/compute/docs/instance-groups/regional-mig-distribution-shape).
            .set_distribution_policy(
                DistributionPolicy::new()
                    .set_zones(self.cfg.zones.iter().map(|z| {
                        DistributionPolicyZoneConfiguration::new().set_zone(format!("zones/{z}"))
                    }))
                    .set_target_shape(model::distribution_policy::TargetShape::Any),
            )
            // A template switch never replaces busy VMs: only new ones
            // get it (the default, said here so it stays so).
            .set_update_policy(
                InstanceGroupManagerUpdatePolicy::new()
                    .set_instance_redistribution_type(
                        model::instance_group_manager_update_policy::InstanceRedistributionType::None,
                    )
                    .set_type(model::instance_group_manager_update_policy::Type::Opportunistic),
            )
            // A VM preempted in a zone out of capacity may come back in
            // another (by default a repair keeps its zone).
            .set_instance_lifecycle_policy(
                model::InstanceGroupManagerInstanceLifecyclePolicy::new().set_on_repair(
                    model::InstanceGroupManagerInstanceLifecyclePolicyOnRepair::new()
                        .set_allow_changing_zone(
                            model::instance_group_manager_instance_lifecycle_policy_on_repair::AllowChangingZone::Yes,
                        ),
                ),
            );
        match self
            .groups
            .insert()
            .set_project(&self.cfg.project)
            .set_region(self.region())
            .set_body(group)
            .poller()
            .until_done()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == Some(Code::AlreadyExists) => Ok(()),
            Err(e) => Err(gcp_err(PORT, "regionInstanceGroupManagers.insert", e)),
        }
    }

    async fn group(&self, key: &PoolKey) -> Result<Option<GroupStatus>, PortError> {
        Ok(self.get_group(key).await?.map(|g| GroupStatus {
            desired: g.target_size.unwrap_or(0).max(0) as u32,
            // A MIG has no maximum of its own: the handlers' cap is the one.
            max: None,
        }))
    }

    async fn set_target(
        &self,
        key: &PoolKey,
        target: u32,
        _max: Option<u32>,
    ) -> Result<(), PortError> {
        self.groups
            .resize()
            .set_project(&self.cfg.project)
            .set_region(self.region())
            .set_instance_group_manager(self.name(key))
            .set_size(target as i32)
            .poller()
            .until_done()
            .await
            .map_err(|e| match code_of(&e) {
                Some(Code::NotFound) => PortError::NotFound(format!("group {}", self.name(key))),
                _ => gcp_err(PORT, "regionInstanceGroupManagers.resize", e),
            })?;
        Ok(())
    }

    async fn protect(
        &self,
        _key: &PoolKey,
        _id: &InstanceId,
        _busy: bool,
    ) -> Result<(), PortError> {
        // See the module doc: a MIG never removes a machine on its own.
        Ok(())
    }

    async fn worker_seen(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        at: Timestamp,
    ) -> Result<(), PortError> {
        let zone = self.zone_of(key, id).await?;
        // setLabels replaces the whole map and needs the current fingerprint.
        let inst = self
            .instances
            .get()
            .set_project(&self.cfg.project)
            .set_zone(&zone)
            .set_instance(id.as_str())
            .send()
            .await
            .map_err(|e| match code_of(&e) {
                Some(Code::NotFound) => PortError::NotFound(format!("instance {id}")),
                _ => gcp_err(PORT, "instances.get", e),
            })?;
        let mut labels = inst.labels;
        labels.insert(POOL_LABEL.into(), key.as_str().into());
        labels.insert(SEEN_LABEL.into(), (at.0 / 1000).to_string());
        let mut body = InstancesSetLabelsRequest::new().set_labels(labels);
        if let Some(f) = inst.label_fingerprint {
            body = body.set_label_fingerprint(f);
        }
        self.instances
            .set_labels()
            .set_project(&self.cfg.project)
            .set_zone(&zone)
            .set_instance(id.as_str())
            .set_body(body)
            // Not waited for: the worker's account may read no operation
            // (its IAM condition names its groups and VMs only); Compute
            // refuses a stale fingerprint at the call, and the next
            // heartbeat labels again.
            .send()
            .await
            .map_err(err("instances.setLabels"))?;
        Ok(())
    }

    async fn silent(
        &self,
        key: &PoolKey,
        bound: Duration,
        now: Timestamp,
    ) -> Result<Vec<InstanceId>, PortError> {
        let mut out = Vec::new();
        for m in self.managed(key).await? {
            let (Some(model::managed_instance::InstanceStatus::Running), Some(zone)) =
                (&m.status, &m.zone)
            else {
                continue;
            };
            let inst = match self
                .instances
                .get()
                .set_project(&self.cfg.project)
                .set_zone(zone)
                .set_instance(&m.name)
                .send()
                .await
            {
                Ok(i) => i,
                Err(e) if code_of(&e) == Some(Code::NotFound) => continue,
                Err(e) => return Err(gcp_err(PORT, "instances.get", e)),
            };
            let launched = timestamp_of(inst.creation_timestamp.as_deref());
            let seen = inst
                .labels
                .get(SEEN_LABEL)
                .and_then(|s| s.parse::<i64>().ok())
                .map_or(Timestamp(0), |s| Timestamp(s * 1000));
            let last = launched.0.max(seen.0);
            if now.0.saturating_sub(last) > bound.as_millis() as i64 {
                if let Ok(id) = InstanceId::new(m.name) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    async fn instances(&self, key: &PoolKey) -> Result<Vec<Instance>, PortError> {
        use model::managed_instance::InstanceStatus as S;
        Ok(self
            .managed(key)
            .await?
            .into_iter()
            .filter_map(|m| {
                let state = match m.status {
                    Some(S::Running) => InstanceState::Running,
                    Some(S::Terminated) | Some(S::Stopped) | Some(S::Stopping) => return None,
                    // A VM the group failed to create (its last attempt's
                    // errors) is not a machine: the pool's launch trouble.
                    None if !m.errors.is_empty() => return None,
                    _ => InstanceState::Pending,
                };
                Some(Instance {
                    id: InstanceId::new(m.name).ok()?,
                    pool: key.clone(),
                    state,
                    launched_at: Timestamp(0),
                })
            })
            .collect())
    }

    async fn terminate(
        &self,
        key: &PoolKey,
        id: &InstanceId,
        decrement: bool,
    ) -> Result<(), PortError> {
        let zone = self.zone_of(key, id).await?;
        if !decrement {
            // Deleting the machine itself: the group notices and makes it
            // again (under the same name).
            return self
                .instances
                .delete()
                .set_project(&self.cfg.project)
                .set_zone(&zone)
                .set_instance(id.as_str())
                .poller()
                .until_done()
                .await
                .map(|_| ())
                .map_err(|e| match code_of(&e) {
                    Some(Code::NotFound) => PortError::NotFound(format!("instance {id}")),
                    _ => gcp_err(PORT, "instances.delete", e),
                });
        }
        // deleteInstances lowers the target size by the machines it deletes.
        self.groups
            .delete_instances()
            .set_project(&self.cfg.project)
            .set_region(self.region())
            .set_instance_group_manager(self.name(key))
            .set_body(
                RegionInstanceGroupManagersDeleteInstancesRequest::new()
                    .set_instances([format!(
                        "projects/{}/zones/{zone}/instances/{id}",
                        self.cfg.project
                    )])
                    .set_skip_instances_on_validation_error(false),
            )
            // Not waited for (an idle worker removing its own machine: it
            // may read no operation, and the machine goes with it).
            .send()
            .await
            .map(|_| ())
            .map_err(|e| match code_of(&e) {
                Some(Code::NotFound) => {
                    PortError::NotFound(format!("instance {id} in {}", self.name(key)))
                }
                _ => gcp_err(PORT, "regionInstanceGroupManagers.deleteInstances", e),
            })
    }

    /// The reasons GCE gave for the VMs the group is still trying to
    /// create (a stockout or quota in every zone it may use).
    async fn launch_trouble(&self, key: &PoolKey) -> Result<Option<String>, PortError> {
        let mut reasons: Vec<String> = Vec::new();
        for m in self.managed(key).await? {
            if m.status.is_none() {
                for e in m.errors {
                    if !reasons.contains(&e) {
                        reasons.push(e);
                    }
                }
            }
        }
        Ok((!reasons.is_empty()).then(|| reasons.join("; ")))
    }

    /// Serial port 1, where the startup script writes ([`crate::startup::said`]).
    async fn silent_why(&self, k: &PoolKey, i: &InstanceId) -> Result<Option<String>, PortError> {
        let zone = self.zone_of(k, i).await?;
        Ok(crate::startup::said(&self.instances, &self.cfg.project, &zone, i.as_str()).await)
    }

    async fn delete_group(&self, key: &PoolKey) -> Result<(), PortError> {
        let name = self.name(key);
        let template = self
            .get_group(key)
            .await?
            .and_then(|g| g.instance_template)
            .map(|t| last_segment(&t).to_string());
        match self
            .groups
            .delete()
            .set_project(&self.cfg.project)
            .set_region(self.region())
            .set_instance_group_manager(&name)
            .poller()
            .until_done()
            .await
        {
            Ok(_) => {}
            Err(e) if code_of(&e) == Some(Code::NotFound) => {}
            Err(e) => return Err(gcp_err(PORT, "regionInstanceGroupManagers.delete", e)),
        }
        // Only once the group is gone: a template in use cannot be deleted.
        // (A group made before templates were named by content used its own
        // name for its template.)
        for t in template.iter().map(String::as_str).chain([name.as_str()]) {
            self.delete_template(t).await?;
        }
        Ok(())
    }
}

/// The last part of a resource URL or path.
fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// `v` as JSON with every object's keys sorted: the same content, the same
/// text (maps serialize in any order).
fn canonical(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::String(k.clone()),
                        canonical(&m[k])
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_by_name_or_family() {
        assert_eq!(
            parse_image("projects/debian-cloud/global/images/family/debian-12").unwrap(),
            ("debian-cloud".into(), Err("debian-12".into()))
        );
        assert_eq!(
            parse_image("projects/p/global/images/studio-worker-3").unwrap(),
            ("p".into(), Ok("studio-worker-3".into()))
        );
        assert!(parse_image("debian-12").is_err());
    }
}
