//! A burst of 50 KB messages into an MTA inside a memory cgroup, its
//! destination slow: the MTA sheds load (bodies out of memory, new mail
//! refused with a 4xx, readiness off) instead of being OOM-killed, and
//! recovers by itself once the destination speeds up; every accepted
//! message is delivered. The cgroup is real (v2 where its memory controller
//! is ours to use, else v1; root is needed): the kernel kills the MTA if it
//! passes the limit.

use serde_json::Value;
use sluice_tests::cgroup::MemoryCgroup;
use sluice_tests::*;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// The cgroup's limit: the hard limit the MTA finds for itself.
const LIMIT: u64 = 320 * MIB;
const SIZE: usize = 50_000;

/// A spool on disk, not in `/tmp`: where `/tmp` is a tmpfs (a container,
/// a fresh root) the spool's pages are memory the kernel charges to the
/// cgroup and cannot reclaim, and the MTA rightly counts them.
fn disk_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sluice-memory-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn policy(sink: u16, admin: u16, soft: u64, low: u64, spool: &std::path::Path) -> String {
    let spool = spool.display();
    format!(
        r#"
local kumo = require 'kumo'
kumo.on('pre_init', function()
  kumo.set_memory_soft_limit({soft})
  kumo.set_memory_low_thresh({low})
end)
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{spool}' }}
  kumo.define_spool {{ name = 'meta', path = '{spool}' }}
  kumo.configure_local_logs {{ log_dir = '{{DIR}}/logs' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{{PORT}}', max_message_size = 1000000 }}
  kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
    retry_interval = '1 seconds', max_retry_interval = '2 seconds',
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, connection_limit = 2, max_ready = 100000,
    data_timeout = '120 seconds',
  }}
end)
"#
    )
}

