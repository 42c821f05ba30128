//! The fidelity proxy (`studio_tests::fidelity`) against `moto_server`: each
//! rule holds, the real SDK surfaces AWS's error code, and advancing the
//! test's clock past the window lifts it. Raw SDK clients, pointed at the
//! proxy, so the rules are shown independently of Studio's adapters.

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry,
};
use std::time::Duration;
use studio_core::clock::{ManualClock, Timestamp};
use studio_tests::fidelity::Fidelity;
use studio_tests::moto_endpoint;

struct World {
    clock: ManualClock,
    fid: Fidelity,
    sdk: aws_config::SdkConfig,
}

impl World {
    async fn new() -> World {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let fid = Fidelity::start(&moto_endpoint(), clock.clone()).await;
        let sdk = studio_aws::emulator_config("us-east-1", &fid.url);
        World { clock, fid, sdk }
    }
    fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }
    fn asg(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.sdk)
    }
    fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.sdk)
                .force_path_style(true)
                .build(),
        )
    }
    /// A launch template and an Auto Scaling group (min 0) through the proxy.
    async fn group(&self, max: i32, desired: i32, capacity_rebalance: bool) -> String {
        let name = unique("g");
        let ec2 = aws_sdk_ec2::Client::new(&self.sdk);
        let image = ec2
            .describe_images()
            .send()
            .await
            .expect("DescribeImages")
            .images()[0]
            .image_id()
            .expect("an image")
            .to_string();
        ec2.create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(
                aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                    .image_id(image)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                    .build(),
            )
            .send()
            .await
            .expect("CreateLaunchTemplate");
        self.create_group(&name, max, desired, capacity_rebalance)
            .await
            .expect("CreateAutoScalingGroup");
        name
    }
    async fn create_group(
        &self,
        name: &str,
        max: i32,
        desired: i32,
        capacity_rebalance: bool,
    ) -> Result<
        aws_sdk_autoscaling::operation::create_auto_scaling_group::CreateAutoScalingGroupOutput,
        aws_sdk_autoscaling::error::SdkError<
            aws_sdk_autoscaling::operation::create_auto_scaling_group::CreateAutoScalingGroupError,
        >,
    > {
        self.asg()
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name(name)
                    .version("$Latest")
                    .build(),
            )
            .min_size(0)
            .max_size(max)
            .desired_capacity(desired)
            .availability_zones("us-east-1a")
            .capacity_rebalance(capacity_rebalance)
            .send()
            .await
    }
    async fn describe(&self, name: &str) -> Option<aws_sdk_autoscaling::types::AutoScalingGroup> {
        self.asg()
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .expect("DescribeAutoScalingGroups")
            .auto_scaling_groups()
            .first()
            .cloned()
    }
    async fn queue(&self) -> (String, String) {
        let name = unique("q");
        let url = self
            .sqs()
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .expect("CreateQueue")
            .queue_url
            .expect("a url");
        (name, url)
    }
    async fn visible(&self, url: &str) -> u64 {
        self.sqs()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .expect("the attribute")
            .parse()
            .expect("a number")
    }
}

fn unique(p: &str) -> String {
    format!(
        "fid-{p}-{}",
        &ulid::Ulid::new().to_string().to_ascii_lowercase()[16..]
    )
}

fn batch(bodies: &[&str]) -> Vec<SendMessageBatchRequestEntry> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(*b)
                .build()
                .expect("an entry")
        })
        .collect()
}

#[tokio::test]
async fn sqs_depth_lags_a_minute_behind_sends() {
    let w = World::new().await;
    let (_, url) = w.queue().await;
    w.sqs()
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(batch(&["a", "b", "c"])))
        .send()
        .await
        .expect("SendMessageBatch");
    w.clock.advance(Duration::from_secs(30));
    w.sqs()
        .send_message()
        .queue_url(&url)
        .message_body("d")
        .send()
        .await
        .expect("SendMessage");

    assert_eq!(
        w.visible(&url).await,
        0,
        "sends under a minute old are not counted yet"
    );
    w.clock.advance(Duration::from_secs(31));
    assert_eq!(
        w.visible(&url).await,
        3,
        "the batch is a minute old, the single send is not"
    );
    w.clock.advance(Duration::from_secs(30));
    assert_eq!(w.visible(&url).await, 4);

    w.fid.set_depth_lag(Duration::ZERO);
    w.sqs()
        .send_message()
        .queue_url(&url)
        .message_body("e")
        .send()
        .await
        .expect("SendMessage");
    assert_eq!(w.visible(&url).await, 5, "no lag when set to zero");
    assert_eq!(w.fid.calls("GetQueueAttributes"), 4);
    assert_eq!(w.fid.calls("SendMessage"), 2);
}

