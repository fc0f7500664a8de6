//! Scale down and lose no mail, end to end: the chart's fleet of three MTA
//! pods (real `sluice-mta` processes, each with its own spool), the real
//! operator with the chart's `mta.spool.handoff` flags against the
//! stand-in API server. 3,000 messages wait for a destination that answers
//! 4xx; the fleet is scaled to two (pod 2 stopped as the StatefulSet
//! controller stops it, or SIGKILLed as a lost node); the operator starts a
//! Job for ordinal 2's spool claim, which the harness runs as its pod
//! (`tests/src/jobs.rs`); every message of pod 2 ends up on pods 0 and 1
//! with its attempts and due time, the claim is deleted, and once the
//! destination recovers every message is delivered, counted at the sink.
//! Scaled away (not killed), pod 2 is first asked by the operator, during
//! its preStop sleep, to move its mail itself; the Job takes what is left.

use serde_json::Value;
use sluice_tests::fleet::{Fleet, MtaPod};
use sluice_tests::jobs::run_handoff_jobs;
use sluice_tests::*;
use std::time::{Duration, Instant};

const PER_POD: usize = 1000;

fn inspect(pod: &MtaPod, id: &str) -> Option<Value> {
    let r = http_request_as(
        pod.admin,
        &format!("/api/admin/inspect-message/v1?id={id}"),
        None,
        pod.admin_user.as_deref(),
    );
    (r["status"] == 200).then(|| {
        serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap()["message"].clone()
    })
}

