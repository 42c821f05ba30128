//! The jobs listing of `studio ui` and `status --watch` (`JobStore::page_jobs`)
//! on both stores: SQLite, and DynamoDB on moto_server, where it must be a
//! Query of the `by-created` index and never a Scan (counted through the
//! fidelity proxy, which also leaves keys of BatchGetItem unprocessed, as
//! DynamoDB does under load).

use studio_tests::{check_listing, LocalWorld};

#[tokio::test]
async fn the_local_store_pages_newest_first_with_filters() {
    let w = LocalWorld::default().await;
    check_listing(w.be.store.as_ref()).await;
}

#[tokio::test]
async fn dynamodb_pages_newest_first_with_filters_through_the_index() {
    let (cfg, _) = studio_tests::moto_deployment().await;
    let proxy = studio_tests::fidelity::Fidelity::start(
        &studio_tests::moto_endpoint(),
        studio_core::clock::ManualClock::new(studio_core::clock::Timestamp(0)),
    )
    .await;
    let door = proxy.door("listing").await;
    // As DynamoDB under load: a BatchGetItem reads a few keys and hands the
    // rest back unprocessed; the listing must ask again for them.
    proxy.set_batch_get_limit(3);
    let sdk = studio_aws::emulator_config("us-east-1", &door);
    let store = studio_aws::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &cfg.jobs_table,
        &cfg.pools_table,
    );
    check_listing(&store).await;
    let calls = proxy.calls_through("listing");
    assert!(calls.get("Query").copied().unwrap_or(0) > 0, "{calls:?}");
    assert!(!calls.contains_key("Scan"), "no scan: {calls:?}");
    assert!(
        calls["BatchGetItem"] > calls["Query"],
        "unprocessed keys asked again: {calls:?}"
    );
}
