//! Builds a [`Catalog`] from EC2's own description of its instance types.
//!
//! `DescribeInstanceTypes` gives the specs; on-demand prices come from a CSV
//! (the Pricing API is not reachable everywhere); spot prices from
//! `DescribeSpotPriceHistory` (the lowest current price across the region's
//! zones, Linux/UNIX).

use crate::error::AwsError;
use aws_sdk_ec2::types::{ArchitectureType, InstanceTypeInfo, UsageClassType};
use std::collections::{BTreeMap, HashMap};
use studio_core::catalog::{
    Arch, Catalog, Gpus, InstanceType, SpotPrices, ZonePrice, CATALOG_FORMAT,
};

/// Reads `instance_type,region,on_demand_usd_per_hour` rows of `region`.
///
/// # Errors
/// A line that is not three fields or whose price is not a number.
pub fn parse_on_demand_csv(text: &str, region: &str) -> Result<HashMap<String, u64>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("instance_type,") {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 3 {
            return Err(format!("price CSV line {}: expected 3 fields", i + 1));
        }
        if f[1] != region {
            continue;
        }
        let usd: f64 = f[2]
            .trim()
            .parse()
            .map_err(|_| format!("price CSV line {}: '{}' is not a price", i + 1, f[2]))?;
        out.insert(f[0].to_string(), (usd * 1e6).round() as u64);
    }
    Ok(out)
}

fn convert(t: &InstanceTypeInfo, on_demand: &HashMap<String, u64>) -> Option<InstanceType> {
    let name = t.instance_type()?.as_str().to_string();
    let vcpus = t.v_cpu_info()?.default_v_cpus()? as u32;
    let memory_mib = t.memory_info()?.size_in_mib()? as u64;
    let gpus = t.gpu_info().and_then(|g| {
        let devices = g.gpus();
        let first = devices.first()?;
        Some(Gpus {
            count: devices.iter().filter_map(|d| d.count()).sum::<i32>() as u32,
            vendor: first.manufacturer().unwrap_or("unknown").to_string(),
            model: first.name().unwrap_or("unknown").to_string(),
            memory_mib: first
                .memory_info()
                .and_then(|m| m.size_in_mib())
                .unwrap_or(0) as u64,
        })
    });
    let archs = t
        .processor_info()
        .map(|p| {
            p.supported_architectures()
                .iter()
                .map(|a| match a {
                    ArchitectureType::X8664 => Arch::X86_64,
                    ArchitectureType::Arm64 => Arch::Arm64,
                    _ => Arch::Other,
                })
                .collect()
        })
        .unwrap_or_default();
    let classes = t.supported_usage_classes();
    Some(InstanceType {
        on_demand_micro_usd: on_demand.get(&name).copied(),
        name,
        vcpus,
        memory_mib,
        gpus,
        archs,
        burstable: t.burstable_performance_supported().unwrap_or(false),
        current_generation: t.current_generation().unwrap_or(false),
        on_demand: classes.contains(&UsageClassType::OnDemand),
        spot: classes.contains(&UsageClassType::Spot),
        other_accelerators: t.fpga_info().is_some()
            || t.inference_accelerator_info().is_some()
            || t.neuron_info().is_some()
            || t.media_accelerator_info().is_some(),
        spot_micro_usd: None,
        spot_zone: None,
    })
}

/// Reads every instance type of the region (paginated), joins the prices
/// and returns the catalogue sorted by type name.
///
/// # Errors
/// [`AwsError`] when a call fails.
pub async fn fetch_catalog(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    on_demand: &HashMap<String, u64>,
    spot_prices: bool,
) -> Result<Catalog, AwsError> {
    let mut types = Vec::new();
    let mut pages = ec2
        .describe_instance_types()
        .max_results(100)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::sdk("DescribeInstanceTypes", e))?;
        types.extend(
            page.instance_types()
                .iter()
                .filter_map(|t| convert(t, on_demand)),
        );
    }
    if types.is_empty() {
        return Err(AwsError::Shape(format!(
            "DescribeInstanceTypes returned no types in {region}"
        )));
    }
    let mut spot_source = "none";
    if spot_prices {
        let prices = fetch_spot_prices(ec2, region, std::time::SystemTime::now(), &[]).await?;
        for t in &mut types {
            let p = prices.prices.get(&t.name);
            t.spot_micro_usd = p.map(|p| p.micro_usd);
            t.spot_zone = p.map(|p| p.zone.clone());
        }
        spot_source = "DescribeSpotPriceHistory";
    }
    types.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Catalog {
        format: CATALOG_FORMAT,
        region: region.to_string(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        source: format!(
            "specs: DescribeInstanceTypes; on-demand prices: {} types from a price table; spot prices: {spot_source}",
            on_demand.len()
        ),
        types,
    })
}

