use super::rules::{Action, ProviderMatch, Scope, Subject, Trigger, parse};
use super::{mx_hosts, split_site};
use std::path::Path;
use std::time::Duration;

/// KumoMTA's layout: path settings beside automation, a provider with a
/// match list, a domain, `default`, one and several regexes and actions.
const SHAPING: &str = r#"
["default"]
connection_limit = 10

[["default".automation]]
regex = "KumoMTA internal: failed to connect"
action = "Suspend"
duration = "10m"
match_internal = true

[provider."yahoo"]
match = [{MXSuffix = ".yahoodns.net"}, {DomainSuffix = ".yahoo.co.uk"}]
max_deliveries_per_connection = 20

[[provider."yahoo".automation]]
regex = "421 4\\.7\\.0 \\[TSS04\\]"
trigger = {Threshold = "2/hr"}
action = "Suspend"
duration = "2 hours"

["comcast.net"]
connection_limit = 25

[["comcast.net".automation]]
regex = ["RL0000", "RL000001"]
action = ["SuspendTenant", "BounceCampaign"]
duration = "90m"
"#;

fn subject<'a>(domain: &'a str, hosts: &'a [String], response: &'a str) -> Subject<'a> {
    Subject {
        domain,
        mx_hosts: hosts,
        response,
    }
}

#[test]
fn kumomtas_layout_parses_with_rules_named_by_entry() {
    let rules = parse(Path::new("shaping.toml"), SHAPING).unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "default automation[1]",
            "provider.yahoo automation[1]",
            "comcast.net automation[1]"
        ]
    );
    let yahoo = &rules[1];
    assert_eq!(
        yahoo.scope,
        Scope::Provider(vec![
            ProviderMatch::MXSuffix(".yahoodns.net".into()),
            ProviderMatch::DomainSuffix(".yahoo.co.uk".into())
        ])
    );
    let Trigger::Threshold(spec) = &yahoo.trigger else {
        panic!("{:?}", yahoo.trigger)
    };
    assert_eq!((spec.limit, spec.period_secs), (2, 3600));
    assert_eq!(yahoo.duration, Duration::from_secs(7200));
    assert_eq!(
        rules[2].actions,
        [Action::SuspendTenant, Action::BounceCampaign]
    );
    assert_eq!(rules[2].regex.len(), 2);
    assert!(rules[0].match_internal);
}

#[test]
fn rules_watch_their_own_destinations() {
    let rules = parse(Path::new("shaping.toml"), SHAPING).unwrap();
    let yahoo_mx = mx_hosts("(mta5|mta6|mta7).am0.yahoodns.net");
    let tss04 = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred";
    assert!(rules[1].matches(&subject("aol.com", &yahoo_mx, tss04)));
    assert!(rules[1].matches(&subject("mail.yahoo.co.uk", &[], tss04)));
    assert!(!rules[1].matches(&subject(
        "gmail.com",
        &mx_hosts("gmail-smtp-in.l.google.com"),
        tss04
    )));
    // the right text for the wrong provider, the wrong text for the right one
    assert!(!rules[1].matches(&subject("aol.com", &yahoo_mx, "421 4.7.0 try later")));
    assert!(rules[2].matches(&subject("comcast.net", &[], "554 RL000001 rate limited")));
    assert!(!rules[2].matches(&subject("xfinity.com", &[], "554 RL000001 rate limited")));
    // Sluice's own responses only where match_internal says so
    let internal = "451 4.4.1 KumoMTA internal: failed to connect to any candidate hosts";
    assert!(rules[0].matches(&subject("any.test", &[], internal)));
    let quiet = parse(
        Path::new("s.toml"),
        "[[\"default\".automation]]\nregex = \"failed to connect\"\naction = \"Suspend\"\nduration = \"1m\"\n",
    )
    .unwrap();
    assert!(!quiet[0].matches(&subject("any.test", &[], internal)));
}

