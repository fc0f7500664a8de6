//! A fleet that sends as one MTA: two and three `sluice-mta` processes
//! sharing one real Redis (`kumo.configure_redis_throttles`) hold one
//! message rate and one connection limit between them, measured at the
//! destination (a sink that logs each session's open and close and each
//! message's arrival). Redis killed: every node falls back to its split
//! share and loses nothing; Redis back: shared again within seconds. A node
//! killed while holding connection leases gives them back within the TTL.

use sluice_tests::redis::{PASSWORD, Redis, RedisCluster, SessionSink};
use sluice_tests::*;
use std::time::{Duration, Instant};

/// A node's policy: relay everything to `sink` through one egress path
/// with `path` keys, sharing its throttles through `redis` when given.
fn node(redis: Option<(String, u32, &str)>, sink: u16, queue: &str, path: &str) -> (Mta, u16) {
    node_with(redis, sink, queue, path, "")
}

/// [`node`] with more Lua after the hooks.
fn node_with(
    redis: Option<(String, u32, &str)>,
    sink: u16,
    queue: &str,
    path: &str,
    lua: &str,
) -> (Mta, u16) {
    let admin = free_port();
    // fleet 0: no fleet_size, the nodes count themselves in Redis
    let shared = match redis {
        Some((r, fleet, extra)) => format!(
            "kumo.configure_redis_throttles {{ node = {r}, password = '{PASSWORD}', \
             response_timeout = '300 ms', {} {extra} }}",
            if fleet > 0 {
                format!("fleet_size = {fleet},")
            } else {
                String::new()
            },
        ),
        None => String::new(),
    };
    let init = format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}\n{shared}");
    let rest = format!(
        r#"
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink}' }} }} }},
    retry_interval = '1 seconds', max_retry_interval = '2 seconds', {queue}
  }}
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, max_ready = 100000, {path} }}
end)
{lua}
"#
    );
    (Mta::start(&policy_with_init(&init, "", &rest)), admin)
}

