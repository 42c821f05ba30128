//! Planning over the shipped EC2 catalogue and GCE rate table: one table of
//! requests and what each must get. Expected machines were checked against
//! an independent scan of the catalogue file.

use studio_core::catalog::{Arch, Catalog};
use studio_core::contract::SubmitJob;
use studio_core::gce::GceRates;
use studio_core::plan::{CatalogPlanner, Plan, PlanError, Planner};
use studio_core::resources::{Bid, Cloud, ResourceRequest};

fn job(cloud: Cloud, cpus: u32, gpus: u32, ram: Option<&str>) -> SubmitJob {
    SubmitJob {
        entrypoint: "t.py".into(),
        ..SubmitJob::new(
            cloud,
            ResourceRequest::parse(cpus, gpus, ram, None).unwrap(),
            "t",
        )
    }
}

enum Want {
    /// machine, price in millionths of USD per hour
    Machine(&'static str, u64),
    /// machine, and a fragment of one change note
    Upsized(&'static str, &'static str),
    /// a fragment of the error
    Refused(&'static str),
}

struct Case {
    name: &'static str,
    job: SubmitJob,
    want: Want,
}

fn with(mut j: SubmitJob, f: impl FnOnce(&mut SubmitJob)) -> SubmitJob {
    f(&mut j);
    j
}

fn cases() -> Vec<Case> {
    use Cloud::*;
    use Want::*;
    let c = |name, job, want| Case { name, job, want };
    vec![
        c(
            "the issue's GPU example",
            job(Ec2, 8, 1, Some("16g")),
            Machine("g4dn.2xlarge", 752_000),
        ),
        c(
            "the issue's compute example",
            job(Ec2, 8, 0, Some("16g")),
            Machine("c6a.2xlarge", 306_000),
        ),
        c(
            "smallest request",
            job(Ec2, 1, 0, None),
            Machine("c7a.medium", 51_320),
        ),
        c(
            "no burstable t* for 2 vCPU 4 GiB",
            job(Ec2, 2, 0, Some("4g")),
            Machine("c6a.large", 76_500),
        ),
        c(
            "memory decides the family",
            job(Ec2, 4, 0, Some("16g")),
            Machine("m5a.xlarge", 172_000),
        ),
        c(
            "3.75g rounds to 3840 MiB and needs 4 GiB",
            job(Ec2, 1, 0, Some("3.75g")),
            Machine("m7a.medium", 57_960),
        ),
        c(
            "GiB spelling is the same request",
            job(Ec2, 8, 0, Some("16GiB")),
            Machine("c6a.2xlarge", 306_000),
        ),
        c(
            "arm64 is opt-in",
            with(job(Ec2, 8, 0, Some("16g")), |j| j.arch = Some(Arch::Arm64)),
            Machine("c6g.2xlarge", 272_000),
        ),
        c(
            "pin A10G",
            with(job(Ec2, 1, 1, None), |j| j.gpu_type = Some("A10G".into())),
            Machine("g5.xlarge", 1_006_000),
        ),
        c(
            "pin L4, any case",
            with(job(Ec2, 1, 1, None), |j| j.gpu_type = Some("l4".into())),
            Machine("g6.xlarge", 804_800),
        ),
        c(
            "pin H100",
            with(job(Ec2, 1, 1, None), |j| j.gpu_type = Some("H100".into())),
            Machine("p5.4xlarge", 6_880_000),
        ),
        c(
            "pin A100",
            with(job(Ec2, 1, 1, None), |j| j.gpu_type = Some("A100".into())),
            Machine("p4d.24xlarge", 21_957_642),
        ),
        c(
            "four GPUs",
            job(Ec2, 1, 4, None),
            Machine("g4dn.12xlarge", 3_912_000),
        ),
        c(
            "arm64 with a GPU",
            with(job(Ec2, 1, 1, None), |j| j.arch = Some(Arch::Arm64)),
            Machine("g5g.xlarge", 420_000),
        ),
        c(
            "big memory",
            job(Ec2, 64, 0, Some("512g")),
            Machine("r5a.16xlarge", 3_616_000),
        ),
        c(
            "1 TiB",
            job(Ec2, 1, 0, Some("1t")),
            Machine("x2iedn.8xlarge", 6_669_000),
        ),
        c(
            "spot ranks by on-demand where no spot price is known",
            job(Ec2spot, 8, 1, Some("16g")),
            Machine("g4dn.2xlarge", 752_000),
        ),
        c(
            "nine GPUs",
            job(Ec2, 1, 9, None),
            Refused("has 9 NVIDIA GPUs; the most is 8 ("),
        ),
        c(
            "too many vCPUs",
            job(Ec2, 1000, 0, None),
            Refused("has 1000 vCPUs; the most is 896"),
        ),
        c(
            "too much memory",
            job(Ec2, 1, 0, Some("40t")),
            Refused("has 40960g of memory; the most is 32768g"),
        ),
        c(
            "retired model",
            with(job(Ec2, 1, 1, None), |j| j.gpu_type = Some("K80".into())),
            Refused("has NVIDIA K80 GPUs; models on offer: A100, A10G"),
        ),
        c(
            "region without a catalogue",
            with(job(Ec2, 1, 0, None), |j| {
                j.region = Some("eu-west-1".into())
            }),
            Refused("no EC2 catalogue for region eu-west-1"),
        ),
        c(
            "GCE: odd vCPUs go even",
            job(Gcloud, 3, 0, Some("5g")),
            Upsized("custom-4-5120", "vCPUs 3 → 4"),
        ),
        c(
            "GCE: default 4 GiB per vCPU",
            job(Gcloud, 2, 0, None),
            Upsized("custom-2-8192", "Studio's default of 4 GiB"),
        ),
        c(
            "GCE: too much RAM per vCPU adds vCPUs",
            job(Gcloud, 1, 0, Some("8g")),
            Upsized("custom-2-8192", "vCPUs 1 → 2"),
        ),
        c(
            "GCE: too little RAM per vCPU adds RAM",
            job(Gcloud, 8, 0, Some("4g")),
            Upsized("custom-8-8192", "RAM 4g → 8g"),
        ),
        c(
            "GCE: 1 vCPU at least 1 GiB",
            job(Gcloud, 1, 0, Some("512m")),
            Upsized("custom-1-1024", "RAM 512m → 1g"),
        ),
        c(
            "GCE: a valid shape is kept",
            job(Gcloud, 4, 0, Some("16g")),
            Machine("custom-4-16384", 203_832),
        ),
        c(
            "GCE: three T4s are four",
            job(Gcloud, 4, 3, Some("16g")),
            Upsized("custom-4-16384", "GPUs 3 → 4"),
        ),
        c(
            "GCE: K80 is retired",
            with(job(Gcloud, 2, 1, None), |j| j.gpu_type = Some("K80".into())),
            Refused("K80 is retired"),
        ),
        c(
            "GCE: too many vCPUs",
            job(Gcloud, 200, 0, None),
            Refused("no GCE custom machine type has 200 vCPUs"),
        ),
        c(
            "GCE: arm64 is not offered",
            with(job(Gcloud, 2, 0, None), |j| j.arch = Some(Arch::Arm64)),
            Refused("x86_64 only"),
        ),
    ]
}

#[test]
fn every_request_in_the_table_gets_its_machine_or_its_reason() {
    let planner = CatalogPlanner::shipped();
    let cases = cases();
    assert!(cases.len() >= 25);
    for case in cases {
        let got = planner.plan(&case.job);
        match (&case.want, got) {
            (Want::Machine(m, price), Ok(p)) => {
                assert_eq!(
                    (p.machine.as_str(), p.price_micro_usd_per_hour),
                    (*m, *price),
                    "{}",
                    case.name
                );
                assert!(p.changes.is_empty(), "{}: {:?}", case.name, p.changes);
                assert_fits(&case.job, &p, case.name);
            }
            (Want::Upsized(m, note), Ok(p)) => {
                assert_eq!(p.machine, *m, "{}", case.name);
                assert!(
                    p.changes.iter().any(|c| c.contains(note)),
                    "{}: {:?}",
                    case.name,
                    p.changes
                );
                assert_fits(&case.job, &p, case.name);
            }
            (Want::Refused(why), Err(e)) => {
                assert!(e.to_string().contains(why), "{}: {e}", case.name)
            }
            (_, other) => panic!("{}: unexpected {other:?}", case.name),
        }
    }
}

/// Never less than asked.
fn assert_fits(job: &SubmitJob, p: &Plan, name: &str) {
    let r = &job.resources;
    assert!(p.vcpus >= r.cpus, "{name}");
    assert!(p.gpus >= r.gpus, "{name}");
    assert!(p.memory_mib >= r.ram_mib.unwrap_or(0), "{name}");
}

#[test]
fn the_extravagant_error_is_the_one_users_see() {
    let e = CatalogPlanner::shipped()
        .plan(&job(Cloud::Ec2, 1, 9, None))
        .unwrap_err();
    assert!(matches!(e, PlanError::NoMachineFits(_)));
    assert_eq!(
        e.to_string(),
        "too extravagant: no EC2 instance type in us-east-1 has 9 NVIDIA GPUs; the most is 8 (g4dn.metal, g6.48xlarge, g5.48xlarge, …)"
    );
}

#[test]
fn a_disk_larger_than_a_gp3_volume_is_refused_at_plan() {
    let planner = CatalogPlanner::shipped();
    for cloud in [Cloud::Ec2, Cloud::Ec2spot] {
        let mut j = job(cloud, 2, 0, None);
        j.resources.hdd_gib = Some(16_384);
        assert!(planner.plan(&j).is_ok(), "16 TiB fits");
        j.resources.hdd_gib = Some(16_385);
        let e = planner.plan(&j).unwrap_err();
        assert_eq!(
            e.to_string(),
            "too extravagant: --hdd 16385 GiB is more than an EC2 gp3 volume holds (16 TiB, 16384 GiB)"
        );
    }
}

#[test]
fn spot_pools_get_up_to_ten_fitting_types_best_first() {
    let p = CatalogPlanner::shipped()
        .plan(&job(Cloud::Ec2spot, 8, 1, Some("16g")))
        .unwrap();
    assert_eq!(p.machine_types.len(), 10);
    assert_eq!(p.machine_types[0], "g4dn.2xlarge");
    assert!(p
        .candidates
        .windows(2)
        .all(|w| w[0].price_micro_usd_per_hour <= w[1].price_micro_usd_per_hour));
    assert!(p
        .candidates
        .iter()
        .all(|c| c.vcpus >= 8 && c.gpus >= 1 && c.memory_mib >= 16384));
    assert!(p.warnings.iter().any(|w| w.contains("no spot price known")));
    let od = CatalogPlanner::shipped()
        .plan(&job(Cloud::Ec2, 8, 1, Some("16g")))
        .unwrap();
    assert_eq!(
        od.machine_types,
        vec!["g4dn.2xlarge".to_string()],
        "on-demand pools use one type"
    );
}

#[test]
fn bids_become_a_price_cap_or_a_warning() {
    let planner = CatalogPlanner::shipped();
    let pct = with(job(Cloud::Ec2spot, 8, 1, Some("16g")), |j| {
        j.bid = Some("60%".parse().unwrap())
    });
    assert_eq!(
        planner.plan(&pct).unwrap().max_price_micro_usd_per_hour,
        Some(451_200)
    );

    let usd = with(job(Cloud::Ec2spot, 8, 0, Some("16g")), |j| {
        j.bid = Some(Bid::MicroUsdPerHour(350_000))
    });
    let p = planner.plan(&usd).unwrap();
    assert_eq!(p.max_price_micro_usd_per_hour, Some(350_000));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("above the on-demand price $0.3060/h")),
        "{:?}",
        p.warnings
    );