#[test]
fn mistakes_name_the_file_the_rule_and_what_is_wrong() {
    let err = |text: &str| parse(Path::new("mine.toml"), text).unwrap_err().to_string();
    let e = err(
        "[[\"x.test\".automation]]\nregex = \"(unclosed\"\naction = \"Suspend\"\nduration = \"1m\"\n",
    );
    assert!(
        e.contains("mine.toml") && e.contains("x.test automation[1]") && e.contains("(unclosed"),
        "{e}"
    );
    let e =
        err("[[\"x.test\".automation]]\nregex = \"a\"\naction = \"Pause\"\nduration = \"1m\"\n");
    assert!(e.contains("Pause"), "{e}");
    let e = err(
        "[[\"x.test\".automation]]\nregex = \"a\"\naction = \"Suspend\"\nduration = \"1m\"\ntriger = \"Immediate\"\n",
    );
    assert!(e.contains("triger"), "{e}");
    let e = err(
        "[[\"x.test\".automation]]\nregex = \"a\"\naction = \"Suspend\"\ntrigger = {Threshold = \"lots\"}\nduration = \"1m\"\n",
    );
    assert!(e.contains("lots"), "{e}");
    let e = err(
        "[provider.\"p\"]\n[[provider.\"p\".automation]]\nregex = \"a\"\naction = \"Suspend\"\nduration = \"1m\"\n",
    );
    assert!(e.contains("provider.p") && e.contains("match"), "{e}");
    let e = err(
        "[[\"x.test\".automation]]\nregex = \"a\"\naction = {SetConfig = {name = \"max_connections\", value = 1}}\nduration = \"1m\"\n",
    );
    assert!(
        e.contains("SetConfig: max_connections = 1: unknown field `max_connections`"),
        "{e}"
    );
    let e = err(
        "[[\"x.test\".automation]]\nregex = \"a\"\naction = {SetConfig = {name = \"max_message_rate\", value = \"often\"}}\nduration = \"1m\"\n",
    );
    assert!(e.contains("SetConfig: max_message_rate = \"often\""), "{e}");
    let e = err(
        "[[\"x.test\".automation]]\nregex = \"a\"\naction = {SetDomainConfig = {name = \"connection_limit\", value = 1}}\nduration = \"1m\"\n",
    );
    assert!(e.contains("SetDomainConfig is not supported yet"), "{e}");
}

#[test]
fn record_sites_split_into_source_and_site_and_hosts() {
    assert_eq!(
        split_site("ip-1->(mx1|mx2).example.com@smtp_client", None),
        ("ip-1".to_string(), "(mx1|mx2).example.com".to_string())
    );
    assert_eq!(
        split_site("mx_list:[127.0.0.1]:2525@smtp_client", Some("unspecified")),
        (
            "unspecified".to_string(),
            "mx_list:[127.0.0.1]:2525".to_string()
        )
    );
    assert_eq!(
        mx_hosts("mx_list:smart.host.local,[10.0.0.1]:25,relay.example:587"),
        ["smart.host.local", "10.0.0.1", "relay.example"]
    );
}

/// The chart's starter rules parse, and each says where its reply is
/// documented.
#[test]
fn the_charts_starter_rules_parse_and_each_names_its_source() {
    let text = include_str!("../../../charts/sluice/files/shaping/providers.toml");
    let rules = parse(Path::new("providers.toml"), text).unwrap();
    assert!(rules.len() >= 6, "{}", rules.len());
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.ends_with(".automation]]") {
            let comments = lines[..i].iter().rev().take_while(|l| l.starts_with('#'));
            assert!(
                comments
                    .clone()
                    .any(|l| l.starts_with("# Source: https://")),
                "no source above line {}: {line}",
                i + 1
            );
        }
    }
    // the replies they were written for set them off
    let yahoo = mx_hosts("(mta5|mta6|mta7).am0.yahoodns.net");
    let deferral = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to \
                    unexpected volume or user complaints";
    assert!(
        rules
            .iter()
            .any(|r| r.matches(&subject("aol.com", &yahoo, deferral)))
    );
    let google = mx_hosts("(alt1|alt2)?.gmail-smtp-in.l.google.com");
    let unusual = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail";
    assert!(
        rules
            .iter()
            .any(|r| r.matches(&subject("gmail.com", &google, unusual)))
    );
    let outlook = mx_hosts("outlook-com.olc.protection.outlook.com");
    let limited = "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited";
    assert!(
        rules
            .iter()
            .any(|r| r.matches(&subject("outlook.com", &outlook, limited)))
    );
    // and an ordinary deferral does not
    let busy = "421 4.7.0 Try again later";
    assert!(
        !rules
            .iter()
            .any(|r| r.matches(&subject("aol.com", &yahoo, busy)))
    );
}