#[tokio::test]
async fn sqs_queue_deleted_recently_refuses_the_name_and_loses_sends() {
    let w = World::new().await;
    let (name, url) = w.queue().await;
    w.sqs()
        .delete_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("DeleteQueue");

    let e = w
        .sqs()
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect_err("the name is refused for 60 s");
    assert_eq!(
        e.code(),
        Some("AWS.SimpleQueueService.QueueDeletedRecently")
    );
    assert!(e
        .as_service_error()
        .is_some_and(|s| s.is_queue_deleted_recently()));

    let sent = w
        .sqs()
        .send_message()
        .queue_url(&url)
        .message_body("lost")
        .send()
        .await
        .expect("a send to a queue being deleted answers success");
    assert_eq!(
        sent.md5_of_message_body(),
        Some("1c9a44eb2e8eaf3da1eb551da310cce7"),
        "MD5 of \"lost\""
    );
    let batch_out = w
        .sqs()
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(batch(&["lost too", "and this"])))
        .send()
        .await
        .expect("a batch to a queue being deleted answers success");
    assert_eq!(batch_out.successful().len(), 2);
    assert!(batch_out.failed().is_empty());

    w.clock.advance(Duration::from_secs(61));
    let url2 = w
        .sqs()
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("the name is free after 60 s")
        .queue_url
        .expect("a url");
    let got = w
        .sqs()
        .receive_message()
        .queue_url(&url2)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("ReceiveMessage");
    assert!(
        got.messages().is_empty(),
        "the sends in the window were lost"
    );
    assert_eq!(w.fid.calls("CreateQueue"), 3);
}

#[tokio::test]
async fn sqs_visibility_cannot_end_past_12_hours_from_the_receive() {
    let w = World::new().await;
    let (_, url) = w.queue().await;
    w.sqs()
        .send_message()
        .queue_url(&url)
        .message_body("job")
        .send()
        .await
        .expect("SendMessage");
    let msg = w
        .sqs()
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(30)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages()
        .first()
        .cloned()
        .expect("a message");
    let receipt = msg.receipt_handle().expect("a receipt");
    let change = |secs: i32| {
        w.sqs()
            .change_message_visibility()
            .queue_url(&url)
            .receipt_handle(receipt)
            .visibility_timeout(secs)
            .send()
    };

    change(43_000)
        .await
        .expect("under 12 h from the receive is allowed");
    w.clock.advance(Duration::from_secs(3_600));
    let e = change(43_200)
        .await
        .expect_err("13 h from the receive is refused");
    assert_eq!(e.code(), Some("InvalidParameterValue"));
    assert!(
        e.message()
            .is_some_and(|m| m.contains("beyond the limit [43200 seconds]")),
        "{:?}",
        e.message()
    );
    change(39_600)
        .await
        .expect("ending exactly 12 h after the receive");
    let out = w
        .sqs()
        .change_message_visibility_batch()
        .queue_url(&url)
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("over")
                .receipt_handle(receipt)
                .visibility_timeout(39_601)
                .build()
                .expect("an entry"),
        )
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("within")
                .receipt_handle(receipt)
                .visibility_timeout(39_000)
                .build()
                .expect("an entry"),
        )
        .send()
        .await
        .expect("ChangeMessageVisibilityBatch");
    assert_eq!(out.failed().len(), 1);
    assert_eq!(out.failed()[0].id(), "over");
    assert_eq!(out.failed()[0].code(), "InvalidParameterValue");
    assert!(out.failed()[0].sender_fault());
    assert_eq!(out.successful().len(), 1);
    assert_eq!(out.successful()[0].id(), "within");
    w.clock.advance(Duration::from_secs(39_600));
    let e = change(1).await.expect_err("no extension past 12 h at all");
    assert_eq!(e.code(), Some("InvalidParameterValue"));
}

