//! Render time for 10, 1,000 and 10,000 objects (80% QueuePolicy, 10%
//! EgressPool, 10% EgressPath), median of several runs. Target: under
//! 100 ms for 1,000. Run: `cargo bench -p sluice-operator --bench render`.

use sluice_operator::crd::*;
use sluice_operator::render::{self, Inputs};
use std::time::{Duration, Instant};

fn inputs(total: usize) -> Inputs {
    let pools = (total / 10).max(1);
    let paths = (total / 10).max(1);
    let policies = total - pools - paths;
    let mut i = Inputs::default();
    for p in 0..pools {
        let mut pool = EgressPool::new(
            &format!("pool-{p}"),
            EgressPoolSpec {
                sources: (0..2)
                    .map(|s| EgressSourceSpec {
                        name: format!("pool-{p}-ip-{s}"),
                        weight: 1,
                        source_address: Some(format!("10.{}.{}.{s}", p / 256, p % 256)),
                        ..Default::default()
                    })
                    .collect(),
                ttl: None,
            },
        );
        pool.metadata.namespace = Some("default".into());
        i.egress_pools.push(pool);
    }
    for q in 0..policies {
        let mut qp = QueuePolicy::new(
            &format!("policy-{q}"),
            QueuePolicySpec {
                selector: QueueMatch {
                    domains: vec![
                        format!("customer-{q}.example.com"),
                        format!("*.customer-{q}.example.net"),
                    ],
                    tenants: if q % 3 == 0 {
                        vec![format!("tenant-{q}")]
                    } else {
                        vec![]
                    },
                    ..Default::default()
                },
                egress_pool: Some(format!("pool-{}", q % pools)),
                max_age: Some("3 days".into()),
                retry_interval: Some("10 minutes".into()),
                max_message_rate: Some("1,000/hr".into()),
                ..Default::default()
            },
        );
        qp.metadata.namespace = Some("default".into());
        i.queue_policies.push(qp);
    }
    for p in 0..paths {
        let mut path = EgressPath::new(
            &format!("path-{p}"),
            EgressPathSpec {
                selector: PathMatch {
                    sites: vec![format!("*.mx-{p}.example.com")],
                    ..Default::default()
                },
                connection_limit: Some(10),
                max_message_rate: Some("100/s".into()),
                ..Default::default()
            },
        );
        path.metadata.namespace = Some("default".into());
        i.egress_paths.push(path);
    }
    i
}

fn main() {
    println!("{:>8}  {:>10}  {:>10}", "objects", "median", "bytes");
    for total in [10, 1_000, 10_000] {
        let input = inputs(total);
        let mut times: Vec<Duration> = Vec::new();
        let mut size = 0;
        for _ in 0..7 {
            let start = Instant::now();
            let rendered = render::render(&input, &render::Options::default());
            times.push(start.elapsed());
            assert_eq!(rendered.rejected().count(), 0);
            size = rendered.files.values().map(String::len).sum();
        }
        times.sort();
        println!(
            "{total:>8}  {:>8.2}ms  {size:>10}",
            times[3].as_secs_f64() * 1000.0
        );
    }
}
