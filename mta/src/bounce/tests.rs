use super::*;

fn shipped() -> Classifier {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/files/bounce_classifier");
    Classifier::load(
        &[dir.join("providers.toml"), dir.join("rfc3463.toml")],
        CacheSizes::default(),
    )
    .unwrap()
}

/// Responses as providers publish them (see the sources at the top of
/// providers.toml), multi-line replies joined, and the label a sender
/// should act on.
const TABLE: &[(&str, &str)] = &[
    // Gmail
    (
        "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. Learn more at https://support.google.com/mail/?p=NoSuchUser",
        "InvalidRecipient",
    ),
    (
        "552 5.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm",
        "QuotaIssues",
    ),
    (
        "452 4.2.2 The recipient's inbox is out of storage space. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp",
        "QuotaIssues",
    ),
    (
        "550 5.2.1 The email account that you tried to reach is disabled. Learn more at https://support.google.com/mail/?p=DisabledUser",
        "InactiveMailbox",
    ),
    (
        "550 5.7.1 [192.0.2.7] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. Please visit https://support.google.com/mail/?p=UnsolicitedMessageError",
        "SpamContent",
    ),
    (
        "421 4.7.28 [192.0.2.7 15] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
        "SpamBlock",
    ),
    (
        "550 5.7.1 [192.0.2.7] The IP you're using to send mail is not authorized to send email directly to our servers. Please use the SMTP relay at your service provider instead.",
        "PolicyRelated",
    ),
    (
        "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.",
        "AuthenticationFailed",
    ),
    (
        "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please contact the administrator of example.com domain.",
        "AuthenticationFailed",
    ),
    (
        "421 4.7.0 [192.0.2.7] Our system has detected that this message is suspicious due to the very low reputation of the sending IP address.",
        "SpamBlock",
    ),
    (
        "552 5.7.0 This message was blocked because its content presents a potential security issue. Please visit https://support.google.com/mail/?p=BlockedMessage to review our message content and attachment content guidelines.",
        "ProhibitedAttachment",
    ),
    (
        "552 5.3.4 Your message exceeded Google's message size limits. Please visit https://support.google.com/mail/?p=MaxSizeError to view our size guidelines.",
        "QuotaIssues",
    ),
    (
        "553 5.1.2 We weren't able to find the recipient domain. Please check for any spelling errors, and make sure you didn't enter any spaces, periods, or other punctuation after the recipient's email address.",
        "BadDomain",
    ),
    (
        "550 5.7.25 [192.0.2.7] The IP address sending this message does not have a PTR record setup, or the corresponding forward DNS entry does not point to the sending IP.",
        "InvalidSender",
    ),
    (
        "451 4.7.24 The SPF record of the sending domain has one or more suspicious entries.",
        "AuthenticationFailed",
    ),
    (
        "421 4.3.0 Temporary System Problem. Try again later.",
        "TransientFailure",
    ),
    // Yahoo and AOL
    (
        "421 4.7.0 [TSS04] Messages from 192.0.2.7 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "SpamBlock",
    ),
    (
        "553 5.7.2 [TSS09] All messages from 192.0.2.7 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        "SpamBlock",
    ),
    (
        "421 4.7.1 [TS03] All messages from 192.0.2.7 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        "SpamBlock",
    ),
    (
        "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.7, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
        "SpamBlock",
    ),
    (
        "554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes",
        "PolicyRelated",
    ),
    (
        "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.",
        "AuthenticationFailed",
    ),
    (
        "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com",
        "InvalidRecipient",
    ),
    (
        "554 delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.gq1.yahoo.com",
        "InactiveMailbox",
    ),
    (
        "552 1 Requested mail action aborted, mailbox not found",
        "InvalidRecipient",
    ),
    (
        "421 Message temporarily deferred due to unresolvable RFC.5321 from domain; see https://postmaster.yahooinc.com/error-codes",
        "InvalidSender",
    ),
    // Microsoft (Outlook.com, Exchange Online)
    (
        "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        "InvalidRecipient",
    ),
    (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        "InvalidRecipient",
    ),
    (
        "550 5.7.1 Service unavailable, Client host [192.0.2.7] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.7 (AS3130). [BN1NAM02FT039.eop-nam02.prod.protection.outlook.com]",
        "SpamBlock",
    ),
    (
        "550 5.7.1 Unfortunately, messages from [192.0.2.7] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        "SpamBlock",
    ),
    (
        "550 5.7.511 Access denied, banned sender[192.0.2.7]. To request removal from this list please forward this message to delist@microsoft.com. For more information please go to https://go.microsoft.com/fwlink/?LinkId=526653. AS(1430)",
        "SpamBlock",
    ),
    (
        "451 4.7.650 The mail server [192.0.2.7] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
        "SpamBlock",
    ),
    (
        "550 5.7.606 Access denied, banned sending IP [192.0.2.7]. To request removal from this list please visit https://sender.office.com/ and follow the directions.",
        "SpamBlock",
    ),
    (
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
        "SpamBlock",
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DM6NAM12FT035.eop-nam12.prod.protection.outlook.com]",
        "InvalidRecipient",
    ),
    (
        "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded; Failed to process message due to a permanent exception",
        "QuotaIssues",
    ),
    (
        "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification and has a DMARC policy of reject.",
        "AuthenticationFailed",
    ),
    (
        "550 5.7.515 Access denied, sending domain example.com doesn't meet the required authentication level.",
        "AuthenticationFailed",
    ),
    (
        "550 5.7.520 Access denied, Your organization does not allow external forwarding. Please contact your administrator for further assistance. AS(7555)",
        "PolicyRelated",
    ),
    (
        "550 5.1.8 Access denied, bad outbound sender. AS(42020044)",
        "InvalidSender",
    ),
    ("452 4.5.3 Too many recipients", "TooManyRecipients"),
    // Apple iCloud
    (
        "554 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
        "PolicyRelated",
    ),
    (
        "550 5.1.1 <someone@icloud.com>: user does not exist",
        "InvalidRecipient",
    ),
    (
        "552 5.2.2 <someone@icloud.com>: user is over quota",
        "QuotaIssues",
    ),
    (
        "421 4.7.0 [HM08] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
        "PolicyRelated",
    ),
    (
        "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=192.0.2.7",
        "SpamBlock",
    ),
    // Proofpoint
    (
        "554 5.7.1 Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.7",
        "SpamBlock",
    ),
    (
        "421 4.7.0 Too many concurrent SMTP connections from this IP address; please try again later.",
        "TransientFailure",
    ),
    // Mimecast
    (
        "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550",
        "InvalidRecipient",
    ),
    (
        "550 Rejected by header based Anti-Spoofing policy: someone@example.com - https://community.mimecast.com/docs/DOC-1369#550",
        "PolicyRelated",
    ),
    (
        "550 Administrative prohibition - envelope blocked - https://community.mimecast.com/docs/DOC-1369#550",
        "PolicyRelated",
    ),
    (
        "451 Open relay not allowed - https://community.mimecast.com/docs/DOC-1369#451",
        "RelayDenied",
    ),
    (
        "421 IP Temporarily Blacklisted - https://community.mimecast.com/docs/DOC-1369#421",
        "SpamBlock",
    ),
    (
        "554 Email rejected due to security policies - https://community.mimecast.com/docs/DOC-1369#554",
        "PolicyRelated",
    ),
    (
        "554 Maximum email size exceeded - https://community.mimecast.com/docs/DOC-1369#554",
        "QuotaIssues",
    ),
    // Comcast, GMX
    (
        "554 5.7.1 resimta-po-20v.sys.comcast.net comcast 192.0.2.7 found on one or more RBLs (bl.spamcop.net). Refer to https://postmaster.comcast.net/smtp-error-codes.php#BL000001",
        "SpamBlock",
    ),
    (
        "554 Transaction failed Reject due to policy restrictions. For explanation visit https://postmaster.gmx.net/en/error-messages?ip=192.0.2.7&c=sp",
        "PolicyRelated",
    ),
    // stock Postfix, Exim, Sendmail, Amavis texts
    (
        "550 5.1.1 <someone@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
        "InvalidRecipient",
    ),
    (
        "554 5.7.1 <someone@example.com>: Relay access denied",
        "RelayDenied",
    ),
    (
        "554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.7",
        "SpamBlock",
    ),
    (
        "450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.7]",
        "InvalidSender",
    ),
    (
        "450 4.1.8 <bounce@example.com>: Sender address rejected: Domain not found",
        "InvalidSender",
    ),
    (
        "450 4.1.2 <someone@example.com>: Recipient address rejected: Domain not found",
        "BadDomain",
    ),
    (
        "550 5.1.1 <someone@example.com>... User unknown",
        "InvalidRecipient",
    ),
    ("550 No Such User Here", "InvalidRecipient"),
    ("452 4.2.2 Mailbox full", "QuotaIssues"),
    (
        "550 5.2.1 Mailbox disabled, not accepting messages",
        "InactiveMailbox",
    ),
    ("503 5.5.1 Error: need RCPT command", "ProtocolErrors"),
    ("500 5.5.2 Error: bad syntax", "ProtocolErrors"),
    (
        "554 5.7.1 Message rejected as spam by Content Filtering.",
        "SpamContent",
    ),
    (
        "550 5.7.1 Attachment type not allowed",
        "ProhibitedAttachment",
    ),
    (
        "554 5.7.0 Reject, id=12345-01 - INFECTED: Eicar-Signature",
        "VirusRelated",
    ),
    // Sluice's own
    (
        "551 5.4.7 message is older than max_age=1h",
        "MessageExpired",
    ),
    ("556 5.1.10 Recipient address has a null MX", "BadDomain"),
    (
        "400 KumoMTA internal: failed to connect to any candidate hosts: mx.example.com:25: Connection refused (os error 111)",
        "NoAnswerFromHost",
    ),
    (
        "451 4.4.4 KumoMTA internal: NXDOMAIN: example.invalid does not exist",
        "BadDomain",
    ),
    (
        "451 4.4.4 KumoMTA internal: DNS lookup for example.com failed: request timed out",
        "DNSFailure",
    ),
    (
        "451 4.4.4 KumoMTA internal: invalid mx_list: x",
        "RoutingErrors",
    ),
    (
        "421 4.4.2 KumoMTA internal: timed out reading the reply to DATA",
        "BadConnection",
    ),
    // what no rule knows
    ("550 Go away", "Uncategorized"),
    ("554 5.9.9 something new", "Uncategorized"),
];

