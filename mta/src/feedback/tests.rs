use super::*;
use serde_json::json;

/// RFC 5965 Appendix B.2, as published.
const RFC5965_B2: &str = include_str!("../../../tests/reports/rfc5965-b2.eml");

/// RFC 3464 Appendix, the simple DSN (original message elided as there).
const RFC3464_SIMPLE: &str = include_str!("../../../tests/reports/rfc3464-simple.eml");

/// `X-KumoRef` as Sluice's reception writes it (listener/session/data.rs).
fn trace(recipient: &str, extra: Value) -> String {
    let mut obj =
        json!({"_@_": "\\_/", "recipient": recipient, "id": "0123456789abcdef0123456789abcdef"});
    if let (Some(o), Value::Object(e)) = (obj.as_object_mut(), extra) {
        o.extend(e);
    }
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&obj).unwrap())
}

/// A Postfix-style bounce of two recipients returning the original's
/// headers (text/rfc822-headers), our trace header folded in them.
fn postfix_bounce(trace_value: &str) -> String {
    let (a, b) = trace_value.split_at(trace_value.len() / 2);
    format!(
        "From: MAILER-DAEMON@mx.dest.test (Mail Delivery System)\r
Subject: Undelivered Mail Returned to Sender\r
To: bounces@bounce.sluice.test\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"B1\"\r
\r
--B1\r
Content-Type: text/plain\r
\r
I'm sorry to have to inform you that your message could not be delivered.\r
\r
--B1\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.dest.test\r
X-Postfix-Queue-ID: 4F1A2\r
Arrival-Date: Wed,  2 Dec 2026 10:00:00 +0000 (UTC)\r
\r
Final-Recipient: rfc822; gone@dest.test\r
Original-Recipient: rfc822;gone@dest.test\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; store.dest.test\r
Diagnostic-Code: smtp; 550 5.1.1 <gone@dest.test>: Recipient address\r
    rejected: User unknown in local recipient table\r
\r
Final-Recipient: rfc822; slow@dest.test\r
Action: delayed\r
Status: 4.4.1\r
Will-Retry-Until: Thu, 3 Dec 2026 10:00:00 +0000\r
\r
--B1\r
Content-Type: text/rfc822-headers\r
\r
X-KumoRef: {a}\r
\t{b}\r
From: news@sluice.test\r
To: gone@dest.test\r
Subject: hello\r
\r
--B1--\r
"
    )
}

#[test]
fn the_rfc_5965_example_is_a_feedback_report() {
    let Some(Report::Feedback(r)) = parse(RFC5965_B2.as_bytes(), TRACE_HEADER) else {
        panic!("not a feedback report");
    };
    assert_eq!(r.feedback_type, "abuse");
    assert_eq!(r.user_agent, "SomeGenerator/1.0");
    assert_eq!(r.version, "1");
    assert_eq!(
        r.original_mail_from.as_deref(),
        Some("<somespammer@example.net>")
    );
    assert_eq!(r.original_rcpt_to, ["<user@example.com>"]);
    assert_eq!(r.source_ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(
        r.reporting_mta,
        Some(TypedAddress {
            address_type: "dns".into(),
            address: "mail.example.com".into()
        })
    );
    // folded fields are unfolded
    assert_eq!(
        r.authentication_results,
        ["mail.example.com; spf=fail smtp.mail=somespammer@example.com"]
    );
    assert_eq!(r.reported_domain, ["example.net"]);
    assert_eq!(
        r.reported_uri,
        [
            "http://example.net/earn_money.html",
            "mailto:user@example.com"
        ]
    );
    assert_eq!(r.extensions["removal-recipient"], "user@example.com");
    assert!(
        r.original_message
            .as_deref()
            .unwrap()
            .contains("Subject: Earn money")
    );
    // not one of ours
    assert_eq!(r.supplemental_trace, None);
}

#[test]
fn the_rfc_3464_example_is_a_delivery_report() {
    let Some(Report::Delivery(r)) = parse(RFC3464_SIMPLE.as_bytes(), TRACE_HEADER) else {
        panic!("not a DSN");
    };
    assert_eq!(
        r.per_message.reporting_mta.as_ref().unwrap().address,
        "cs.utk.edu"
    );
    assert_eq!(r.per_recipient.len(), 1);
    let p = &r.per_recipient[0];
    assert_eq!(p.final_recipient.address, "louisl@larry.slip.umd.edu");
    assert_eq!(p.final_recipient.address_type, "rfc822");
    assert_eq!(p.action, "failed");
    assert_eq!(p.status, "4.0.0");
    assert_eq!(
        p.diagnostic_code,
        Some(DiagnosticCode {
            diagnostic_type: "smtp".into(),
            diagnostic: "426 connection timed out".into()
        })
    );
    assert_eq!(r.supplemental_trace, None);
}

#[test]
fn our_trace_header_in_a_returned_original_names_the_message() {
    let value = trace(
        "gone@dest.test",
        json!({"tenant": "acme", "campaign": "winter"}),
    );
    let bounce = postfix_bounce(&value);
    let Some(Report::Delivery(r)) = parse(bounce.as_bytes(), TRACE_HEADER) else {
        panic!("not a DSN");
    };
    let t = r.supplemental_trace.as_ref().expect("decoded X-KumoRef");
    assert_eq!(t["recipient"], "gone@dest.test");
    assert_eq!(t["tenant"], "acme");
    assert_eq!(t["campaign"], "winter");
    assert_eq!(r.per_message.extensions["x-postfix-queue-id"], "4F1A2");
    let recipients: Vec<(&str, &str, &str)> = r
        .per_recipient
        .iter()
        .map(|p| {
            (
                p.final_recipient.address.as_str(),
                p.action.as_str(),
                p.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        recipients,
        [
            ("gone@dest.test", "failed", "5.1.1"),
            ("slow@dest.test", "delayed", "4.4.1")
        ]
    );
    assert_eq!(
        r.per_recipient[0]
            .diagnostic_code
            .as_ref()
            .unwrap()
            .diagnostic,
        "550 5.1.1 <gone@dest.test>: Recipient address rejected: User unknown in local recipient table"
    );
    // a header by another name, or a value that is not ours, is no trace
    assert_eq!(
        parse(bounce.as_bytes(), "X-Other").and_then(|r| match r {
            Report::Delivery(d) => d.supplemental_trace,
            _ => None,
        }),
        None
    );
    let not_ours =
        postfix_bounce(&base64::engine::general_purpose::STANDARD.encode(br#"{"recipient":"x"}"#));
    let Some(Report::Delivery(r)) = parse(not_ours.as_bytes(), TRACE_HEADER) else {
        panic!("not a DSN");
    };
    assert_eq!(r.supplemental_trace, None);
}

#[test]
fn ordinary_mail_and_broken_reports_are_not_reports() {
    assert_eq!(
        parse(b"From: a@b\r\nSubject: hi\r\n\r\nhello\r\n", TRACE_HEADER),
        None
    );
    // a feedback part without Feedback-Type
    let broken = RFC5965_B2.replace("Feedback-Type: abuse\r\n", "");
    assert_eq!(parse(broken.as_bytes(), TRACE_HEADER), None);
    // a DSN whose recipient block lacks Action
    let broken = RFC3464_SIMPLE.replace("Action: failed\r\n", "");
    assert_eq!(parse(broken.as_bytes(), TRACE_HEADER), None);
}