    let over = with(job(Cloud::Ec2spot, 8, 0, Some("16g")), |j| {
        j.bid = Some("150%".parse().unwrap())
    });
    assert!(planner
        .plan(&over)
        .unwrap()
        .warnings
        .iter()
        .any(|w| w.contains("above the on-demand")));

    let gc = with(job(Cloud::Gcspot, 2, 0, None), |j| {
        j.bid = Some("60%".parse().unwrap())
    });
    let p = planner.plan(&gc).unwrap();
    assert_eq!(p.max_price_micro_usd_per_hour, None);
    assert!(p.warnings.iter().any(|w| w.contains("ignored on gcspot")));

    let od = with(job(Cloud::Ec2, 2, 0, None), |j| {
        j.bid = Some("60%".parse().unwrap())
    });
    assert!(planner
        .plan(&od)
        .unwrap()
        .warnings
        .iter()
        .any(|w| w.contains("applies to ec2spot only")));
}

#[test]
fn gce_prices_add_vcpu_memory_and_gpu_rates_and_preemptible_is_cheaper() {
    let planner = CatalogPlanner::shipped();
    let rates = GceRates::shipped();
    let p = planner.plan(&job(Cloud::Gcloud, 2, 1, Some("8g"))).unwrap();
    let want = 2 * rates.vcpu.0 + 8 * rates.gib.0 + rates.gpus["nvidia-tesla-t4"].0;
    assert_eq!(p.price_micro_usd_per_hour, want);
    assert_eq!(p.gpu_model.as_deref(), Some("nvidia-tesla-t4"));
    assert_eq!(p.on_host_maintenance.as_deref(), Some("TERMINATE"));
    let s = planner.plan(&job(Cloud::Gcspot, 2, 1, Some("8g"))).unwrap();
    assert_eq!(
        s.price_micro_usd_per_hour,
        2 * rates.vcpu.1 + 8 * rates.gib.1 + rates.gpus["nvidia-tesla-t4"].1
    );
    assert!(s.price_micro_usd_per_hour < p.price_micro_usd_per_hour);
}

