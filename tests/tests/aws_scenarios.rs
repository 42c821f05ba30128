//! The AWS backend against `moto_server`: the real handler code, the real
//! SDK adapters, real event JSON, delivered the way AWS delivers it (SQS for
//! submissions, EventBridge `PutEvents` → rule → SQS for interruptions).
//! Scheduled functions are invoked directly (moto's schedules do not fire).
//! Known moto gaps are avoided, not mocked: auto scaling launches only the
//! launch template's type on-demand, so assertions are on the group's stored
//! configuration.

use aws_lambda_events::event::sqs::SqsEvent;
use std::sync::Arc;
use std::time::Duration;
use studio_aws::config::AwsConfig;
use studio_aws::lambda::{self, Fate};
use studio_core::clock::{ManualClock, Timestamp};
use studio_core::contract::WorkItem;
use studio_core::handlers::{claim_work, mutate_job, Claim, Ctx, Step};
use studio_core::ids::{InstanceId, PoolKey};
use studio_core::job::JobState;
use studio_core::pool::PoolState;
use studio_core::ports::PortError;
use studio_core::resources::Cloud;
use studio_tests::{job_id, JobBuilder};

struct World {
    ctx: Ctx,
    clock: ManualClock,
    sdk: aws_config::SdkConfig,
    cfg: AwsConfig,
}

async fn world() -> World {
    let (cfg, sdk) = studio_tests::moto_deployment().await;
    // Starts at the wall clock: moto stamps launch times with it, and the
    // sweep compares them with this clock.
    let clock = ManualClock::new(studio_core::clock::Clock::now(
        &studio_core::clock::SystemClock,
    ));
    let ctx = lambda::context(&cfg, &sdk, Arc::new(clock.clone()));
    World {
        ctx,
        clock,
        sdk,
        cfg,
    }
}

impl World {
    fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }
    fn asg(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.sdk)
    }
    async fn url(&self, queue: &str) -> String {
        studio_tests::queue_url(&self.sqs(), queue).await
    }

    async fn poll(&self, queue: &str) -> SqsEvent {
        studio_tests::poll_as_lambda(&self.sqs(), &self.url(queue).await).await
    }

    /// What `studio run` does: one `SubmitJob` on the submit queue.
    async fn send_submit(&self, body: &str) {
        self.sqs()
            .send_message()
            .queue_url(self.url(&self.cfg.submit_queue).await)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    async fn submit(&self, body: &str) -> Vec<Fate> {
        self.send_submit(body).await;
        let event = self.poll(&self.cfg.submit_queue).await;
        assert_eq!(event.records.len(), 1);
        let (resp, fates) = lambda::submit_batch(&self.ctx, event).await;
        assert!(resp.batch_item_failures.is_empty(), "{fates:?}");
        fates
    }

    async fn pool_of(&self, id: &str) -> PoolKey {
        self.ctx
            .store
            .get_job(&job_id(id))
            .await
            .unwrap()
            .unwrap()
            .pool
    }
}

fn spot_job(id: &str) -> String {
    let mut spec = JobBuilder::new(id).cpus(8).spec();
    spec.cloud = Cloud::Ec2spot;
    spec.resources.gpus = 1;
    spec.resources.ram_mib = Some(16384);
    spec.bid = Some("60%".parse().unwrap());
    spec.to_json()
}

