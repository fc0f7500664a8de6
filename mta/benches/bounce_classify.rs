//! What a bounce classification costs per record, with the chart's rules
//! (providers.toml then rfc3463.toml):
//!
//! * `cached`: the same responses again (the common case: a day's bounces
//!   are a few hundred texts), answered from the LRU cache;
//! * `uncached`: every response unique (a provider that puts a queue id in
//!   its text), each one a pass of the compiled `RegexSet`;
//! * `one regex at a time`: the peer, what a classifier without a regex set
//!   does — try each rule's regex in order until one matches.
//!
//! Run: `cargo bench -p sluice-mta --bench bounce_classify`. Prints ns per
//! record for each, and the ratio of the set to the one-at-a-time loop.

use sluice_mta::bounce::{CacheSizes, Classifier, RulesFile};
use std::path::{Path, PathBuf};
use std::time::Instant;

const RESPONSES: &[&str] = &[
    "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
    "421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
    "550 5.7.1 Service unavailable, Client host [192.0.2.7] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.7 (AS3130).",
    "452 4.2.2 The recipient's inbox is out of storage space. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp",
    "554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes",
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    "451 4.7.650 The mail server [192.0.2.7] has been temporarily rate limited due to IP reputation.",
    "550 5.7.26 This mail has been blocked because the sender is unauthenticated.",
    "554 5.7.1 <someone@example.com>: Relay access denied",
    "503 5.5.1 Error: need RCPT command",
    "550 Go away",
    "421 4.3.0 Temporary System Problem. Try again later.",
];

fn files() -> Vec<PathBuf> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/files/bounce_classifier");
    vec![dir.join("providers.toml"), dir.join("rfc3463.toml")]
}

fn per_record(n: usize, f: impl FnMut(usize)) -> f64 {
    let mut f = f;
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let classifier = Classifier::load(&files(), CacheSizes::default()).unwrap();
    let n = 200_000;
    // unique texts, made beforehand so that formatting is not measured
    let unique: Vec<String> = (0..n)
        .map(|i| format!("{} id={i}", RESPONSES[i % RESPONSES.len()]))
        .collect();

    let cached = per_record(n, |i| {
        std::hint::black_box(classifier.classify(RESPONSES[i % RESPONSES.len()]));
    });
    let uncached = per_record(n, |i| {
        std::hint::black_box(classifier.classify(&unique[i]));
    });

    // the peer: every rule its own Regex, tried in order
    let mut rules: Vec<(String, regex::Regex)> = vec![];
    for path in files() {
        let file = RulesFile::parse(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
        for (label, patterns) in &file.rules {
            for p in patterns {
                rules.push((label.clone(), regex::Regex::new(p).unwrap()));
            }
        }
    }
    let sequential = per_record(n, |i| {
        let line = &unique[i];
        std::hint::black_box(rules.iter().find(|(_, r)| r.is_match(line)).map(|(l, _)| l));
    });

    println!(
        "bounce classification, {} rules, {n} records per case",
        classifier.rules()
    );
    println!("  cached (repeated responses)    {cached:>9.0} ns/record");
    println!("  uncached (unique responses)    {uncached:>9.0} ns/record");
    println!("  peer: one regex at a time      {sequential:>9.0} ns/record");
    println!(
        "  regex set vs one at a time: {:.1}x faster uncached, {:.1}x cached",
        sequential / uncached,
        sequential / cached
    );
}