fn metric(admin: u16, name: &str) -> f64 {
    let r = http_request(admin, "/metrics", None);
    let body = r["body"].as_str().unwrap_or_default().to_string();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Wait until every node's `/metrics` shows `name` at `want`.
fn wait_metric(nodes: &[(Mta, u16)], name: &str, want: f64, within: Duration, what: &str) {
    for (i, (mta, admin)) in nodes.iter().enumerate() {
        let deadline = Instant::now() + within;
        while metric(*admin, name) != want {
            assert!(
                Instant::now() < deadline,
                "node {i}: {what}\n{}",
                mta.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `count` messages into `mta`, numbered from `offset`; every one accepted.
fn inject(mta: &Mta, count: usize, offset: usize) {
    let out = mta.path(&format!("client-{offset}.jsonl"));
    let mut c = smtp_send(
        mta.port,
        count,
        &["--seq-offset", &offset.to_string()],
        &out,
    );
    c.wait().unwrap();
    let accepted = read_jsonl(&out).iter().filter(|r| r["code"] == 250).count();
    assert_eq!(accepted, count);
}

/// Wait until the sink has every seq in `0..total` (each once).
fn wait_all(sink: &SessionSink, total: u64, within: Duration, mtas: &[&Mta]) {
    let deadline = Instant::now() + within;
    loop {
        let mut seqs: Vec<u64> = sink.arrivals().iter().filter_map(|a| a.1).collect();
        seqs.sort_unstable();
        if seqs.len() as u64 >= total {
            let unique = seqs.windows(2).all(|w| w[0] != w[1]);
            assert!(unique, "a message was delivered twice");
            assert_eq!(seqs, (0..total).collect::<Vec<_>>(), "every message, once");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {total} delivered\n{}",
            seqs.len(),
            mtas.iter()
                .map(|m| m.stderr())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The rate of `times` (sorted arrival times) as the least-squares slope
/// of the arrival count over time: throttled delivery comes in one-second
/// steps, which the slope averages over.
/// `per` messages into each node at once (each node's numbered after the
/// last's), then wait until the sink has every one of them exactly once.
fn inject_each_and_wait(nodes: &[(Mta, u16)], per: usize, sink: &SessionSink, within: Duration) {
    std::thread::scope(|s| {
        for (i, (mta, _)) in nodes.iter().enumerate() {
            s.spawn(move || inject(mta, per, i * per));
        }
    });
    let mtas: Vec<&Mta> = nodes.iter().map(|n| &n.0).collect();
    wait_all(sink, (per * nodes.len()) as u64, within, &mtas);
}

fn rate(times: &[f64]) -> f64 {
    let n = times.len() as f64;
    let mean_t = times.iter().sum::<f64>() / n;
    let mean_i = (n - 1.0) / 2.0;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, t) in times.iter().enumerate() {
        num += (t - mean_t) * (i as f64 - mean_i);
        den += (t - mean_t) * (t - mean_t);
    }
    num / den
}

/// Arrival times after the first `burst` (the bucket a throttle starts
/// with), sorted.
fn steady(sink: &SessionSink, burst: usize) -> Vec<f64> {
    let mut t: Vec<f64> = sink.arrivals().iter().map(|a| a.0).collect();
    t.sort_by(f64::total_cmp);
    t.split_off(burst.min(t.len()))
}

fn assert_near(measured: f64, want: f64, what: &str) {
    let off = (measured - want).abs() / want;
    eprintln!(
        "{what}: {measured:.1}/s against {want}/s ({:+.1}%)",
        (measured / want - 1.0) * 100.0
    );
    assert!(
        off <= 0.15,
        "{what}: {measured:.1}/s is not within 15% of {want}/s"
    );
}

#[test]
fn three_nodes_share_one_path_message_rate() {
    let redis = Redis::start();
    let sink = SessionSink::start(0);
    let path = "max_message_rate = '50/s'";
    let nodes: Vec<_> = (0..3)
        .map(|_| node(Some((redis.lua_node(), 3, "")), sink.port, "", path))
        .collect();
    wait_metric(
        &nodes,
        "sluice_redis_up",
        1.0,
        Duration::from_secs(10),
        "never reached Redis",
    );
    inject_each_and_wait(&nodes, 200, &sink, Duration::from_secs(60));
    // alone, each node would send at 50/s: 150/s in all
    assert_near(
        rate(&steady(&sink, 50)),
        50.0,
        "three nodes, one 50/s path rate",
    );
    for (mta, admin) in &nodes {
        assert_eq!(
            metric(*admin, "sluice_redis_fallback_total"),
            0.0,
            "{}",
            mta.stderr()
        );
    }
}

#[test]
fn two_nodes_share_one_scheduled_queue_rate() {
    let redis = Redis::start();
    let sink = SessionSink::start(0);
    let queue = "max_message_rate = '40/s'";
    let nodes: Vec<_> = (0..2)
        .map(|_| node(Some((redis.lua_node(), 2, "")), sink.port, queue, ""))
        .collect();
    wait_metric(
        &nodes,
        "sluice_redis_up",
        1.0,
        Duration::from_secs(10),
        "never reached Redis",
    );
    inject_each_and_wait(&nodes, 200, &sink, Duration::from_secs(60));
    assert_near(
        rate(&steady(&sink, 40)),
        40.0,
        "two nodes, one 40/s queue rate",
    );
}

#[test]
fn one_node_without_redis_keeps_its_own_rate() {
    let sink = SessionSink::start(0);
    let (mta, admin) = node(None, sink.port, "", "max_message_rate = '50/s'");
    inject(&mta, 300, 0);
    wait_all(&sink, 300, Duration::from_secs(60), &[&mta]);
    assert_near(rate(&steady(&sink, 50)), 50.0, "one node, no Redis");
    assert_eq!(metric(admin, "sluice_redis_up"), 0.0);
}

/// Without Redis the operator renders each pod its share: `50/s` over two
/// pods is `50/2s,max_burst=24` each (`sluice-operator render
/// --split-across 2`, checked in the operator's tests). Two nodes on those
/// shares hold the fleet's 50/s.
#[test]
fn two_nodes_on_the_operators_split_hold_the_fleet_rate() {
    let sink = SessionSink::start(0);
    let path = "max_message_rate = '50/2s,max_burst=24'";
    let nodes: Vec<_> = (0..2).map(|_| node(None, sink.port, "", path)).collect();
    inject_each_and_wait(&nodes, 200, &sink, Duration::from_secs(60));
    assert_near(
        rate(&steady(&sink, 50)),
        50.0,
        "two nodes, 50/s split in two",
    );
}

#[test]
fn a_connection_limit_of_four_holds_across_three_nodes() {
    let redis = Redis::start();
    // each message holds its session 100 ms, so every node wants all four
    let sink = SessionSink::start(100);
    let nodes: Vec<_> = (0..3)
        .map(|_| {
            node(
                Some((redis.lua_node(), 3, "")),
                sink.port,
                "",
                "connection_limit = 4",
            )
        })
        .collect();
    inject_each_and_wait(&nodes, 100, &sink, Duration::from_secs(90));
    let most = sink.max_concurrent();
    eprintln!("most sessions open at once: {most}");
    // alone, each node would open 4: 12 in all
    assert!(most <= 4, "{most} sessions at once, over the fleet's 4");
    assert!(most >= 3, "the limit was used: {most}");
}

#[test]
fn redis_killed_mid_run_means_split_shares_and_nothing_lost_then_shared_again() {
    let mut redis = Redis::start();
    let sink = SessionSink::start(0);
    let path = "max_message_rate = '20/s'";
    let nodes: Vec<_> = (0..2)
        .map(|_| node(Some((redis.lua_node(), 0, "")), sink.port, "", path))
        .collect();
    wait_metric(
        &nodes,
        "sluice_redis_up",
        1.0,
        Duration::from_secs(10),
        "never reached Redis",
    );
    // no fleet_size: the nodes count each other through their heartbeats
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes
        .iter()
        .any(|(_, a)| metric(*a, "sluice_fleet_nodes") != 2.0)
    {
        assert!(Instant::now() < deadline, "the nodes never counted two");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::scope(|s| {
        for (i, (mta, _)) in nodes.iter().enumerate() {
            s.spawn(move || inject(mta, 200, i * 200));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.arrivals().len() < 60 {
        assert!(
            Instant::now() < deadline,
            "nothing delivered before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.kill();
    let at_kill = sink.arrivals().len();
    let mtas: Vec<&Mta> = nodes.iter().map(|n| &n.0).collect();
    wait_all(&sink, 400, Duration::from_secs(60), &mtas);
    for (_, admin) in &nodes {
        assert_eq!(
            metric(*admin, "sluice_redis_up"),
            0.0,
            "Redis's death noticed"
        );
    }
    // each node 10/s on its own, bursts of 10: the fleet at, and never
    // over, 20/s (fail safe: below it when the nodes are slow, as on a
    // loaded machine, which only costs time; every message still arrives)
    let after = rate(&steady(&sink, at_kill + 20));
    eprintln!("two nodes on split shares of 20/s: {after:.1}/s");
    assert!(
        after <= 20.0 * 1.15,
        "{after:.1}/s: the split shares exceed 20/s"
    );
    assert!(
        after >= 20.0 * 0.5,
        "{after:.1}/s: the split shares are not being used"
    );
    for (mta, admin) in &nodes {
        assert!(metric(*admin, "sluice_redis_fallback_total") > 0.0);
        let bounced = mta.records_of("Bounce").len() + mta.records_of("Expiration").len();
        assert_eq!(bounced, 0, "nothing bounced because Redis was down");
    }
    let back = Instant::now();
    redis.restart();
    wait_metric(
        &nodes,
        "sluice_redis_up",
        1.0,
        Duration::from_secs(15),
        "not shared again",
    );
    eprintln!(
        "shared again {:.1} s after Redis restarted",
        back.elapsed().as_secs_f64()
    );
}

#[test]
fn a_killed_lease_holder_gives_its_connections_back_within_the_ttl() {
    let redis = Redis::start();
    // each message holds its session 1 s: node A keeps both connections busy
    let sink = SessionSink::start(1000);
    let path = "connection_limit = 2";
    let ttl = "lease_ttl = '6 seconds'";
    let (mut a, _) = node(Some((redis.lua_node(), 2, ttl)), sink.port, "", path);
    inject(&a, 40, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.events().iter().filter(|e| e.ev == "open").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "A never held both\n{}",
            a.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (b, _) = node(Some((redis.lua_node(), 2, ttl)), sink.port, "", path);
    inject(&b, 5, 1000);
    std::thread::sleep(Duration::from_secs(2));
    let opened = |sink: &SessionSink| sink.events().iter().filter(|e| e.ev == "open").count();
    assert_eq!(opened(&sink), 2, "B waits while A holds both leases");
    let before = opened(&sink);
    a.kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    while opened(&sink) == before {
        assert!(
            Instant::now() < deadline,
            "B never got a lease\n{}",
            b.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = killed.elapsed();
    eprintln!(
        "B's first connection {:.1} s after A's SIGKILL (TTL 6 s)",
        waited.as_secs_f64()
    );
    // A renewed every 2 s: its leases outlived it by 4-6 s, plus B's 1 s retry
    assert!(
        waited >= Duration::from_secs(3),
        "B did not wait for the leases: {waited:?}"
    );
    assert!(
        waited <= Duration::from_secs(8),
        "leases outlived their TTL: {waited:?}"
    );
    assert!(sink.max_concurrent() <= 2);
}

/// `kumo.make_throttle` in a policy hook is the fleet's throttle too; a
/// `local:` one is each node's own.
#[test]
fn a_policy_throttle_is_shared_unless_local() {
    let redis = Redis::start();
    let sink = SessionSink::start(0);
    let hook = r#"
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  local spec = '2/h'
  if tostring(sender):find('^local') then spec = 'local:2/h' end
  local r = kumo.make_throttle('mail-from', spec):throttle()
  if r.throttled then
    kumo.reject(451, string.format('4.7.1 slow down, retry in %d s', r.retry_after))
  end
end)
"#;
    let nodes: Vec<_> = (0..2)
        .map(|_| node_with(Some((redis.lua_node(), 2, "")), sink.port, "", "", hook))
        .collect();
    let mut replies = vec![];
    for (who, count) in [("shared", 3), ("local", 3)] {
        for (mta, _) in &nodes {
            for _ in 0..count {
                let mut s = RawSmtp::connect(mta.port);
                s.reply();
                s.command("EHLO client.test");
                let (code, text) = s.command(&format!("MAIL FROM:<{who}@example.com>"));
                replies.push((who, code, text));
                s.command("QUIT");
            }
        }
    }
    let accepted = |who: &str| replies.iter().filter(|r| r.0 == who && r.1 == 250).count();
    // two for the fleet; two for each node
    assert_eq!(accepted("shared"), 2, "{replies:?}");
    assert_eq!(accepted("local"), 4, "{replies:?}");
    for (_, code, text) in replies.iter().filter(|r| r.1 != 250) {
        assert_eq!(*code, 451, "{text}");
        assert!(text.contains("retry in 1800 s"), "{text}");
    }
}

/// The same sharing through a real three-primary Redis Cluster: the nodes
/// list its seeds, and the throttle's and the leases' keys land on
/// whichever primary owns their slot.
#[test]
fn a_redis_cluster_shares_the_rate_and_the_connections() {
    let cluster = RedisCluster::start();
    let sink = SessionSink::start(50);
    let path = "max_message_rate = '40/s', connection_limit = 3";
    let nodes: Vec<_> = (0..2)
        .map(|_| node(Some((cluster.lua_node(), 2, "")), sink.port, "", path))
        .collect();
    wait_metric(
        &nodes,
        "sluice_redis_up",
        1.0,
        Duration::from_secs(15),
        "never reached the cluster",
    );
    inject_each_and_wait(&nodes, 200, &sink, Duration::from_secs(60));
    assert_near(
        rate(&steady(&sink, 40)),
        40.0,
        "two nodes, 40/s in a Redis Cluster",
    );
    let most = sink.max_concurrent();
    assert!(most <= 3, "{most} sessions at once, over the fleet's 3");
    for (mta, admin) in &nodes {
        assert_eq!(
            metric(*admin, "sluice_redis_fallback_total"),
            0.0,
            "{}",
            mta.stderr()
        );
    }
}

/// Over TLS (`rediss://`) to a Redis whose certificate a private CA issued:
/// with `tls_ca_file` naming that CA the nodes share the rate; a node that
/// trusts only the system's roots refuses the certificate, never counts
/// Redis as up, and still delivers on its split share.
#[test]
fn a_tls_redis_is_shared_when_its_ca_is_trusted_and_refused_when_not() {
    let redis = Redis::start_tls();
    let sink = SessionSink::start(0);
    let path = "max_message_rate = '40/s'";
    let ca = format!("tls_ca_file = {:?},", redis.ca_file().display().to_string());
    let nodes: Vec<_> = (0..2)
        .map(|_| node(Some((redis.lua_node(), 2, &ca)), sink.port, "", path))
        .collect();
    wait_metric(
        &nodes,
        "sluice_redis_up",
        1.0,
        Duration::from_secs(10),
        "never reached Redis over TLS",
    );
    inject_each_and_wait(&nodes, 200, &sink, Duration::from_secs(60));
    assert_near(
        rate(&steady(&sink, 40)),
        40.0,
        "two nodes, one 40/s rate through a TLS Redis",
    );
    let clients = redis.cli(&["CLIENT", "LIST"]);
    assert!(clients.lines().count() >= 2, "{clients}");

    // the same Redis, the system's roots only: the handshake fails
    let (untrusting, admin) = node(Some((redis.lua_node(), 2, "")), sink.port, "", path);
    inject(&untrusting, 10, 400);
    wait_all(&sink, 410, Duration::from_secs(30), &[&untrusting]);
    let stderr = untrusting.stderr();
    assert_eq!(metric(admin, "sluice_redis_up"), 0.0, "{stderr}");
    assert!(
        metric(admin, "sluice_redis_fallback_total") >= 10.0,
        "its decisions were not on the split share: {stderr}"
    );
}