fn metric(admin: u16, name: &str) -> f64 {
    let r = http_request(admin, "/metrics", None);
    let body = r["body"].as_str().unwrap_or_default().to_string();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn readiness(admin: u16) -> u64 {
    http_request(admin, "/api/check-readiness/v1", None)["status"]
        .as_u64()
        .unwrap()
}

/// What the client saw: the accepted sequence numbers, and every other reply.
fn outcomes(results: &[Value]) -> (Vec<u64>, Vec<(u64, String)>) {
    let (mut accepted, mut refused) = (vec![], vec![]);
    for r in results {
        let code = r["code"].as_u64().unwrap();
        let reply = r["reply"].as_str().unwrap_or_default().to_string();
        match code {
            250 => accepted.push(r["seq"].as_u64().unwrap()),
            _ => refused.push((code, reply)),
        }
    }
    (accepted, refused)
}

/// What one burst did.
struct Burst {
    mta: Mta,
    admin: u16,
    cgroup: MemoryCgroup,
    _spool: tempfile::TempDir,
    accepted: Vec<u64>,
    refused: Vec<(u64, String)>,
    /// The highest working set the MTA reported.
    peak: u64,
}

/// 6,000 × 50 KB (300 MB of bodies, nearly the cgroup's whole limit) from 20
/// clients into an MTA whose destination takes 30 s per message.
fn burst(soft: u64, low: u64) -> (Burst, Sink) {
    let cgroup = MemoryCgroup::create(&format!("sluice-test-{}", std::process::id()), LIMIT)
        .unwrap_or_else(|e| panic!("cannot make a memory cgroup (root is needed): {e}"));
    let slow = Sink::start(&["-w", "30"]);
    let admin = free_port();
    let spool = disk_dir();
    let mut mta = Mta::prepare(&policy(slow.port, admin, soft, low, spool.path()));
    mta.cgroup = Some(cgroup.procs());
    mta.spawn();
    assert_eq!(
        metric(admin, "sluice_memory_limit_bytes{limit=\"hard\"}") as u64,
        LIMIT,
        "the MTA finds the cgroup's limit ({:?})",
        cgroup.version
    );
    let idle = metric(admin, "sluice_memory_usage_bytes");
    let out = mta.path("client.jsonl");
    let mut client = smtp_send(mta.port, 6000, &["--size", &SIZE.to_string()], &out);
    // a sample costs a Python start, so the peak is a lower bound (the
    // cgroup's own peak includes page cache); spells of refusal are counted
    // by the MTA, since they can be shorter than a sample
    let mut peak = 0.0f64;
    while client.try_wait().unwrap().is_none() {
        peak = peak.max(metric(admin, "sluice_memory_usage_bytes"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (accepted, refused) = outcomes(&read_jsonl(&out));
    eprintln!(
        "soft {} MiB, low {} MiB: idle {} MiB, working set peak {} MiB, accepted {}, refused {}, \
         cgroup peak (page cache included) {:?} MiB, bodies released {}, spells short {}",
        soft / MIB,
        low / MIB,
        idle as u64 / MIB,
        peak as u64 / MIB,
        accepted.len(),
        refused.len(),
        cgroup.peak().map(|p| p / MIB),
        metric(admin, "sluice_memory_bodies_released_total"),
        metric(admin, "sluice_memory_short_total"),
    );
    assert!(
        mta.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the MTA is alive"
    );
    assert_eq!(cgroup.oom_kills(), 0, "the OOM killer never acted");
    assert!((peak as u64) < LIMIT, "working set peaked at {peak}");
    for (code, reply) in &refused {
        // 451 at MAIL, or 421 at connect (which smtplib reports as an error)
        let connect_421 = *code == 0 && reply.contains("421");
        assert!((400..500).contains(code) || connect_421, "{code} {reply}");
    }
    let burst = Burst {
        mta,
        admin,
        cgroup,
        _spool: spool,
        accepted,
        refused,
        peak: peak as u64,
    };
    (burst, slow)
}

/// The destination speeds up: everything accepted is delivered, memory is
/// no longer short, and new mail is accepted, all without a restart.
fn recovers(b: &mut Burst, mut slow: Sink) {
    // on a slow machine some messages outlast the sink's 30 s wait and are
    // delivered to it: they count too
    slow.stop();
    let early = slow.seqs();
    let sink = Sink::start_at(slow.port, &[]);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let mut seqs = sink.seqs();
        seqs.extend(early.iter().map(|(k, v)| (*k, *v)));
        if b.accepted.iter().all(|s| seqs.contains_key(s)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted messages delivered\n{}",
            b.accepted.iter().filter(|s| seqs.contains_key(s)).count(),
            b.accepted.len(),
            b.mta.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(b.admin, "sluice_memory_short") != 0.0 || readiness(b.admin) != 200 {
        assert!(
            Instant::now() < deadline,
            "still short: {} MiB\n{}",
            metric(b.admin, "sluice_memory_usage_bytes") as u64 / MIB,
            b.mta.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = b.mta.path("again.jsonl");
    let mut client = smtp_send(
        b.mta.port,
        10,
        &["--size", &SIZE.to_string(), "--seq-offset", "100000"],
        &again,
    );
    client.wait().unwrap();
    let (accepted_again, refused_again) = outcomes(&read_jsonl(&again));
    assert_eq!(accepted_again.len(), 10, "{refused_again:?}");
    assert_eq!(b.cgroup.oom_kills(), 0);
    b.mta.stop();
}

/// KumoMTA's default shape (low threshold 80 % of the soft limit): past the
/// low threshold bodies leave memory as soon as they are spooled, so the
/// 300 MB burst never reaches the soft limit and nothing is refused.
#[test]
fn past_the_low_threshold_bodies_leave_memory_and_the_burst_fits() {
    let (mut b, slow) = burst(160 * MIB, 128 * MIB);
    assert!(
        b.peak < 160 * MIB,
        "working set stayed below the soft limit: {}",
        b.peak
    );
    assert_eq!(
        metric(b.admin, "sluice_memory_short_total"),
        0.0,
        "never short"
    );
    assert_eq!(
        b.accepted.len(),
        6000,
        "all accepted: {:?}",
        &b.refused[..b.refused.len().min(3)]
    );
    recovers(&mut b, slow);
}

/// With no passive phase (low threshold = soft limit), the burst reaches
/// the soft limit: new mail is refused with a 4xx, readiness fails, bodies
/// are released, and acceptance resumes by itself.
#[test]
fn a_burst_past_the_soft_limit_is_shed_with_4xx_and_never_oom_killed() {
    let (mut b, slow) = burst(100 * MIB, 100 * MIB);
    assert!(
        metric(b.admin, "sluice_memory_short_total") > 0.0,
        "the soft limit was reached"
    );
    assert!(!b.refused.is_empty(), "some mail was turned away");
    for (_, reply) in &b.refused {
        assert!(reply.contains("memory"), "refused for memory: {reply}");
    }
    assert!(
        metric(b.admin, "sluice_memory_bodies_released_total") > 0.0,
        "bodies were released"
    );
    recovers(&mut b, slow);
}

/// A soft limit below what the MTA needs idle: it is short from the start,
/// and stays so. Readiness fails (the Service sends no clients), liveness
/// holds (the kubelet does not restart it in a loop), and every client is
/// greeted with a 421 naming memory.
#[test]
fn an_mta_over_its_soft_limit_is_unready_and_refuses_mail_with_4xx() {
    let admin = free_port();
    let spool = disk_dir();
    let mut mta = Mta::start(&policy(free_port(), admin, MIB, MIB, spool.path()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(admin, "sluice_memory_short") != 1.0 {
        assert!(Instant::now() < deadline, "never short\n{}", mta.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = http_request(admin, "/api/check-readiness/v1", None);
    assert_eq!(ready["status"].as_u64(), Some(503), "{ready}");
    assert!(
        ready["body"].as_str().unwrap().contains("memory"),
        "{ready}"
    );
    // the kubelet's liveness probe; KumoMTA's check-liveness means "accepting"
    let live = http_request(admin, "/healthz/live", None);
    assert_eq!(live["status"].as_u64(), Some(200), "{live}");
    assert!(metric(admin, "sluice_memory_short_total") >= 1.0);
    // a session costs memory: each client is turned away at the door
    for _ in 0..2 {
        let mut text = String::new();
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", mta.port)).unwrap();
        std::io::Read::read_to_string(&mut conn, &mut text).unwrap();
        assert!(
            text.starts_with("421 4.3.2 ") && text.contains("memory"),
            "{text:?}"
        );
    }
    assert_eq!(
        metric(admin, "sluice_memory_short_total"),
        1.0,
        "one spell, however long"
    );
    mta.stop();
}
