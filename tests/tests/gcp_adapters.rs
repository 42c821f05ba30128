//! The GCP adapters on their own: the work queue against Google's Pub/Sub
//! emulator, the artifact store against a GCS emulator, the fleet against
//! the Compute stand-in (`tests/standins/gce.py`: no Compute emulator
//! exists; the stand-in speaks the REST shapes, operations that finish only
//! when polled, and the MIG behaviours the adapter relies on).

use std::time::Duration;
use studio_core::clock::Timestamp;
use studio_core::contract::SubmitJob;
use studio_core::ids::{InstanceId, JobId};
use studio_core::plan::{CatalogPlanner, Planner};
use studio_core::pool::PoolSpec;
use studio_core::ports::{dead_letter_queue, ArtifactStore, Fleet, PortError, WorkQueue};
use studio_core::resources::{Cloud, ResourceRequest, WorkerPolicy};
use studio_gcp::compute::MigFleet;
use studio_gcp::gcs::GcsArtifacts;
use studio_gcp::pubsub::PubSubQueue;
use studio_tests::gcp::{self, StandIn};

fn unique(what: &str) -> String {
    format!("t-{what}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A new queue on the emulator (`None`, saying so, where there is none).
async fn fresh_queue(test: &str) -> Option<(PubSubQueue, String)> {
    if !gcp::have_pubsub(test) {
        return None;
    }
    let q = PubSubQueue::new(&gcp::config("studio", None))
        .await
        .unwrap();
    let name = unique("work");
    q.ensure_queue(&name).await.unwrap();
    Some((q, name))
}

/// A fleet on a fresh Compute stand-in (kept alive by the caller).
async fn fleet() -> (StandIn, MigFleet) {
    let standin = StandIn::start().await;
    let fleet = MigFleet::new(&gcp::config("studio-dev", Some(&standin)))
        .await
        .unwrap();
    (standin, fleet)
}

/// The group's first VM, once it has one.
async fn first_vm(
    fleet: &MigFleet,
    key: &studio_core::ids::PoolKey,
) -> studio_core::ports::Instance {
    studio_tests::eventually("a VM", Duration::from_secs(10), async || {
        fleet.instances(key).await.unwrap().into_iter().next()
    })
    .await
}

const LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn pubsub_queue_sends_receives_acks_and_releases() {
    let Some((q, name)) = fresh_queue("pubsub_queue_sends_receives_acks_and_releases").await else {
        return;
    };
    q.ensure_queue(&name).await.expect("ensure is idempotent");
    assert_eq!(q.depth(&name).await.unwrap().total(), 0);

    q.send(&name, &["one".to_string()]).await.unwrap();
    let got = q.receive(&name, 1, LEASE, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "one");
    assert!(got[0].receive_count >= 1);
    // Released: delivered again (after the subscription's back-off), same message id.
    q.release(&name, &got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = studio_tests::eventually(
        "the released item again",
        Duration::from_secs(60),
        async || {
            let m = q.receive(&name, 1, LEASE, WAIT).await.unwrap();
            m.into_iter().next()
        },
    )
    .await;
    assert_eq!(again.message_id, got[0].message_id);
    assert_eq!(again.body, "one");
    q.ack(&name, &again.receipt).await.unwrap();
    // Pub/Sub's acknowledge is idempotent: a second ack (a retry) is harmless.
    q.ack(&name, &again.receipt).await.unwrap();
    // Acked: gone for good.
    assert!(q.receive(&name, 1, LEASE, WAIT).await.unwrap().is_empty());
    q.delete_queue(&name).await.unwrap();
}

#[tokio::test]
async fn pubsub_dead_letters_with_the_reason_and_deletes_everything() {
    let Some((q, name)) =
        fresh_queue("pubsub_dead_letters_with_the_reason_and_deletes_everything").await
    else {
        return;
    };
    q.send(&name, &["poison".to_string()]).await.unwrap();
    let m = q.receive(&name, 1, LEASE, WAIT).await.unwrap().remove(0);
    q.dead_letter(&name, &m, "not a work item").await.unwrap();
    assert!(q.receive(&name, 1, LEASE, WAIT).await.unwrap().is_empty());
    let dlq = dead_letter_queue(&name);
    let parked = q.receive(&dlq, 10, LEASE, WAIT).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].body, "poison");
    q.ack(&dlq, &parked[0].receipt).await.unwrap();

    q.delete_queue(&name).await.unwrap();
    q.delete_queue(&name).await.expect("deleting twice is fine");
    assert!(matches!(q.depth(&name).await, Err(PortError::NotFound(_))));
    assert!(matches!(
        q.receive(&name, 1, LEASE, WAIT).await,
        Err(PortError::NotFound(_))
    ));
    assert!(matches!(
        q.send(&name, &["late".to_string()]).await,
        Err(PortError::NotFound(_))
    ));
}

#[tokio::test]
async fn pubsub_gives_each_item_to_one_receiver() {
    let Some((q, name)) = fresh_queue("pubsub_gives_each_item_to_one_receiver").await else {
        return;
    };
    let bodies: Vec<String> = (0..6).map(|i| format!("item-{i}")).collect();
    q.send(&name, &bodies).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < bodies.len() {
        let got = q.receive(&name, 2, LEASE, WAIT).await.unwrap();
        assert!(!got.is_empty(), "items missing: got {seen:?}");
        assert!(got.len() <= 2, "flow control: at most the 2 asked");
        for m in got {
            q.ack(&name, &m.receipt).await.unwrap();
            seen.push(m.body);
        }
    }
    seen.sort();
    assert_eq!(seen, bodies);
    q.delete_queue(&name).await.unwrap();
}

#[tokio::test]
async fn gcs_keeps_workspaces_checkpoints_files_and_an_ordered_log_from_two_writers() {
    let cfg = gcp::config("studio", None);
    let a = GcsArtifacts::new(&cfg).await.unwrap();
    let b = GcsArtifacts::new(&cfg).await.unwrap();

    let tarball = format!("workspace {}", ulid::Ulid::new()).into_bytes();
    let r = a.put_workspace(&tarball).await.unwrap();
    assert_eq!(a.put_workspace(&tarball).await.unwrap(), r, "idempotent");
    assert_eq!(b.get_workspace(&r).await.unwrap(), tarball);
    let mut missing = r.clone();
    missing.sha256 = "0".repeat(64);
    assert!(matches!(
        b.get_workspace(&missing).await,
        Err(PortError::NotFound(_))
    ));

    // Attempt 1 writes on one machine, attempt 2 on another: one log, in order.
    let job = JobId::new(unique("job")).unwrap();
    a.append_log(&job, b"one\n").await.unwrap();
    a.append_log(&job, b"two\n").await.unwrap();
    b.append_log(&job, b"three\n").await.unwrap();
    a.append_log(&job, b"four\n").await.unwrap();
    let reader = GcsArtifacts::new(&cfg).await.unwrap();
    assert_eq!(
        reader.read_log(&job, 0).await.unwrap(),
        b"one\ntwo\nthree\nfour\n"
    );
    assert_eq!(reader.read_log(&job, 6).await.unwrap(), b"o\nthree\nfour\n");
    assert!(reader.read_log(&job, 19).await.unwrap().is_empty());
    b.append_log(&job, b"five\n").await.unwrap();
    assert_eq!(reader.read_log(&job, 19).await.unwrap(), b"five\n");

    studio_tests::artifacts::check_contract(&a, &reader, &job).await;
}

/// A planned GCE pool spec.
fn gce_spec(cloud: Cloud, cpus: u32, ram: &str, gpus: u32, hdd: Option<&str>) -> PoolSpec {
    let mut job = SubmitJob::new(
        cloud,
        ResourceRequest::parse(cpus, gpus, Some(ram), hdd).unwrap(),
        "ada",
    );
    job.num_workers = Some(2);
    let plan = CatalogPlanner::shipped().plan(&job).unwrap();
    PoolSpec::for_job(&job, &plan)
}

/// The template the group `group` makes its VMs from.
fn template_of<'a>(state: &'a serde_json::Value, group: &str) -> &'a serde_json::Value {
    let used = state["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .and_then(|g| g["instanceTemplate"].as_str())
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or_else(|| panic!("no group {group} in {state}"));
    state["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == used)
        .unwrap_or_else(|| panic!("no template {used} in {state}"))
}

#[tokio::test]
async fn compute_spot_group_has_the_custom_shape_spot_scheduling_and_no_secrets() {
    let (standin, fleet) = fleet().await;
    let spec = gce_spec(Cloud::Gcspot, 4, "8g", 0, Some("50g"));
    assert_eq!(spec.machine_types, ["custom-4-8192"]);
    assert_eq!(spec.policy, WorkerPolicy::Fixed(2));
    let key = spec.key();
    assert!(fleet.group(&key).await.unwrap().is_none());
    fleet.ensure_group(&key, &spec).await.unwrap();
    fleet.ensure_group(&key, &spec).await.expect("idempotent");
    let g = fleet.group(&key).await.unwrap().expect("the group exists");
    assert_eq!(g.desired, 0);

    let state = standin.state().await;
    let name = fleet.name(&key);
    let t = &template_of(&state, &name)["properties"];
    assert_eq!(t["machineType"], "custom-4-8192");
    assert_eq!(t["scheduling"]["provisioningModel"], "SPOT");
    assert_eq!(t["scheduling"]["instanceTerminationAction"], "DELETE");
    assert_eq!(t["scheduling"]["automaticRestart"], false);
    assert_eq!(t["labels"]["studio-pool"], key.as_str());
    let disk = &t["disks"][0]["initializeParams"];
    assert_eq!(disk["diskSizeGb"], "50", "--hdd 50g over the image's 10");
    assert_eq!(disk["sourceImage"], gcp::IMAGE);
    assert_eq!(
        t["networkInterfaces"][0]["accessConfigs"][0]["type"], "ONE_TO_ONE_NAT",
        "workers reach AWS and GCS without Cloud NAT"
    );
    let script = t["metadata"]["items"][0]["value"].as_str().unwrap();
    assert!(
        script.contains(&format!("worker --pool {key} ")),
        "{script}"
    );
    assert!(script.contains("\nAWS_ROLE_ARN=arn:aws:iam::123456789012:role/studio-gce-worker\n"));
    assert!(script.contains("\nSTUDIO_BACKEND=gce\n"));
    for secret in [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "private_key",
        "BEGIN",
    ] {
        assert!(
            !script.contains(secret),
            "the startup script carries {secret}"
        );
    }
    assert_eq!(
        t["serviceAccounts"][0]["email"],
        format!("studio-worker@{}.iam.gserviceaccount.com", gcp::PROJECT)
    );
    assert!(t
        .get("guestAccelerators")
        .is_none_or(|g| g.as_array().unwrap().is_empty()));

    // Resize; the machines come; the group reports its size back.
    fleet.set_target(&key, 2, None).await.unwrap();
    assert_eq!(fleet.group(&key).await.unwrap().unwrap().desired, 2);
    let machines = studio_tests::eventually("2 machines", Duration::from_secs(10), async || {
        let m = fleet.instances(&key).await.unwrap();
        (m.len() == 2).then_some(m)
    })
    .await;

    // An idle worker leaves: its machine goes, and the target with it. The
    // worker's own call, under its account's name condition; it does not
    // wait for the operation (it may not read one), so the effect comes
    // when Compute finishes it.
    let worker = MigFleet::new(&gcp::worker_config("studio-dev", &standin).await)
        .await
        .unwrap();
    worker.terminate(&key, &machines[0].id, true).await.unwrap();
    let left = studio_tests::eventually("one machine left", Duration::from_secs(10), async || {
        let g = fleet.group(&key).await.unwrap().unwrap();
        let m = fleet.instances(&key).await.unwrap();
        (g.desired == 1 && m.len() == 1).then_some(m)
    })
    .await;
    assert_eq!(left[0].id, machines[1].id);

    fleet.delete_group(&key).await.unwrap();
    fleet
        .delete_group(&key)
        .await
        .expect("deleting twice is fine");
    assert!(fleet.group(&key).await.unwrap().is_none());
    let state = standin.state().await;
    assert!(
        state["templates"].as_array().unwrap().is_empty(),
        "template left: {state}"
    );
    assert!(state["instances"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn compute_gpu_and_standard_templates() {
    let (standin, fleet) = fleet().await;
    let gpu = gce_spec(Cloud::Gcloud, 8, "30g", 1, None);
    fleet.ensure_group(&gpu.key(), &gpu).await.unwrap();
    let state = standin.state().await;
    let t = &template_of(&state, &fleet.name(&gpu.key()))["properties"];
    assert_eq!(t["scheduling"]["provisioningModel"], "STANDARD");
    assert_eq!(t["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert_eq!(
        t["guestAccelerators"][0]["acceleratorType"],
        "nvidia-tesla-t4"
    );
    assert_eq!(t["guestAccelerators"][0]["acceleratorCount"], 1);
    assert_eq!(
        t["disks"][0]["initializeParams"]["diskSizeGb"], "10",
        "the image's minimum when --hdd is not given"
    );

    let cpu = gce_spec(Cloud::Gcloud, 2, "4g", 0, None);
    fleet.ensure_group(&cpu.key(), &cpu).await.unwrap();
    let state = standin.state().await;
    let t = &template_of(&state, &fleet.name(&cpu.key()))["properties"];
    assert_eq!(t["scheduling"]["onHostMaintenance"], "MIGRATE");
    assert_eq!(t["scheduling"]["automaticRestart"], true);
}

#[tokio::test]
async fn compute_liveness_labels_find_silent_machines() {
    let (standin, fleet) = fleet().await;
    let spec = gce_spec(Cloud::Gcspot, 2, "4g", 0, None);
    let key = spec.key();
    fleet.ensure_group(&key, &spec).await.unwrap();
    fleet.set_target(&key, 2, None).await.unwrap();
    let ids: Vec<InstanceId> =
        studio_tests::eventually("2 running", Duration::from_secs(10), async || {
            let m = fleet.instances(&key).await.unwrap();
            (m.len() == 2
                && m.iter()
                    .all(|i| i.state == studio_core::ports::InstanceState::Running))
            .then(|| m.into_iter().map(|i| i.id).collect())
        })
        .await;
    let now = Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let bound = Duration::from_secs(15 * 60);
    assert!(
        fleet.silent(&key, bound, now).await.unwrap().is_empty(),
        "just launched"
    );
    // Twenty minutes on, only the machine whose worker spoke is alive. The
    // worker labels its machine as its own account, which IAM lets act on
    // the deployment's groups and VMs only (and on no operation).
    let later = Timestamp(now.0 + 20 * 60 * 1000);
    let worker = MigFleet::new(&gcp::worker_config("studio-dev", &standin).await)
        .await
        .unwrap();
    worker
        .worker_seen(&key, &ids[0], Timestamp(later.0 - 60_000))
        .await
        .unwrap();
    studio_tests::eventually(
        "only the quiet one silent",
        Duration::from_secs(10),
        async || {
            (fleet.silent(&key, bound, later).await.unwrap() == vec![ids[1].clone()]).then_some(())
        },
    )
    .await;
    // Another deployment's machine is out of the worker's reach.
    let other = MigFleet::new(&gcp::config("other-dev", Some(&standin)))
        .await
        .unwrap();
    other.ensure_group(&key, &spec).await.unwrap();
    other.set_target(&key, 1, None).await.unwrap();
    let theirs = first_vm(&other, &key).await.id;
    let refused = worker
        .worker_seen(&key, &theirs, later)
        .await
        .expect_err("another deployment's VM");
    assert!(
        refused
            .to_string()
            .contains("Required 'compute.instances.get' permission"),
        "{refused}"
    );
    other.delete_group(&key).await.unwrap();
    // What the silent one's startup script said as it failed, read from
    // its serial port 1 as it is retired; the other said nothing.
    let vm = standin.vm(ids[1].as_str()).await.unwrap();

    let said = "cannot read gs://b/releases/studio-0ab1 with this VM's service account";
    standin
        .control(
            "serial",
            serde_json::json!({
                "project": vm["project"],
                "zone": vm["zone"],
                "instance": ids[1].as_str(),
                "text": format!("[   1.0] Booting\r\ngoogle_metadata_script_runner[901]: startup-script: studio-bootstrap: {said}\r\n"),
            }),
        )
        .await;
    assert_eq!(
        fleet.silent_why(&key, &ids[1]).await.unwrap().as_deref(),
        Some(said)
    );
    assert_eq!(fleet.silent_why(&key, &ids[0]).await.unwrap(), None);
    // A machine deleted without decrement is made again by the group under
    // its name: a new VM (another numeric id), not seen yet.
    let before = vm_uid(&standin, ids[1].as_str()).await.unwrap();
    fleet.terminate(&key, &ids[1], false).await.unwrap();
    let after = studio_tests::eventually("a replacement", Duration::from_secs(10), async || {
        let m = fleet.instances(&key).await.unwrap();
        let again = vm_uid(&standin, ids[1].as_str()).await;
        (m.len() == 2 && again.is_some_and(|u| u != before)).then_some(m)
    })
    .await;
    assert!(after.iter().any(|i| i.id == ids[0]));
    assert!(after.iter().any(|i| i.id == ids[1]), "the same name");
    assert!(matches!(
        fleet
            .worker_seen(&key, &InstanceId::new("gone-1").unwrap(), later)
            .await,
        Err(PortError::NotFound(_))
    ));
}

/// The startup script every GCE worker boots with passes shellcheck.
#[test]
fn the_gce_startup_script_passes_shellcheck() {
    let mut cfg = gcp::config_without_emulators("studio-dev");
    cfg.worker_binary = Some((
        "gs://studio-dev-releases/releases/studio-abc".into(),
        "ab".repeat(32),
    ));
    cfg.uv_binary = Some((
        "gs://studio-dev-releases/releases/uv-cd".into(),
        "cd".repeat(32),
    ));
    cfg.add_worker_env(
        "STUDIO_BACKEND=aws\nSTUDIO_JOBS_TABLE=studio-dev-jobs\nAWS_REGION=us-east-1",
    );
    let key = gce_spec(Cloud::Gcspot, 2, "4g", 0, None).key();
    let script = studio_gcp::startup::script(&cfg, &key);
    assert!(script.contains("\nSTUDIO_JOBS_TABLE=studio-dev-jobs\n"));
    assert!(!script.contains("STUDIO_BACKEND=aws"));
    assert!(
        script.contains(&format!(
            "install_release /usr/local/bin/uv 'gs://studio-dev-releases/releases/uv-cd' '{}'",
            "cd".repeat(32)
        )),
        "{script}"
    );
    // The metadata block as tested (tests/tests/hostile.rs), a unit run at
    // every boot before the worker, and the worker on the same uid range.
    let uids = studio_core::worker::users::MACHINE_JOB_UIDS;
    assert!(
        script.contains(studio_gcp::startup::METADATA_BLOCK.trim_end()),
        "{script}"
    );
    assert!(script.contains(&format!("--job-uids {uids}")), "{script}");
    assert!(script.contains(&format!(
        "ExecStart=/usr/local/lib/studio/metadata-block {uids}"
    )));
    assert!(script.contains("Requires=studio-metadata-block.service"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("startup.sh");
    std::fs::write(&file, &script).unwrap();
    let out = std::process::Command::new("shellcheck")
        .arg(&file)
        .output()
        .expect("shellcheck must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}\n{script}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The numeric id of the VM now named `name` on the stand-in, if any.
async fn vm_uid(standin: &StandIn, name: &str) -> Option<String> {
    standin.vm(name).await?["id"].as_str().map(str::to_string)
}

/// GIVEN a job whose attempt 1 ran on a spot VM of a managed group, handed
/// back on the preemption notice, WHEN the group recreates the VM under the
/// same name (as GCE does; the stand-in does too) and that VM claims
/// attempt 2, THEN the late audit-log push about the first VM (its numeric
/// id, its time) takes nothing away, with or without the id; a push about
/// the VM that runs the attempt now still requeues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_preemption_push_leaves_the_vm_recreated_under_its_name_alone() {
    use studio_core::clock::Clock;
    use studio_core::handlers::{handle_interruption, InterruptionOutcome};
    use studio_core::job::JobState;
    use studio_core::notice::GceMetadata;
    use studio_core::ports::JobStore;
    use studio_core::worker::{run_worker, WorkerExit};
    use studio_tests::{eventually, job_id, JobBuilder, LocalWorld};
    let (standin, fleet) = fleet().await;
    let spec = gce_spec(Cloud::Gcspot, 2, "4g", 0, None);
    let key = spec.key();
    fleet.ensure_group(&key, &spec).await.unwrap();
    fleet.set_target(&key, 1, None).await.unwrap();
    let vm = first_vm(&fleet, &key).await.id;
    let first_uid = vm_uid(&standin, vm.as_str()).await.unwrap();

    // The job waits for the test's gate (SIGTERM ends it at once).
    let w = LocalWorld::default().await;
    let project = tempfile::tempdir().unwrap();
    let gate = project.path().join("gate");
    let ws_dir = project.path().join("ws");
    std::fs::create_dir(&ws_dir).unwrap();
    std::fs::write(
        ws_dir.join("train.py"),
        format!("import os, time\nwhile not os.path.exists({gate:?}):\n    time.sleep(0.05)\n"),
    )
    .unwrap();
    let tar = studio_core::workspace::pack_dir(&ws_dir, 1 << 20).unwrap();
    let ws = w.be.artifacts.put_workspace(&tar).await.unwrap();
    let id = job_id("recreated");
    studio_core::handlers::submit(
        &w.be.ctx,
        "m",
        &JobBuilder::new("recreated").workspace(ws).json(),
    )
    .await
    .unwrap();
    let pool = w.be.store.get_job(&id).await.unwrap().unwrap().pool;
    let worker = |uid_note: &'static str| {
        let (ctx, artifacts) = (w.be.ctx.clone(), w.be.artifacts.clone());
        let mut cfg = studio_tests::quick_worker_config(
            &pool,
            &vm,
            w.dir.path().join(format!("jobs-{uid_note}")),
        );
        // The VM's own metadata server: its notice and its numeric id.
        cfg.notice = std::sync::Arc::new(GceMetadata {
            base: standin.metadata(vm.as_str()),
        });
        cfg.notice_every = Duration::from_millis(100);
        cfg.checkpoint_every = Duration::from_secs(600);
        cfg.env_root = w.dir.path().join("envs");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task =
            tokio::spawn(async move { run_worker(&ctx, artifacts.as_ref(), &cfg, rx).await });
        (stop, task)
    };
    let running = async |attempt: u32, uid: &str| {
        eventually(
            "the attempt running, its VM's id recorded",
            Duration::from_secs(30),
            async || {
                let j = w.be.store.get_job(&id).await.unwrap()?;
                (j.state == JobState::Running
                    && j.attempt == attempt
                    && j.attempts.last()?.machine_uid.as_deref() == Some(uid))
                .then_some(j)
            },
        )
        .await
    };

    // Attempt 1 on the first VM; Google preempts it: the worker hears the
    // notice and hands the job back; the group recreates the VM.
    let (_stop1, first) = worker("first");
    running(1, &first_uid).await;
    let preempted_at = w.clock.now();
    standin
        .control("preempt", serde_json::json!({"project": gcp::PROJECT, "zone": gcp::ZONE, "instance": vm.as_str()}))
        .await;
    let exit = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, WorkerExit::Preempted);
    standin
        .control("reclaim", serde_json::json!({"project": gcp::PROJECT, "zone": gcp::ZONE, "instance": vm.as_str()}))
        .await;
    let second_uid = vm_uid(&standin, vm.as_str())
        .await
        .expect("the VM made again");
    assert_ne!(second_uid, first_uid, "a new VM under the same name");

    // The recreated VM claims attempt 2, later.
    w.clock.advance(Duration::from_secs(40));
    let (stop2, second) = worker("second");
    running(2, &second_uid).await;

    // The audit-log push about the first VM arrives late (Pub/Sub
    // redelivers too): by its id, then by its time alone.
    let late =
        studio_tests::pubsub_push::envelope_of("late-1", vm.as_str(), &first_uid, preempted_at);
    let event = studio_aws::webhook::preemption_event(&late, Some("P")).unwrap();
    assert_eq!(event.machine_uid.as_deref(), Some(first_uid.as_str()));
    assert_eq!(event.at, Some(preempted_at));
    let outcome = handle_interruption(&w.be.ctx, &event).await.unwrap();
    assert_eq!(outcome, InterruptionOutcome::EarlierMachine);
    let mut no_id = event.clone();
    no_id.event_id = "late-2".into();
    no_id.machine_uid = None;
    assert_eq!(
        handle_interruption(&w.be.ctx, &no_id).await.unwrap(),
        InterruptionOutcome::EarlierMachine
    );
    let j = w.be.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.attempt),
        (JobState::Running, 2),
        "{:?}",
        j.events
    );

    // A push about the VM that runs attempt 2 takes it, as it must.
    let now =
        studio_tests::pubsub_push::envelope_of("now-1", vm.as_str(), &second_uid, w.clock.now());
    let outcome = handle_interruption(
        &w.be.ctx,
        &studio_aws::webhook::preemption_event(&now, Some("P")).unwrap(),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, InterruptionOutcome::Handled(_)),
        "{outcome:?}"
    );
    let j = w.be.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(j.attempt, 3, "{:?}", j.events);
    std::fs::write(&gate, "").unwrap();
    stop2.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), second).await;
}

/// A new worker binary (or image, or setting) reaches a live pool: the
/// template is named by its content, so the group is switched to the new
/// one (new VMs boot the new binary), the old one is deleted, and deleting
/// the group leaves no template.
#[tokio::test]
async fn compute_a_new_worker_binary_reaches_a_live_pool() {
    let (standin, fleet) = fleet().await;
    let spec = gce_spec(Cloud::Gcspot, 2, "4g", 0, None);
    let key = spec.key();
    fleet.ensure_group(&key, &spec).await.unwrap();
    let group = fleet.name(&key);
    let first = template_of(&standin.state().await, &group)["name"].clone();
    // The same settings again: the same template, nothing switched.
    fleet.ensure_group(&key, &spec).await.unwrap();
    let state = standin.state().await;
    assert_eq!(template_of(&state, &group)["name"], first);
    assert_eq!(state["templates"].as_array().unwrap().len(), 1);

    let mut cfg = gcp::config("studio-dev", Some(&standin));
    cfg.worker_binary = Some((
        "gs://studio-dev-releases/releases/studio-new".into(),
        "ab".repeat(32),
    ));
    let upgraded = MigFleet::new(&cfg).await.unwrap();
    upgraded.ensure_group(&key, &spec).await.unwrap();
    let state = standin.state().await;
    let now = template_of(&state, &group);
    assert_ne!(now["name"], first, "a new template");
    let script = now["properties"]["metadata"]["items"][0]["value"]
        .as_str()
        .unwrap();
    assert!(script.contains("studio-new"), "{script}");
    assert_eq!(
        state["templates"].as_array().unwrap().len(),
        1,
        "the old template is deleted: {state}"
    );
    // New VMs come from it.
    upgraded.set_target(&key, 1, None).await.unwrap();
    let vm = first_vm(&upgraded, &key).await;
    let state = standin.state().await;
    let inst = state["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == vm.id.as_str())
        .unwrap();
    assert_eq!(inst["template"], now["name"]);

    upgraded.set_target(&key, 0, None).await.unwrap();
    upgraded.delete_group(&key).await.unwrap();
    let state = standin.state().await;
    assert!(state["templates"].as_array().unwrap().is_empty(), "{state}");
    assert!(state["groups"].as_array().unwrap().is_empty(), "{state}");
}

/// A spot VM preempted in a zone that then has no capacity comes back, under
/// its name, in another zone of the pool's list: the group allows a repair
/// to change zone (by default GCE keeps a repaired VM in its zone, where it
/// would wait as long as the stockout lasts).
#[tokio::test]
async fn compute_a_preempted_vm_comes_back_in_another_zone_when_its_own_is_out() {
    let standin = StandIn::start().await;
    let mut cfg = gcp::config("studio-dev", Some(&standin));
    cfg.zones = vec!["us-central1-a".into(), "us-central1-b".into()];
    let fleet = MigFleet::new(&cfg).await.unwrap();
    let spec = gce_spec(Cloud::Gcspot, 2, "4g", 0, None);
    let key = spec.key();
    fleet.ensure_group(&key, &spec).await.unwrap();
    fleet.set_target(&key, 1, None).await.unwrap();
    let vm = first_vm(&fleet, &key).await;
    let zone_of = async |name: &str| -> Option<String> {
        standin.vm(name).await?["zone"].as_str().map(str::to_string)
    };
    let first = zone_of(vm.id.as_str()).await.unwrap();
    let other = if first == "us-central1-a" {
        "us-central1-b"
    } else {
        "us-central1-a"
    };
    standin
        .control(
            "stockout",
            serde_json::json!({"project": gcp::PROJECT, "zone": first, "reason": "ZONE_RESOURCE_POOL_EXHAUSTED"}),
        )
        .await;
    standin
        .control(
            "reclaim",
            serde_json::json!({"project": gcp::PROJECT, "zone": first, "instance": vm.id.as_str()}),
        )
        .await;
    let again = studio_tests::eventually(
        "the VM made again in the other zone",
        Duration::from_secs(10),
        async || zone_of(vm.id.as_str()).await,
    )
    .await;
    assert_eq!(again, other);
    assert_eq!(fleet.launch_trouble(&key).await.unwrap(), None);
}