#[tokio::test]
async fn asg_deleted_group_stays_pending_delete_for_minutes() {
    let w = World::new().await;
    let name = w.group(2, 1, false).await;
    w.asg()
        .delete_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .force_delete(true)
        .send()
        .await
        .expect("DeleteAutoScalingGroup");

    let e = w
        .create_group(&name, 2, 0, false)
        .await
        .expect_err("the name is still taken");
    assert_eq!(e.code(), Some("AlreadyExists"));
    assert!(e
        .as_service_error()
        .is_some_and(|s| s.is_already_exists_fault()));

    let e = w
        .asg()
        .set_desired_capacity()
        .auto_scaling_group_name(&name)
        .desired_capacity(1)
        .send()
        .await
        .expect_err("a group pending delete may not be modified");
    assert_eq!(e.code(), Some("ValidationError"));
    assert!(e.message().is_some_and(|m| m.contains("pending delete")));
    let e = w
        .asg()
        .update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .max_size(3)
        .send()
        .await
        .expect_err("nor updated");
    assert_eq!(e.code(), Some("ValidationError"));

    w.asg()
        .delete_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .force_delete(true)
        .send()
        .await
        .expect("deleting again while pending delete is accepted");
    let g = w.describe(&name).await.expect("still described");
    assert_eq!(g.status(), Some("Delete in progress"));
    assert!(g.instances().iter().all(|i| i
        .lifecycle_state()
        .is_some_and(|s| s.as_str() == "Terminating")));

    w.clock.advance(Duration::from_secs(5 * 60 + 1));
    assert!(w.describe(&name).await.is_none(), "gone after 5 min");
    w.create_group(&name, 2, 0, false)
        .await
        .expect("the name is free again");
    assert_eq!(
        w.describe(&name).await.expect("the new group").status(),
        None
    );
    assert_eq!(w.fid.calls("CreateAutoScalingGroup"), 3);
    assert_eq!(w.fid.calls("DeleteAutoScalingGroup"), 2);
    assert_eq!(w.fid.calls("CreateLaunchTemplate"), 1);
}

#[tokio::test]
async fn asg_set_desired_capacity_above_max_is_refused() {
    let w = World::new().await;
    let name = w.group(2, 0, false).await;

    // moto alone accepts it: this is the behaviour the proxy adds.
    let moto = aws_sdk_autoscaling::Client::new(&studio_aws::emulator_config(
        "us-east-1",
        &moto_endpoint(),
    ));
    moto.set_desired_capacity()
        .auto_scaling_group_name(&name)
        .desired_capacity(5)
        .send()
        .await
        .expect("moto accepts 5 > max 2");
    moto.set_desired_capacity()
        .auto_scaling_group_name(&name)
        .desired_capacity(0)
        .send()
        .await
        .expect("back to 0");

    let e = w
        .asg()
        .set_desired_capacity()
        .auto_scaling_group_name(&name)
        .desired_capacity(3)
        .send()
        .await
        .expect_err("above MaxSize");
    assert_eq!(e.code(), Some("ValidationError"));
    assert_eq!(
        e.message(),
        Some("New SetDesiredCapacity value 3 is above max value 2 for the AutoScalingGroup.")
    );
    w.asg()
        .set_desired_capacity()
        .auto_scaling_group_name(&name)
        .desired_capacity(2)
        .send()
        .await
        .expect("at MaxSize");
    assert_eq!(w.describe(&name).await.unwrap().desired_capacity(), Some(2));
    assert_eq!(w.fid.calls("SetDesiredCapacity"), 2);
}

#[tokio::test]
async fn s3_missing_key_is_access_denied_without_list_bucket() {
    let w = World::new().await;
    let bucket = unique("b");
    let s3 = w.s3();
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    s3.put_object()
        .bucket(&bucket)
        .key("there")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
        .send()
        .await
        .expect("PutObject");

    let e = s3
        .get_object()
        .bucket(&bucket)
        .key("missing")
        .send()
        .await
        .expect_err("missing");
    assert_eq!(e.code(), Some("AccessDenied"));
    assert!(!e.as_service_error().is_some_and(|s| s.is_no_such_key()));
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403));
    let e = s3
        .head_object()
        .bucket(&bucket)
        .key("missing")
        .send()
        .await
        .expect_err("missing");
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert!(!e.as_service_error().is_some_and(|s| s.is_not_found()));
    let got = s3
        .get_object()
        .bucket(&bucket)
        .key("there")
        .send()
        .await
        .expect("an existing key is served");
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        b"x"
    );
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key("there")
        .send()
        .await
        .expect("an existing key is described");
    assert_eq!(head.content_length(), Some(1));

    w.fid.set_list_bucket(true);
    let e = s3
        .get_object()
        .bucket(&bucket)
        .key("missing")
        .send()
        .await
        .expect_err("missing");
    assert!(e.as_service_error().is_some_and(|s| s.is_no_such_key()));
    let e = s3
        .head_object()
        .bucket(&bucket)
        .key("missing")
        .send()
        .await
        .expect_err("missing");
    assert!(e.as_service_error().is_some_and(|s| s.is_not_found()));
    assert_eq!(w.fid.calls("GetObject"), 3);
    assert_eq!(w.fid.calls("HeadObject"), 3);
}

