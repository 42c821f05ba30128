//! One plan over the full shipped catalogue (target: ≤ 100 µs a request),
//! and the one-time cost of loading the catalogue.
//! Run: `cargo bench -p studio-core --bench plan`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use studio_core::catalog::Catalog;
use studio_core::contract::SubmitJob;
use studio_core::plan::{CatalogPlanner, Planner};
use studio_core::resources::{Cloud, ResourceRequest};

fn job(cloud: Cloud, cpus: u32, gpus: u32, ram: Option<&str>) -> SubmitJob {
    SubmitJob {
        bid: Some("60%".parse().unwrap()),
        entrypoint: "t.py".into(),
        ..SubmitJob::new(
            cloud,
            ResourceRequest::parse(cpus, gpus, ram, None).unwrap(),
            "bench",
        )
    }
}

fn plans(c: &mut Criterion) {
    let planner = CatalogPlanner::shipped();
    let cases = [
        ("ec2 8 vCPU 1 GPU 16g", job(Cloud::Ec2, 8, 1, Some("16g"))),
        ("ec2 8 vCPU 16g", job(Cloud::Ec2, 8, 0, Some("16g"))),
        ("ec2spot top 10", job(Cloud::Ec2spot, 8, 1, Some("16g"))),
        ("ec2 9 GPUs (refused)", job(Cloud::Ec2, 1, 9, None)),
        ("gcloud 3 vCPU 5g", job(Cloud::Gcloud, 3, 0, Some("5g"))),
    ];
    for (name, j) in &cases {
        c.bench_function(&format!("plan/{name}"), |b| {
            b.iter(|| planner.plan(black_box(j)))
        });
    }
    let text = include_str!("../catalog/ec2-us-east-1.json");
    c.bench_function("load/shipped catalogue", |b| {
        b.iter(|| Catalog::from_json(black_box(text)).unwrap())
    });
}

criterion_group!(benches, plans);
criterion_main!(benches);
