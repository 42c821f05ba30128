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
