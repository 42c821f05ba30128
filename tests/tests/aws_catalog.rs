//! The EC2 catalogue refresh through the official SDK against `moto_server`
//! (which serves the real `DescribeInstanceTypes` data, and placeholder spot
//! prices).

use studio_aws::catalog::{fetch_catalog, parse_on_demand_csv};
use studio_core::catalog::{Arch, Catalog};

const PRICES: &str = include_str!("../../shared/core/catalog/aws-ondemand-prices.csv");

fn client() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&studio_aws::emulator_config(
        "us-east-1",
        &studio_tests::moto_endpoint(),
    ))
}

#[tokio::test]
async fn refresh_reads_every_type_paginated_with_specs_and_prices() {
    let prices = parse_on_demand_csv(PRICES, "us-east-1").unwrap();
    assert_eq!(prices.get("g4dn.2xlarge"), Some(&752_000));
    let cat = fetch_catalog(&client(), "us-east-1", &prices, true)
        .await
        .unwrap();
    assert!(
        cat.types.len() > 1000,
        "more than one page: {}",
        cat.types.len()
    );

    let g4 = cat.get("g4dn.2xlarge").unwrap();
    assert_eq!((g4.vcpus, g4.memory_mib), (8, 32768));
    let gpu = g4.gpus.as_ref().unwrap();
    assert_eq!(
        (
            gpu.count,
            gpu.vendor.as_str(),
            gpu.model.as_str(),
            gpu.memory_mib
        ),
        (1, "NVIDIA", "T4", 16384)
    );
    assert_eq!(g4.archs, vec![Arch::X86_64]);
    assert!(g4.on_demand && g4.spot && g4.current_generation && !g4.burstable);
    assert_eq!(g4.on_demand_micro_usd, Some(752_000));

    assert!(cat.get("t3.micro").unwrap().burstable);
    assert_eq!(cat.get("c6g.large").unwrap().archs, vec![Arch::Arm64]);
    assert!(cat.get("f1.2xlarge").is_none_or(|t| t.other_accelerators));
    assert!(cat.get("inf2.xlarge").is_none_or(|t| t.other_accelerators));
    let with_spot = cat
        .types
        .iter()
        .filter(|t| t.spot_micro_usd.is_some())
        .count();
    assert!(with_spot > 100, "spot prices were read: {with_spot}");
}

#[tokio::test]
async fn the_shipped_catalogue_is_exactly_what_refresh_produces() {
    let prices = parse_on_demand_csv(PRICES, "us-east-1").unwrap();
    let fresh = fetch_catalog(&client(), "us-east-1", &prices, false)
        .await
        .unwrap();
    let shipped = Catalog::shipped();
    assert_eq!(fresh.types.len(), shipped.types.len());
    assert!(
        fresh.types == shipped.types,
        "regenerate the shipped catalogue (shared/core/catalog/README.md)"
    );
}

#[test]
fn a_bad_price_line_is_named() {
    let e = parse_on_demand_csv(
        "instance_type,region,on_demand_usd_per_hour\nm5.large,us-east-1,cheap\n",
        "us-east-1",
    )
    .unwrap_err();
    assert_eq!(e, "price CSV line 2: 'cheap' is not a price");
}