#[tokio::test]
async fn asg_rebalancing_terminates_unprotected_instances_only() {
    let w = World::new().await;
    let name = w.group(3, 2, true).await;
    let ids = |g: &aws_sdk_autoscaling::types::AutoScalingGroup| -> Vec<String> {
        g.instances()
            .iter()
            .filter(|i| {
                i.lifecycle_state()
                    .is_some_and(|s| s.as_str() == "InService")
            })
            .map(|i| i.instance_id().unwrap_or_default().to_string())
            .collect()
    };
    let before = ids(&w.describe(&name).await.expect("the group"));
    assert_eq!(before.len(), 2);
    w.asg()
        .set_instance_protection()
        .auto_scaling_group_name(&name)
        .instance_ids(&before[0])
        .protected_from_scale_in(true)
        .send()
        .await
        .expect("SetInstanceProtection");

    let gone = w.fid.group_rebalances(&name).await;
    assert_eq!(
        gone,
        vec![before[1].clone()],
        "the protected instance stays"
    );
    let g = w.describe(&name).await.expect("the group");
    assert_eq!(g.desired_capacity(), Some(2), "replaced, not scaled in");
    let after = ids(&g);
    assert!(after.contains(&before[0]));
    assert!(!after.contains(&before[1]));
    assert_eq!(after.len(), 2, "a replacement was launched: {after:?}");

    // Capacity rebalancing is the group's setting, not the AZRebalance process.
    w.asg()
        .suspend_processes()
        .auto_scaling_group_name(&name)
        .scaling_processes("AZRebalance")
        .send()
        .await
        .expect("SuspendProcesses");
    assert_eq!(w.fid.group_rebalances(&name).await.len(), 1);

    // Without capacity rebalancing, suspending AZRebalance stops it all.
    w.asg()
        .update_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .capacity_rebalance(false)
        .send()
        .await
        .expect("UpdateAutoScalingGroup");
    assert!(w.fid.group_rebalances(&name).await.is_empty());
    w.asg()
        .resume_processes()
        .auto_scaling_group_name(&name)
        .scaling_processes("AZRebalance")
        .send()
        .await
        .expect("ResumeProcesses");
    assert_eq!(
        w.fid.group_rebalances(&name).await.len(),
        1,
        "AZ rebalancing"
    );

    // Every instance protected: nothing goes.
    let all = ids(&w.describe(&name).await.expect("the group"));
    w.asg()
        .set_instance_protection()
        .auto_scaling_group_name(&name)
        .set_instance_ids(Some(all))
        .protected_from_scale_in(true)
        .send()
        .await
        .expect("SetInstanceProtection");
    assert!(w.fid.group_rebalances(&name).await.is_empty());
    assert_eq!(
        w.fid.calls("TerminateInstanceInAutoScalingGroup"),
        0,
        "the proxy's own calls are not counted"
    );
}

#[tokio::test]
async fn fidelity_deployment_puts_studio_adapters_behind_the_proxy() {
    use studio_core::ports::WorkQueue;
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let (cfg, sdk, fid) = studio_tests::fidelity_deployment(clock.clone()).await;
    let q = studio_aws::sqs::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk));
    q.send(&cfg.submit_queue, &["one".into(), "two".into()])
        .await
        .expect("send");
    assert_eq!(q.depth(&cfg.submit_queue).await.expect("depth").visible, 0);
    clock.advance(Duration::from_secs(60));
    assert_eq!(q.depth(&cfg.submit_queue).await.expect("depth").visible, 2);
    assert_eq!(fid.calls("SendMessageBatch"), 1);
}
