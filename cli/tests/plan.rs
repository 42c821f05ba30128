//! `studio plan` as a table of candidates, end to end through the real
//! binary: each row's numbers checked against each other (a bid's cap per
//! type is its share of that type's on-demand price; the pool's cap is the
//! lowest), `--cloud=all` side by side with the cheapest named, and every
//! price's source and date said.

#[macro_use]
mod common;
use common::*;
use serde_json::Value;

/// `$0.3060/h` → millionths of USD per hour.
fn micro(cell: &str) -> Option<u64> {
    let v: f64 = cell.strip_prefix('$')?.strip_suffix("/h")?.parse().ok()?;
    Some((v * 1e6).round() as u64)
}

/// The table's rows (after its header line, up to the blank line), as
/// cells keyed by the header's names.
fn table(out: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("TYPE") && l.contains("ON-DEMAND"))
        .unwrap_or_else(|| panic!("no table header in {out}"));
    let header = lines[at];
    // Columns start where the header's names do (two spaces apart; a
    // name may hold one).
    let names: Vec<(usize, String)> = header
        .match_indices(|c: char| c != ' ')
        .filter(|(i, _)| *i < 2 || &header[i - 2..*i] == "  ")
        .map(|(i, _)| {
            (
                i,
                header[i..].split("  ").next().unwrap().trim().to_string(),
            )
        })
        .collect();
    let mut rows = Vec::new();
    for l in &lines[at + 1..] {
        if l.trim().is_empty() {
            break;
        }
        let mut row = std::collections::BTreeMap::new();
        row.insert("chosen".to_string(), l[..names[0].0].trim().to_string());
        for (k, (start, name)) in names.iter().enumerate() {
            let end = names.get(k + 1).map_or(l.len(), |n| n.0.min(l.len()));
            row.insert(
                name.clone(),
                l.get(*start..end).unwrap_or("").trim().to_string(),
            );
        }
        rows.push(row);
    }
    rows
}

#[test]
fn an_ec2spot_plan_is_a_table_with_each_types_bid_cap_and_the_pools() {
    let h = Home::new();
    let out = h.run(&["plan", "--cloud=ec2spot", "--cpus=8", "--bid=60%"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let so = stdout(&out);
    let rows = table(&so);
    assert!(rows.len() > 1, "a spot pool has several types: {so}");
    let chosen: Vec<_> = rows.iter().filter(|r| r["chosen"] == "*").collect();
    assert_eq!(chosen.len(), 1, "{so}");
    assert!(
        so.contains(&format!("machine    {} (", chosen[0]["TYPE"])),
        "the marked row is the machine: {so}"
    );
    let mut caps = Vec::new();
    for r in &rows {
        assert!(r["VCPU"].parse::<u32>().unwrap() >= 8, "{r:?}");
        assert_eq!(r["REGION"], "us-east-1");
        let od = micro(&r["ON-DEMAND"]).unwrap_or_else(|| panic!("{r:?}"));
        let cap = micro(&r["BID CAP"]).unwrap_or_else(|| panic!("{r:?}"));
        // Each type's own 60 %, to the table's four decimals.
        assert!(cap.abs_diff(od * 6 / 10) <= 100, "{r:?}");
        caps.push(cap);
    }
    let pool_cap = *caps.iter().min().unwrap();
    let bid = so.lines().find(|l| l.starts_with("bid ")).unwrap();
    assert!(
        bid.contains(&format!("at most ${:.4}/h", pool_cap as f64 / 1e6)),
        "the pool's cap is the lowest type's: {bid}"
    );
    let prices = so.lines().find(|l| l.starts_with("prices ")).unwrap();
    assert!(
        prices.contains("EC2 us-east-1 catalogue of 2026-11-28"),
        "{prices}"
    );
    // Spot prices are unknown in the shipped catalogue, and said so.
    assert!(rows.iter().all(|r| r["SPOT"] == "unknown"), "{so}");
    assert!(prices.contains("spot prices: none"), "{prices}");
}

#[test]
fn plan_without_a_bid_has_no_bid_column_and_local_is_this_machine() {
    let h = Home::new();
    let so = stdout(&h.run(&["plan", "--cloud=ec2", "--cpus=2"]));
    assert!(!so.contains("BID CAP"), "{so}");
    let rows = table(&so);
    assert_eq!(rows.len(), 1, "on-demand: one type: {so}");
    assert_eq!(rows[0]["SPOT"], "-");

    let local = stdout(&h.run(&["plan"]));
    let cpus = std::thread::available_parallelism().unwrap().get();
    let rows = table(&local);
    assert_eq!(rows[0]["TYPE"], "local (this machine)");
    assert_eq!(rows[0]["VCPU"], cpus.to_string(), "no --cpus: the machine");
    assert!(!rows[0]["MEMORY"].starts_with('0'), "{local}");
    assert_eq!(rows[0]["ON-DEMAND"], "free");
}

#[test]
fn plan_all_compares_the_clouds_and_names_the_cheapest_and_each_source() {
    let h = Home::new();
    let out = h.run(&["plan", "--cloud=all", "--cpus=4", "--ram=16g", "--gpus=1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let so = stdout(&out);
    let rows = table(&so);
    for cloud in ["local", "ec2", "ec2spot", "gcloud", "gcspot"] {
        let mine: Vec<_> = rows.iter().filter(|r| r["CLOUD"] == cloud).collect();
        assert!(!mine.is_empty(), "{cloud}: {so}");
        assert_eq!(
            mine.iter().filter(|r| r["chosen"] == "*").count(),
            1,
            "one chosen per cloud: {so}"
        );
    }
    // The cheapest line names the lowest expected price of the chosen rows.
    let price = |r: &std::collections::BTreeMap<String, String>| {
        micro(&r["SPOT"]).or_else(|| micro(&r["ON-DEMAND"]))
    };
    let best = rows
        .iter()
        .filter(|r| r["chosen"] == "*")
        .filter_map(|r| price(r).map(|p| (p, r)))
        .min_by_key(|(p, _)| *p)
        .unwrap();
    let cheapest = so.lines().find(|l| l.starts_with("cheapest")).unwrap();
    assert!(
        cheapest.contains(&format!("{} {}", best.1["CLOUD"], best.1["TYPE"]))
            && cheapest.contains(&format!("${:.4}/h", best.0 as f64 / 1e6)),
        "{cheapest} / {best:?}"
    );
    assert!(
        so.contains("prices     ec2, ec2spot: EC2 us-east-1 catalogue of 2026-11-28"),
        "{so}"
    );
    assert!(
        so.lines().any(
            |l| l.starts_with("prices     gcloud, gcspot: GCE rate table") && l.contains("2023")
        ),
        "{so}"
    );

    let json = h.run(&["plan", "--cloud=all", "--output=json", "--region=eu-west-1"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 5, "{v:#}");
    // A cloud that cannot plan this request says why, beside the others.
    let ec2 = plans.iter().find(|p| p["cloud"] == "ec2").unwrap();
    assert!(
        ec2["error"]
            .as_str()
            .is_some_and(|e| e.contains("studio catalog refresh --region eu-west-1")),
        "{ec2:#}"
    );
    assert!(plans
        .iter()
        .any(|p| p["cloud"] == "local" && p["machine"] == "local"));
}

#[test]
fn plan_all_with_a_flag_wrong_everywhere_is_one_usage_error() {
    let h = Home::new();
    let out = h.run(&["plan", "--cloud=all", "--cpus=0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert_eq!(
        stderr(&out).trim(),
        "studio: --cpus must be at least 1, got 0"
    );
}