/// The deployment's spot prices: the scale function's hourly read of
/// `DescribeSpotPriceHistory` kept in the bucket, checked against the
/// lowest price per type computed here from the raw history, and what the
/// submit function plans with.
#[tokio::test]
async fn the_deployments_spot_prices_are_the_markets_lowest_read_hourly_and_planned_with() {
    use std::collections::HashMap;
    use studio_aws::prices::{self, PricedPlanner};
    use studio_core::clock::{Clock, SystemClock, Timestamp};
    use studio_core::plan::Planner;
    use studio_core::resources::{Cloud, ResourceRequest};

    let (cfg, sdk) = studio_tests::moto_deployment().await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let s3 = studio_aws::s3::client(&sdk);
    let t0 = SystemClock.now();
    let minutes = |m: i64| Timestamp(t0.0 + m * 60_000);

    // No snapshot yet: a spot plan is ranked by on-demand price, and says so.
    // The shipped data is read at the first reload or plan, not before.
    let planner = PricedPlanner::default();
    assert!(!planner.is_loaded());
    planner.reload(&s3, &cfg.bucket, t0).await;
    assert!(planner.is_loaded());
    let mut job = studio_core::contract::SubmitJob::new(
        Cloud::Ec2spot,
        ResourceRequest::parse(2, 0, None, None).unwrap(),
        "t",
    );
    job.entrypoint = "t.py".into();
    assert!(!planner.plan(&job).unwrap().spot_price_known);

    let refresh =
        |at| studio_aws::catalog::refresh_spot_prices(&ec2, &s3, &cfg.bucket, "us-east-1", &[], at);
    assert!(
        refresh(t0).await.unwrap(),
        "no snapshot: the market is read"
    );
    let held = prices::load(&s3, &cfg.bucket, "us-east-1")
        .await
        .unwrap()
        .unwrap();
    let mut lowest: HashMap<String, (u64, String)> = HashMap::new();
    let mut pages = ec2
        .describe_spot_price_history()
        .product_descriptions("Linux/UNIX")
        .start_time(aws_sdk_ec2::primitives::DateTime::from(
            std::time::SystemTime::now(),
        ))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for p in page.unwrap().spot_price_history() {
            let micro = (p.spot_price().unwrap().parse::<f64>().unwrap() * 1e6).round() as u64;
            let zone = p.availability_zone().unwrap().to_string();
            let e = lowest
                .entry(p.instance_type().unwrap().as_str().to_string())
                .or_insert((micro, zone.clone()));
            if (micro, &zone) < (e.0, &e.1) {
                *e = (micro, zone);
            }
        }
    }
    assert!(lowest.len() > 100, "{}", lowest.len());
    assert_eq!(held.prices.len(), lowest.len());
    for (t, (micro, zone)) in &lowest {
        let p = &held.prices[t];
        assert_eq!((p.micro_usd, &p.zone), (*micro, zone), "{t}");
    }
    assert!(
        !refresh(minutes(59)).await.unwrap(),
        "within the hour: kept"
    );
    assert!(
        refresh(minutes(61)).await.unwrap(),
        "an hour on: read again"
    );

    // The submit function's planner: read again after ten minutes, then
    // spot jobs are ranked and priced at the spot price of the zone.
    planner.reload(&s3, &cfg.bucket, minutes(5)).await;
    assert!(!planner.plan(&job).unwrap().spot_price_known, "not yet due");
    planner.reload(&s3, &cfg.bucket, minutes(62)).await;
    let plan = planner.plan(&job).unwrap();
    assert!(plan.spot_price_known, "{plan:?}");
    let p = &lowest[&plan.machine];
    assert_eq!(plan.price_micro_usd_per_hour, p.0);
    assert_eq!(plan.candidates[0].zone.as_ref(), Some(&p.1));
    assert!(
        plan.price_source
            .contains("spot prices: DescribeSpotPriceHistory of "),
        "{}",
        plan.price_source
    );
    // A deployment that names its zones is priced in those only.
    let one = studio_aws::catalog::fetch_spot_prices(
        &ec2,
        "us-east-1",
        std::time::SystemTime::now(),
        &["us-east-1b".to_string()],
    )
    .await
    .unwrap();
    assert!(!one.prices.is_empty());
    assert!(
        one.prices.values().all(|p| p.zone == "us-east-1b"),
        "{one:?}"
    );

    // Ranked by spot price: no later candidate is cheaper.
    assert!(plan
        .candidates
        .windows(2)
        .all(|w| w[0].price_micro_usd_per_hour <= w[1].price_micro_usd_per_hour));
}