/// The catalogue as JSON, one instance type per line (readable diffs).
pub fn to_json(cat: &Catalog) -> String {
    let mut head = serde_json::to_value(cat).expect("catalogues serialize");
    head["types"] = serde_json::Value::Array(vec![]);
    let head = serde_json::to_string(&head).expect("catalogues serialize");
    let body: Vec<String> = cat
        .types
        .iter()
        .map(|t| serde_json::to_string(t).expect("types serialize"))
        .collect();
    format!(
        "{}\n{}\n]}}\n",
        head.trim_end_matches("]}"),
        body.join(",\n")
    )
}

/// The region's current spot prices (Linux/UNIX): per type the lowest
/// across its zones (`zones`, where the deployment names them: a price in
/// a zone its groups cannot use is no offer), and that zone. `StartTime`
/// and `EndTime` both now: the API then answers each pool's last price
/// change before that time, its effective price.
///
/// # Errors
/// [`AwsError`] when a call fails.
pub async fn fetch_spot_prices(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    now: std::time::SystemTime,
    zones: &[String],
) -> Result<SpotPrices, AwsError> {
    let mut prices: BTreeMap<String, ZonePrice> = BTreeMap::new();
    let at = aws_sdk_ec2::primitives::DateTime::from(now);
    let mut req = ec2
        .describe_spot_price_history()
        .product_descriptions("Linux/UNIX")
        .start_time(at)
        .end_time(at);
    if !zones.is_empty() {
        req = req.filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("availability-zone")
                .set_values(Some(zones.to_vec()))
                .build(),
        );
    }
    let mut pages = req.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::sdk("DescribeSpotPriceHistory", e))?;
        for p in page.spot_price_history() {
            let (Some(t), Some(price), Some(zone)) =
                (p.instance_type(), p.spot_price(), p.availability_zone())
            else {
                continue;
            };
            let Ok(usd) = price.parse::<f64>() else {
                continue;
            };
            let here = ZonePrice {
                zone: zone.to_string(),
                micro_usd: (usd * 1e6).round() as u64,
            };
            let slot = prices.entry(t.as_str().to_string()).or_insert(here.clone());
            if (here.micro_usd, &here.zone) < (slot.micro_usd, &slot.zone) {
                *slot = here;
            }
        }
    }
    Ok(SpotPrices {
        region: region.to_string(),
        fetched_at: humantime::format_rfc3339_seconds(now).to_string(),
        source: "DescribeSpotPriceHistory".into(),
        prices,
    })
}

/// Reads the market again when the deployment's snapshot is missing or
/// older than [`crate::prices::REFRESH_EVERY_MS`] at `now`; returns
/// whether it did.
///
/// # Errors
/// [`AwsError`] when a call fails (the snapshot is left as it was).
pub async fn refresh_spot_prices(
    ec2: &aws_sdk_ec2::Client,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    region: &str,
    zones: &[String],
    now: studio_core::clock::Timestamp,
) -> Result<bool, AwsError> {
    if let Some(held) = crate::prices::load(s3, bucket, region).await? {
        if !crate::prices::stale(&held.fetched_at, now) {
            return Ok(false);
        }
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.0.max(0) as u64);
    let prices = fetch_spot_prices(ec2, region, at, zones).await?;
    crate::prices::store(s3, bucket, &prices).await?;
    Ok(true)
}