#[test]
fn provider_responses_get_the_label_a_sender_acts_on() {
    let c = shipped();
    assert!(TABLE.len() >= 40);
    let wrong: Vec<String> = TABLE
        .iter()
        .filter_map(|(line, want)| {
            let got = c.classify(line);
            (got != *want).then(|| format!("{want} expected, {} given: {line}", got.as_str()))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // the shipped files use KumoMTA's predefined labels only
    for (_, want) in TABLE {
        assert!(PREDEFINED.contains(want), "{want}");
    }
}

#[test]
fn each_code_rule_stands_alone_without_the_text_rules() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/files/bounce_classifier");
    let c = Classifier::load(&[dir.join("rfc3463.toml")], CacheSizes::default()).unwrap();
    for (line, want) in [
        ("550 5.1.1 x", "InvalidRecipient"),
        ("550 5.1.10 x", "BadDomain"),
        ("552 5.2.2 x", "QuotaIssues"),
        ("550 5.7.26 x", "AuthenticationFailed"),
        ("550 5.7.1 x", "PolicyRelated"),
        ("451 4.4.1 x", "NoAnswerFromHost"),
        ("451 4.7.1 x", "PolicyRelated"),
        ("450 mailbox busy", "TransientFailure"),
        ("550 5.0.0 x", "Uncategorized"),
        ("550 5.1.1", "Uncategorized"),
    ] {
        assert_eq!(c.classify(line), want, "{line}");
    }
    // the normalization makes that last one match: a trailing space
    assert_eq!(
        c.classify(&single_line(550, Some((5, 1, 1)), "")),
        "InvalidRecipient"
    );
}

fn from_toml(files: &[&str]) -> Classifier {
    let parsed: Vec<(&Path, RulesFile)> = files
        .iter()
        .map(|t| {
            (
                Path::new("x.toml"),
                RulesFile::parse(Path::new("x.toml"), t).unwrap(),
            )
        })
        .collect();
    Classifier::build(&parsed, CacheSizes::default()).unwrap()
}

#[test]
fn the_first_rule_in_file_order_wins_then_the_first_file() {
    // labels listed out of alphabetical order: the file's order is kept
    let c = from_toml(&[
        "[rules]\nzed = ['woot', 'aaa']\nbar = ['woot', 'aaa', 'bbb']\n",
        "[rules]\nsecond = ['bbb', 'ccc']\nzed = ['ddd']\n",
    ]);
    assert_eq!(c.classify("woot"), "zed");
    assert_eq!(c.classify("aaa"), "zed");
    assert_eq!(c.classify("bbb"), "bar");
    assert_eq!(c.classify("ccc"), "second");
    assert_eq!(c.classify("ddd"), "zed");
    assert_eq!(c.classify("eee"), "Uncategorized");
    assert_eq!(c.rules(), 8);
}

#[test]
fn json_files_keep_their_order_too() {
    let path = Path::new("rules.json");
    let f = RulesFile::parse(path, r#"{"rules": {"b": ["x"], "a": ["x", "y"]}}"#).unwrap();
    let c = Classifier::build(&[(path, f)], CacheSizes::default()).unwrap();
    assert_eq!(c.classify("x"), "b");
    assert_eq!(c.classify("y"), "a");
}

#[test]
fn cached_answers_are_the_same_answers() {
    let c = from_toml(&["[rules]\nA = ['^550 ']\n"]);
    let sizes = CacheSizes {
        categorized: 2,
        uncategorized: 2,
    };
    let small = Classifier::build(
        &[(
            Path::new("x.toml"),
            RulesFile::parse(Path::new("x.toml"), "[rules]\nA = ['^550 ']\n").unwrap(),
        )],
        sizes,
    )
    .unwrap();
    for round in 0..3 {
        for i in 0..10 {
            for c in [&c, &small] {
                assert_eq!(c.classify(&format!("550 x{i}")), "A", "{round}");
                assert_eq!(c.classify(&format!("450 x{i}")), "Uncategorized", "{round}");
            }
        }
    }
    assert!(small.matched.lock().len() <= 2);
    assert!(small.unmatched.lock().len() <= 2);
}

#[test]
fn bad_files_are_refused_naming_the_file_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[rules]\nInvalidRecipient = ['ok', '(unclosed']\n").unwrap();
    let e = Classifier::load(std::slice::from_ref(&bad), CacheSizes::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.toml") && e.contains("InvalidRecipient[2]") && e.contains("(unclosed"),
        "{e}"
    );

    std::fs::write(&bad, "[rules]\nInvalidRecipient = 'not a list'\n").unwrap();
    let e = Classifier::load(std::slice::from_ref(&bad), CacheSizes::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.toml") && e.contains("line 2"), "{e}");

    std::fs::write(&bad, "[rule]\nA = ['x']\n").unwrap();
    let e = Classifier::load(std::slice::from_ref(&bad), CacheSizes::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("rule"), "{e}");

    let missing = dir.path().join("missing.toml");
    let e = Classifier::load(std::slice::from_ref(&missing), CacheSizes::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
}

#[test]
fn multi_line_replies_become_one_line() {
    assert_eq!(
        single_line(550, Some((5, 7, 1)), "first line\nsecond\r\nthird"),
        "550 5.7.1 first line second third"
    );
    assert_eq!(single_line(421, None, "bye"), "421 bye");
}