#[test]
fn the_shipped_catalogue_is_the_refresh_commands_output() {
    let c = Catalog::shipped();
    assert_eq!(c.region, "us-east-1");
    assert!(c.types.len() > 1000, "{}", c.types.len());
    assert!(c.source.contains("DescribeInstanceTypes"));
    let t = c.get("g4dn.2xlarge").unwrap();
    assert_eq!((t.vcpus, t.memory_mib, t.gpu_count()), (8, 32768, 1));
    assert_eq!(t.gpus.as_ref().unwrap().model, "T4");
    assert!(
        c.types.windows(2).all(|w| w[0].name < w[1].name),
        "sorted by name"
    );
}

#[test]
fn a_share_bid_caps_each_type_and_the_pool_takes_the_lowest_leaving_types_it_cannot_buy() {
    let t = |name: &str, od: u64, spot: u64| {
        format!(
            r#"{{"name":"{name}","vcpus":2,"memory_mib":4096,"archs":["x86_64"],"burstable":false,"current_generation":true,"on_demand":true,"spot":true,"other_accelerators":false,"on_demand_micro_usd":{od},"spot_micro_usd":{spot}}}"#
        )
    };
    let cat = Catalog::from_json(&format!(
        r#"{{"format":1,"region":"us-east-1","generated_at":"2026-12-01T00:00:00Z","source":"test","types":[{},{},{}]}}"#,
        t("a.large", 100_000, 30_000),
        t("b.large", 200_000, 50_000),
        t("c.large", 120_000, 80_000),
    ))
    .unwrap();
    let planner = CatalogPlanner {
        ec2: std::sync::Arc::new(cat),
        gce: GceRates::shipped(),
    };
    let half = with(job(Cloud::Ec2spot, 2, 0, None), |j| {
        j.bid = Some("50%".parse().unwrap())
    });
    let p = planner.plan(&half).unwrap();
    // Caps: a 0.05, b 0.10, c 0.06; one SpotMaxPrice per group: the lowest.
    assert_eq!(p.max_price_micro_usd_per_hour, Some(50_000));
    let caps: Vec<(&str, Option<u64>)> = p
        .candidates
        .iter()
        .map(|c| (c.machine.as_str(), c.bid_cap_micro_usd_per_hour))
        .collect();
    // c's spot price (0.08) is over the pool's cap: it could never launch.
    assert_eq!(
        caps,
        vec![("a.large", Some(50_000)), ("b.large", Some(100_000))]
    );
    assert_eq!(p.machine_types, vec!["a.large", "b.large"]);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("1 of the fitting types left the pool")),
        "{:?}",
        p.warnings
    );
    assert!(p.price_source.contains("us-east-1 catalogue of 2026-12-01"));
    // A for_record plan keeps neither the candidates nor the source.
    assert!(p.for_record().price_source.is_empty());

    // A bid under every type's spot price keeps the pool and says so.
    let low = with(job(Cloud::Ec2spot, 2, 0, None), |j| {
        j.bid = Some(Bid::MicroUsdPerHour(10_000))
    });
    let p = planner.plan(&low).unwrap();
    assert_eq!(p.machine_types.len(), 3);
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("workers may not start")));
}

#[test]
fn a_local_plan_is_held_to_this_machine() {
    use studio_core::resources::Machine;
    let small = Machine {
        cpus: 2,
        memory_mib: 4096,
    };
    let over = job(Cloud::Local, 1, 0, Some("8g"));
    match Plan::local_on(&over, &small) {
        Err(PlanError::Request(m)) => {
            assert!(
                m.contains("--ram 8g is more than this machine has (2 vCPU, 4g)"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let p = Plan::local_on(&job(Cloud::Local, 4, 0, None), &small).unwrap();
    assert_eq!((p.vcpus, p.memory_mib), (2, 4096));
    assert!(
        p.warnings.iter().any(|w| w.contains(
            "--cpus 4 is more than this machine has (2 vCPU, 4g): the job runs on all 2"
        )),
        "{:?}",
        p.warnings
    );
    let fits = Plan::local_on(&job(Cloud::Local, 2, 0, Some("1g")), &small).unwrap();
    assert!(fits.warnings.is_empty(), "{:?}", fits.warnings);
    assert_eq!(fits.memory_mib, 1024);
}