fn scaled_down_pod_hands_its_mail_to_the_live_ones(kill: bool) {
    let refusing = Sink::start(&["-r", "RCPT"]);
    let port = refusing.port;
    let mut fleet = Fleet::start_with(
        3,
        &[
            "mta.spool.handoff=true",
            "mta.spool.deleteDrainedVolumes=true",
        ],
        &[],
    );
    let before = fleet.config_hash();
    fleet.apply_fixture("handoff.yaml", &[("PORT", port.to_string())]);
    fleet.wait_rollout(Some(&before));

    // 1,000 messages into each pod; each fails once and waits 30 s
    let dir = tempfile::tempdir().unwrap();
    let clients: Vec<_> = fleet
        .pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let offset = (i * PER_POD).to_string();
            let out = dir.path().join(format!("{i}.jsonl"));
            smtp_send(
                pod.smtp,
                PER_POD,
                &["--domain", "recovering.test", "--seq-offset", &offset],
                &out,
            )
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    for pod in &fleet.pods {
        pod.wait_for_records(Duration::from_secs(60), "every message failed once", |r| {
            count(r, "TransientFailure") >= PER_POD
        });
    }
    // what pod 2 holds: its ids, attempts and due times
    let ids: Vec<String> = fleet.pods[2]
        .records()
        .iter()
        .filter(|r| r["type"] == "Reception")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), PER_POD);
    let sample: Vec<(String, Value)> = ids
        .iter()
        .step_by(100)
        .map(|id| (id.clone(), inspect(&fleet.pods[2], id).unwrap()))
        .collect();

    fleet.scale_to(2, kill);
    let runs = run_handoff_jobs(&fleet, 1, Duration::from_secs(30));
    let run = &runs[0];
    assert_eq!(run.name, "rel-sluice-mta-handoff-2");
    assert!(run.success, "{}", run.log);
    assert_eq!(run.report["remaining"], 0, "{}: {}", run.report, run.log);
    // what pod 2 moved itself before it exited (its records; the Job's
    // drainer logs to the same volume under its own node id), and what
    // the Job found
    let by_pod = fleet.gone[0]
        .records()
        .iter()
        .filter(|r| r["type"] == "XferOut" && r["nodeid"] == "rel-sluice-mta-2")
        .count();
    let by_job = run.report["found"].as_u64().unwrap() as usize;
    eprintln!("pod 2 moved {by_pod} itself, the Job {by_job}");
    assert_eq!(by_pod + by_job, PER_POD, "{}", run.report);
    if kill {
        assert_eq!(by_pod, 0, "a killed pod moves nothing");
    } else {
        // what the operator asked, and what pod 2 logged, when it did nothing
        let kinds: std::collections::BTreeSet<String> = fleet.gone[0]
            .records()
            .iter()
            .map(|r| format!("{} {}", r["type"], r["response"]["content"]))
            .collect();
        let about = format!("{:?}", kinds.iter().take(10).collect::<Vec<_>>());
        assert!(
            by_pod > 0,
            "asked during its preStop sleep, pod 2 moved nothing itself: {about}"
        );
    }

    // on pods 0 and 1, as they were on pod 2
    let arrived: usize = fleet
        .pods
        .iter()
        .map(|p| count(&p.records(), "XferIn"))
        .sum();
    assert_eq!(arrived, PER_POD);
    for pod in &fleet.pods {
        assert!(
            count(&pod.records(), "XferIn") >= PER_POD / 3,
            "{} got too few",
            pod.name
        );
    }
    let gone_records = fleet.gone[0].records();
    for (id, was) in &sample {
        // a slow run may pass the due time before the handoff: then pod 2
        // tried it again after the sample, and it left with one attempt
        // more (and a new due time) than the sample says
        let tries_on_pod_2 = gone_records
            .iter()
            .filter(|r| r["id"] == id.as_str() && r["type"] == "TransientFailure")
            .count() as u64;
        let left_with = was["num_attempts"].as_u64().unwrap().max(tries_on_pod_2);
        let retried_there = left_with != was["num_attempts"].as_u64().unwrap();
        let (pod, now) = fleet
            .pods
            .iter()
            .find_map(|p| inspect(p, id).map(|m| (p, m)))
            .unwrap_or_else(|| panic!("{id} is on neither live pod"));
        // or pass it before this look: then the live pod has tried it
        // again, and its first attempt there must have counted on from the
        // attempts it arrived with
        let retried: Vec<Value> = pod
            .records()
            .into_iter()
            .filter(|r| r["id"] == id.as_str() && r["type"] == "TransientFailure")
            .collect();
        if let Some(first) = retried.first() {
            assert_eq!(
                first["num_attempts"], left_with,
                "{id}: retried on {} as {first}, was {was}, tried {tries_on_pod_2} times on pod 2",
                pod.name
            );
            continue;
        }
        assert_eq!(now["num_attempts"], left_with, "{id}: {now} was {was}");
        if retried_there {
            continue;
        }
        let (a, b) = (was["due"].as_i64().unwrap(), now["due"].as_i64().unwrap());
        assert!((a - b).abs() <= 1000, "{id}: due {b}, was {a}");
    }
    // the operator saw the Job succeed: the drained claim is gone, the event says so
    fleet
        .api
        .wait_for("the drained claim deleted", Duration::from_secs(20), |a| {
            a.get_json(&["-n", "mail", "get", "pvc", "spool-rel-sluice-mta-2"])
                .is_none()
        });
    let events = fleet.get(&["get", "events.v1.events.k8s.io"]);
    let noted =
        |reason: &str, text: &str| {
            events["items"].as_array().unwrap().iter().any(|e| {
                e["reason"] == reason && e["note"].as_str().unwrap_or_default().contains(text)
            })
        };
    let reported = format!("{by_job} message(s) moved");
    assert!(noted("SpoolHandoffSucceeded", &reported), "{events}");
    if !kill {
        let asked = "rel-sluice-mta-2 is being removed";
        assert!(noted("SpoolHandoffStarted", asked), "{events}");
    }

    // the destination recovers: every message delivered, counted at the sink
    drop(refusing);
    let sink = Sink::start_at(port, &[]);
    let total = 3 * PER_POD;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seqs = sink.seqs();
        if (0..total as u64).all(|s| seqs.contains_key(&s)) {
            let twice = seqs.values().filter(|&&n| n > 1).count();
            eprintln!(
                "{} pod 2: all {total} delivered, {twice} twice",
                if kill { "SIGKILLed" } else { "scaled away" }
            );
            break;
        }
        if Instant::now() >= deadline {
            // what the live pods last heard from the destination
            let said: std::collections::BTreeSet<String> = fleet
                .pods
                .iter()
                .flat_map(|p| p.records())
                .filter(|r| r["type"] == "TransientFailure")
                .map(|r| r["response"].to_string())
                .collect();
            panic!("{} of {total} delivered; replies: {said:#?}", seqs.len());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        count(&fleet.gone[0].records(), "Delivery"),
        0,
        "pod 2 delivered nothing"
    );
}

#[test]
fn scaling_from_three_to_two_hands_pod_2s_mail_to_pods_0_and_1() {
    scaled_down_pod_hands_its_mail_to_the_live_ones(false);
}

#[test]
fn a_sigkilled_pod_2_scaled_away_hands_its_mail_over_too() {
    scaled_down_pod_hands_its_mail_to_the_live_ones(true);
}