#[tokio::test]
async fn submit_through_sqs_creates_the_job_the_spot_group_and_the_work_item() {
    let mut w = world().await;
    // GPU pools get the GPU-ready image.
    let ec2 = aws_sdk_ec2::Client::new(&w.sdk);
    let images = ec2.describe_images().send().await.unwrap();
    let gpu_image = images.images()[1].image_id().unwrap().to_string();
    assert_ne!(gpu_image, w.cfg.worker_ami);
    w.cfg.worker_gpu_ami = Some(gpu_image.clone());
    w.ctx = lambda::context(&w.cfg, &w.sdk, Arc::new(w.clock.clone()));
    assert_eq!(w.submit(&spot_job("j1")).await, vec![Fate::Done]);

    let job = w.ctx.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempt, job.plan.machine.as_str()),
        (JobState::Queued, 1, "g4dn.2xlarge")
    );
    let pool = w.ctx.store.get_pool(&job.pool).await.unwrap().unwrap();
    assert_eq!((pool.state, pool.target), (PoolState::Live, 1));

    let name = format!("{}-{}", w.cfg.prefix, job.pool);
    let groups = w
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .unwrap();
    let g = &groups.auto_scaling_groups()[0];
    assert_eq!(g.desired_capacity(), Some(1), "raised at once");
    // Busy machines are never taken by the group: no capacity rebalancing,
    // AZ rebalancing suspended (workers protect themselves while busy).
    assert_eq!(g.capacity_rebalance(), Some(false));
    assert!(
        g.suspended_processes()
            .iter()
            .any(|p| p.process_name() == Some("AZRebalance")),
        "{:?}",
        g.suspended_processes()
    );
    let mip = g
        .mixed_instances_policy()
        .expect("a mixed-instances policy");
    let types: Vec<&str> = mip
        .launch_template()
        .unwrap()
        .overrides()
        .iter()
        .map(|o| o.instance_type().unwrap())
        .collect();
    assert_eq!(
        types,
        job.plan
            .machine_types
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(types.len(), 10);
    let dist = mip.instances_distribution().unwrap();
    assert_eq!(
        dist.spot_allocation_strategy(),
        Some("price-capacity-optimized")
    );
    assert_eq!(
        dist.spot_max_price(),
        Some("0.451200"),
        "60% of g4dn.2xlarge's $0.752"
    );
    assert_eq!(dist.on_demand_percentage_above_base_capacity(), Some(0));

    let lt = ec2
        .describe_launch_templates()
        .launch_template_names(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(lt.launch_templates().len(), 1);
    let versions = ec2
        .describe_launch_template_versions()
        .launch_template_name(&name)
        .send()
        .await
        .unwrap();
    let data = versions.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(data.image_id(), Some(gpu_image.as_str()));
    let user_data = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            data.user_data().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        user_data.contains(&format!("studio worker --pool {}", job.pool)),
        "{user_data}"
    );
    assert!(user_data.contains(&format!("STUDIO_JOBS_TABLE={}", w.cfg.jobs_table)));
    // Each attempt runs as a uid of its own, cut off from the metadata
    // service by a unit run at every boot before the worker (the machine's
    // role credentials stay with the worker).
    let uids = studio_core::worker::users::MACHINE_JOB_UIDS;
    assert!(
        user_data.contains(&format!("--job-uids {uids}")),
        "{user_data}"
    );
    assert!(
        user_data.contains(studio_aws::fleet::METADATA_BLOCK.trim_end()),
        "the block script, as tested, is installed: {user_data}"
    );
    assert!(
        user_data.contains(&format!(
            "ExecStart=/usr/local/lib/studio/metadata-block {uids}"
        )),
        "{user_data}"
    );
    assert!(
        user_data.contains("Requires=studio-metadata-block.service"),
        "the worker needs the block: {user_data}"
    );
    // No credentials in user-data: the machine's role's are read at boot
    // from the metadata service (`creds["SecretAccessKey"]`, the one
    // mention), never written in it.
    assert!(
        !user_data
            .replace("creds[\"SecretAccessKey\"]", "")
            .to_ascii_lowercase()
            .contains("secret"),
        "no credentials in user-data"
    );
    // Every placeholder of the bootstrap is filled (the uv checksums too).
    let placeholders: Vec<&str> = user_data
        .match_indices('@')
        .filter_map(|(i, _)| {
            let rest = &user_data[i + 1..];
            let name = &rest[..rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len())];
            (!name.is_empty() && rest[name.len()..].starts_with('@')).then_some(name)
        })
        .collect();
    assert!(placeholders.is_empty(), "left unfilled: {placeholders:?}");

    let q = w.ctx.settings.work_queue(&job.pool);
    let item = w
        .ctx
        .queue
        .receive(&q, 10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(item.len(), 1);
    assert_eq!(
        WorkItem::from_json(&item[0].body).unwrap(),
        WorkItem::new(job_id("j1"), 1)
    );

    // The same message again (a redelivery) makes no second job.
    let again = lambda::submit_batch(&w.ctx, {
        w.send_submit(&spot_job("j1")).await;
        w.poll(&w.cfg.submit_queue).await
    })
    .await;
    assert_eq!(again.1, vec![Fate::Done]);
    assert_eq!(w.ctx.store.list_jobs(None, &[]).await.unwrap().len(), 1);
}

/// EventBridge `PutEvents` of an `aws.ec2` event fixture, for `instance`
/// (and, for a state change, in `state`).
async fn put_ec2_event(
    eb: &aws_sdk_eventbridge::Client,
    fixture: &str,
    instance: &InstanceId,
    state: Option<&str>,
) {
    let fixture: serde_json::Value = serde_json::from_str(fixture).unwrap();
    let mut detail = fixture["detail"].clone();
    detail["instance-id"] = instance.as_str().into();
    if let Some(s) = state {
        detail["state"] = s.into();
    }
    eb.put_events()
        .entries(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source("aws.ec2")
                .detail_type(fixture["detail-type"].as_str().unwrap())
                .detail(detail.to_string())
                .build(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_spot_warning_through_eventbridge_is_left_to_the_worker_and_the_shutdown_requeues_once() {
    let w = world().await;
    w.submit(&spot_job("j1")).await;
    let pool = w.pool_of("j1").await;
    // The machine the group started runs the job.
    let launched = w.ctx.fleet.instances(&pool).await.unwrap();
    assert_eq!(launched.len(), 1, "desired capacity 1 launched one machine");
    let instance = launched[0].id.clone();
    assert!(instance.as_str().starts_with("i-"), "{instance}");
    let q = w.ctx.settings.work_queue(&pool);
    let item = w
        .ctx
        .queue
        .receive(&q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    assert!(matches!(
        claim_work(&w.ctx, &instance, &item).await.unwrap(),
        Claim::Run(_)
    ));
    w.ctx.queue.ack(&q, &item.receipt).await.unwrap();

    // EventBridge rules → SQS target, as infra sets them up.
    studio_tests::route_ec2_events(&w.sdk, &w.cfg).await;
    let eb = aws_sdk_eventbridge::Client::new(&w.sdk);
    let iq = w.cfg.interruption_queue.clone().unwrap();
    put_ec2_event(
        &eb,
        include_str!("../fixtures/events/spot-interruption-warning.json"),
        &instance,
        None,
    )
    .await;

    let event = w.poll(&iq).await;
    assert_eq!(event.records.len(), 1, "the rule delivered the event");
    // The warning leaves the worker its two minutes: recorded, not acted on.
    for _ in 0..2 {
        let (resp, fates) = lambda::interruption_batch(&w.ctx, &iq, event.clone()).await;
        assert!(resp.batch_item_failures.is_empty());
        assert_eq!(fates, vec![Fate::Done]);
    }
    let warned = w.ctx.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((warned.state, warned.attempt), (JobState::Running, 1));
    assert!(warned.warned_at.is_some());

    // The machine goes: the job runs again, once.
    put_ec2_event(
        &eb,
        include_str!("../fixtures/events/instance-state-change.json"),
        &instance,
        Some("shutting-down"),
    )
    .await;
    let event = w.poll(&iq).await;
    assert_eq!(event.records.len(), 1, "the rule delivered the event");
    let (resp, fates) = lambda::interruption_batch(&w.ctx, &iq, event.clone()).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(fates, vec![Fate::Done]);
    let job = w.ctx.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    assert!(job
        .events
        .iter()
        .any(|e| e.to == JobState::Interrupted && e.reason.contains("shutting-down")));
    assert_eq!(w.ctx.queue.depth(&q).await.unwrap().visible, 1);

    // The same event delivered again changes nothing more.
    let (_, fates) = lambda::interruption_batch(&w.ctx, &iq, event).await;
    assert_eq!(fates, vec![Fate::Done]);
    let after = w.ctx.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!(after.version, job.version);
    assert_eq!(w.ctx.queue.depth(&q).await.unwrap().visible, 1);
    let next = w
        .ctx
        .queue
        .receive(&q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(WorkItem::from_json(&next[0].body).unwrap().attempt, 2);
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dlq_with_its_reason_and_spares_the_others() {
    let w = world().await;
    w.send_submit(r#"{"version":1,"cpu":8}"#).await;
    w.send_submit(&JobBuilder::new("good").json()).await;
    let event = w.poll(&w.cfg.submit_queue).await;
    assert_eq!(event.records.len(), 2);
    let (resp, fates) = lambda::submit_batch(&w.ctx, event).await;
    assert!(
        resp.batch_item_failures.is_empty(),
        "not retried: {fates:?}"
    );
    assert_eq!(fates.iter().filter(|f| **f == Fate::Done).count(), 1);
    assert!(fates
        .iter()
        .any(|f| matches!(f, Fate::DeadLettered(why) if why.contains("not a valid SubmitJob"))));
    assert!(w
        .ctx
        .store
        .get_job(&job_id("good"))
        .await
        .unwrap()
        .is_some());

    let dlq = w
        .sqs()
        .receive_message()
        .queue_url(w.url(&format!("{}-dlq", w.cfg.submit_queue)).await)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let m = &dlq.messages()[0];
    assert_eq!(m.body(), Some(r#"{"version":1,"cpu":8}"#));
    let reason = m.message_attributes().unwrap()["studio-reason"]
        .string_value()
        .unwrap();
    assert!(
        reason.contains("unknown field `cpu`") || reason.contains("missing field"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_failure_that_may_pass_later_is_reported_for_that_message_only() {
    let mut w = world().await;
    // A store whose table does not exist: every write fails, retryably.
    w.cfg.jobs_table = format!("{}-missing", w.cfg.prefix);
    let broken = lambda::context(&w.cfg, &w.sdk, Arc::new(w.clock.clone()));
    w.send_submit(&JobBuilder::new("j1").json()).await;
    let event = w.poll(&w.cfg.submit_queue).await;
    let id = event.records[0].message_id.clone().unwrap();
    let (resp, fates) = lambda::submit_batch(&broken, event).await;
    assert_eq!(resp.batch_item_failures.len(), 1);
    assert_eq!(resp.batch_item_failures[0].item_identifier, id);
    assert!(matches!(&fates[0], Fate::Retry(_)));
}

#[tokio::test]
async fn cleanup_after_the_grace_deletes_group_template_and_queues() {
    let w = world().await;
    w.submit(&spot_job("j1")).await;
    let pool = w.pool_of("j1").await;
    let q = w.ctx.settings.work_queue(&pool);
    let item = w
        .ctx
        .queue
        .receive(&q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    claim_work(&w.ctx, &InstanceId::new("i-1").unwrap(), &item)
        .await
        .unwrap();
    mutate_job(w.ctx.store.as_ref(), &job_id("j1"), |j| {
        j.complete(Some(0), None, Timestamp(1_800_000_000_500), "test")
            .unwrap();
        Step::Write(())
    })
    .await
    .unwrap();
    w.ctx.queue.ack(&q, &item.receipt).await.unwrap();

    assert_eq!(
        lambda::cleanup(&w.ctx).await.unwrap().waiting,
        vec![pool.clone()]
    );
    w.clock.advance(Duration::from_secs(59));
    assert!(
        lambda::cleanup(&w.ctx).await.unwrap().deleted.is_empty(),
        "in grace"
    );
    w.clock.advance(Duration::from_secs(2));
    assert_eq!(
        lambda::cleanup(&w.ctx).await.unwrap().deleted,
        vec![pool.clone()]
    );

    let name = format!("{}-{}", w.cfg.prefix, pool);
    let groups = w
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .unwrap();
    assert!(groups.auto_scaling_groups().is_empty(), "group deleted");
    let ec2 = aws_sdk_ec2::Client::new(&w.sdk);
    assert!(
        ec2.describe_launch_templates()
            .launch_template_names(&name)
            .send()
            .await
            .is_err(),
        "launch template deleted"
    );
    for queue in [q.clone(), format!("{q}-dlq")] {
        let r = w.sqs().get_queue_url().queue_name(&queue).send().await;
        assert!(r.is_err(), "{queue} deleted");
    }
    assert_eq!(
        w.ctx.store.get_pool(&pool).await.unwrap().unwrap().state,
        PoolState::Deleted
    );
    assert!(
        lambda::cleanup(&w.ctx).await.unwrap().deleted.is_empty(),
        "idempotent"
    );
}

#[tokio::test]
async fn dynamodb_maps_a_lost_race_to_conflict_and_finds_jobs_by_instance_and_pool() {
    let w = world().await;
    w.submit(&JobBuilder::new("j1").json()).await;
    let store = w.ctx.store.as_ref();
    let a = store.get_job(&job_id("j1")).await.unwrap().unwrap();
    let b = a.clone();
    store.update_job(&a).await.unwrap();
    assert!(
        matches!(store.update_job(&b).await, Err(PortError::Conflict)),
        "stale version loses"
    );
    let mut ghost = a.clone();
    ghost.id = job_id("ghost");
    assert!(matches!(
        store.update_job(&ghost).await,
        Err(PortError::NotFound(_))
    ));

    let q = w.ctx.settings.work_queue(&a.pool);
    let item = w
        .ctx
        .queue
        .receive(&q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    let inst = InstanceId::new("i-abc").unwrap();
    claim_work(&w.ctx, &inst, &item).await.unwrap();
    let on = store.jobs_on_instance(&inst).await.unwrap();
    assert_eq!(on.len(), 1);
    assert_eq!(on[0].id, job_id("j1"));
    assert_eq!(
        store
            .list_jobs(Some(&a.pool), &[JobState::Running])
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store
        .list_jobs(Some(&a.pool), &[JobState::Queued])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn sqs_batches_leases_and_depth_behave() {
    let w = world().await;
    let q = format!("{}-work-test", w.cfg.prefix);
    w.ctx.queue.ensure_queue(&q).await.unwrap();
    // Work queues and their dead-letter queues keep messages 14 days (SQS's
    // most; its default of 4 would drop the item of a job waiting longer).
    for name in [q.clone(), studio_aws::sqs::dlq_name(&q)] {
        let attrs = w
            .sqs()
            .get_queue_attributes()
            .queue_url(w.url(&name).await)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        assert_eq!(
            attrs[&aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod],
            "1209600",
            "{name}"
        );
    }
    let bodies: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    w.ctx.queue.send(&q, &bodies).await.unwrap();
    assert_eq!(w.ctx.queue.depth(&q).await.unwrap().visible, 25);
    let got = w
        .ctx
        .queue
        .receive(&q, 10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
    let d = w.ctx.queue.depth(&q).await.unwrap();
    assert_eq!((d.visible, d.in_flight), (15, 10));
    w.ctx
        .queue
        .release(&q, &got[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    w.ctx.queue.ack(&q, &got[1].receipt).await.unwrap();
    let d = w.ctx.queue.depth(&q).await.unwrap();
    assert_eq!((d.visible, d.in_flight), (16, 8));
    assert!(matches!(
        w.ctx.queue.send("no-such-queue", &bodies).await,
        Err(PortError::NotFound(_))
    ));
    w.ctx.queue.delete_queue(&q).await.unwrap();
    w.ctx.queue.delete_queue(&q).await.unwrap();
}

/// GIVEN a spot job that allows on-demand fallback and has no attempts left,
/// WHEN its machine gets a spot warning, THEN it moves to an on-demand pool
/// (a plain launch-template group) as the next attempt instead of failing.
#[tokio::test]
async fn out_of_spot_attempts_with_fallback_moves_the_job_to_on_demand() {
    let mut w = world().await;
    w.ctx.settings.max_attempts = 1;
    let mut spec = studio_core::contract::SubmitJob::from_json(&spot_job("j1")).unwrap();
    spec.fallback_on_demand = true;
    w.submit(&spec.to_json()).await;
    let spot_pool = w.pool_of("j1").await;
    let q = w.ctx.settings.work_queue(&spot_pool);
    let item = w
        .ctx
        .queue
        .receive(&q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    let inst = InstanceId::new("i-0fallback").unwrap();
    claim_work(&w.ctx, &inst, &item).await.unwrap();
    w.ctx.queue.ack(&q, &item.receipt).await.unwrap();

    let warning = studio_core::handlers::InstanceEvent {
        event_id: "ev-1".into(),
        instance: inst,
        kind: studio_core::handlers::InstanceEventKind::Gone {
            state: "shutting-down".into(),
        },
        machine_uid: None,
        at: None,
    };
    studio_core::handlers::handle_interruption(&w.ctx, &warning)
        .await
        .unwrap();

    let job = w.ctx.store.get_job(&job_id("j1")).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 2));
    assert_eq!(job.plan.market, studio_core::resources::Market::OnDemand);
    assert_eq!(job.plan.machine, "g4dn.2xlarge");
    assert_ne!(job.pool, spot_pool);
    assert!(job.pool.as_str().starts_with("ec2-8c-1g-"), "{}", job.pool);
    assert!(job
        .events
        .iter()
        .any(|e| e.reason.contains("moving to on-demand pool")));

    let name = format!("{}-{}", w.cfg.prefix, job.pool);
    let groups = w
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .unwrap();
    let g = &groups.auto_scaling_groups()[0];
    assert!(
        g.mixed_instances_policy().is_none(),
        "on-demand: one launch template"
    );
    assert_eq!(g.desired_capacity(), Some(1));
    let next = w
        .ctx
        .queue
        .receive(
            &w.ctx.settings.work_queue(&job.pool),
            1,
            Duration::from_secs(30),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(
        WorkItem::from_json(&next[0].body).unwrap(),
        WorkItem::new(job_id("j1"), 2)
    );
}

/// An idle worker on an EC2 machine, with an empty queue, terminates its
/// own instance through the group with decrement, so it is not replaced.
#[tokio::test]
async fn an_idle_worker_terminates_its_machine_and_lowers_the_group() {
    let w = world().await;
    w.submit(&spot_job("j1")).await;
    let pool = w.pool_of("j1").await;
    studio_core::handlers::cancel(
        w.ctx.store.as_ref(),
        w.ctx.clock.as_ref(),
        &job_id("j1"),
        "test",
    )
    .await
    .unwrap();
    let machine = w.ctx.fleet.instances(&pool).await.unwrap().remove(0).id;
    let cfg = studio_core::worker::WorkerConfig {
        pool: pool.clone(),
        instance: machine.clone(),
        lease: Duration::from_secs(30),
        beat_every: Duration::from_secs(1),
        poll_wait: Duration::ZERO,
        heartbeat: Duration::from_secs(1),
        seen_every: Duration::from_secs(60),
        idle_timeout: Duration::ZERO,
        term_grace: Duration::from_secs(1),
        work_root: std::env::temp_dir().join(format!("{}-work", w.cfg.prefix)),
        python: "python3".into(),
        notice: Arc::new(studio_core::notice::NoNotice),
        notice_every: Duration::from_secs(5),
        checkpoint_every: Duration::from_secs(30),
        log_every: Duration::from_millis(100),
        progress_every: Duration::from_millis(100),
        env_root: std::env::temp_dir().join(format!("{}-envs", w.cfg.prefix)),
        uv: None,
        uv_env: studio_tests::uv_env(),
        job_users: None,
        metadata: Vec::new(),
        inputs: None,
        local_limits: false,
    };
    let artifacts = studio_aws::s3::S3Artifacts::from_sdk(&w.sdk, &w.cfg.bucket);
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let exit = studio_core::worker::run_worker(&w.ctx, &artifacts, &cfg, rx)
        .await
        .unwrap();
    assert_eq!(exit, studio_core::worker::WorkerExit::Idle);

    let name = format!("{}-{}", w.cfg.prefix, pool);
    let groups = w
        .asg()
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .unwrap();
    let g = &groups.auto_scaling_groups()[0];
    assert_eq!(g.desired_capacity(), Some(0), "terminated with decrement");
    assert!(g
        .instances()
        .iter()
        .filter(|i| i.instance_id() == Some(machine.as_str()))
        .all(|i| i
            .lifecycle_state()
            .is_some_and(|s| s.as_str().starts_with("Terminat"))));
    // The cancelled job's work item was received and dropped, not left behind.
    assert_eq!(
        w.ctx
            .queue
            .depth(&w.ctx.settings.work_queue(&pool))
            .await
            .unwrap()
            .total(),
        0
    );
}

/// A dead-lettered body that is not a work item is parked for
/// `sweep::PARK`: SQS refuses a visibility that would end more than 12 h
/// after the receive that gave the handle (moto too, on its wall clock), so
/// the 12 h the sweep once asked for failed every time on a real queue.
#[tokio::test]
async fn a_parked_dead_letter_stays_within_the_visibility_limit_of_sqs() {
    let w = world().await;
    let q = format!("{}-park-test", w.cfg.prefix);
    w.ctx.queue.ensure_queue(&q).await.unwrap();
    w.ctx
        .queue
        .send(&q, &["not a work item".to_string()])
        .await
        .unwrap();
    let wait = Duration::from_secs(1);
    let got = w
        .ctx
        .queue
        .receive(&q, 1, Duration::from_secs(60), wait)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let twelve = w
        .ctx
        .queue
        .release(&q, &got[0].receipt, Duration::from_secs(12 * 3600))
        .await;
    assert!(
        twelve.is_err(),
        "12 h after a receive is past SQS's limit: {twelve:?}"
    );
    w.ctx
        .queue
        .release(&q, &got[0].receipt, studio_core::handlers::sweep::PARK)
        .await
        .expect("the sweep's park fits the limit");
}

/// Where groups launch is checked before any launch (`studio doctor`'s
/// placement line): zones with a default subnet pass; a zone without one
/// (here a Local Zone's name, which has none by default) is named, with
/// the fix; a subnet that does not exist is named.
#[tokio::test]
async fn placement_without_a_default_subnet_is_named_before_any_launch() {
    use studio_aws::stack::placement;
    let w = world().await;
    let ok = placement(&w.sdk, &[], &["us-east-1a".to_string()]).await;
    assert!(ok.result.is_ok(), "{:?}", ok.result);
    let zones = ["us-east-1a".to_string(), "us-east-1-bos-1a".to_string()];
    let bad = placement(&w.sdk, &[], &zones).await.result.unwrap_err();
    assert!(
        bad.starts_with("us-east-1-bos-1a has no default subnet"),
        "{bad}"
    );
    assert!(bad.contains("create-default-subnet"), "{bad}");
    let gone = placement(&w.sdk, &["subnet-0123456789abcdef0".to_string()], &[]).await;
    assert!(gone.result.is_err(), "{:?}", gone.result);
}

/// A GPU job on a deployment without a GPU image (one with the NVIDIA
/// driver) is refused at submit, saying how to add one: its pool would
/// boot the plain image with the GPUs billed and unusable.
#[tokio::test]
async fn a_gpu_job_without_a_gpu_image_is_refused_at_submit() {
    let w = world().await;
    let mut cfg = w.cfg.clone();
    cfg.worker_gpu_ami = None;
    let ctx = lambda::context(&cfg, &w.sdk, Arc::new(w.clock.clone()));
    let err = studio_core::handlers::submit(&ctx, "m-gpu", &spot_job("gpu-no-image"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, studio_core::handlers::HandlerError::GpuImageMissing),
        "{err}"
    );
    assert!(err.to_string().contains("--gpu-ami"), "{err}");
    assert!(ctx
        .store
        .get_job(&job_id("gpu-no-image"))
        .await
        .unwrap()
        .is_none());
    // The same job on the deployment that has one is taken.
    studio_core::handlers::submit(&w.ctx, "m-gpu2", &spot_job("gpu-with-image"))
        .await
        .unwrap();
}
